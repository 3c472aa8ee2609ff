"""What `--compute-type` means on each device: the number format of the encoder and of the decoder.

The two halves of Whisper gain from different formats. The encoder pushes 1500 frames through
every layer at once: compute-bound, so faster arithmetic pays (bfloat16 on AMX: 0.4x float32's
time on tiny.en here). The decoder runs one token at a time: memory-bound, so smaller weights pay
(int8: 0.5-0.7x per step), while bfloat16's one-row products are slower than float32's on the CPU.

`auto` is the fastest type whose word error rate stayed near float32's (the rule: within 0.3
points) on the benchmark sets (benchmarks/README.md, bench.py: tiny.en and base, greedy and
beam 5, `en/` and `long/`):
float16 on GPUs; on the CPU int8_bfloat16 where it computes in bfloat16 (AVX512_BF16 or AMX),
else int8. On this project's 2-core Xeon (AMX), int8_bfloat16 took 0.55-1.0x int8's time in
all eight cells and its WER moved -2.38 to +0.35 points from float32's (within 0.3 in seven;
+0.35 is 2 words of 580, tiny.en greedy on `en/`), where int8 moved -2.52 to +0.42. Its encoder
is the reason: bfloat16 there was both faster than int8's products (tiny.en 126 vs 141 ms a
window, base 209 vs 281) and nearer float32's output (1-2% of the norm against 7.5-16.5%).
Session 16, the same Xeon, after the int8 decoder's changes for accuracy (its vocabulary
ranked in int8 and its best logits scored in float16, base's MLP in float16, the audio's keys
and values projected in bfloat16): the decoder's logits, teacher-forced on `en/`, sit as near
float32's as the bfloat16 type's (top-2 margin off by 0.018-0.020 on average, from 0.10-0.17),
the encoder's bfloat16 the rest; WER -0.28 to +0.14 points in seven cells, +0.56 in base beam 5
`long/` (two words each written as one and as two: "lower case"), at 0.34-0.69x faster-whisper
int8's time. int8, the other CPUs' choice, took 0.47-0.82x float32's time in session 9 and moved WER -1.54
to +0.28 (but one file of tiny.en greedy `long/` fell into a repetition loop that the
temperature fallback decoded again). On an AMD EPYC without VNNI (session 12: tiny.en and
base, greedy and beam 5, after quantize.py's changes for such CPUs) int8 moved WER -0.28 to
+0.18, within 0.3 in all eight cells, at 0.80-0.91x float32's time for tiny.en. A CPU whose
PyTorch lacks the int8 kernels runs float32.
None, the Python API's default, stays float32 as openai-whisper's: its text, word for word.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import ModelError
from . import COMPUTE_TYPES
from .quantize import cpu_has, int8_available


@dataclass(frozen=True)
class Precision:
    """A compute type: its name and the format of each half (float32, bfloat16, float16 or int8).

    `attention` is the format attention over the 1500 audio frames runs in, where int8 leaves
    float32 activations around its int8 products (None: the activations'). Under int8 on a CPU
    with native bfloat16 it is bfloat16. The decoder's cross-attention keys and values are
    projected and kept in it: every step reads them whole (18 MB a window for tiny.en in
    float32), one window per row group, so batching does not share them as it shares weights,
    and PyTorch's fused attention runs 1.1-2.8x faster on them (1 to 35 queries over 1500 keys);
    their projection is 1500 rows, where bfloat16 is nearer float32 than int8. The encoder's
    self-attention meets in it too: 1500 x 1500 per head, 2.1x faster than in float32.
    """

    name: str
    encoder: str
    decoder: str
    attention: str | None = None


PRECISIONS = {
    "float32": Precision("float32", "float32", "float32"),
    "int8": Precision("int8", "int8", "int8"),  # int8 linear layers, float32 around them
    "bfloat16": Precision("bfloat16", "bfloat16", "bfloat16"),
    "int8_bfloat16": Precision("int8_bfloat16", "bfloat16", "int8"),  # each half in its fastest format here
    "float16": Precision("float16", "float16", "float16"),
}
# bfloat16 where it pays on the CPU: in the encoder. A bfloat16 decoder took 1.3x float32's time
# on the long set (one-row products), and oneDNN's cached weight layouts for every prompt
# length grew the process to 920 MB.
CPU_PRECISIONS = PRECISIONS | {"bfloat16": Precision("bfloat16", "bfloat16", "float32")}


def cpu_has_bfloat16() -> bool:
    """Native bfloat16 arithmetic: AVX512_BF16 or AMX (Intel Cooper Lake and later, AMD Zen 4 and later)."""
    return cpu_has("avx512_bf16") or cpu_has("amx_tile")


def resolve_precision(compute_type: str | None, device: torch.device) -> Precision:
    """The formats `compute_type` runs in on `device`; a combination this machine cannot run is a ModelError.

    None is openai-whisper's choice: float32 on the CPU, float16 on GPUs; `auto` is int8 (its
    encoder in bfloat16 where the CPU computes in it) where PyTorch has the kernels, as measured
    (see the module doc).
    """
    name = compute_type or ("float32" if device.type == "cpu" else "float16")
    if name not in COMPUTE_TYPES:
        raise ModelError(f"--compute-type {name}: choose one of {', '.join(COMPUTE_TYPES)}")
    if device.type == "cpu":
        if name == "auto":
            name = ("int8_bfloat16" if cpu_has_bfloat16() else "int8") if int8_available() else "float32"
        if name == "float16":
            raise ModelError(
                "--compute-type float16: not offered on the CPU (no faster than float32 there, and less accurate); "
                "choose int8, bfloat16 or float32"
            )
        if "bfloat16" in name and not cpu_has_bfloat16():
            raise ModelError(
                f"--compute-type {name}: this CPU has no native bfloat16 arithmetic (AVX512_BF16 or AMX); "
                "choose int8 or float32"
            )
        if "int8" in name and not int8_available():
            raise ModelError(f"--compute-type {name}: this PyTorch has no int8 kernels for this CPU; choose float32")
        if "int8" in name and cpu_has_bfloat16():
            return replace(CPU_PRECISIONS[name], attention="bfloat16")
        return CPU_PRECISIONS[name]
    if name == "auto":
        name = "float16"
    if "int8" in name:
        raise ModelError(
            f"--compute-type {name}: PyTorch's int8 kernels run on the CPU only; "
            f"choose float16 on {device.type}, or --device cpu"
        )
    if name == "bfloat16" and not (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        raise ModelError(f"--compute-type bfloat16: not supported on this {device.type} device; choose float16")
    return PRECISIONS[name]

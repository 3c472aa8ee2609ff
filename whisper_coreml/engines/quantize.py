"""int8 linear layers on PyTorch's own quantized CPU kernels (fbgemm and oneDNN), for `--compute-type int8`.

Weights are quantized once, per output channel (symmetric: scale = max |w| / 127), and
activations per call (dynamic quantization), so no calibration data is needed and every layer
keeps float32 inputs and outputs. The kernels choose one activation scale per call, over all
its rows; layers that see a few rows at a time (the decoder's tokens, beams and batched
windows) scale each row on its own instead (`per_row`), so a row's result never depends on
which other rows share the call: a window decodes to the same tokens alone or in a batch, and
a quiet beam is not quantized on a loud one's scale. Layer norms, softmax and the attention
products around the layers stay float32. A decoding step is memory-bound (tiny.en reads
~130 MB per token in float32, 80 MB of it the vocabulary projection), and int8 weights are a
quarter of that traffic. Few-row layers too small for int8 to pay keep float16 weights
(`HalfWeightLinear`): half the traffic, with float32 products.

Without VNNI (AVX2 CPUs such as AMD's before Zen 4) both libraries multiply 8-bit activations
by 8-bit weights with `vpmaddubsw`, which adds each pair of products in 16 bits and saturates
there. Scaled over a whole tensor, the encoder's activations (a few large channels, the rest
small) hit that limit: its output moved 51% of its norm from float32's on an AMD EPYC (7.5%
on a Xeon with VNNI), and tiny.en skipped 23 s of speech on a long file. There every layer
scales each row on its own (`per_row`; 8.1% of the norm, 0.8x float32's time), whose pinned
range keeps a pair of products past 16 bits only where two neighbours both sit at the row's
largest magnitude; PyTorch's own remedy, 7-bit activations (`reduce_range`), left 19%.

Two kernel libraries, because they win at different shapes here (Xeon with AVX-512 VNNI and AMX,
2 threads): fbgemm at the decoder's few rows (0.4-0.6x float32's time per layer, oneDNN 0.7-1.0x),
oneDNN at the encoder's 1500 rows (0.25-0.3x, fbgemm 0.5-0.7x), where it reaches AMX.

PyTorch marks quantized tensors deprecated (torch 2.10+) in favour of torchao; the kernels are
the same ones `torch.ao.quantization.quantize_dynamic` uses. The warnings are silenced where the
weights are packed, and a PyTorch without the kernels is a one-line error (`int8_available`).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

# Rows at which a layer counts as "many": the encoder's 1500 frames, the cross-attention keys and values.
FEW_ROWS, MANY_ROWS = "few", "many"
# A few-row layer smaller than this keeps float16 weights (`HalfWeightLinear`): its product is over
# before int8's smaller traffic pays for the per-row scaling around the kernel (5 rows, a Xeon:
# 384x384 23-52 us in float32 against 74-82 us in int8), and int8 moves the text. base's decoder
# MLP (512 x 2048) is below it: in int8 it moved base's logits on a Xeon with VNNI (teacher-forced
# on `en/`, the vocabulary's best logits recomputed as `pytorch.RankedProjection` does: the top-2 margin
# off float32's by 0.102 on average, 0.055 with the MLP in float16, at 1.05x the step's time; the
# argmax changed at 5 of 745 tokens, then at 1), and sent base into a repetition on a file's
# closing silence on an AMD EPYC without VNNI (greedy `long/`: WER 9.94% against float32's 7.56%).
# Larger models' MLPs (small's 768 x 3072 on) are int8.
MIN_FEW_ROW_WEIGHTS = 1 << 21


def int8_available() -> bool:
    """Whether this PyTorch has a dynamic int8 linear kernel for this CPU."""
    return bool(set(torch.backends.quantized.supported_engines) & {"x86", "fbgemm", "onednn", "qnnpack"})


def kernel_library(rows: str) -> str:
    """The quantized engine for layers that see `rows` (FEW_ROWS or MANY_ROWS) at a time; see the module doc."""
    supported = torch.backends.quantized.supported_engines
    order = ("onednn", "x86", "fbgemm", "qnnpack") if rows == MANY_ROWS else ("x86", "fbgemm", "onednn", "qnnpack")
    return next(engine for engine in order if engine in supported)


def cpu_has(feature: str) -> bool:
    """`torch.cpu`'s probe for an x86 feature (vnni, avx512_bf16, amx_tile); False where this torch has none."""
    probe = getattr(torch.cpu, f"_is_{feature}_supported", None)
    return bool(probe and probe())


@contextlib.contextmanager
def _packing_with(engine: str) -> Iterator[None]:
    """Pack with `engine`'s kernels (PyTorch reads a global), quietly (see the module doc)."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.quantized.engine = previous


class Int8Linear(nn.Module):
    """`nn.Linear` with int8 weights: float32 in, float32 out, the product in int8.

    Activations are quantized to 8 bits: a layer whose whole call shares one scale is made only
    on CPUs with VNNI, where 8-bit products do not saturate (see the module doc).

    `per_row`: each row is divided by its largest magnitude before the kernel and multiplied
    back after, and one more row holding +1 and -1 pins the kernel's range to [-1, 1], so every
    row is quantized on its own scale whatever else is in the call (int32 accumulation is exact,
    so the row's output is then bit-identical); the bias is added after the rescaling.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, engine: str, per_row: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # Block by block into one int8 tensor: a float32 copy of a whole vocabulary projection
        # would be the largest thing in memory while loading.
        ints = torch.empty(weight.shape, dtype=torch.int8)
        scale = torch.empty(self.out_features, dtype=torch.double)
        source = weight.detach()
        for start in range(0, self.out_features, 4096):
            block = source[start : start + 4096].float()
            block_scale = (block.abs().amax(dim=1) / 127).clamp(min=1e-12)
            ints[start : start + 4096] = (block / block_scale[:, None]).round_()
            scale[start : start + 4096] = block_scale
        zero = torch.zeros(self.out_features, dtype=torch.long)
        self.per_row = per_row
        self.bias = None if bias is None or not per_row else bias.detach().float()
        with _packing_with(engine):
            q = torch._make_per_channel_quantized_tensor(ints, scale, zero, 0)
            del ints
            packed_bias = None if bias is None or per_row else bias.detach().float()
            self.packed = torch.ops.quantized.linear_prepack(q, packed_bias)
        self.range_row = torch.zeros(1, self.in_features)
        self.range_row[0, :2] = torch.tensor([1.0, -1.0])

    @classmethod
    def of(cls, linear: nn.Linear, engine: str, per_row: bool = False) -> Int8Linear:
        return cls(linear.weight, linear.bias, engine, per_row)

    def forward(self, x: Tensor) -> Tensor:
        if not self.per_row:
            return torch.ops.quantized.linear_dynamic(x, self.packed, False)
        rows = x.reshape(-1, self.in_features)
        magnitude = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-30)
        pinned = torch.cat([rows / magnitude, self.range_row])
        out = torch.ops.quantized.linear_dynamic(pinned, self.packed, False)[:-1].mul_(magnitude)
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class HalfWeightLinear(nn.Module):
    """`nn.Linear` with its weights kept in float16 and its product in float32 (fbgemm's fp16 GEMM).

    For the few-row layers too small for int8 to pay (`MIN_FEW_ROW_WEIGHTS`): a decoding step
    reads every one of them once per token, memory-bound, and half the bytes is most of the
    gain int8 would give without its activation scaling. A weight in float16 is within 2^-11
    of float32's (no activation is rounded), so the text moves far less than under int8.
    One row on an AMD EPYC (2 threads, a tiny.en greedy step's working set): 384 x 384 44 us
    against 60 in float32; five rows (beam 5) 50 against 89, 1536 x 384 110 against 360.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        b = None if bias is None else bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack_fp16(weight.detach().float(), b)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x, self.packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


@functools.cache
def half_weights_available() -> bool:
    """Whether this PyTorch has fbgemm's float16-weight product on this CPU (x86 builds do; ARM ones not)."""
    try:
        packed = torch.ops.quantized.linear_prepack_fp16(torch.ones(8, 8), None)
        torch.ops.quantized.linear_dynamic_fp16(torch.ones(1, 8), packed)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def quantize_linears(module: nn.Module, rows: str, many_rows: tuple[str, ...] = (), keep: tuple[str, ...] = ()) -> None:
    """Replace every `nn.Linear` under `module` with an `Int8Linear`, in place.

    Layers see `rows` rows at a time, except those whose qualified names end with one of
    `many_rows`, which see many (the decoder's cross-attention keys and values: 1500 frames).
    Few-row layers quantize their activations row by row (`Int8Linear`'s `per_row`), and only
    from `MIN_FEW_ROW_WEIGHTS` up; below it they keep their weights in float16
    (`HalfWeightLinear`) where the CPU has the kernel, else float32: all of tiny's and base's
    decoder layers.
    Many-row layers scale rows on their own too on a CPU without VNNI, whose products saturate
    otherwise (module doc). Layers whose qualified names start with one of `keep` stay float32.
    """
    few, many = kernel_library(rows), kernel_library(MANY_ROWS)
    no_vnni = not cpu_has("vnni")
    for name, child in list(module.named_modules()):
        for attribute, layer in list(child.named_children()):
            if isinstance(layer, nn.Linear):
                qualified = f"{name}.{attribute}" if name else attribute
                if qualified.startswith(keep):
                    continue
                is_many = rows == MANY_ROWS or qualified.endswith(many_rows)
                if is_many or layer.weight.numel() >= MIN_FEW_ROW_WEIGHTS:
                    per_row = no_vnni or not is_many
                    setattr(child, attribute, Int8Linear.of(layer, many if is_many else few, per_row=per_row))
                elif half_weights_available():
                    setattr(child, attribute, HalfWeightLinear(layer.weight, layer.bias))

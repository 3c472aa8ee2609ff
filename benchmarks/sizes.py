"""Every Whisper size on its exact shapes, with random weights: load, decode, convert, verify.

    nice -n 10 python benchmarks/sizes.py [--sizes small medium large-v3 large-v3-turbo] [--json out.json]

Only tiny.en and base have weights this machine can reach, so the larger models are proven on
their published shapes with seeded random weights instead. Each size is written as the
Hugging Face directory a user's first download puts in the hub cache (config.json,
model.safetensors in the hub's dtype, tokenizer.json), then every stage runs in a fresh child
process whose time and peak RSS (`wait4`) are reported:

- load: `load_model(directory, engine="torch")`;
- decode: one 30-s window of speech greedily decoded (tokens come out, every logit finite);
- convert: `coreml.convert` to a float16 bundle (macOS 15 target, stateful decoder);
- verify: `verify(..., engine="mil")`, the numpy reference executor against PyTorch (encoder and
  logits PSNR, greedy argmax agreement away from float16 ties), the decode bounded to
  `--sample-len` tokens and no whole-file transcripts (random weights never stop talking).

The same helpers build the reduced-layer models of tests/test_sizes.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from whisper_coreml.model import ModelDimensions, Whisper, sinusoids  # noqa: E402

# openai-whisper's published architectures (the `dims` of its checkpoints).
SIZES: dict[str, ModelDimensions] = {
    "small": ModelDimensions(80, 1500, 768, 12, 12, 51865, 448, 768, 12, 12),
    "small.en": ModelDimensions(80, 1500, 768, 12, 12, 51864, 448, 768, 12, 12),
    "medium": ModelDimensions(80, 1500, 1024, 16, 24, 51865, 448, 1024, 16, 24),
    "medium.en": ModelDimensions(80, 1500, 1024, 16, 24, 51864, 448, 1024, 16, 24),
    "large-v3": ModelDimensions(128, 1500, 1280, 20, 32, 51866, 448, 1280, 20, 32),
    "large-v3-turbo": ModelDimensions(128, 1500, 1280, 20, 32, 51866, 448, 1280, 20, 4),
}
# The dtype each size's model.safetensors has on the hub: small and medium float32, large-v3(-turbo) float16.
HUB_DTYPES = {"small": torch.float32, "medium": torch.float32, "large-v3": torch.float16}
DEFAULT_SIZES = ("small", "medium", "large-v3", "large-v3-turbo")
DEFAULT_LIMIT_MIB = 14 * 1024  # a stage above this is killed: the machine is shared
YUE = "<|yue|>"  # large-v3's 100th language, right after <|su|>


def hub_dtype(size: str) -> torch.dtype:
    return HUB_DTYPES[size.removesuffix(".en").removesuffix("-turbo")]


def reduced(dims: ModelDimensions, audio_layers: int, text_layers: int) -> ModelDimensions:
    """The same widths, vocabulary and mel bins with fewer layers: cheap enough for every test run."""
    return replace(dims, n_audio_layer=audio_layers, n_text_layer=text_layers)


def parameter_count(dims: ModelDimensions) -> int:
    with torch.device("meta"):
        model = Whisper(dims)
    return sum(p.numel() for p in model.parameters())


def random_state_dict(dims: ModelDimensions, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Seeded random weights under our (openai-whisper's) names, at a trained model's scale.

    Linear, convolution and embedding weights and biases are normal with std 0.02 (GPT-2's
    initialisation, which keeps every layer's output near unit scale at these widths, so
    float16 neither overflows nor flushes); layer norms are 1 and 0; the encoder's positional
    embedding is its fixed sinusoids, as in every real checkpoint.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in Whisper(dims).state_dict().items()}
    sd = {}
    for name, shape in shapes.items():
        if name == "encoder.positional_embedding":
            value = sinusoids(*shape)
        elif name.endswith("ln.weight") or name.endswith("ln_post.weight"):
            value = torch.ones(shape)
        elif name.endswith("ln.bias") or name.endswith("ln_post.bias"):
            value = torch.zeros(shape)
        else:
            value = torch.randn(shape, generator=generator) * 0.02
        sd[name] = value.to(dtype)
    return sd


def derive_tokenizer(base_tokenizer: dict[str, Any], n_vocab: int) -> dict[str, Any]:
    """A tokenizer.json for a vocabulary of `n_vocab` from the multilingual 51865 one.

    The BPE is the same in every multilingual model; large-v3 (51866) only adds `<|yue|>` at
    id 50358, after `<|su|>`, which moves `<|translate|>` .. `<|notimestamps|>` up by one, as
    in openai-whisper's tiktoken layout for 100 languages and Hugging Face's large-v3 file.
    """
    added = base_tokenizer["added_tokens"]
    if n_vocab == 51865:
        return base_tokenizer
    if n_vocab != 51866:
        raise ValueError(f"no tokenizer can be derived for a vocabulary of {n_vocab}")
    su = next(t["id"] for t in added if t["content"] == "<|su|>")
    shifted = [{**t, "id": t["id"] + 1} if t["id"] > su else t for t in added]
    yue = {**next(t for t in added if t["content"] == "<|su|>"), "id": su + 1, "content": YUE}
    derived = json.loads(json.dumps(base_tokenizer))
    derived["added_tokens"] = sorted([*shifted, yue], key=lambda t: t["id"])
    renumbered = {t["content"]: t["id"] for t in derived["added_tokens"]}
    for special in derived.get("post_processor", {}).get("special_tokens", {}).values():
        special["ids"] = [renumbered[token] for token in special["tokens"]]
    return derived


def tokenizer_for(n_vocab: int) -> dict[str, Any]:
    """The installed tokenizer of the matching kind: tiny.en's for English-only, base's (derived) otherwise."""
    from whisper_coreml.catalog import catalog, installed_package

    found = installed_package(catalog()["tiny.en" if n_vocab == 51864 else "base"])
    if found is None:
        raise SystemExit(f"needs the installed {'tiny.en' if n_vocab == 51864 else 'base'} weights package")
    base = json.loads((found[0] / "tokenizer.json").read_text())
    return base if n_vocab == 51864 else derive_tokenizer(base, n_vocab)


def write_hf_model(
    directory: Path, dims: ModelDimensions, state_dict: dict[str, torch.Tensor], tokenizer: dict[str, Any]
) -> Path:
    """Write `state_dict` as a Hugging Face Whisper directory, under transformers' own parameter names."""
    import transformers
    from safetensors.torch import save_file

    from whisper_coreml.weights import hf_to_openai_name

    config = transformers.WhisperConfig(
        vocab_size=dims.n_vocab,
        num_mel_bins=dims.n_mels,
        encoder_layers=dims.n_audio_layer,
        encoder_attention_heads=dims.n_audio_head,
        decoder_layers=dims.n_text_layer,
        decoder_attention_heads=dims.n_text_head,
        d_model=dims.n_audio_state,
        encoder_ffn_dim=4 * dims.n_audio_state,
        decoder_ffn_dim=4 * dims.n_text_state,
        max_source_positions=dims.n_audio_ctx,
        max_target_positions=dims.n_text_ctx,
    )
    with torch.device("meta"):
        names = list(transformers.WhisperForConditionalGeneration(config).state_dict())
    tensors = {hf: state_dict[ours] for hf in names if (ours := hf_to_openai_name(hf)) is not None}
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    return directory


def make_model(directory: Path, dims: ModelDimensions, dtype: torch.dtype, seed: int = 0) -> Path:
    return write_hf_model(directory, dims, random_state_dict(dims, seed, dtype), tokenizer_for(dims.n_vocab))


def speech_window_audio() -> Path:
    """A real English clip when the shared data is there, else the bundled sample."""
    shared = Path(os.environ.get("WHISPER_COREML_SHARED", REPO.parent / "shared")) / "speech" / "en"
    clip = shared / "arctic_a0010.wav"
    return clip if clip.is_file() else REPO / "samples" / "espeak_welcome.opus"


# --- the stages, each run in a child process -------------------------------------------------------


def stage_load(model_dir: Path) -> dict[str, Any]:
    import whisper_coreml as wc

    model = wc.load_model(str(model_dir), engine="torch", device="cpu")
    return {"params": sum(p.numel() for p in model.engine.model.parameters()), "dims": asdict(model.engine.dims)}


def stage_decode(model_dir: Path, audio: Path, sample_len: int) -> dict[str, Any]:
    """One window greedily decoded on PyTorch; every logit along the decode must be finite."""
    import whisper_coreml as wc
    from whisper_coreml.audio import MelSource
    from whisper_coreml.decoding import DecodingOptions, WindowDecoder, detect_language

    model = wc.load_model(str(model_dir), engine="torch", device="cpu")
    engine, tokenizer = model.engine, model.tokenizer
    with MelSource.from_file(audio, engine.dims.n_mels) as source:
        features = engine.encode(source.window(0))
    language = detect_language(engine, features, tokenizer)[0] if tokenizer.multilingual else "en"
    options = DecodingOptions(language=language, temperature=0.0, sample_len=sample_len)
    decoder = WindowDecoder(engine, tokenizer.with_language(language), options)
    result = decoder.decode(features)
    sequence = np.array([[*decoder.initial_tokens, *result.tokens]])
    logits = engine.decoder(features).step(sequence, list(range(sequence.shape[1])))
    if not result.tokens or not np.isfinite(logits).all():
        raise SystemExit(f"decode failed: {len(result.tokens)} tokens, finite logits: {np.isfinite(logits).all()}")
    return {"language": language, "tokens": len(result.tokens), "logits_std": float(logits.std())}


def stage_convert(model_dir: Path, bundle: Path) -> dict[str, Any]:
    from whisper_coreml.coreml.convert import convert

    report = convert(str(model_dir), bundle, name=model_dir.name)
    return {"bundle_mib": report.total_bytes / 2**20, "convert_peak_rss_mib": report.peak_rss_bytes / 2**20}


def stage_verify(bundle: Path, audio: Path, sample_len: int) -> dict[str, Any]:
    from whisper_coreml.verify import verify

    report = verify(bundle, audio, engine="mil", sample_len=sample_len, transcripts=False)
    print("\n".join(report.lines()), file=sys.stderr)
    return {
        "passed": report.passed,
        "encoder_psnr": report.encoder_psnr,
        "logits_psnr": report.logits_psnr,
        "argmax_agreement": report.argmax_agreement,
        "decisive_agreement": report.judged_agreement,
        "tie_margin": report.tie_margin,
        "tie_gaps": list(report.tie_gaps),
        "positions": report.positions,
    }


def _watch_rss(pid: int, limit_mib: float, done: threading.Event, over: threading.Event) -> None:
    """Kill the stage `pid` if its resident memory passes `limit_mib` (others share the machine)."""
    status = Path(f"/proc/{pid}/status")
    while not done.wait(0.5):
        try:
            rss_kib = next(int(ln.split()[1]) for ln in status.read_text().splitlines() if ln.startswith("VmRSS:"))
        except (OSError, StopIteration):
            return
        if rss_kib / 1024 > limit_mib:
            over.set()
            os.kill(pid, signal.SIGKILL)
            return


def run_stage(args: list[str], limit_mib: float = DEFAULT_LIMIT_MIB) -> dict[str, Any]:
    """Run one stage in a child; its result, wall time and its own peak RSS (from `wait4`).

    A child whose memory passes `limit_mib` is killed, and the result says so.
    """
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen([sys.executable, __file__, "--stage", *args], stdout=out, stderr=err, text=True)
        done, over = threading.Event(), threading.Event()
        threading.Thread(target=_watch_rss, args=(child.pid, limit_mib, done, over), daemon=True).start()
        _, status, usage = os.wait4(child.pid, 0)
        done.set()
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        lines, log = out.read().strip().splitlines(), err.read()
    result = json.loads(lines[-1]) if child.returncode == 0 and lines else {}
    if over.is_set():
        result["killed"] = f"its resident memory passed {limit_mib:.0f} MiB"
    return {
        "ok": child.returncode == 0,
        "seconds": seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        **result,
        "log": log[-3000:],
    }


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def child_main(argv: list[str]) -> None:
    stage, rest = argv[0], argv[1:]
    torch.set_num_threads(int(os.environ.get("WHISPER_COREML_THREADS", "2")))
    if stage == "make":
        size, directory, layers = rest[0], Path(rest[1]), rest[2:]
        dims = SIZES[size] if not layers else reduced(SIZES[size], int(layers[0]), int(layers[1]))
        make_model(directory, dims, hub_dtype(size))
        out: dict[str, Any] = {"params": parameter_count(dims)}
    elif stage == "load":
        out = stage_load(Path(rest[0]))
    elif stage == "decode":
        out = stage_decode(Path(rest[0]), Path(rest[1]), int(rest[2]))
    elif stage == "convert":
        out = stage_convert(Path(rest[0]), Path(rest[1]))
    elif stage == "verify":
        out = stage_verify(Path(rest[0]), Path(rest[1]), int(rest[2]))
    else:
        raise SystemExit(f"unknown stage {stage}")
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), choices=list(SIZES))
    parser.add_argument("--sample-len", type=int, default=24, help="tokens decoded and compared per window")
    parser.add_argument("--work", type=Path, default=None, help="where models and bundles go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the models and bundles")
    parser.add_argument("--limit-mib", type=float, default=DEFAULT_LIMIT_MIB, help="kill a stage using more memory")
    args = parser.parse_args()
    os.nice(10)  # others share the machine
    audio = speech_window_audio()
    work = args.work or Path(tempfile.mkdtemp(prefix="whisper-sizes-"))
    cpu = cpu_name()
    results: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "audio": str(audio), "sizes": {}}
    print(f"{cpu}, {os.cpu_count()} cores; audio {audio}; work {work}", flush=True)
    print(f"{'size':<15} {'stage':<8} {'seconds':>8} {'peak MiB':>9}  result", flush=True)
    try:
        for size in args.sizes:
            model_dir, bundle = work / size, work / f"{size}-coreml"
            stages = {
                "make": [size, str(model_dir)],
                "load": [str(model_dir)],
                "decode": [str(model_dir), str(audio), str(args.sample_len)],
                "convert": [str(model_dir), str(bundle)],
                "verify": [str(bundle), str(audio), str(args.sample_len)],
            }
            results["sizes"][size] = {}
            for stage, stage_args in stages.items():
                outcome = run_stage([stage, *stage_args], args.limit_mib)
                results["sizes"][size][stage] = outcome
                summary = {k: v for k, v in outcome.items() if k not in ("ok", "seconds", "peak_rss_mib", "log")}
                print(
                    f"{size:<15} {stage:<8} {outcome['seconds']:>8.1f} {outcome['peak_rss_mib']:>9.0f}  "
                    f"{'ok' if outcome['ok'] else 'FAILED'} {json.dumps(summary)[:200]}",
                    flush=True,
                )
                if not outcome["ok"]:
                    print(outcome["log"], file=sys.stderr)
                    break
                if stage == "verify":
                    print(outcome["log"].strip(), flush=True)
            if not args.keep:
                shutil.rmtree(model_dir, ignore_errors=True)
                shutil.rmtree(bundle, ignore_errors=True)
    finally:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--stage":
        child_main(sys.argv[2:])
    else:
        main()

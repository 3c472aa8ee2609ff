"""`whisper-coreml convert`: our Whisper module, traced and converted to Core ML ML programs.

The bundle holds `encoder.mlpackage` (log-mel in; encoder output and every decoder layer's
cross-attention keys/values out, once per 30-s window), `decoder.mlpackage` (one token per
call, static shapes), `manifest.json` and `tokenizer.json`. For macOS 15 the decoder keeps its
self-attention cache and the cross-attention keys/values as Core ML state; for macOS 13/14 it
is stateless and the caller passes the cache in and gets the new slice out. With `beam_size`
> 1 the bundle also holds a beam decoder: the same step for `beam_size` rows at once, which
beam search (and best-of-N sampling with as many samples) runs. The stateful one reorders its
cache rows itself, by a `beam` input, before each step, and is a second function of
`decoder.mlpackage` sharing its weights; the stateless one is `decoder_beam.mlpackage`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..catalog import catalog, find_tokenizer, installed_package, models_dir, resolve_weights
from ..errors import ModelError
from ..model import Whisper, default_alignment_heads
from ..tokenizer import Tokenizer
from ..weights import Weights
from . import bundle as B
from . import import_coremltools, macos
from .export import (
    EncoderExport,
    StatefulBeamDecoderExport,
    StatefulDecoderExport,
    StatelessBeamDecoderExport,
    StatelessDecoderExport,
)

Progress = Callable[[str], None]
"""Called with a short description of each stage as it starts."""

COMPILE_NOTE = (
    "compiling to .mlmodelc needs macOS; the coreml engine compiles the .mlpackage files "
    "on first load there and caches the result"
)


@dataclass(frozen=True)
class ConvertReport:
    """What a conversion produced and what it cost."""

    bundle: Path
    seconds: float
    peak_rss_bytes: int  # the process's peak resident memory (includes anything it held before)
    encoder_bytes: int
    decoder_bytes: int
    total_bytes: int
    stateful: bool
    per_token_in_bytes: int  # what each decoder call moves into the model
    per_token_out_bytes: int  # and out of it
    per_window_bytes: int  # cross-attention keys/values written into the decoder's state once per window
    compiled: bool
    notes: tuple[str, ...] = field(default_factory=tuple)

    def lines(self) -> list[str]:
        """A human summary, one fact per line."""
        mb = 1024 * 1024
        kind = "stateful (macOS 15)" if self.stateful else "stateless (macOS 13/14)"
        out = [
            f"bundle: {self.bundle}",
            f"size: {self.total_bytes / mb:.1f} MiB (encoder {self.encoder_bytes / mb:.1f}, decoder "
            f"{self.decoder_bytes / mb:.1f})",
            f"decoder: {kind}; per token {self.per_token_in_bytes:,} bytes in, {self.per_token_out_bytes:,} bytes out"
            + (f"; {self.per_window_bytes:,} bytes of cross-attention state per window" if self.stateful else ""),
            f"took {self.seconds:.1f} s, peak memory {self.peak_rss_bytes / mb:.0f} MiB",
        ]
        return out + list(self.notes)


def peak_rss_bytes() -> int:
    """The process's peak resident set size (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def weights_checksum(weights: Weights) -> str:
    """SHA-256 over the state dict (names, dtypes, shapes and bytes, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(weights.state_dict):
        t = weights.state_dict[name].detach().contiguous().cpu()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet(verbose: bool) -> Iterator[None]:
    """Silence coremltools' own progress bars and notices (our `progress` callback reports the stages)."""
    if verbose:
        yield
        return
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _ct() -> Any:
    try:
        ct = import_coremltools()
    except ImportError as e:
        raise ModelError(f"converting to Core ML needs coremltools (pip install coremltools): {e}") from e
    return ct


def _quantize(mlmodel: Any, quantize: str, target: str) -> Any:
    """Compress the weights with coremltools.optimize (int8 linear, or k-means palettes)."""
    if quantize == "none":
        return mlmodel
    import coremltools.optimize.coreml as cto

    if quantize == "int8":
        config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
        return cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=config))
    nbits = {"palettize-6": 6, "palettize-4": 4}[quantize]
    per_tensor = cto.OpPalettizerConfig(nbits=nbits, mode="kmeans", granularity="per_tensor")
    if nbits == 4 and target == "macOS15":
        # Per-group palettes (macOS 15 only) keep 4 bits usable. The token embedding, which a
        # gather and the logits share, cannot be grouped, and one 4-bit palette ruins the logits:
        # it gets a 6-bit palette.
        grouped = cto.OpPalettizerConfig(nbits=4, mode="kmeans", granularity="per_grouped_channel", group_size=16)
        embedding = cto.OpPalettizerConfig(nbits=6, mode="kmeans", granularity="per_tensor")
        shared = {name: embedding for name in _gathered_consts(mlmodel)}
        return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=grouped, op_name_configs=shared))
    return cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=per_tensor))


def _gathered_consts(mlmodel: Any) -> list[str]:
    """Names of the constants a gather reads (embedding tables)."""
    ops = mlmodel._mil_program.functions["main"].operations
    return [
        op.name
        for op in ops
        if op.op_type == "const" and any(child.op_type == "gather" for child in op.outputs[0].child_ops)
    ]


def _validate(precision: str, compute_units: str, target: str, quantize: str, max_tokens: int, n_ctx: int) -> None:
    for value, choices, option in (
        (precision, B.PRECISIONS, "--precision"),
        (compute_units, B.COMPUTE_UNITS, "--compute-units"),
        (target, B.DEPLOYMENT_TARGETS, "--minimum-deployment-target"),
        (quantize, B.QUANTIZATIONS, "--quantize"),
    ):
        if value not in choices:
            raise ModelError(f"{option} {value}: choose one of {', '.join(choices)}")
    if not 1 <= max_tokens <= n_ctx:
        raise ModelError(f"--max-tokens {max_tokens}: must be between 1 and the model's {n_ctx} text positions")


def model_name(model: str | Weights) -> str:
    """The catalog name when there is one (also for weights read from an installed package), else the file name."""
    if isinstance(model, Weights):
        for entry in catalog().values():
            found = installed_package(entry)
            if found is not None and found[0].resolve() == Path(model.source).resolve():
                return entry.name
        return Path(model.source).name
    return Path(model).name if Path(model).expanduser().exists() else model


def convert(
    model: str | Weights,
    output_dir: str | Path | None = None,
    *,
    precision: str = "float16",
    compute_units: str = "all",
    minimum_deployment_target: str = "macOS15",
    quantize: str = "none",
    max_tokens: int = 448,
    beam_size: int = 5,
    name: str | None = None,
    compile: bool | None = None,
    progress: Progress | None = None,
    verbose: bool = False,
) -> ConvertReport:
    """Convert `model` (catalog name, path or `Weights`) into a bundle at `output_dir`.

    The default directory is `<models dir>/<name>-coreml`; `name` defaults to the catalog name.
    `beam_size` > 1 adds the beam decoder for that many beams (0 or 1: none; beam search then
    runs the one-token decoder once per beam and copies caches between steps: same beams, slower).
    The bundle is assembled next to its destination and moved into place at the end, so an
    interrupted run leaves no half bundle.
    `compile` defaults to "on macOS"; it needs a macOS that runs the deployment target (macos.py),
    and elsewhere the report carries a note instead. `verbose` lets coremltools print its own
    progress bars and notices.
    """
    started = time.perf_counter()
    real_stderr = sys.stderr

    def say(stage: str) -> None:
        if progress is not None:
            with contextlib.redirect_stderr(real_stderr):  # past _quiet's redirection
                progress(stage)

    ct = _ct()
    say("reading weights")
    weights = model if isinstance(model, Weights) else resolve_weights(model)
    dims = weights.dims
    name = name or model_name(model)
    _validate(precision, compute_units, minimum_deployment_target, quantize, max_tokens, dims.n_text_ctx)
    if beam_size < 0:
        raise ModelError(f"--beam-size {beam_size}: must be 0 (no beam decoder) or more")
    tokenizer_file = find_tokenizer(weights)
    tokenizer = Tokenizer(tokenizer_file, dims.n_vocab, dims.num_languages)
    heads = weights.alignment_heads or default_alignment_heads(dims.n_text_layer, dims.n_text_head)
    stateful = minimum_deployment_target == "macOS15"
    target = getattr(ct.target, minimum_deployment_target)
    float_dtype = np.float16 if precision == "float16" else np.float32
    compute_precision = ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32
    decoder_precision = (
        ct.transform.FP16ComputePrecision(op_selector=lambda op: not vocabulary_op(op, dims.n_vocab))
        if precision == "float16"
        else compute_precision
    )
    destination = Path(output_dir) if output_dir is not None else models_dir() / f"{name}-coreml"
    destination = destination.expanduser().resolve()
    _check_replaceable(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)

    source = {"weights": weights.source, "format": weights.format, "sha256": weights_checksum(weights)}
    whisper, pending = _unloaded_whisper(weights)
    del weights  # when convert read the weights itself, each tensor is freed once its float32 copy exists
    work = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))

    def finish(mlmodel: Any, part: str, package: str, description: str) -> None:
        """Compress (if asked), describe and save one converted program into the bundle."""
        if quantize != "none":
            say(f"compressing the {part} ({quantize})")
            mlmodel = _quantize(mlmodel, quantize, minimum_deployment_target)
        _metadata(mlmodel, name, description)
        say(f"saving the {part}")
        mlmodel.save(str(work / package))

    try:
        with _quiet(verbose), torch.no_grad():
            say("tracing the encoder")
            _load_float32(
                whisper,
                pending,
                lambda k: k.startswith("encoder.") or ".cross_attn.key." in k or ".cross_attn.value." in k,
            )
            mel = torch.zeros(1, dims.n_mels, 3000)
            traced = torch.jit.trace(EncoderExport(whisper).eval(), mel, check_trace=False)
            say("converting the encoder")
            encoder = ct.convert(
                traced,
                inputs=[ct.TensorType("mel", tuple(mel.shape), dtype=float_dtype)],
                outputs=[ct.TensorType(n, dtype=float_dtype) for n in ("audio_features", "cross_k", "cross_v")],
                minimum_deployment_target=target,
                compute_precision=compute_precision,
                convert_to="mlprogram",
                skip_model_load=True,
            )
            del traced
            finish(encoder, "encoder", B.ENCODER, "Whisper audio encoder")
            del encoder

            say("tracing the decoder")
            whisper.encoder.to("meta")  # converted: its float32 weights need not sit beside the decoder's
            _load_float32(whisper, pending, lambda k: True)
            decoder = _convert_decoder(ct, whisper, max_tokens, heads, stateful, float_dtype, target, decoder_precision)
            # A stateful decoder gets its beam function beside it in one package; the parts are saved apart first.
            merge = stateful and beam_size > 1
            one_token = f".one-token.{B.DECODER}" if merge else B.DECODER
            finish(decoder, "decoder", one_token, "Whisper text decoder, one token per call")
            del decoder
            if beam_size > 1:
                say(f"tracing the beam decoder ({beam_size} rows)")
                decoder = _convert_decoder(
                    ct, whisper, max_tokens, heads, stateful, float_dtype, target, decoder_precision, beam_size
                )
                beam_package = f".beam.{B.DECODER}" if merge else B.BEAM_DECODER
                finish(decoder, "beam decoder", beam_package, f"Whisper text decoder, {beam_size} beams per call")
                del decoder
                if merge:
                    say("joining the decoders into one package (shared weights)")
                    _join_functions(ct, work, {"main": one_token, B.BEAM_FUNCTION: beam_package}, B.DECODER)
        packages = (B.ENCODER, B.DECODER, *((B.BEAM_DECODER,) if beam_size > 1 and not stateful else ()))
        shutil.copyfile(tokenizer_file, work / B.TOKENIZER)

        say("writing the manifest")
        encoder_io = B.describe_package(work / B.ENCODER)
        decoder_io = B.describe_package(work / B.DECODER)
        traffic = token_traffic(decoder_io, stateful)
        manifest = B.Manifest(
            name=name,
            dims=dims,
            special_tokens=B.special_tokens(tokenizer),
            alignment_heads=tuple(heads),
            precision=precision,
            compute_units=compute_units,
            minimum_deployment_target=minimum_deployment_target,
            quantize=quantize,
            stateful=stateful,
            max_tokens=max_tokens,
            encoder=encoder_io,
            decoder=decoder_io,
            files=B.package_files(work, packages),
            source=source,
            versions=_versions(ct),
            traffic=traffic,
            beam_size=beam_size if beam_size > 1 else 0,
            beam_decoder=B.describe_package(*B.beam_location(work, stateful)) if beam_size > 1 else None,
        )
        (work / B.MANIFEST).write_text(B.dump_manifest(manifest))

        notes: list[str] = []
        compiled = False
        if compile is None:
            compile = sys.platform == "darwin"
        if compile and macos.runs(minimum_deployment_target):
            say("compiling for this Mac")
            for package in packages:
                ct.models.utils.compile_model(
                    str(work / package), str(work / package.replace(".mlpackage", ".mlmodelc"))
                )
            compiled = True
        elif sys.platform != "darwin":
            notes.append(COMPILE_NOTE)
        elif compile:
            notes.append(
                f"not compiled: these programs need {minimum_deployment_target} or later, newer than this Mac; "
                "the coreml engine compiles them on first load on a Mac that runs them"
            )

        work.chmod(0o755)  # mkdtemp's 0700 would hide the bundle from other users
        if destination.exists():
            _check_replaceable(destination)
            old = destination.with_name(f".{destination.name}.old-{os.getpid()}")
            destination.rename(old)
            work.rename(destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            work.rename(destination)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise

    def size(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())

    encoder_bytes = size(destination / B.ENCODER)
    decoder_bytes = sum(size(destination / p) for p in packages[1:])
    return ConvertReport(
        bundle=destination,
        seconds=time.perf_counter() - started,
        peak_rss_bytes=peak_rss_bytes(),
        encoder_bytes=encoder_bytes,
        decoder_bytes=decoder_bytes,
        total_bytes=size(destination),
        stateful=stateful,
        per_token_in_bytes=traffic["per_token_in"],
        per_token_out_bytes=traffic["per_token_out"],
        per_window_bytes=traffic["per_window"],
        compiled=compiled,
        notes=tuple(notes),
    )


def _unloaded_whisper(weights: Weights) -> tuple[Whisper, dict[str, torch.Tensor]]:
    """Our module on the meta device, and the tensors still to be loaded into it (all of them).

    Conversion fills it in two halves (`_load_float32`): the encoder, then, once the encoder
    is converted and dropped, the decoder. No random initialisation is ever allocated, float32
    weights are shared rather than copied, and a float16 checkpoint (large-v3's) is widened
    one half at a time: the peak holds one half of the model in float32 beside coremltools'
    copy of it, not the whole model twice.
    """
    with torch.device("meta"):
        whisper = Whisper(weights.dims)
    expected = set(whisper.state_dict())
    if set(weights.state_dict) != expected:
        wrong = sorted(set(weights.state_dict) ^ expected)
        raise ModelError(
            f"{weights.source}: its tensors do not fit a Whisper of its dimensions ({', '.join(wrong[:5])})"
        )
    return whisper.eval(), dict(weights.state_dict)


def _load_float32(whisper: Whisper, pending: dict[str, torch.Tensor], wanted: Callable[[str], bool]) -> None:
    """Give `whisper` float32 copies of the pending tensors `wanted` selects, and forget the originals."""
    names = [k for k in pending if wanted(k)]
    whisper.load_state_dict({k: pending.pop(k).float() for k in names}, strict=False, assign=True)


def _check_replaceable(destination: Path) -> None:
    """Only an earlier bundle or an empty directory may be replaced."""
    if destination.is_file() or (destination.is_dir() and not B.is_bundle(destination) and any(destination.iterdir())):
        raise ModelError(f"{destination}: exists and is not a whisper-coreml bundle; not overwriting it")


def _convert_decoder(
    ct: Any,
    whisper: Whisper,
    max_tokens: int,
    heads: tuple[tuple[int, int], ...],
    stateful: bool,
    float_dtype: type,
    target: Any,
    compute_precision: Any,
    beams: int | None = None,
) -> Any:
    """The one-token decoder, or with `beams` its batched beam-search variant (cache rows gain a beam axis)."""
    dims = whisper.dims
    head_dim = dims.n_text_state // dims.n_text_head
    rows = () if beams is None else (beams,)
    cache = (dims.n_text_layer, *rows, dims.n_text_head, max_tokens, head_dim)
    cross = (dims.n_text_layer, dims.n_text_head, dims.n_audio_ctx, head_dim)
    token_shape = (beams or 1, 1)
    token = torch.zeros(token_shape, dtype=torch.int32)
    position = torch.zeros(1, dtype=torch.int32)
    inputs = [ct.TensorType("token", token_shape, dtype=np.int32), ct.TensorType("position", (1,), dtype=np.int32)]
    # Logits leave in float32 whatever the precision: they are computed in it (`vocabulary_op`).
    outputs = [ct.TensorType("logits", dtype=np.float32), ct.TensorType("alignment", dtype=float_dtype)]
    if stateful:
        # Core ML states are float16 only: at float32 precision the caches are still stored in float16.
        if beams is None:
            module: torch.nn.Module = StatefulDecoderExport(whisper, max_tokens, heads, torch.float16).eval()
            example: tuple[torch.Tensor, ...] = (token, position)
        else:
            module = StatefulBeamDecoderExport(whisper, max_tokens, heads, beams, torch.float16).eval()
            example = (token, position, torch.arange(beams, dtype=torch.int32))
            inputs.append(ct.TensorType("beam", (beams,), dtype=np.int32))
        traced = torch.jit.trace(module, example, check_trace=False)
        states = [
            ct.StateType(ct.TensorType(shape=tuple(getattr(module, n).shape), dtype=np.float16), name=n)
            for n in StatefulDecoderExport.STATES
        ]
        extra: dict[str, Any] = {"states": states}
    else:
        if beams is None:
            module = StatelessDecoderExport(whisper, max_tokens, heads).eval()
        else:
            module = StatelessBeamDecoderExport(whisper, max_tokens, heads, beams).eval()
        example = (
            token,
            position,
            torch.zeros(cache),
            torch.zeros(cache),
            torch.zeros(cross),
            torch.zeros(cross),
            torch.zeros(1, max_tokens),
        )
        traced = torch.jit.trace(module, example, check_trace=False)
        inputs += [
            ct.TensorType("k_cache", cache, dtype=float_dtype),
            ct.TensorType("v_cache", cache, dtype=float_dtype),
            ct.TensorType("cross_k", cross, dtype=float_dtype),
            ct.TensorType("cross_v", cross, dtype=float_dtype),
            ct.TensorType("mask", (1, max_tokens), dtype=float_dtype),
        ]
        outputs += [ct.TensorType("k_new", dtype=float_dtype), ct.TensorType("v_new", dtype=float_dtype)]
        extra = {}
    return ct.convert(
        traced,
        inputs=inputs,
        outputs=outputs,
        minimum_deployment_target=target,
        compute_precision=compute_precision,
        convert_to="mlprogram",
        skip_model_load=True,
        **extra,
    )


def _join_functions(ct: Any, work: Path, functions: dict[str, str], package: str) -> None:
    """Save the packages `functions` ({function name: package}) as one multifunction `package` and delete them.

    Identical weights are stored once, so the beam decoder costs the bundle almost nothing.
    The first function is the default one (what a plain load runs).
    """
    descriptor = ct.utils.MultiFunctionDescriptor()
    for function, source in functions.items():
        descriptor.add_function(str(work / source), src_function_name="main", target_function_name=function)
    descriptor.default_function_name = next(iter(functions))
    ct.utils.save_multifunction(descriptor, str(work / package))
    for source in functions.values():
        shutil.rmtree(work / source)


def vocabulary_op(op: Any, n_vocab: int) -> bool:
    """The ops a float16 decoder keeps in float32: the token embedding lookup, the final layer
    norm and the output projection, which share one float32 copy of the embedding matrix.

    Neighbouring timestamps (and a timestamp against the next word) often score within 0.005
    of each other, below float16's resolution near 20; rounded logits then tie or flip, and a
    subtitle boundary moves by a fraction of a second. Float32 logits from the float16 network
    keep those decisions where the float32 model makes them (the network's own float16 error
    is shared by neighbouring logits and mostly cancels in their difference).
    """

    def projection(o: Any) -> bool:
        return o.op_type == "linear" and o.weight.shape[0] == n_vocab

    if projection(op):
        return True
    if op.op_type == "layer_norm":
        return any(projection(child) for child in op.outputs[0].child_ops)
    if op.op_type == "gather":
        return op.x.val is not None and op.x.shape[0] == n_vocab
    return False


def token_traffic(decoder: B.ModelIO, stateful: bool) -> dict[str, int]:
    """Bytes each decoder call moves in and out, and (stateful) the cross-attention state loaded per window."""
    per_window = sum(t.nbytes for t in decoder.states if t.name in ("cross_k", "cross_v")) if stateful else 0
    return {
        "per_token_in": sum(t.nbytes for t in decoder.inputs),
        "per_token_out": sum(t.nbytes for t in decoder.outputs),
        "per_window": per_window,
    }


def _metadata(mlmodel: Any, name: str, description: str) -> None:
    mlmodel.short_description = f"{description} ({name})"
    mlmodel.user_defined_metadata["whisper_coreml.model"] = name


def _versions(ct: Any) -> dict[str, str]:
    from .. import __version__

    return {
        "whisper_coreml": __version__,
        "coremltools": ct.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }

"""`whisper-coreml verify BUNDLE`: the converted model against the PyTorch module it came from.

On real audio: the converted encoder's outputs against the PyTorch encoder's (PSNR), the
converted decoder's logits against PyTorch's at every position of a complete greedy decode
(PSNR, and whether the argmax agrees everywhere, teacher-forced on the PyTorch decode so one
early difference cannot hide later ones), and both engines' transcripts of the whole file.
Core ML runs the bundle on macOS; elsewhere the numpy reference executor (`mil`) does.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .audio import MelSource
from .catalog import resolve_weights
from .coreml.bundle import Bundle, load_bundle
from .decoding import DecodingOptions, WindowDecoder, detect_language
from .engines import create_bundle_engine
from .errors import ModelError
from .weights import Weights

PSNR_THRESHOLD = 35.0  # dB
AGREEMENT_THRESHOLD = 1.0  # every decisive position
TIE_FACTOR = 6.0
"""A position is a tie when PyTorch's top-2 logit gap is within TIE_FACTOR x the logits' RMS error.

Flipping the argmax takes an error in the difference of two logits larger than their gap; that
difference's error has about sqrt(2) x the RMS error, so a gap of 6 RMS needs a > 4-sigma
error. Trained models' gaps are large and every position counts; randomly initialised ones
(tests of the larger sizes) have near-flat logits whose ties float16 may resolve either way.
"""
DEFAULT_AUDIO = Path(__file__).resolve().parent.parent / "samples" / "espeak_welcome.opus"


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, the peak being the reference's largest magnitude."""
    ref = np.asarray(reference, dtype=np.float64)
    err = np.asarray(test, dtype=np.float64) - ref
    mse = float(np.mean(err * err))
    peak = float(np.max(np.abs(ref)))
    if mse == 0.0:
        return float("inf")
    return 10.0 * np.log10(peak * peak / mse)


@dataclass(frozen=True)
class VerifyReport:
    bundle: Path
    audio: Path
    engine: str
    encoder_psnr: dict[str, float]  # per encoder output
    logits_psnr: float
    argmax_agreement: float  # fraction of the decode's positions whose logits' argmax matches PyTorch's
    decision_agreement: float  # the same after the decoding rules (timestamps, suppression); informational
    positions: int  # decoder positions compared
    reference_tokens: tuple[int, ...]  # PyTorch's greedy decode of the first window
    converted_tokens: tuple[int, ...]  # the converted model's own greedy decode of it
    reference_text: str | None  # PyTorch's transcript of the whole file (None: not compared)
    converted_text: str | None
    seconds: float
    decisive_agreement: float | None = None  # argmax agreement where PyTorch's top-2 gap exceeds tie_margin
    tie_margin: float = 0.0  # TIE_FACTOR x the decode's logits RMS error
    tie_gaps: tuple[float, ...] = ()  # PyTorch's top-2 gap at each position whose argmax differs
    thresholds: dict[str, float] = field(
        default_factory=lambda: {"psnr_db": PSNR_THRESHOLD, "argmax_agreement": AGREEMENT_THRESHOLD}
    )

    @property
    def min_encoder_psnr(self) -> float:
        return min(self.encoder_psnr.values())

    @property
    def passed(self) -> bool:
        return (
            self.min_encoder_psnr >= PSNR_THRESHOLD
            and self.logits_psnr >= PSNR_THRESHOLD
            and self.judged_agreement >= AGREEMENT_THRESHOLD
        )

    @property
    def judged_agreement(self) -> float:
        """The agreement that decides: over decisive positions when ties were measured, else over all."""
        return self.argmax_agreement if self.decisive_agreement is None else self.decisive_agreement

    def lines(self) -> list[str]:
        def mark(ok: bool) -> str:
            return "ok" if ok else "FAIL"

        enc = ", ".join(f"{k} {v:.1f}" for k, v in self.encoder_psnr.items())
        return [
            f"bundle: {self.bundle} on the {self.engine} engine; audio: {self.audio}",
            f"encoder PSNR: {enc} dB [{mark(self.min_encoder_psnr >= PSNR_THRESHOLD)}, >= {PSNR_THRESHOLD:g}]",
            f"decoder logits PSNR: {self.logits_psnr:.1f} dB over {self.positions} positions "
            f"[{mark(self.logits_psnr >= PSNR_THRESHOLD)}, >= {PSNR_THRESHOLD:g}]",
            f"greedy argmax agreement: {100 * self.argmax_agreement:.1f}%"
            + (
                f"; {100 * self.judged_agreement:.1f}% where PyTorch's top-2 gap exceeds {self.tie_margin:.3g} "
                f"({TIE_FACTOR:g} x the logits' RMS error)"
                if self.decisive_agreement is not None
                else ""
            )
            + f" [{mark(self.judged_agreement >= AGREEMENT_THRESHOLD)}, 100%]"
            + (
                f"; {len(self.tie_gaps)} differing position(s) with top-2 gaps "
                + ", ".join(f"{g:.3g}" for g in self.tie_gaps[:8])
                if self.tie_gaps
                else ""
            ),
            f"after the decoding rules: {100 * self.decision_agreement:.1f}% of choices agree, first window decoded "
            + ("identically" if self.reference_tokens == self.converted_tokens else "differently")
            + (
                ""
                if self.decision_agreement == 1.0
                else " (informational: near-ties between timestamps or text and timestamps, resolved differently)"
            ),
            *(
                [f"pytorch:   {self.reference_text}", f"converted: {self.converted_text}"]
                if self.reference_text is not None
                else ["transcripts: not compared"]
            ),
            f"{'PASSED' if self.passed else 'FAILED'} in {self.seconds:.1f} s",
        ]


def reference_weights(bundle: Bundle) -> Weights:
    """The weights the bundle was converted from, checked against the manifest's checksum."""
    from .coreml.convert import weights_checksum

    source = bundle.manifest.source
    candidates = [source.get("weights", ""), bundle.manifest.name]
    weights = None
    for candidate in candidates:
        if candidate and (Path(candidate).exists() or candidate == bundle.manifest.name):
            try:
                weights = resolve_weights(candidate)
                break
            except ModelError:
                continue
    if weights is None:
        raise ModelError(
            f"{bundle.path}: cannot find the weights it was converted from ({source.get('weights')}, "
            f"or '{bundle.manifest.name}')"
        )
    if source.get("sha256") and weights_checksum(weights) != source["sha256"]:
        raise ModelError(
            f"{weights.source}: not the weights {bundle.path} was converted from (checksum differs); "
            "convert again or verify against the original weights"
        )
    return weights


def verify(
    bundle_path: str | Path,
    audio_path: str | Path | None = None,
    engine: str = "auto",
    *,
    sample_len: int | None = None,
    transcripts: bool = True,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Compare a converted bundle with the PyTorch module on `audio_path` (default: the bundled sample).

    `sample_len` bounds the greedy decode compared (default: the decoder's usual half context),
    and `transcripts=False` skips the whole-file transcripts: both for randomly initialised
    weights, whose decodes never end and whose transcripts mean nothing, but whose every
    logit still has to match. PyTorch runs first and is released before the converted model is
    loaded, so the two never share memory (for large-v3, 6 GB each). `progress` hears each
    stage as it starts (verifying a large model takes minutes).
    """
    from .api import WhisperModel
    from .engines.pytorch import TorchEngine

    say = progress or (lambda stage: None)
    started = time.perf_counter()
    bundle = load_bundle(bundle_path)
    audio = Path(audio_path) if audio_path is not None else DEFAULT_AUDIO
    if audio_path is None and not audio.is_file():
        raise ModelError("verify needs speech to compare on: pass --audio FILE (the bundled sample is not installed)")
    if engine not in ("auto", "mil") and not (engine == "coreml" and sys.platform == "darwin"):
        create_bundle_engine(bundle, engine)  # an engine that cannot run here fails now, before PyTorch runs
    tokenizer = bundle.tokenizer()
    dims = bundle.dims
    name = bundle.manifest.name

    with MelSource.from_file(audio, dims.n_mels) as source:
        mel = source.window(0)

    # PyTorch: the encoder's features and cross-attention keys/values, its greedy decode of the
    # window, its logits teacher-forced along that decode, and its transcript of the whole file.
    say("running the PyTorch model on the original weights")
    reference = TorchEngine(reference_weights(bundle), device="cpu")
    features, theirs = _torch_window(reference, mel)  # theirs: per layer (k, v), each (1, n_head, 1500, head_dim)
    reference_cross = (
        np.stack([k[0].float().numpy() for k, _ in theirs]),
        np.stack([v[0].float().numpy() for _, v in theirs]),
    )
    language = detect_language(reference, theirs, tokenizer)[0] if tokenizer.multilingual else "en"
    options = DecodingOptions(language=language, temperature=0.0, sample_len=sample_len)
    window_tokenizer = tokenizer.with_language(options.language, options.task)
    window_decoder = WindowDecoder(reference, window_tokenizer, options)
    decoded = window_decoder.decode(theirs)
    sequence = np.array([[*window_decoder.initial_tokens, *decoded.tokens]], dtype=np.int64)
    sequence = sequence[:, : dims.n_text_ctx]
    positions = list(range(sequence.shape[1]))
    ref_logits = reference.decoder(theirs).step(sequence, positions)[0]
    reference_text = WhisperModel(reference, tokenizer, name).transcribe(audio).text.strip() if transcripts else None
    del reference, theirs, window_decoder

    # The converted model on the same window and along the same tokens.
    say(f"running {bundle.path} and comparing")
    converted = create_bundle_engine(bundle, engine)
    ours = converted.encode(mel)
    encoder_psnr = {
        "audio_features": psnr(features, ours.audio_features),
        "cross_k": psnr(reference_cross[0], ours.cross_k),
        "cross_v": psnr(reference_cross[1], ours.cross_v),
    }
    del reference_cross
    our_logits = converted.decoder(ours).step(sequence, positions)[0]
    converted_decoder = WindowDecoder(converted, window_tokenizer, options)
    # The decode's positions: from the last prompt token (which predicts the first sampled one) to the end.
    decode_positions = range(converted_decoder.sample_begin - 1, sequence.shape[1])
    agrees = [bool(ref_logits[i].argmax() == our_logits[i].argmax()) for i in decode_positions]
    margin = TIE_FACTOR * _rms(ref_logits[decode_positions.start :], our_logits[decode_positions.start :])
    gaps = [_top2_gap(ref_logits[i]) for i in decode_positions]
    decisive = [a for a, g in zip(agrees, gaps, strict=True) if g > margin]
    decisions = []
    for i in decode_positions:  # the same comparison after the decoder's logit rules
        filtered = [ref_logits[i][None].copy(), our_logits[i][None].copy()]
        for rule in converted_decoder.filters:
            for logits in filtered:
                rule.apply(logits, sequence[:, : i + 1])
        decisions.append(filtered[0].argmax() == filtered[1].argmax())
    converted_tokens = converted_decoder.decode(ours).tokens
    converted_text = WhisperModel(converted, tokenizer, name).transcribe(audio).text.strip() if transcripts else None
    return VerifyReport(
        bundle=bundle.path,
        audio=audio,
        engine=converted.name,
        encoder_psnr=encoder_psnr,
        logits_psnr=psnr(ref_logits, our_logits),
        argmax_agreement=float(np.mean(agrees)),
        decision_agreement=float(np.mean(decisions)),
        positions=len(positions),
        reference_tokens=tuple(decoded.tokens),
        converted_tokens=tuple(converted_tokens),
        reference_text=reference_text,
        converted_text=converted_text,
        seconds=time.perf_counter() - started,
        decisive_agreement=float(np.mean(decisive)) if decisive else 1.0,
        tie_margin=margin,
        tie_gaps=tuple(g for a, g in zip(agrees, gaps, strict=True) if not a),
    )


def _rms(reference: np.ndarray, test: np.ndarray) -> float:
    err = np.asarray(test, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    return float(np.sqrt(np.mean(err * err)))


def _top2_gap(logits: np.ndarray) -> float:
    """How far the best logit leads the second: how much error it takes to flip the argmax."""
    top2 = np.partition(np.asarray(logits, dtype=np.float64), -2)[-2:]
    return float(top2[1] - top2[0])


def _torch_window(reference: Any, mel: np.ndarray) -> tuple[np.ndarray, Any]:
    """PyTorch's encoder output (as numpy) and its cross-attention keys/values (the torch engine's features)."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(mel)).to(reference.device, reference.encoder_dtype)[None]
        features = reference.model.encoder(x)
        return features.float().cpu().numpy(), reference.model.decoder.cross_kv(features)

"""`verify`: a converted tiny.en against the PyTorch module, on real speech, through the reference executor.

The bundle is converted once per session into the session's temp root (shared with
test_coreml_convert.py when both run).
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import whisper_coreml as wc
from whisper_coreml.api import WhisperModel
from whisper_coreml.coreml import bundle as B
from whisper_coreml.coreml.convert import convert
from whisper_coreml.engines.mil import MilEngine
from whisper_coreml.errors import ModelError
from whisper_coreml.verify import PSNR_THRESHOLD, VerifyReport, psnr, verify
from whisper_coreml.weights import Weights

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pytest.importorskip("coremltools")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Weights) -> Path:
    path = tmp_path_factory.getbasetemp() / "tiny.en-coreml"
    if not B.is_bundle(path):
        report = convert(tiny_weights, path)
        (path / "report.json").write_text(json.dumps({**report.__dict__, "bundle": str(report.bundle)}))
    return path


@pytest.mark.parametrize("clip", ["en/arctic_a0010.wav", "en/librivox_sense_sensibility_0870.wav"])
def test_verify_passes_on_real_speech(bundle: Path, speech: Callable[[str], Path], clip: str) -> None:
    report = verify(bundle, speech(clip), engine="mil")
    assert report.engine == "mil"
    assert report.min_encoder_psnr >= PSNR_THRESHOLD, report.encoder_psnr
    assert report.logits_psnr >= PSNR_THRESHOLD
    assert report.argmax_agreement == 1.0
    assert report.positions > 10
    assert report.reference_text == report.converted_text
    assert report.reference_text  # real speech, real words
    assert report.passed
    text = "\n".join(report.lines())
    assert "encoder PSNR" in text and "PASSED" in text and report.converted_text in text


def test_mil_engine_transcribes_like_torch(
    bundle: Path, speech: Callable[[str], Path], tiny_model: wc.WhisperModel
) -> None:
    """A complete transcription (seek loop, timestamps, fallback, word timing) through the
    converted fp16 programs gives the fp32 PyTorch model's text, segments and words."""
    engine = MilEngine(bundle)
    model = WhisperModel(engine, engine.bundle.tokenizer(), "tiny.en")
    clip = speech("en/ljspeech_LJ001-0001.wav")  # 9.7 s
    ours = model.transcribe(clip, word_timestamps=True)
    theirs = tiny_model.transcribe(clip, word_timestamps=True)
    assert ours.text == theirs.text
    assert [(s.start, s.end) for s in ours.segments] == [(s.start, s.end) for s in theirs.segments]
    mine = [w for s in ours.segments for w in s.words or ()]
    other = [w for s in theirs.segments for w in s.words or ()]
    assert [w.word for w in mine] == [w.word for w in other] and len(mine) > 10
    differences = [abs(a.start - b.start) for a, b in zip(mine, other, strict=True)]
    differences += [abs(a.end - b.end) for a, b in zip(mine, other, strict=True)]
    assert float(np.median(differences)) <= 0.02 and max(differences) <= 0.1
    assert all(abs(a.probability - b.probability) < 0.02 for a, b in zip(mine, other, strict=True))


def test_psnr() -> None:
    x = np.linspace(-1, 1, 1000)
    assert psnr(x, x) == float("inf")
    assert abs(psnr(x, x + 0.01) - 40.0) < 1e-9  # peak 1, rms error 0.01


def test_report_fails_below_thresholds(tmp_path: Path) -> None:
    good = VerifyReport(
        bundle=tmp_path,
        audio=tmp_path / "a.wav",
        engine="mil",
        encoder_psnr={"audio_features": 60.0, "cross_k": 58.0, "cross_v": 59.0},
        logits_psnr=55.0,
        argmax_agreement=1.0,
        decision_agreement=1.0,
        positions=20,
        reference_tokens=(1, 2),
        converted_tokens=(1, 2),
        reference_text="hello",
        converted_text="hello",
        seconds=1.0,
    )
    assert good.passed
    from dataclasses import replace

    assert not replace(good, encoder_psnr={**good.encoder_psnr, "cross_v": 30.0}).passed
    assert not replace(good, logits_psnr=34.9).passed
    assert not replace(good, argmax_agreement=19 / 20).passed
    assert replace(good, decision_agreement=0.9, converted_tokens=(1, 3)).passed  # informational only
    assert "FAILED" in replace(good, logits_psnr=20.0).lines()[-1]


def test_verify_refuses_other_weights(bundle: Path, tmp_path: Path, speech: Callable[[str], Path]) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["source"]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="not the weights"):
        verify(copy, speech("en/arctic_a0010.wav"), engine="mil")


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML exists there")
def test_verify_with_coreml_needs_macos(bundle: Path, speech: Callable[[str], Path]) -> None:
    with pytest.raises(ModelError, match="needs macOS"):
        verify(bundle, speech("en/arctic_a0010.wav"), engine="coreml")


@pytest.mark.macos
def test_verify_on_core_ml(bundle: Path, speech: Callable[[str], Path]) -> None:
    from whisper_coreml.coreml import macos

    if not macos.runs("macOS15"):
        pytest.skip("the stateful decoder needs macOS 15")
    report = verify(bundle, speech("en/arctic_a0010.wav"), engine="auto")
    assert report.engine == "coreml"
    assert report.passed, "\n".join(report.lines())

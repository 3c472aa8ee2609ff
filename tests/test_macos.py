"""Core ML itself, on a Mac: first-use conversion, compiling, prediction, parity with `mil`.

Every test here is marked `macos` (conftest skips them elsewhere); .github/workflows/macos.yml
runs them on Apple silicon with `pytest -m macos`. They were written on Linux, where Core ML
cannot compile or predict, and have not run yet. The clip is real speech from ../shared when
it is there, else the repository's own sample (a CI runner has only the repository).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import whisper_coreml as wc
from whisper_coreml.audio import MelSource
from whisper_coreml.coreml import macos
from whisper_coreml.coreml.bundle import load_bundle
from whisper_coreml.engines.mil import MilEngine

pytestmark = pytest.mark.macos

ROOT = Path(__file__).resolve().parents[1]
SHARED_CLIP = ROOT.parent / "shared" / "speech" / "en" / "arctic_a0010.wav"
SAMPLE = ROOT / "samples" / "espeak_welcome.opus"


@pytest.fixture(scope="module")
def clip() -> tuple[Path, str]:
    """(a speech file, a word that must be in its transcript)."""
    return (SHARED_CLIP, "playing") if SHARED_CLIP.is_file() else (SAMPLE, "welcome")


@pytest.fixture(scope="module")
def first_use(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str], wc.WhisperModel]]:
    """tiny.en loaded with `auto` into an empty models folder: (models folder, progress lines, model)."""
    folder = tmp_path_factory.mktemp("first-use")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WHISPER_COREML_MODELS", str(folder / "models"))
        patch.setenv("XDG_CACHE_HOME", str(folder / "cache"))
        lines: list[str] = []
        model = wc.load_model("tiny.en", progress=lines.append)
        yield folder / "models", lines, model


@pytest.fixture(scope="module")
def bundle(first_use: tuple[Path, list[str], wc.WhisperModel]) -> Path:
    return first_use[0] / "tiny.en-coreml"


def test_auto_converts_compiles_and_runs_core_ml_once(
    first_use: tuple[Path, list[str], wc.WhisperModel], clip: tuple[Path, str]
) -> None:
    models, lines, model = first_use
    assert len(lines) == 1 and "converting tiny.en to Core ML" in lines[0]
    assert model.engine.name == "coreml"
    bundle = load_bundle(models / "tiny.en-coreml")
    assert bundle.manifest.minimum_deployment_target == macos.deployment_target()  # stateful from macOS 15
    assert (bundle.path / "encoder.mlmodelc").is_dir() and (bundle.path / "decoder.mlmodelc").is_dir()
    path, word = clip
    assert word in model.transcribe(path).text.lower()
    again = wc.load_model("tiny.en", progress=lines.append)  # the models folder is still the test's
    assert again.engine.name == "coreml" and len(lines) == 1
    assert wc.load_model("tiny.en", engine="torch", progress=lines.append).engine.name == "torch"
    assert len(lines) == 1


def test_compiles_a_bundle_on_first_load(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundle converted elsewhere has no .mlmodelc: the engine compiles it once into the cache."""
    from whisper_coreml.engines.coreml import CoreMLEngine

    copy = tmp_path / "tiny.en-coreml"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("*.mlmodelc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    engine = CoreMLEngine(copy, compute_units="cpu_only")
    compiled = {p.name for p in (tmp_path / "cache" / "whisper-coreml" / "compiled").glob("*/*.mlmodelc")}
    assert compiled == {p.name.replace(".mlpackage", ".mlmodelc") for p in copy.glob("*.mlpackage")}
    assert engine.encode(np.zeros((80, 3000), np.float32)).cross_k.shape == (4, 6, 1500, 64)


def test_core_ml_predicts_what_the_reference_executor_computes(bundle: Path, clip: tuple[Path, str]) -> None:
    from whisper_coreml.engines.coreml import CoreMLEngine
    from whisper_coreml.verify import psnr

    with MelSource.from_file(clip[0], 80) as source:
        mel = source.window(0)
    coreml, reference = CoreMLEngine(bundle, compute_units="cpu_only"), MilEngine(bundle)
    ours, theirs = coreml.encode(mel), reference.encode(mel)
    assert psnr(theirs.cross_k, ours.cross_k) > 35 and psnr(theirs.cross_v, ours.cross_v) > 35
    tokens = np.array([[50257, 50363, 314, 1101]])  # start of transcript, <|0.00|>, " I", "'m"
    a = coreml.decoder(ours).step(tokens, [0, 1, 2, 3])
    b = reference.decoder(theirs).step(tokens, [0, 1, 2, 3])
    assert psnr(b, a) > 35 and (a.argmax(-1) == b.argmax(-1)).all()


def test_core_ml_transcribes_like_the_reference_executor(bundle: Path, clip: tuple[Path, str]) -> None:
    """A whole transcription (seek loop, beam search, timestamps) on Core ML and on `mil`."""
    from whisper_coreml.engines.coreml import CoreMLEngine

    loaded = load_bundle(bundle)
    results = []
    for engine in (CoreMLEngine(loaded, compute_units="cpu_only"), MilEngine(loaded)):
        model = wc.WhisperModel(engine, loaded.tokenizer(), loaded.manifest.name)
        results.append(model.transcribe(clip[0], beam_size=5, word_timestamps=True))
    coreml, mil = results
    assert coreml.text == mil.text and clip[1] in coreml.text.lower()
    assert len(coreml.segments) == len(mil.segments)
    for a, b in zip(coreml.segments, mil.segments, strict=True):
        assert a.start == pytest.approx(b.start, abs=0.1) and a.end == pytest.approx(b.end, abs=0.1)

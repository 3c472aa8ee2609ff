"""Beam search: openai-whisper's tokens on real speech, on the torch engine and the converted decoder (`mil`).

openai-whisper's `DecodingTask` (beam search, patience, length penalty) is the oracle: on the
same weights and the same log-mel window ours must choose exactly its tokens. The converted
bundle (tiny.en, float16, with its beam function) must then choose exactly the torch engine's
beams when run by the reference executor.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import whisper_coreml as wc
from whisper_coreml.decoding import DecodingOptions, DecodingOptionsError, decode_window, rank, top_k
from whisper_coreml.weights import Weights

CLIPS = ["en/arctic_a0010.wav", "en/librispeech_1995-1837-0001.wav"]
LONG = "long/ljspeech_LJ001_0001-0020_concat.wav"  # a full 30-s window of continuous speech


def openai_decode(model: Any, mel: np.ndarray, **options: Any) -> Any:
    decoding = pytest.importorskip("whisper.decoding")
    with torch.no_grad():
        return decoding.decode(model, torch.from_numpy(mel), decoding.DecodingOptions(fp16=False, **options))


def ours(model: wc.WhisperModel, mel: np.ndarray, **options: Any) -> Any:
    engine = model.engine
    return decode_window(engine, engine.encode(mel), model.tokenizer, DecodingOptions(**options))


# --- the search itself, against openai-whisper ------------------------------------------------------------


@pytest.mark.parametrize("name", [*CLIPS, LONG])
def test_beam_search_equals_openai(
    name: str, window: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel, openai_tiny: Any
) -> None:
    mel = window(name)
    got = ours(tiny_model, mel, beam_size=5)
    theirs = openai_decode(openai_tiny, mel, language="en", beam_size=5)
    assert len(got.tokens) > 5
    assert list(got.tokens) == list(theirs.tokens)
    assert got.text == theirs.text
    assert got.avg_logprob == pytest.approx(theirs.avg_logprob, abs=1e-4)
    assert got.no_speech_prob == pytest.approx(theirs.no_speech_prob, abs=1e-5)
    assert got.temperature == 0.0


@pytest.mark.parametrize(
    ("name", "options"),
    [
        (CLIPS[1], {"beam_size": 5, "patience": 2.0}),
        (CLIPS[1], {"beam_size": 3, "length_penalty": 0.6}),
        (CLIPS[0], {"beam_size": 4, "without_timestamps": True}),
    ],
)
def test_beam_variants_equal_openai(
    name: str,
    options: dict[str, Any],
    window: Callable[[str], np.ndarray],
    tiny_model: wc.WhisperModel,
    openai_tiny: Any,
) -> None:
    mel = window(name)
    got = ours(tiny_model, mel, **options)
    theirs = openai_decode(openai_tiny, mel, language="en", **options)
    assert list(got.tokens) == list(theirs.tokens)
    assert got.avg_logprob == pytest.approx(theirs.avg_logprob, abs=1e-4)


def test_beam_size_is_ignored_when_sampling(window: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel) -> None:
    """Above T = 0 it is best-of-N sampling, as openai-whisper's transcribe does."""
    mel = window(CLIPS[0])
    plain = ours(tiny_model, mel, temperature=0.8, best_of=3, seed=3, beam_size=5)
    assert plain == ours(tiny_model, mel, temperature=0.8, best_of=3, seed=3)
    assert plain.temperature == 0.8


def test_transcribe_with_beam_equals_openai(
    audio: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel, openai_tiny: Any
) -> None:
    whisper = pytest.importorskip("whisper")
    samples = audio(CLIPS[1])
    got = tiny_model.transcribe(samples, beam_size=5, patience=1.5)
    with torch.no_grad():
        theirs = whisper.transcribe(openai_tiny, samples, beam_size=5, patience=1.5, fp16=False, language="en")
    assert got.text.strip() == theirs["text"].strip()
    expected = [s["avg_logprob"] for s in theirs["segments"]]
    assert [s.avg_logprob for s in got.segments] == pytest.approx(expected, abs=1e-4)


# --- the pieces ---------------------------------------------------------------------------------------------


def test_top_k_orders_by_value_then_index() -> None:
    values = np.array([1.0, 3.0, 3.0, -np.inf, -np.inf, 3.0, 2.0])
    assert top_k(values, 5).tolist() == [1, 2, 5, 6, 0]
    assert top_k(values, 7).tolist() == [1, 2, 5, 6, 0, 3, 4]  # ties, even at -inf, go to the lower index
    assert top_k(values, 10).tolist() == [1, 2, 5, 6, 0, 3, 4]


def test_rank_normalises_by_length_or_the_nmt_penalty() -> None:
    candidates = [(1, 2), (1, 2, 3, 4, 5, 6)]
    sums = [-1.0, -2.4]
    assert rank(candidates, sums, None) == 1  # -0.5 against -0.4 per token
    assert rank(candidates, sums, 0.0) == 0  # no normalisation: the larger sum
    # ((5 + n) / 6) ** 1: -1 / (7/6) = -0.857 against -2.4 / (11/6) = -1.31
    assert rank(candidates, sums, 1.0) == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"beam_size": 0}, "beam_size must be at least 1"),
        ({"patience": 2.0}, "patience needs beam_size"),
        ({"beam_size": 2, "patience": 0.1}, "patience 0.1 leaves no finished sequence"),
        ({"length_penalty": 1.5}, "length_penalty must be between 0 and 1"),
    ],
)
def test_bad_options_are_one_line_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(DecodingOptionsError, match=message):
        DecodingOptions(**options)


def test_torch_reorder_continues_the_chosen_rows(
    window: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel
) -> None:
    engine = tiny_model.engine
    features = engine.encode(window(CLIPS[0]))
    prompt = np.array([[50257, 50363, 314], [50257, 50363, 383], [50257, 50363, 1081]])
    session = engine.decoder(features, 3)
    session.step(prompt)
    session.reorder([2, 2, 0])  # a row repeats, one vanishes
    got = session.step(np.array([[11], [13], [262]]))
    fresh = engine.decoder(features, 3).step(np.concatenate([prompt[[2, 2, 0]], [[11], [13], [262]]], axis=1))
    np.testing.assert_allclose(got, fresh, atol=1e-4)


# --- the converted decoder on the reference executor ------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Weights) -> Path:
    """The session's default tiny.en conversion (shared with test_coreml_convert.py and test_verify.py)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("coremltools")
    from whisper_coreml.coreml import bundle as B
    from whisper_coreml.coreml.convert import convert

    path = tmp_path_factory.getbasetemp() / "tiny.en-coreml"
    if not B.is_bundle(path):
        report = convert(tiny_weights, path)
        (path / "report.json").write_text(json.dumps({**report.__dict__, "bundle": str(report.bundle)}))
    return path


@pytest.fixture(scope="module")
def mil_model(bundle: Path) -> wc.WhisperModel:
    from whisper_coreml.api import WhisperModel
    from whisper_coreml.engines.mil import MilEngine

    engine = MilEngine(bundle)
    return WhisperModel(engine, engine.bundle.tokenizer(), "tiny.en")


@pytest.mark.parametrize("beam_size", [5, 3])  # 5: the bundle's beam function; 3: one state per beam, copied
def test_mil_beams_equal_torch(
    beam_size: int, window: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel, mil_model: wc.WhisperModel
) -> None:
    from whisper_coreml.engines.mil import StatefulBeamSession, StatefulSession

    mel = window(CLIPS[1])
    session = mil_model.engine.decoder(mil_model.engine.encode(mel), beam_size)
    assert isinstance(session, StatefulBeamSession if beam_size == 5 else StatefulSession)
    got = ours(mil_model, mel, beam_size=beam_size)
    expected = ours(tiny_model, mel, beam_size=beam_size)
    assert len(got.tokens) > 5
    assert got.tokens == expected.tokens
    assert got.avg_logprob == pytest.approx(expected.avg_logprob, abs=0.01)

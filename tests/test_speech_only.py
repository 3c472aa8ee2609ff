"""Decoding only the speech (Silero VAD between the audio and the seek loop) and openai-whisper's
hallucination_silence_threshold, on real utterances laid among silence, noise and music."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_cli import run, write_wav
from test_transcribe import assert_same_as_openai, openai_transcribe, words

import whisper_coreml as wc
from whisper_coreml.audio import MelSource
from whisper_coreml.vad import VadOptions

SAMPLE_RATE = 16000
A, B = "en/arctic_a0010.wav", "en/arctic_a0024.wav"
A_TEXT = "playing a single hand in what looks like a losing game"
B_TEXT = "my reports from the north which chiefly induced people to buy"


def noise(seconds: float, level: float, seed: int = 0) -> np.ndarray:
    return (level * np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


def room_tone(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Air handling and mains hum at -50 dBFS: noise falling as 1/f above 100 Hz, faster above 4 kHz."""
    n = int(seconds * SAMPLE_RATE)
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / (np.sqrt(1 + (f / 100) ** 2) * (1 + (f / 4000) ** 4)), n)
    t = np.arange(n) / SAMPLE_RATE
    x = x / x.std() + 0.3 * np.sin(2 * np.pi * 50 * t) + 0.1 * np.sin(2 * np.pi * 150 * t)
    return (x / np.sqrt(np.mean(x**2)) * 10 ** (-50 / 20)).astype(np.float32)


def music(seconds: float, seed: int = 0) -> np.ndarray:
    """Chords of decaying harmonics every half second plus noise-burst drums, at speech level."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    out = np.zeros(n, np.float32)
    beat = SAMPLE_RATE // 2
    t = np.arange(beat) / SAMPLE_RATE
    for k, start in enumerate(range(0, n - beat, beat)):
        root = 110 * 2 ** (rng.integers(0, 12) / 12)
        for ratio in (1, 5 / 4, 3 / 2):
            for h in range(1, 5):
                out[start : start + beat] += np.sin(2 * np.pi * root * ratio * h * t) * np.exp(-3 * t) / h
        if k % 2 == 0:
            burst = min(2000, n - start)
            out[start : start + burst] += rng.standard_normal(burst) * np.exp(-np.arange(burst) / 300)
    return (0.1 * out / np.sqrt(np.mean(out**2))).astype(np.float32)


@pytest.fixture(scope="module")
def gapped(audio: Callable[[str], np.ndarray]) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Room tone 20 s, A, room tone 20 s, B, room tone 10 s: Whisper invents A again at the end."""
    a, b = audio(A), audio(B)
    rng = np.random.default_rng(0)
    samples = np.concatenate([room_tone(20, rng), a, room_tone(20, rng), b, room_tone(10, rng)])
    a_start = 20.0
    b_start = a_start + len(a) / SAMPLE_RATE + 20.0
    return samples, [(a_start, a_start + len(a) / SAMPLE_RATE), (b_start, b_start + len(b) / SAMPLE_RATE)]


def test_speech_only_transcription_keeps_the_recordings_clock(
    gapped: tuple[np.ndarray, list[tuple[float, float]]], tiny_model: wc.WhisperModel
) -> None:
    samples, spans = gapped
    plain = tiny_model.transcribe(samples, word_timestamps=True)
    assert words(plain.text).count("playing") == 2  # the invented repeat over the trailing noise
    progress: list[tuple[float, float]] = []
    result = tiny_model.transcribe(
        samples, vad=True, word_timestamps=True, progress=lambda d, t: progress.append((d, t))
    )
    text = " ".join(words(result.text))
    assert A_TEXT in text and B_TEXT in text and text.count("playing") == 1, result.text
    assert result.duration == pytest.approx(len(samples) / SAMPLE_RATE)
    assert progress[-1] == (pytest.approx(result.duration, abs=0.01), pytest.approx(result.duration, abs=0.01))
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    for segment in result.segments:
        for word in segment.words or ():  # every word inside its utterance, within the VAD's padding
            assert any(start - 0.41 <= word.start <= word.end <= end + 0.41 for start, end in spans), word
    north = next(w for s in result.segments for w in s.words or () if "north" in w.word.lower())
    assert spans[1][0] < north.start < spans[1][1]


def test_vad_option_needs_a_speech_source(tiny_model: wc.WhisperModel, speech: Callable[[str], Path]) -> None:
    options = tiny_model.options(vad=True)
    assert options.vad == VadOptions()
    with MelSource.from_file(speech(A)) as plain, pytest.raises(ValueError, match="vad"):
        tiny_model.transcribe(plain, options=options)
    with pytest.raises(ValueError, match="clip_timestamps and vad"):
        tiny_model.options(vad=True, clip_timestamps=(0.0, 5.0))


@pytest.mark.parametrize("kind", ["digital silence", "white noise", "music"])
def test_no_speech_gives_no_text_with_defaults(kind: str, tmp_path: Path) -> None:
    """60 s without a voice: the CLI's defaults write subtitles with no cue and text with no word."""
    makers = {"digital silence": lambda: np.zeros(60 * SAMPLE_RATE, np.float32), "white noise": lambda: noise(60, 0.1)}
    samples = makers.get(kind, lambda: music(60))()
    clip = write_wav(tmp_path / "clip.wav", samples)
    result = run(clip, "--format", "srt,txt", "-o", tmp_path, "-q")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "clip.srt").read_text().strip() == ""
    assert (tmp_path / "clip.txt").read_text().strip() == ""


def test_hallucination_silence_threshold_equals_openai(
    gapped: tuple[np.ndarray, list[tuple[float, float]]], tiny_model: wc.WhisperModel, openai_tiny: Any
) -> None:
    samples, _ = gapped
    key = ("gapped", "tiny.en", "hst 2")
    theirs = openai_transcribe(openai_tiny, samples, key, word_timestamps=True, hallucination_silence_threshold=2.0)
    ours = tiny_model.transcribe(samples, word_timestamps=True, hallucination_silence_threshold=2.0)
    assert_same_as_openai(ours, theirs)
    for mine, other in zip(ours.segments, theirs["segments"], strict=True):
        assert [t for w in mine.words for t in (w.start, w.end)] == pytest.approx(
            [t for w in other["words"] for t in (w["start"], w["end"])], abs=0.02
        )
    plain = tiny_model.transcribe(samples, word_timestamps=True)
    assert ours.text != plain.text  # the rule did something here: the invented sentence is gone
    assert words(ours.text).count("playing") == 1


def test_an_interrupted_speech_only_transcription_resumes_exactly(
    tmp_path: Path, audio: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal keeps the seek state on the speech timeline and the segments on the recording's
    clock: a run stopped after two windows and resumed gives the uninterrupted result.

    Bit for bit only on a steady thread count: PyTorch's sums round differently on one thread and
    on two (word probabilities move in the 7th digit), and the governor follows the machine's load,
    which under a parallel test run changes from one run to the next."""
    from whisper_coreml.journal import FileJournal

    monkeypatch.setattr(tiny_model.engine.threads, "limit", 1)  # the governor leaves the count alone

    rng = np.random.default_rng(3)
    speech = audio("long/ljspeech_LJ001_0001-0020_concat.wav")
    samples = np.concatenate(
        [room_tone(15, rng), speech[: 80 * SAMPLE_RATE], room_tone(25, rng), speech[80 * SAMPLE_RATE :]]
    )
    full = FileJournal(tmp_path / "full", "key")
    result = tiny_model.transcribe(samples, vad=True, word_timestamps=True, journal=full)
    lines = (tmp_path / "full").read_bytes().splitlines(keepends=True)
    assert len(lines) >= 5  # a header and several windows
    (tmp_path / "cut").write_bytes(b"".join(lines[:3]))  # the header and two windows
    cut = FileJournal(tmp_path / "cut", "key")
    assert tiny_model.transcribe(samples, vad=True, word_timestamps=True, journal=cut) == result
    assert cut.restored_windows == 2 and cut.windows == len(lines) - 3
    assert result.segments[0].start > 14.5 and result.duration == pytest.approx(len(samples) / SAMPLE_RATE)


@pytest.mark.parametrize("name", ["en/jfk_inaugural_excerpt.flac", "long/librivox_shakespeare_sonnet001.mp3"])
def test_parity_mode_equals_openai_greedy(
    name: str, tmp_path: Path, speech: Callable[[str], Path], audio: Callable[[str], np.ndarray], openai_tiny: Any
) -> None:
    """`--beam-size 1 --no-vad` is openai-whisper's greedy transcribe(), whatever
    the defaults are."""
    import json

    parity = ("--beam-size", "1", "--no-vad")  # the parity flags: under them `auto` is float32
    result = run(speech(name), *parity, "--format", "json", "-o", tmp_path, "-q")
    assert result.returncode == 0, result.stderr
    ours = json.loads(next(tmp_path.glob("*.json")).read_text())
    theirs = openai_transcribe(openai_tiny, audio(name), (name, "tiny.en"))
    assert ours["text"] == theirs["text"]
    assert [s["text"] for s in ours["segments"]] == [s["text"] for s in theirs["segments"]]

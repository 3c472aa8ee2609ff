"""Long-form transcription against openai-whisper's transcribe() on real speech, plus the seek rules."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import whisper_coreml as wc
from whisper_coreml.decoding import DecodingResult
from whisper_coreml.tokenizer import Tokenizer
from whisper_coreml.transcribe import split_segments

EN_CLIPS = [
    "en/arctic_a0010.wav",
    "en/arctic_a0024.wav",
    "en/arctic_axb_a0006.wav",
    "en/jfk_inaugural_excerpt.flac",
    "en/librispeech_1995-1837-0001.wav",
    "en/librivox_sense_sensibility_0870.wav",
    "en/ljspeech_LJ001-0007.wav",
    "en/ljspeech_LJ001-0019.wav",
    "en/timit_LDC93S1.wav",
]
LONG = "long/ljspeech_LJ001_0001-0020_concat.wav"
SAMPLE_RATE = 16000

_openai_results: dict[tuple, dict] = {}


def openai_transcribe(model: Any, audio: np.ndarray, key: tuple, **options: Any) -> dict:
    """openai-whisper's transcribe(), in float32, cached per (clip, model, options)."""
    whisper = pytest.importorskip("whisper")
    if key not in _openai_results:
        _openai_results[key] = whisper.transcribe(model, audio, fp16=False, **options)
    return _openai_results[key]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("mister", "mr"))


def assert_same_as_openai(ours: wc.TranscriptionResult, theirs: dict) -> None:
    assert ours.text == theirs["text"]
    assert len(ours.segments) == len(theirs["segments"])
    for mine, other in zip(ours.segments, theirs["segments"], strict=True):
        assert mine.text == other["text"]
        assert mine.start == pytest.approx(other["start"], abs=0.02)
        assert mine.end == pytest.approx(other["end"], abs=0.02)
        assert list(mine.tokens) == list(other["tokens"])
        assert mine.seek == other["seek"]
        assert mine.temperature == other["temperature"]
        assert mine.no_speech_prob == pytest.approx(other["no_speech_prob"], abs=1e-4)
        assert mine.avg_logprob == pytest.approx(other["avg_logprob"], abs=1e-3)
    assert ours.language == theirs["language"]


def reference(path: Path) -> str:
    return path.with_suffix(".txt").read_text()


@pytest.mark.parametrize("name", EN_CLIPS)
def test_clip_equals_openai(
    name: str, speech: Callable[[str], Path], audio: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel,
    openai_tiny: Any,
) -> None:  # fmt: skip
    samples = audio(name)
    ours = tiny_model.transcribe(samples)
    assert_same_as_openai(ours, openai_transcribe(openai_tiny, samples, (name, "tiny.en")))
    assert ours.segments and ours.language == "en" and ours.task == "transcribe"
    assert ours.duration == pytest.approx(len(samples) / SAMPLE_RATE)
    # (Whisper's last timestamp may overshoot the audio a little, exactly as openai's does)
    assert all(0 <= s.start < s.end <= ours.duration + 1.0 for s in ours.segments)
    # not two empty transcripts agreeing: most of the reference's words are there
    expected = words(reference(speech(name)))
    found = set(words(ours.text))
    assert sum(w in found for w in expected) >= 0.6 * len(expected), (ours.text, expected)


def test_long_file_equals_openai(
    speech: Callable[[str], Path], audio: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel, openai_tiny: Any
) -> None:
    samples = audio(LONG)
    assert len(samples) / SAMPLE_RATE > 120  # several windows, seeking to the last timestamp each time
    progress: list[tuple[float, float]] = []
    ours = tiny_model.transcribe(samples, progress=lambda done, total: progress.append((done, total)))
    assert_same_as_openai(ours, openai_transcribe(openai_tiny, samples, (LONG, "tiny.en")))
    assert len(ours.segments) >= 15
    assert len({s.seek for s in ours.segments}) >= 5  # windows that do not start at multiples of 30 s
    assert any(s.seek % 3000 for s in ours.segments)
    starts = [s.start for s in ours.segments]
    assert starts == sorted(starts) and ours.segments[-1].end > 130
    assert [s.id for s in ours.segments] == list(range(len(ours.segments)))
    expected = words(reference(speech(LONG)))
    found = set(words(ours.text))
    assert sum(w in found for w in expected) >= 0.8 * len(expected)
    # progress: one call per window, never backwards, ending at the whole duration
    done = [d for d, _ in progress]
    assert len(progress) >= 5 and done == sorted(done)
    assert all(total == pytest.approx(ours.duration, abs=0.01) for _, total in progress)
    assert done[-1] == pytest.approx(ours.duration, abs=0.01)


def test_file_and_array_give_the_same_result(
    speech: Callable[[str], Path], audio: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel
) -> None:
    name = "en/jfk_inaugural_excerpt.flac"  # 44.1 kHz stereo: decoded and resampled on the way
    from_file = tiny_model.transcribe(speech(name))
    from_array = tiny_model.transcribe(audio(name))
    assert from_file.source == str(speech(name)) and from_array.source == ""
    assert from_file.segments == from_array.segments
    assert "ask not what your country can do for you" in from_file.text.lower()


# --- silence and noise ------------------------------------------------------------------------------


def test_digital_silence_gives_no_text(tiny_model: wc.WhisperModel) -> None:
    result = tiny_model.transcribe(np.zeros(20 * SAMPLE_RATE, np.float32))
    assert result.text == ""
    assert not any(s.text.strip() for s in result.segments)
    assert result.duration == pytest.approx(20.0)


def test_white_noise_gives_no_text(tiny_model: wc.WhisperModel, openai_tiny: Any) -> None:
    noise = (0.1 * np.random.default_rng(0).standard_normal(20 * SAMPLE_RATE)).astype(np.float32)
    result = tiny_model.transcribe(noise)
    assert result.text == ""
    assert result.segments == ()  # the whole window was gated as no speech, not decoded to blanks
    assert openai_transcribe(openai_tiny, noise, ("noise", "tiny.en"))["text"] == ""


def test_speech_after_silence(audio: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel) -> None:
    """A silent first window is skipped and the speech after it keeps its true time."""
    speech = audio("en/arctic_a0010.wav")
    samples = np.concatenate([np.zeros(35 * SAMPLE_RATE, np.float32), speech])
    result = tiny_model.transcribe(samples)
    assert "playing a single hand in what looks like a losing game" in result.text
    assert result.segments[0].start >= 30.0
    assert result.segments[-1].end <= 35.0 + len(speech) / SAMPLE_RATE + 0.1


# --- options, against openai ------------------------------------------------------------------------


def test_initial_prompt_equals_openai(
    audio: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel, openai_tiny: Any
) -> None:
    name = "en/librivox_sense_sensibility_0870.wav"
    samples = audio(name)
    prompt = "MISTER JOHN DASHWOOD HAD THEN LEISURE"
    plain = tiny_model.transcribe(samples)
    ours = tiny_model.transcribe(samples, initial_prompt=prompt)
    assert ours.text != plain.text  # the prompt (upper case, and the words already said) changes the output
    theirs = openai_transcribe(openai_tiny, samples, (name, "tiny.en", prompt), initial_prompt=prompt)
    assert_same_as_openai(ours, theirs)
    # the prompt is context, never part of the transcript
    assert "JOHN DASHWOOD" not in ours.text and "MISTER" not in ours.text


@pytest.mark.parametrize("clips", [(3.0, 8.0), (0.0, 4.0, 6.5)], ids=["one-clip", "clip-then-open-end"])
def test_clip_timestamps_equal_openai(
    clips: tuple[float, ...], audio: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel, openai_tiny: Any
) -> None:
    name = "en/jfk_inaugural_excerpt.flac"
    samples = audio(name)
    ours = tiny_model.transcribe(samples, clip_timestamps=clips)
    theirs = openai_transcribe(openai_tiny, samples, (name, "tiny.en", clips), clip_timestamps=list(clips))
    assert_same_as_openai(ours, theirs)
    bounds = [*clips, len(samples) / SAMPLE_RATE] if len(clips) % 2 else list(clips)
    ranges = list(zip(bounds[::2], bounds[1::2], strict=True))
    for s in ours.segments:  # every segment lies inside one of the clips
        assert any(a - 0.01 <= s.start and s.end <= b + 0.02 for a, b in ranges), (s.start, s.end, ranges)
    assert ours.segments[0].start >= clips[0]


def test_without_timestamps_equals_openai(
    audio: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel, openai_tiny: Any
) -> None:
    name = "en/jfk_inaugural_excerpt.flac"
    samples = audio(name)
    ours = tiny_model.transcribe(samples, without_timestamps=True)
    theirs = openai_transcribe(openai_tiny, samples, (name, "tiny.en", "no timestamps"), without_timestamps=True)
    assert_same_as_openai(ours, theirs)
    (segment,) = ours.segments
    assert segment.start == 0.0 and segment.end == pytest.approx(len(samples) / SAMPLE_RATE, abs=0.01)


def test_translate_spanish_equals_openai(
    audio: Callable[[str], np.ndarray], base_model: wc.WhisperModel, openai_base: Any
) -> None:
    name = "multi/mls_es_13697_11991_000000.opus"
    samples = audio(name)
    # greedy only: a fallback to sampling would compare two different random number generators
    ours = base_model.transcribe(samples, task="translate", temperature=0.0)
    theirs = openai_transcribe(openai_base, samples, (name, "base", "translate"), task="translate", temperature=0.0)
    assert_same_as_openai(ours, theirs)
    assert ours.language == "es" and ours.task == "translate"  # detected, then translated
    assert ours.text.isascii()
    english = {"the", "and", "that", "of", "to", "their", "was", "in"}
    assert len(english & set(words(ours.text))) >= 4, ours.text
    spanish = {"la", "el", "y", "que", "de", "se", "su", "una"}
    assert len(spanish & set(words(ours.text))) <= 1, ours.text


def test_option_validation(tiny_model: wc.WhisperModel, base_model: wc.WhisperModel) -> None:
    with pytest.raises(TypeError, match="beam_width"):
        tiny_model.options(beam_width=5)
    assert tiny_model.options(beam_size=5, patience=2.0).beam_size == 5
    with pytest.raises(ValueError, match="English-only"):
        tiny_model.options(language="de")
    with pytest.raises(ValueError, match="English-only"):
        tiny_model.options(task="translate")
    with pytest.raises(ValueError, match="unknown task"):
        base_model.options(task="summarise")
    with pytest.raises(ValueError, match="unknown language"):
        base_model.options(language="klingon")
    assert tiny_model.options(language="English").language == "en"
    assert base_model.options(language="German", temperature=0).temperature == (0.0,)
    assert base_model.options(language="German").language == "de"


# --- split_segments, by hand ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok(tiny_model: wc.WhisperModel) -> Tokenizer:
    return tiny_model.tokenizer


def result_of(tokens: list[int]) -> DecodingResult:
    return DecodingResult(tuple(tokens), "", "en", -0.2, 0.01, 0.0, 1.0)


def test_split_pairs_with_a_single_timestamp_ending(tok: Tokenizer) -> None:
    ts = tok.timestamp_begin
    a, b = tok.encode(" Hello there."), tok.encode(" Bye.")
    tokens = [ts, *a, ts + 50, ts + 50, *b, ts + 100]  # the last segment is closed by one timestamp
    pieces, advance = split_segments(result_of(tokens), tok, 30.0, 3000)
    assert pieces == [(30.0, 31.0, [ts, *a, ts + 50]), (31.0, 32.0, [ts + 50, *b, ts + 100])]
    assert advance == 3000  # nothing unfinished: the whole window was used


def test_split_pairs_then_an_unfinished_sentence(tok: Tokenizer) -> None:
    ts = tok.timestamp_begin
    a, b, c = tok.encode(" One."), tok.encode(" Two."), tok.encode(" and th")
    tokens = [ts, *a, ts + 60, ts + 60, *b, ts + 130, ts + 140, *c]  # text runs off the window's end
    pieces, advance = split_segments(result_of(tokens), tok, 0.0, 3000)
    assert pieces == [(0.0, 1.2, [ts, *a, ts + 60]), (1.2, 2.6, [ts + 60, *b, ts + 130])]
    assert advance == 130 * 2  # seek to the last complete timestamp: <|2.60|> is 260 mel frames


def test_split_pairs_ending_in_a_pair(tok: Tokenizer) -> None:
    ts = tok.timestamp_begin
    a, b = tok.encode(" One."), tok.encode(" Two.")
    tokens = [ts + 5, *a, ts + 60, ts + 61, *b, ts + 100, ts + 100]
    pieces, advance = split_segments(result_of(tokens), tok, 10.0, 3000)
    assert pieces == [(10.1, 11.2, [ts + 5, *a, ts + 60]), (11.22, 12.0, [ts + 61, *b, ts + 100])]
    assert advance == 200


def test_split_without_timestamps(tok: Tokenizer) -> None:
    text = tok.encode(" No timestamps at all.")
    pieces, advance = split_segments(result_of(text), tok, 60.0, 1234)
    assert pieces == [(60.0, 60.0 + 12.34, text)]
    assert advance == 1234


def test_split_single_segment_uses_its_last_timestamp(tok: Tokenizer) -> None:
    ts = tok.timestamp_begin
    text = tok.encode(" Just one.")
    pieces, advance = split_segments(result_of([ts, *text, ts + 75]), tok, 0.0, 3000)
    assert pieces == [(0.0, 1.5, [ts, *text, ts + 75])]
    assert advance == 3000
    # only <|0.00|>: no end known, so the segment spans the window
    pieces, advance = split_segments(result_of([ts, *text]), tok, 0.0, 2500)
    assert pieces == [(0.0, 25.0, [ts, *text])]
    assert advance == 2500


def test_split_empty_window(tok: Tokenizer) -> None:
    pieces, advance = split_segments(result_of([]), tok, 5.0, 3000)
    assert pieces == [(5.0, 35.0, [])]
    assert advance == 3000

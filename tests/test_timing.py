"""Word timestamps: DTW, median filter and word splitting against openai-whisper's own
functions, and whole transcriptions whose words match openai-whisper's on the same weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import whisper_coreml as wc
from whisper_coreml.result import Segment, Word
from whisper_coreml.subtitles import CueRules, build_cues, check_cues
from whisper_coreml.timing import _Timing, dtw, find_pauses, fit_words_to_pauses, median_filter, merge_punctuations
from whisper_coreml.tokenizer import Tokenizer

whisper = pytest.importorskip("whisper")
openai_timing = pytest.importorskip("whisper.timing")


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (5, 40), (37, 300)])
def test_dtw_takes_openai_whispers_path(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    for cost in (rng.normal(size=shape), rng.integers(0, 3, size=shape).astype(np.float64)):  # ties too
        rows, cols = dtw(cost)
        expected = openai_timing.dtw_cpu(cost)
        assert rows.tolist() == expected[0].tolist()
        assert cols.tolist() == expected[1].tolist()


@pytest.mark.parametrize("length", [1, 3, 4, 7, 50])
def test_median_filter_matches_openai(length: int) -> None:
    x = np.random.default_rng(length).normal(size=(2, 3, length)).astype(np.float32)
    expected = openai_timing.median_filter(torch.from_numpy(x), 7).numpy()
    np.testing.assert_array_equal(median_filter(x, 7), expected)


def _openai_tokenizer(tok: Tokenizer, language: str) -> Any:
    return whisper.tokenizer.get_tokenizer(tok.multilingual, language=language, task="transcribe")


@pytest.mark.parametrize(
    ("model", "language", "text"),
    [
        ("tiny", "en", ' Hello, world! It\'s a "test" of self-driving cars... (really) 100% ok?'),
        ("base", "en", " Mr. O'Neil's e-mail: don't—stop. 😀 Émile."),
        ("base", "ja", "こんにちは、世界。今日はいい天気ですね！"),
        ("base", "zh", "我们今天去北京，好吗？"),
        ("base", "de", " Größe, Straße und Übermut."),
    ],
)
def test_word_split_matches_openai(request: pytest.FixtureRequest, model: str, language: str, text: str) -> None:
    tok: Tokenizer = request.getfixturevalue(f"{model}_model").tokenizer.with_language(language)
    theirs = _openai_tokenizer(tok, language)
    tokens = tok.encode(text)
    assert tokens == theirs.encode(text)
    words, word_tokens = tok.split_to_word_tokens([*tokens, tok.eot])
    expected_words, expected_tokens = theirs.split_to_word_tokens([*tokens, theirs.eot])
    assert word_tokens == expected_tokens
    assert words[:-1] == expected_words[:-1]  # the last is <|endoftext|>, rendered differently
    assert "".join(words) == text


def test_merge_punctuations_folds_quotes_and_stops() -> None:
    def timings(*words: str) -> list[_Timing]:
        return [_Timing(w, [i], float(i), i + 0.5, 0.9) for i, w in enumerate(words)]

    ours = timings(' "', "Hello", ",", " world", ".", '"', " (", "yes", ")")
    merge_punctuations(ours, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
    assert [t.word for t in ours if t.word] == [' "Hello,', ' world."', " (yes)"]
    assert [t.tokens for t in ours if t.word] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


CLIPS = ["en/arctic_a0024.wav", "en/jfk_inaugural_excerpt.flac", "en/librispeech_1995-1837-0001.wav"]


@pytest.mark.parametrize("clip", CLIPS)
def test_words_match_openai_whisper(
    clip: str, audio: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel, openai_tiny: Any
) -> None:
    samples = audio(clip)
    ours = tiny_model.transcribe(samples, word_timestamps=True)
    theirs = whisper.transcribe(openai_tiny, samples, fp16=False, word_timestamps=True)
    assert ours.text == theirs["text"]
    for mine, other in zip(ours.segments, theirs["segments"], strict=True):
        assert (mine.start, mine.end) == pytest.approx((other["start"], other["end"]), abs=0.02)
        assert [w.word for w in mine.words or ()] == [w["word"] for w in other["words"]]
        for w, o in zip(mine.words or (), other["words"], strict=True):
            assert (w.start, w.end) == pytest.approx((o["start"], o["end"]), abs=0.02)
            assert w.probability == pytest.approx(o["probability"], abs=1e-3)


def test_long_form_words_and_seek_match_openai_whisper(
    audio: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel, openai_tiny: Any
) -> None:
    """With word timestamps, a window resumes after its last word: the seek positions,
    and so the whole 2.4-min transcript, must still be openai-whisper's."""
    samples = audio("long/ljspeech_LJ001_0001-0020_concat.wav")
    ours = tiny_model.transcribe(samples, word_timestamps=True)
    theirs = whisper.transcribe(openai_tiny, samples, fp16=False, word_timestamps=True)
    assert ours.text == theirs["text"]
    assert [s.seek for s in ours.segments] == [s["seek"] for s in theirs["segments"]]
    mine = [w for s in ours.segments for w in s.words or ()]
    other = [w for s in theirs["segments"] for w in s["words"]]
    assert [w.word for w in mine] == [w["word"] for w in other]
    differences = [abs(a.start - b["start"]) for a, b in zip(mine, other, strict=True)]
    assert np.median(differences) <= 0.01 and max(differences) <= 0.1


def test_without_words_nothing_changes(audio: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel) -> None:
    result = tiny_model.transcribe(audio("en/arctic_a0010.wav"))
    assert all(s.words is None for s in result.segments)


def test_find_pauses_in_a_log_mel_window() -> None:
    mel = np.full((80, 300), 1.0, dtype=np.float32)  # 3 s of loud frames
    mel[:, 100:130] = -0.5  # 0.30 s, 60 dB down: a pause
    mel[:, 200:205] = -0.5  # 0.05 s: too short to count
    mel[:, 250:270] = 0.5  # 0.20 s only 20 dB down: still speech
    assert find_pauses(mel) == [(1.0, 1.3)]
    assert find_pauses(mel[:, :0]) == []


def test_word_edges_leave_the_pauses() -> None:
    words = (
        Word(82.14, 82.64, " letters", 0.9),
        Word(82.64, 83.28, " than", 0.9),  # attention gave it the pause before it
        Word(83.28, 83.46, " in", 0.9),
        Word(83.46, 84.4, " the", 0.9),  # a pause at its end
    )
    segment = Segment(0, 0, 82.14, 84.4, " letters than in the", (), 0.0, -0.1, 1.0, 0.0, words)
    [fitted] = fit_words_to_pauses([segment], [(82.77, 83.06), (84.0, 84.6)])
    assert [(w.start, w.end) for w in fitted.words] == [(82.14, 82.77), (83.06, 83.28), (83.28, 83.46), (83.46, 84.0)]
    assert fit_words_to_pauses([segment], []) == [segment]


def test_cue_boundaries_follow_the_reference_sentences(
    speech: Callable[[str], Path], tiny_model: wc.WhisperModel
) -> None:
    """LJSpeech sentences joined by 0.30 s pauses; the `.srt` beside them has each sentence's
    exact times. With words fitted to pauses, every sentence start is a cue boundary (within
    0.3 s); an end may sit later when reading speed stretched its cue into the pause."""
    srt = pytest.importorskip("srt")
    path = speech("long/ljspeech_LJ001_0001-0020_concat.wav")
    result = tiny_model.transcribe(path, word_timestamps=True, words_at_pauses=True)
    cues = build_cues(result)
    edges = np.array(sorted({c.start for c in cues} | {c.end for c in cues}))
    reference = list(srt.parse(path.with_suffix(".srt").read_text(encoding="utf-8")))
    starts = [np.abs(edges - s.start.total_seconds()).min() for s in reference]
    ends = [np.abs(edges - s.end.total_seconds()).min() for s in reference]
    assert max(starts) <= 0.3 and np.median(starts) <= 0.1
    assert sum(e <= 0.3 for e in ends) >= 19 and np.median(ends) <= 0.1
    assert not [v for v in check_cues(cues, CueRules(), result.duration) if not v.reason]

"""Batched decoding: windows of several transcriptions through the engine together, each decoded
exactly as it would be alone (issue 11).

The oracle is our own one-window-at-a-time path, which the other tests hold to openai-whisper:
the same tokens for every window of a batch whatever its neighbours' prompts, the same
transcripts from `transcribe_batch` and from a `--batch-size` folder run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import whisper_coreml as wc
from whisper_coreml.decoding import DecodingOptions, decode_window, decode_windows

CLIPS = [
    "en/arctic_a0010.wav",
    "en/librispeech_1995-1837-0001.wav",
    "en/jfk_inaugural_excerpt.flac",
    "en/ljspeech_LJ001-0003.wav",
    "en/librivox_sense_sensibility_0880.wav",
    "en/arctic_axb_a0005.wav",
]
PROMPTS = [
    "",
    " And so, my fellow Americans.",
    " The quick brown fox jumped over the lazy dog, twice, in a hurry, at dawn.",
]


@pytest.mark.parametrize(
    "options",
    [{}, {"beam_size": 5}, {"beam_size": 3, "patience": 2.0}, {"temperature": 0.5, "best_of": 3},
     {"without_timestamps": True}],
    ids=["greedy", "beam5", "beam3-patience", "sampling", "no-timestamps"],
)  # fmt: skip
def test_a_batch_decodes_each_window_as_alone(
    options: dict[str, Any], window: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel
) -> None:
    engine, tokenizer = tiny_model.engine, tiny_model.tokenizer
    features = engine.encode_batch([window(name) for name in CLIPS])
    requests = [
        (f, tokenizer, DecodingOptions(prompt=tuple(tokenizer.encode(PROMPTS[i % 3])), **options))
        for i, f in enumerate(features)
    ]
    alone = [decode_window(engine, f, tokenizer, o) for f, _, o in requests]
    together = decode_windows(engine, requests, batch_size=4)  # a batch of 4 and one of 2
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert any(r.text for r in alone)
    for a, b in zip(alone, together, strict=True):
        assert b.avg_logprob == pytest.approx(a.avg_logprob, abs=1e-4)
        assert b.no_speech_prob == pytest.approx(a.no_speech_prob, abs=1e-4)
        assert (b.temperature, b.compression_ratio, b.language) == (a.temperature, a.compression_ratio, a.language)


@pytest.fixture(scope="module")
def tiny_int8() -> wc.WhisperModel:
    return wc.load_model("tiny.en", engine="torch", device="cpu", compute_type="int8")


def test_an_int8_batch_decodes_each_window_as_alone(
    window: Callable[[str], np.ndarray], tiny_int8: wc.WhisperModel
) -> None:
    # int8 scales each row's activations on its own (quantize.Int8Linear's per_row), so the
    # windows beside a window no longer set its scale; what is left is float32's last-bit noise
    # (padding, attention shapes), which an activation's rounding can turn into one quantum
    engine, tokenizer = tiny_int8.engine, tiny_int8.tokenizer
    features = engine.encode_batch([window(name) for name in CLIPS])
    requests = [(f, tokenizer, DecodingOptions(beam_size=5, prompt=tuple(tokenizer.encode(PROMPTS[i % 3]))))
                for i, f in enumerate(features)]  # fmt: skip
    alone = [decode_window(engine, f, tokenizer, o) for f, _, o in requests]
    together = decode_windows(engine, requests, batch_size=6)
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert [r.avg_logprob for r in together] == pytest.approx([r.avg_logprob for r in alone], abs=0.01)


def test_transcribe_batch_equals_transcribe(speech: Callable[[str], Path], tiny_model: wc.WhisperModel) -> None:
    """Files of one window and of several (a sonnet: 53 s), with the CLI's decoding (beam 5, VAD,
    words): every text, segment and word time as when each file is transcribed alone."""
    paths = [speech(name) for name in [*CLIPS[:4], "long/librivox_shakespeare_sonnet001.mp3"]]
    options = {"beam_size": 5, "vad": True, "word_timestamps": True}
    alone = [tiny_model.transcribe(p, **options) for p in paths]
    together = tiny_model.transcribe_batch(paths, batch_size=3, **options)
    assert [r.source for r in together] == [str(p) for p in paths]
    assert len(alone[-1].segments) > 3
    for a, b in zip(alone, together, strict=True):
        assert b.text == a.text
        assert [(s.start, s.end) for s in b.segments] == [(s.start, s.end) for s in a.segments]
        words = lambda r: [(w.word, w.start, w.end) for s in r.segments for w in s.words or ()]  # noqa: E731
        assert words(b) == words(a)


def test_transcribe_batch_reports_a_bad_input_after_the_rest(tmp_path: Path, tiny_model: wc.WhisperModel) -> None:
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF....WAVEfmt nothing here")
    with pytest.raises(wc.errors.WhisperCoreMLError, match=r"broken\.wav"):
        tiny_model.transcribe_batch([bad, np.zeros(16000, np.float32)], batch_size=2)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "whisper_coreml.cli", "transcribe", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def test_folder_batch_writes_what_sequential_writes(tmp_path: Path, speech: Callable[[str], Path]) -> None:
    """`--batch-size 3` over a folder: the same outputs as one file at a time, and a broken file
    fails alone, in one line."""
    folder = tmp_path / "card"
    folder.mkdir()
    for name in CLIPS:
        (folder / Path(name).name).symlink_to(speech(name))
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEfmt nothing here")
    runs = {}
    for size in ("1", "3"):
        out = tmp_path / f"out{size}"
        common = ("--format", "json,srt", "--quiet")  # the CLI's defaults (int8: test_an_int8_batch_...)
        done = _run(str(folder), *common, "-o", str(out), "--batch-size", size)
        assert done.returncode == 1, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "broken.wav" in errors[0], done.stderr
        assert "Traceback" not in done.stderr
        runs[size] = {p.name: p.read_text(encoding="utf-8") for p in sorted(out.glob("[!.]*.srt"))}
        texts = {p.name: json.loads(p.read_text(encoding="utf-8"))["text"] for p in out.glob("[!.]*.json")}
        assert len(texts) == len(CLIPS) and all(texts.values())
    assert runs["3"] == runs["1"]


def test_batch_size_must_be_positive(tmp_path: Path, speech: Callable[[str], Path]) -> None:
    done = _run(str(speech(CLIPS[0])), "-o", str(tmp_path), "--batch-size", "0")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --batch-size 0: must be at least 1"
    assert not list(tmp_path.iterdir())


def same(a: wc.TranscriptionResult, b: wc.TranscriptionResult) -> None:
    """The same transcript: tokens, texts and times; probabilities to float noise (the windows
    batched together change the shapes of the matrix products, not the decisions)."""
    assert (a.text, a.language, a.duration) == (b.text, b.language, b.duration)
    assert len(a.segments) == len(b.segments)
    for x, y in zip(a.segments, b.segments, strict=True):
        assert (x.id, x.seek, x.start, x.end, x.text, x.tokens) == (y.id, y.seek, y.start, y.end, y.text, y.tokens)
        assert (x.avg_logprob, x.no_speech_prob) == pytest.approx((y.avg_logprob, y.no_speech_prob), abs=1e-4)
        assert [(w.word, w.start, w.end) for w in x.words or ()] == [(w.word, w.start, w.end) for w in y.words or ()]


@pytest.fixture(scope="module")
def recording(audio: Callable[[str], np.ndarray]) -> np.ndarray:
    """2.4 min of continuous speech (20 sentences, 0.3-s pauses) and a sonnet, among room tone:
    VAD cuts it into stretches of at most a window each."""
    rng = np.random.default_rng(5)
    tone = lambda seconds: (rng.standard_normal(seconds * 16000) * 0.003).astype(np.float32)  # noqa: E731
    parts = [tone(8), audio("long/ljspeech_LJ001_0001-0020_concat.wav"), tone(20)]
    return np.concatenate([*parts, audio("long/librivox_shakespeare_sonnet001.mp3"), tone(6)])


def test_a_long_file_decodes_its_stretches_side_by_side(
    tmp_path: Path, recording: np.ndarray, speech: Callable[[str], Path], tiny_model: wc.WhisperModel
) -> None:
    """`batch_size` on one file: each stretch of speech is decoded on its own, so the result is
    the same however many run at once, as accurate as decoding in sequence, and a journal
    written in the file's order resumes it exactly."""
    from jiwer import wer
    from whisper.normalizers import EnglishTextNormalizer

    from whisper_coreml.journal import FileJournal

    options = {"beam_size": 5, "vad": True, "word_timestamps": True}
    full = FileJournal(tmp_path / "full", "key")
    eight = tiny_model.transcribe(recording, batch_size=8, journal=full, **options)
    same(tiny_model.transcribe(recording, batch_size=3, **options), eight)
    assert [s.id for s in eight.segments] == list(range(len(eight.segments)))
    starts = [s.start for s in eight.segments]
    assert starts == sorted(starts) and starts[0] > 7.5
    assert len({s.seek for s in eight.segments}) >= 6  # the speech went through in pieces

    normal = EnglishTextNormalizer()
    reference = normal(" ".join(speech(n).with_suffix(".txt").read_text() for n in [
        "long/ljspeech_LJ001_0001-0020_concat.wav", "long/librivox_shakespeare_sonnet001.mp3"]))  # fmt: skip
    sequential = tiny_model.transcribe(recording, **options)
    errors = wer(reference, normal(eight.text)), wer(reference, normal(sequential.text))
    assert errors[0] <= errors[1] + 0.02, errors

    lines = (tmp_path / "full").read_bytes().splitlines(keepends=True)
    assert len(lines) >= 7
    (tmp_path / "cut").write_bytes(b"".join(lines[:4]))  # the header and three windows
    cut = FileJournal(tmp_path / "cut", "key")
    same(tiny_model.transcribe(recording, batch_size=8, journal=cut, **options), eight)
    assert cut.restored_windows == 3 and cut.windows == len(lines) - 4

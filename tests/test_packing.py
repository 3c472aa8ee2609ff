"""One long file decoded side by side (issue 11): VAD cuts its speech at the quietest moments
into pieces of at most a window, consecutive pieces share a window with a second of silence
between them (packing.py), and the times come back onto the file's clock."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import whisper_coreml as wc
from whisper_coreml.audio import MelSource
from whisper_coreml.packing import GAP, Pack
from whisper_coreml.result import Segment, Word
from whisper_coreml.vad import FRAME, SpeechRegion, decoded_stretches

SR = 16000


def segment(start: float, end: float, text: str = " x", words: tuple[Word, ...] | None = None) -> Segment:
    return Segment(0, 0, start, end, text, (1,), 0.0, -0.1, 1.0, 0.01, words)


def test_stretches_are_packed_in_order_into_windows() -> None:
    clips = [(0, 301), (300, 500), (2000, 2400), (2400, 2600), (5000, 5000), (9000, 9400), (12000, 14000)]
    packs = Pack.of(clips, 1500)
    # touching clips (a stretch cut in two, overlapping by a frame after rounding) join again
    assert packs[0].spans == ((0, 500), (2000, 2600))
    assert packs[0].starts == (0, 500 + GAP) and packs[0].n_frames == 500 + GAP + 600
    # the empty clip rides with the pack before it; adding (9000, 9400) would pass 1500 frames
    assert [p.clips for p in packs] == [5, 1, 1]
    assert [p.spans for p in packs[1:]] == [((9000, 9400),), ((12000, 14000),)]  # a long clip stands alone
    assert sum(p.clips for p in packs) == len(clips)
    assert Pack.of([(0, 100), (200, 300)], 0) == [Pack(((0, 100),), 1), Pack(((200, 300),), 1)]


def test_a_pack_puts_times_back_on_the_file_clock() -> None:
    pack = Pack(((1000, 1300), (5000, 5400)), 2)  # on the pack's clock: 0-3 s, a gap to 4 s, then 4-8 s
    words = (
        Word(0.5, 1.0, " one", 0.9),
        Word(2.9, 3.3, " two", 0.9),  # ends in the gap: the stretch it overlaps most
        Word(3.7, 3.95, " three", 0.9),  # wholly in the gap: the nearer stretch, clamped to it
        Word(4.2, 4.6, " four", 0.9),
    )
    placed, bare = pack.place([segment(0.5, 4.6, words=words), segment(3.5, 3.6)])
    assert [(w.start, w.end) for w in placed.words or ()] == [(10.5, 11.0), (12.9, 13.0), (50.0, 50.0), (50.2, 50.6)]
    assert (placed.start, placed.end) == (10.5, 50.6)
    assert (bare.start, bare.end) == (50.0, 13.0)  # a start in a gap goes forward, an end back
    voiced = [(990, 1300), (5000, 5400)]  # Silero's regions: the spans here
    assert pack.unheard([placed], voiced) == []
    assert pack.unheard([segment(10.5, 11.0)], voiced) == [(5000, 5400)]
    assert pack.unheard([segment(10.5, 11.0), segment(50.0, 50.5, text=" ")], voiced) == [(5000, 5400)]


def test_a_quiet_voice_the_decoder_passed_over_inside_a_stretch_is_found() -> None:
    """A stretch bridges Silero's regions across short pauses; a region with no words in it is
    speech the window passed over (base, batched, on the mfa recording: a hoarse sentence after a
    pause), even where the rest of its stretch has words; it is decoded with the pause before it,
    where Silero may have missed the voice's start. Unheard neighbours come as one."""
    pack = Pack(((1782, 3632), (5000, 5400)), 2)
    voiced = [(69, 2574), (2978, 3298), (3461, 5244)]
    words = (Word(18.7, 25.2, " words", 0.9),)
    heard = segment(18.7, 25.2, words=words)
    assert pack.unheard([heard], voiced) == [(2574, 3632), (5000, 5244)]
    assert pack.unheard([heard, segment(30.0, 31.0)], voiced) == [(3298, 3632), (5000, 5244)]
    assert pack.unheard([heard, segment(30.0, 31.0), segment(35.0, 35.5), segment(51.0, 52.0)], voiced) == []
    assert pack.unheard([], voiced) == [(1782, 3632), (5000, 5244)]  # a span with nothing: its voice whole


def test_a_pack_reads_its_stretches_with_silence_between(audio: Callable[[str], np.ndarray]) -> None:
    samples = np.concatenate([audio("en/arctic_a0010.wav"), np.zeros(SR * 2, np.float32)])
    with MelSource.from_array(samples) as source:
        pack = Pack(((30, 150), (200, 260)), 2)
        mel = pack.frames(source).window(0)
        np.testing.assert_array_equal(mel[:, :120], source.window(30, 120)[:, :120])
        np.testing.assert_array_equal(mel[:, 120 + GAP : 180 + GAP], source.window(200, 60)[:, :60])
        silent = source.window(source.n_frames - 50, 40)[:, 5:35]  # the trailing zeros, as the file gives them
        np.testing.assert_array_equal(mel[:, 120 : 120 + GAP], np.full((80, GAP), silent[0, 0]))
        assert (silent == source.silence).all()
        assert (mel[:, 180 + GAP :] == 0).all()  # past the content, as MelSource pads a window
        np.testing.assert_array_equal(pack.frames(source).window(100, 50)[:, :20], mel[:, 100:120])


def test_long_speech_is_cut_at_its_quietest_moment() -> None:
    """Pieces of at most the window, each ending in the second half of its span where Silero
    heard the longest quiet, not at a single low frame."""
    frames = 40 * SR // FRAME
    probabilities = np.full(frames, 0.9, np.float32)
    pause = slice(18 * SR // FRAME, 18 * SR // FRAME + 10)  # 320 ms at 18 s
    probabilities[pause] = 0.05
    probabilities[22 * SR // FRAME] = 0.0  # one frame: a consonant, not a pause
    pieces = decoded_stretches([SpeechRegion(0, 40 * SR)], 5.0, 25.0, probabilities)
    assert len(pieces) == 2 and pieces[0].start == 0 and pieces[-1].end == 40 * SR
    assert pieces[0].end == pieces[1].start and pause.start * FRAME < pieces[0].end < pause.stop * FRAME
    blind = decoded_stretches([SpeechRegion(0, 60 * SR)], 5.0, 25.0)
    assert [(p.start, p.end) for p in blind] == [(0, 25 * SR), (25 * SR, 50 * SR), (50 * SR, 60 * SR)]


@pytest.fixture(scope="module")
def turns(audio: Callable[[str], np.ndarray]) -> tuple[np.ndarray, list[tuple[float, float]], list[str]]:
    """Eight short lines among 12 s of room tone each (a sparse interview): where each line is."""
    names = ["en/arctic_a0010.wav", "en/ljspeech_LJ001-0003.wav", "en/arctic_axb_a0005.wav",
             "en/librispeech_1995-1837-0001.wav", "en/arctic_a0024.wav", "en/jfk_inaugural_excerpt.flac",
             "en/arctic_aew_a0001.wav", "en/arctic_aew_a0002.wav"]  # fmt: skip
    rng = np.random.default_rng(7)
    parts, spans, t = [], [], 0.0
    for name in names:
        tone = (rng.standard_normal(12 * SR) * 0.003).astype(np.float32)
        line = audio(name)
        parts += [tone, line]
        spans.append((t + 12, t + 12 + len(line) / SR))
        t += 12 + len(line) / SR
    parts.append((rng.standard_normal(4 * SR) * 0.003).astype(np.float32))
    return np.concatenate(parts), spans, names


def test_short_lines_share_windows_and_keep_their_words_and_times(
    turns: tuple[np.ndarray, list[tuple[float, float]], list[str]],
    speech: Callable[[str], object],
    tiny_model: wc.WhisperModel,
) -> None:
    """Lines far apart share a window (fewer encoder passes than lines), every line is still
    transcribed as well as in sequence, and each word lands inside its own line."""
    from jiwer import wer
    from whisper.normalizers import EnglishTextNormalizer

    recording, spans, names = turns
    engine = tiny_model.engine
    encoded: list[int] = []
    encode_batch = engine.encode_batch
    try:
        engine.encode_batch = lambda mels: encoded.append(len(mels)) or encode_batch(mels)  # type: ignore[method-assign]
        batched = tiny_model.transcribe(recording, batch_size=8, beam_size=5, vad=True, word_timestamps=True)
    finally:
        del engine.encode_batch
    assert sum(encoded) < len(names) - 2, encoded
    words = [w for s in batched.segments for w in s.words or ()]
    for w in words:
        assert any(a - 0.5 <= w.start <= w.end <= b + 0.5 for a, b in spans), (w, spans)
    heard = {i for w in words for i, (a, b) in enumerate(spans) if a - 0.5 <= w.start <= b + 0.5}
    assert heard == set(range(len(names)))

    normal = EnglishTextNormalizer()
    reference = normal(" ".join(speech(n).with_suffix(".txt").read_text() for n in names))  # type: ignore[attr-defined]
    sequential = tiny_model.transcribe(recording, beam_size=5, vad=True, word_timestamps=True)
    errors = wer(reference, normal(batched.text)), wer(reference, normal(sequential.text))
    assert errors[0] <= errors[1] + 0.02, errors

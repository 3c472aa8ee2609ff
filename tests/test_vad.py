"""Silero voice activity detection: faster-whisper's regions from a stream, and the way back to the original clock.

faster-whisper is the oracle: its `get_speech_timestamps` (fed the same network, or ours fed
its network), `collect_chunks`, `SpeechTimestampsMap` and `restore_speech_timestamps`.
"""

from __future__ import annotations

import importlib.util
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import whisper_coreml as wc
from whisper_coreml import vad
from whisper_coreml.audio import N_SAMPLES, SAMPLE_RATE, MelSource
from whisper_coreml.result import Segment, Word
from whisper_coreml.vad import (
    FRAME,
    SileroVad,
    SpeechRegion,
    SpeechTimeline,
    VadError,
    VadOptions,
    decoded_stretches,
    silero_vad,
    speech_regions,
)

LONG = "long/ljspeech_LJ001_0001-0020_concat.wav"  # 138 s of read speech, short pauses
STEREO = "long/mfa_michaelandsickmichael_stereo.wav"  # 52 s, two speakers, human-timed .srt
SONNET = "long/librivox_shakespeare_sonnet002.mp3"  # 53 s, 44.1 kHz stereo mp3
FILES = [LONG, STEREO, SONNET, "en/jfk_inaugural_excerpt.flac", "multi/librivox_es_capitan_veneno.mp3"]
# faster-whisper's defaults, and those its batched pipeline uses (30 s chunks, short silences)
OPTIONS = [VadOptions(), VadOptions(min_silence_duration_ms=160, max_speech_duration_s=30)]
# a hard setting: every silence ends speech, 5 s cap with splits, no padding
HARD = VadOptions(threshold=0.6, max_speech_duration_s=5, min_silence_duration_ms=0, speech_pad_ms=0)


def odd_blocks(samples: np.ndarray, seed: int = 0) -> Iterator[np.ndarray]:
    """`samples` in blocks of random sizes from 1 to 20000, never frame-aligned on purpose."""
    cuts = np.cumsum(np.random.default_rng(seed).integers(1, 20000, len(samples) // 5000 + 2))
    yield from np.split(samples, cuts[cuts < len(samples)])


def spans(regions: Any) -> list[tuple[int, int]]:
    return [(r.start, r.end) for r in regions]


@pytest.fixture(scope="module")
def faster_vad() -> Any:
    return pytest.importorskip("faster_whisper.vad")


@pytest.fixture(scope="module")
def model() -> SileroVad:
    try:
        return silero_vad()
    except VadError as e:
        pytest.skip(str(e))


def faster_options(faster_vad: Any, options: VadOptions) -> Any:
    """faster-whisper's VadOptions with our fields of the same names (bridge_gap_s and window_s are ours alone)."""
    return faster_vad.VadOptions(**{k: v for k, v in vars(options).items() if k not in {"bridge_gap_s", "window_s"}})


def fw_timestamps(faster_vad: Any, samples: np.ndarray, options: VadOptions, network: Any) -> list[tuple[int, int]]:
    """faster-whisper's get_speech_timestamps with `network` (a faster_whisper SileroVADModel) as its model."""
    real = faster_vad.get_vad_model
    faster_vad.get_vad_model = lambda: network
    try:
        found = faster_vad.get_speech_timestamps(samples.copy(), faster_options(faster_vad, options))
    finally:
        faster_vad.get_vad_model = real
    return [(d["start"], d["end"]) for d in found]


# --- the regions, against faster-whisper ------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_streamed_regions_equal_faster_whisper_with_silero_vad_model(
    name: str, audio: Callable[[str], np.ndarray], faster_vad: Any, model: SileroVad
) -> None:
    """faster-whisper's algorithm fed the silero-vad package's network gives exactly our streamed regions."""
    samples = audio(name)
    network = faster_vad.SileroVADModel(str(model.model_path))
    for options in [*OPTIONS, HARD]:
        expected = fw_timestamps(faster_vad, samples, options, network)
        assert expected, f"{name}: no speech found"
        assert spans(speech_regions(odd_blocks(samples), options, model)) == expected, (name, options)


@pytest.mark.parametrize("name", [LONG, STEREO])
def test_faster_whisper_network_gives_faster_whisper_regions(
    name: str, audio: Callable[[str], np.ndarray], faster_vad: Any
) -> None:
    """With faster-whisper's own silero_vad_v6.onnx loaded, ours is its vad_filter exactly, streamed."""
    path = Path(faster_vad.__file__).parent / "assets" / "silero_vad_v6.onnx"
    samples = audio(name)
    for options in [*OPTIONS, HARD]:
        expected = [
            (d["start"], d["end"])
            for d in faster_vad.get_speech_timestamps(samples.copy(), faster_options(faster_vad, options))
        ]
        assert spans(speech_regions(odd_blocks(samples, 1), options, SileroVad(path))) == expected


def test_probabilities_equal_faster_whisper_frame_for_frame(
    audio: Callable[[str], np.ndarray], faster_vad: Any, model: SileroVad
) -> None:
    """The same frames and context as faster-whisper's model wrapper, whatever the block and call sizes."""
    samples = audio(SONNET)
    whole = len(samples) // FRAME * FRAME
    # tails of 171 samples, of none (a whole silent frame follows) and of 482 (its last 64 silenced)
    for length in (len(samples), whole, whole - 30):
        clip = samples[:length]
        padded = np.pad(clip, (0, FRAME - len(clip) % FRAME))  # as get_speech_timestamps pads
        expected = faster_vad.SileroVADModel(str(model.model_path))(padded).reshape(-1)
        np.testing.assert_array_equal(np.concatenate(list(model.probabilities([clip]))), expected)
        small_calls = SileroVad(model.model_path, frames_per_call=7)
        np.testing.assert_array_equal(np.concatenate(list(small_calls.probabilities(odd_blocks(clip, 2)))), expected)
    assert expected.max() > 0.99 and expected.min() < 0.05


def test_regions_cover_human_timed_speech(audio: Callable[[str], np.ndarray], speech: Callable[[str], Path]) -> None:
    """On two speakers with human utterance timings: speech kept, the long gaps between utterances cut."""
    srt = pytest.importorskip("srt")
    utterances = list(srt.parse(speech(STEREO).with_suffix(".srt").read_text()))
    samples = audio(STEREO)
    kept = np.zeros(len(samples), bool)
    regions = list(speech_regions(odd_blocks(samples)))
    for region in regions:
        kept[region.start : region.end] = True
    said = np.zeros(len(samples), bool)
    for u in utterances:
        said[int(u.start.total_seconds() * SAMPLE_RATE) : int(u.end.total_seconds() * SAMPLE_RATE)] = True
    assert kept[said].mean() > 0.85  # 89.5% of the uttered time (faster-whisper's own network keeps 55%)
    assert kept.mean() < 0.9  # and it cuts something: 46 of 52 s kept
    assert len(regions) == 3


def test_silence_and_noise_have_no_speech(model: SileroVad) -> None:
    rng = np.random.default_rng(0)
    minute = 60 * SAMPLE_RATE
    for samples in [np.zeros(minute, np.float32), (0.05 * rng.standard_normal(minute)).astype(np.float32)]:
        assert list(speech_regions(odd_blocks(samples), VadOptions(), model)) == []
    assert list(speech_regions(iter([]), VadOptions(), model)) == []


def test_speech_between_silences(audio: Callable[[str], np.ndarray], model: SileroVad) -> None:
    """Two utterances 20 s apart: two regions, each its utterance plus at most the 400 ms padding."""
    a, b = audio("en/arctic_a0010.wav"), audio("en/arctic_a0024.wav")
    gap = np.zeros(20 * SAMPLE_RATE, np.float32)
    regions = list(speech_regions(odd_blocks(np.concatenate([gap, a, gap, b, gap])), VadOptions(), model))
    assert len(regions) == 2
    b_start = 2 * len(gap) + len(a)
    assert len(gap) - 6400 <= regions[0].start < len(gap) + 0.5 * SAMPLE_RATE
    assert len(gap) + len(a) - 0.5 * SAMPLE_RATE < regions[0].end <= len(gap) + len(a) + 6400
    assert b_start - 6400 <= regions[1].start < b_start + 0.5 * SAMPLE_RATE
    assert regions[1].end <= b_start + len(b) + 6400


def test_streaming_reads_little_ahead_and_holds_no_history(
    audio: Callable[[str], np.ndarray], model: SileroVad
) -> None:
    """Utterances and pauses streamed for 3 and for 12 minutes: each region comes out soon after the
    next one starts, and the memory Python allocates stays that of one network call however long."""
    utterance = audio("en/arctic_a0010.wav")
    pause = np.zeros(3 * SAMPLE_RATE, np.float32)
    period = len(utterance) + len(pause)

    def run(minutes: int) -> tuple[int, int]:
        n_periods = minutes * 60 * SAMPLE_RATE // period
        consumed = n_regions = 0

        def stream() -> Iterator[np.ndarray]:
            nonlocal consumed
            for _ in range(n_periods):
                for block in (utterance, pause):
                    consumed += len(block)
                    yield block  # the same two arrays again and again: the stream allocates nothing

        tracemalloc.start()
        try:
            for region in speech_regions(stream(), VadOptions(min_silence_duration_ms=500), model):
                # read ahead: up to the next utterance's onset, plus one network call and one block
                assert consumed <= region.end + period + 512 * FRAME
                n_regions += 1
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert n_regions == n_periods
        return peak, n_periods

    short, _ = run(3)
    long, n_periods = run(12)
    assert long < 8 * 2**20, f"{long / 2**20:.1f} MB traced over {n_periods} regions"  # 3.6 MB
    assert long < short + 64 * 1024, f"{short} bytes for 3 min, {long} for 12 min"


# --- model files and errors --------------------------------------------------------------------------


def test_model_comes_from_silero_vad_without_importing_it(model: SileroVad) -> None:
    """The package's __init__ imports torch and sets its thread count; we only read its data file."""
    threads = torch.get_num_threads()
    SileroVad()
    assert model.model_path.name == "silero_vad_16k_sequence.onnx"
    assert model.model_path.parent.parent == Path(importlib.util.find_spec("silero_vad").origin).parent
    assert "silero_vad" not in sys.modules
    assert torch.get_num_threads() == threads


def test_missing_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(vad.importlib.util, "find_spec", lambda name: None if name == "silero_vad" else find_spec(name))
    with pytest.raises(VadError, match=r"needs the silero-vad package: pip install 'whisper-coreml\[vad\]'"):
        SileroVad()


def test_unusable_model_files_are_named(tmp_path: Path, model: SileroVad) -> None:
    garbage = tmp_path / "vad.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(VadError, match=f"{garbage}: not a model onnxruntime can load"):
        SileroVad(garbage)
    frame_by_frame = model.model_path.parent / "silero_vad.onnx"  # the stock model: another interface
    with pytest.raises(VadError, match="not a Silero VAD sequence model"):
        SileroVad(frame_by_frame)


def test_options_are_checked() -> None:
    assert VadOptions().silence_threshold == pytest.approx(0.35)
    assert VadOptions(threshold=0.1).silence_threshold == 0.01
    for bad in [
        {"threshold": 1.0},
        {"neg_threshold": 0.6},
        {"speech_pad_ms": -1},
        {"max_speech_duration_s": 0},
        {"bridge_gap_s": -1},
    ]:
        with pytest.raises(ValueError, match="VAD"):
            VadOptions(**bad)


def test_pauses_are_bridged_long_non_speech_is_not(speech: Callable[[str], Path]) -> None:
    """On the two-speaker file Silero cuts the sick speaker's first 1.8 s after a pause: the
    decoded stretch bridges that pause, and the gaps of 15 s and more stay skipped."""
    regions = list(MelSource.from_file(speech(STEREO), vad=VadOptions(bridge_gap_s=0)).speech)
    assert len(regions) >= 3 and 29.0 < regions[1].start_time  # speech resumes at ~28.0 s
    (stretch,) = MelSource.from_file(speech(STEREO), vad=VadOptions()).speech
    assert (stretch.start, stretch.end) == (regions[0].start, regions[-1].end)
    a, b = SpeechRegion(0, 16000), SpeechRegion(16000 * 20, 16000 * 21)
    assert decoded_stretches([a, b], 5.0) == [a, b]
    assert decoded_stretches([a, b], 20.0) == [SpeechRegion(0, 16000 * 21)]


# --- the speech timeline --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_regions(audio: Callable[[str], np.ndarray], model: SileroVad) -> list[SpeechRegion]:
    """The two-speaker file's 17 regions at faster-whisper's batched settings (short cuts, 30 s cap)."""
    return list(speech_regions([audio(STEREO)], OPTIONS[1], model))


def test_speech_samples_stream_the_regions(
    audio: Callable[[str], np.ndarray], long_regions: list[SpeechRegion]
) -> None:
    samples = audio(STEREO)
    timeline = SpeechTimeline(long_regions)
    blocks = list(timeline.speech_samples(odd_blocks(samples, 3), chunk_samples=N_SAMPLES))
    np.testing.assert_array_equal(
        np.concatenate(blocks), np.concatenate([samples[r.start : r.end] for r in long_regions])
    )
    assert all(len(b) == N_SAMPLES for b in blocks[:-1]) and 0 < len(blocks[-1]) <= N_SAMPLES
    assert timeline.n_samples == sum(map(len, blocks))


def test_chunks_equal_faster_whisper_collect_chunks(
    audio: Callable[[str], np.ndarray], faster_vad: Any, long_regions: list[SpeechRegion]
) -> None:
    samples = audio(STEREO)
    for limit in (30.0, 10.0):
        timeline = SpeechTimeline(long_regions, max_chunk_duration=limit)
        pieces, meta = faster_vad.collect_chunks(
            samples, [{"start": r.start, "end": r.end} for r in long_regions], max_duration=limit
        )
        assert [(c.start, c.n_samples / SAMPLE_RATE) for c in timeline.chunks] == [
            (m["offset"], m["duration"]) for m in meta
        ]
        assert [c.n_samples for c in timeline.chunks] == [len(p) for p in pieces]
        assert all(c.n_samples <= limit * SAMPLE_RATE for c in timeline.chunks)
        assert [r for c in timeline.chunks for r in c.regions] == long_regions
    timeline = SpeechTimeline(long_regions)
    clips = timeline.clip_timestamps()
    edges = [t for c in timeline.chunks for t in (c.start, c.end)]
    assert len(clips) == len(edges) == 4 and all(0 <= e - c < 0.01 for c, e in zip(clips, edges, strict=True))
    # whole mel frames, the last one the speech timeline's last frame (the seek loop's content end)
    assert [round(c * 100) for c in clips][-1] == timeline.n_samples // 160


def test_time_map_equals_faster_whisper(faster_vad: Any, long_regions: list[SpeechRegion]) -> None:
    timeline = SpeechTimeline(long_regions)
    theirs = faster_vad.SpeechTimestampsMap([{"start": r.start, "end": r.end} for r in long_regions], SAMPLE_RATE)
    times = np.round(np.linspace(0, timeline.duration + 1, 997), 2).tolist()
    boundaries = [c / SAMPLE_RATE for c in np.cumsum([r.end - r.start for r in long_regions])]
    for t in times + boundaries:
        for is_end in (False, True):
            assert timeline.region_index(t, is_end) == theirs.get_chunk_index(t, is_end)
            assert timeline.original_time(t, is_end) == theirs.get_original_time(t, is_end=is_end)


def test_times_round_trip(long_regions: list[SpeechRegion]) -> None:
    """A time inside region k, moved onto the speech timeline, maps back to itself (to 10 ms)."""
    timeline = SpeechTimeline(long_regions)
    before = 0  # speech samples ahead of the region
    for k, region in enumerate(long_regions):
        for sample in np.linspace(region.start + 1, region.end - 1, 7).astype(int):
            on_speech = (before + sample - region.start) / SAMPLE_RATE
            assert timeline.region_index(on_speech) == k
            assert timeline.original_time(on_speech) == pytest.approx(sample / SAMPLE_RATE, abs=0.005 + 1e-9)
        before += region.end - region.start
    with pytest.raises(ValueError, match="no speech regions"):
        SpeechTimeline([]).original_time(1.0)
    with pytest.raises(ValueError, match="in order and disjoint"):
        SpeechTimeline([SpeechRegion(0, 100), SpeechRegion(50, 200)])


def test_restore_equals_faster_whisper(faster_vad: Any) -> None:
    """Segments and words straddling cuts, restored as faster-whisper's restore_speech_timestamps does."""
    fw = pytest.importorskip("faster_whisper.transcribe")
    regions = [SpeechRegion(16000, 48000), SpeechRegion(80000, 96000), SpeechRegion(200000, 264000)]  # 2 s, 1 s, 4 s
    words = [(0.1, 0.9), (1.9, 2.3), (2.1, 2.4), (2.9, 3.1), (3.0, 6.5)]
    ours = [
        Segment(0, 0, 0.0, 2.4, " a b c", (), 0.0, -0.1, 1.0, 0.1, tuple(Word(s, e, " w", 0.9) for s, e in words[:3])),
        Segment(1, 0, 2.9, 6.5, " d e", (), 0.0, -0.1, 1.0, 0.1, tuple(Word(s, e, " w", 0.9) for s, e in words[3:])),
        Segment(2, 0, 2.0, 3.0, " no words", (), 0.0, -0.1, 1.0, 0.1),
    ]

    def theirs(segment: Segment) -> Any:
        ws = [fw.Word(w.start, w.end, w.word, w.probability) for w in segment.words] if segment.words else None
        return fw.Segment(
            segment.id, segment.seek, segment.start, segment.end, segment.text, [], 0.0, 1.0, 0.1, ws, 0.0
        )

    expected = list(fw.restore_speech_timestamps([theirs(s) for s in ours], [vars(r) for r in regions], SAMPLE_RATE))
    restored = SpeechTimeline(regions).restore(ours)
    for got, want in zip(restored, expected, strict=True):
        assert (got.start, got.end) == (want.start, want.end)
        assert [(w.start, w.end) for w in got.words or ()] == [(w.start, w.end) for w in want.words or ()]
    assert (restored[2].start, restored[2].end) == (5.0, 6.0)  # 2.0 s starts region 1 (at 5 s), 3.0 s ends it


def test_transcribing_only_the_speech(audio: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel) -> None:
    """The wiring the seek loop gets: decode the speech timeline, then restore: text and true times."""
    a, b = audio("en/arctic_a0010.wav"), audio("en/arctic_a0024.wav")
    gap = (0.003 * np.random.default_rng(0).standard_normal(40 * SAMPLE_RATE)).astype(np.float32)
    samples = np.concatenate([gap[: 5 * SAMPLE_RATE], a, gap, b])
    regions = list(speech_regions(odd_blocks(samples)))
    timeline = SpeechTimeline(regions)
    assert timeline.duration < (len(a) + len(b)) / SAMPLE_RATE + 4 * 0.4
    source = MelSource(lambda: timeline.speech_samples(odd_blocks(samples)))
    result = tiny_model.transcribe(source, word_timestamps=True, clip_timestamps=timeline.clip_timestamps())
    segments = timeline.restore(result.segments)
    text = result.text.lower()
    assert "playing a single hand in what looks like a losing game" in text
    assert "my reports from the north which chiefly induced people to buy" in text
    b_start = (5 * SAMPLE_RATE + len(a) + len(gap)) / SAMPLE_RATE
    for segment in segments:
        assert any(r.start_time - 0.02 <= w.start <= w.end <= r.end_time + 0.02 for r in regions for w in segment.words)
    north = next(w for s in segments for w in s.words if "north" in w.word.lower())
    assert b_start < north.start < b_start + len(b) / SAMPLE_RATE
    losing = next(w for s in segments for w in s.words if "losing" in w.word.lower())
    assert 5.0 < losing.start < 5.0 + len(a) / SAMPLE_RATE

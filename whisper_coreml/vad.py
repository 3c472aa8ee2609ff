"""Voice activity detection with Silero VAD: which parts of a recording to decode at all.

Whisper hallucinates in long silences and music, and decoding them costs time. faster-whisper's
`vad_filter` answers both by running Silero VAD first and decoding only the speech; this module
gives the same regions (its `get_speech_timestamps` semantics and defaults) but streams: the
audio arrives as blocks of any size and only one network call's worth of samples (16 s) and
the LSTM state are held, so a two-hour file costs no more memory than a two-minute one.

The network is the one the `silero-vad` package ships, in its "sequence" ONNX form (one call
runs the LSTM over up to 512 frames, with per-frame probabilities bit-identical to the stock
frame-by-frame model), run by onnxruntime on one CPU thread. The package is only read for its
model file, never imported: its `__init__` imports torch and sets torch's global thread count.

Use: `regions = list(speech_regions(iter_audio(path)))`, then `SpeechTimeline(regions)` streams
just the speech (`speech_samples`) for the decoder, cuts it into chunks of at most 30 s of
speech (`clip_timestamps`, as faster-whisper's batched decoding does) and maps the decoded
times back onto the original recording (`restore`).
"""

from __future__ import annotations

import bisect
import importlib.util
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from .audio import HOP_LENGTH, N_SAMPLES, SAMPLE_RATE
from .errors import WhisperCoreMLError
from .options import VadOptions
from .result import Segment

FRAME = 512  # samples per Silero frame at 16 kHz: one speech probability each (32 ms)
CONTEXT = 64  # trailing samples of the previous frame the network sees before each frame
MODEL_FILE = "silero_vad_16k_sequence.onnx"
_OUTPUTS = ["speech_probs", "hn", "cn"]
INSTALL_HINT = "pip install 'whisper-coreml[vad]' (or: pip install 'silero-vad>=6.2.3' onnxruntime)"


class VadError(WhisperCoreMLError):
    """Voice activity detection cannot run: its model file or runtime is missing or unreadable."""


@dataclass(frozen=True)
class SpeechRegion:
    """Samples [start, end) of the original 16 kHz audio that hold speech (padding included)."""

    start: int
    end: int

    @property
    def start_time(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_time(self) -> float:
        return self.end / SAMPLE_RATE

    @property
    def frames(self) -> tuple[int, int]:
        """The mel frames [start, end) that cover the region."""
        return self.start // HOP_LENGTH, -(-self.end // HOP_LENGTH)


def _default_model_path() -> Path:
    """The sequence model inside the installed silero-vad, found without importing the package."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise VadError(f"voice activity detection needs the silero-vad package: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / MODEL_FILE
    if not path.is_file():
        raise VadError(f"{path}: the installed silero-vad has no {MODEL_FILE}; pip install -U 'silero-vad>=6.2.3'")
    return path


class SileroVad:
    """The Silero VAD network: speech probabilities for each 512-sample frame of a stream."""

    def __init__(self, model_path: str | Path | None = None, frames_per_call: int = 512) -> None:
        """`model_path`: a Silero sequence ONNX file (input (frames, 576), h, c); the silero-vad one if None.

        faster-whisper's own `silero_vad_v6.onnx` has that interface too (a different training).
        One intra-op thread: a second one does not make this small LSTM faster.
        """
        try:
            import onnxruntime
        except ImportError:
            raise VadError(f"voice activity detection needs onnxruntime: {INSTALL_HINT}") from None
        path = Path(model_path) if model_path is not None else _default_model_path()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # noqa: BLE001  onnxruntime's load errors derive from Exception alone
            raise VadError(f"{path}: not a model onnxruntime can load ({str(e).splitlines()[0]})") from None
        inputs, outputs = ({x.name for x in xs} for xs in (self._session.get_inputs(), self._session.get_outputs()))
        if inputs != {"input", "h", "c"} or not set(_OUTPUTS) <= outputs:
            raise VadError(f"{path}: not a Silero VAD sequence model (input, h, c -> speech_probs, hn, cn)")
        self.model_path = path
        self.frames_per_call = frames_per_call

    def probabilities(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Per-frame speech probabilities (float32 arrays, in order) of 16 kHz mono blocks of any size.

        Frames are consecutive 512-sample slices; as in faster-whisper there are
        len // 512 + 1 of them: the final partial (or empty) frame is zero-padded and its
        last 64 samples are silenced. Only up to one call's samples are ever held.
        """
        stream = _ProbabilityStream(self)
        for block in blocks:
            yield from stream.feed(block)
        yield stream.finish()

    def _run(self, samples: np.ndarray, state: _LstmState) -> np.ndarray:
        """One network call over whole frames, each prefixed with its 64 samples of context."""
        n = len(samples) // FRAME
        batch = np.empty((n, CONTEXT + FRAME), np.float32)
        batch[:, CONTEXT:] = samples.reshape(n, FRAME)
        batch[0, :CONTEXT] = state.context
        batch[1:, :CONTEXT] = batch[:-1, -CONTEXT:]
        state.context = batch[-1, -CONTEXT:].copy()
        probs, state.h, state.c = self._session.run(_OUTPUTS, {"input": batch, "h": state.h, "c": state.c})
        return probs.reshape(-1)


class _ProbabilityStream:
    """`SileroVad.probabilities`, pushed: samples go in as they arrive, probabilities come out a
    network call's worth at a time."""

    def __init__(self, model: SileroVad) -> None:
        self.model = model
        self.state = _LstmState()
        self.step = model.frames_per_call * FRAME
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    def feed(self, block: np.ndarray) -> list[np.ndarray]:
        samples = np.asarray(block, dtype=np.float32)
        if samples.ndim != 1:
            raise ValueError(f"audio blocks must be 1-D mono samples, got shape {samples.shape}")
        self.pending.append(samples)
        self.n_pending += len(samples)
        if self.n_pending < self.step:
            return []
        joined = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        n_full = len(joined) // self.step * self.step
        out = [self.model._run(joined[start : start + self.step], self.state) for start in range(0, n_full, self.step)]
        self.pending, self.n_pending = [joined[n_full:]], len(joined) - n_full
        return out

    def finish(self) -> np.ndarray:
        rest = np.concatenate(self.pending) if self.pending else np.zeros(0, np.float32)
        tail = np.zeros((len(rest) // FRAME + 1) * FRAME, np.float32)
        tail[: len(rest)] = rest
        tail[-CONTEXT:] = 0.0
        return self.model._run(tail, self.state)


class _LstmState:
    """What the network carries from one call to the next."""

    def __init__(self) -> None:
        self.h = np.zeros((1, 1, 128), np.float32)
        self.c = np.zeros((1, 1, 128), np.float32)
        self.context = np.zeros(CONTEXT, np.float32)


@lru_cache
def silero_vad() -> SileroVad:
    """The silero-vad package's model, loaded once per process."""
    return SileroVad()


class _Detector:
    """faster-whisper's hysteresis over frame probabilities, one frame at a time: raw speech spans.

    A span opens at a frame >= threshold and closes once frames < neg_threshold have lasted
    min_silence (its end is where that silence began). A span reaching max_speech is cut at
    its last silence of over 98 ms if it had one (speech resuming after it opens the next
    span), else right there.
    """

    def __init__(self, options: VadOptions) -> None:
        self.min_speech = SAMPLE_RATE * options.min_speech_duration_ms / 1000
        pad = SAMPLE_RATE * options.speech_pad_ms / 1000
        self.max_speech = SAMPLE_RATE * options.max_speech_duration_s - FRAME - 2 * pad
        self.min_silence = SAMPLE_RATE * options.min_silence_duration_ms / 1000
        self.min_split_silence = SAMPLE_RATE * 98 / 1000
        self.start: int | None = None  # of the open span
        self.silence_start = 0  # where the current silence began (0: none)
        self.split_at = 0  # end of the last silence long enough to split at (0: none)
        self.resume_at = 0  # where speech resumed after it
        self.done: list[tuple[int, int]] = []  # completed spans not yet taken

    def step(self, pos: int, speech: bool, silence: bool) -> None:
        """Feed the frame starting at sample `pos`; spans it completes go to `self.done`."""
        if speech and self.silence_start:
            self.silence_start = 0
            if self.resume_at < self.split_at:
                self.resume_at = pos
        if self.start is None:
            if speech:
                self.start = pos
            return
        if pos - self.start > self.max_speech:
            if self.split_at:
                self.done.append((self.start, self.split_at))
                self.start = None if self.resume_at < self.split_at else self.resume_at
            else:
                self.done.append((self.start, pos))
                self.start = None
            self.split_at = self.resume_at = self.silence_start = 0
            if self.start is None:
                return
        if silence:
            if not self.silence_start:
                self.silence_start = pos
            if pos - self.silence_start > self.min_split_silence:
                self.split_at = self.silence_start
            if pos - self.silence_start >= self.min_silence:
                if self.silence_start - self.start > self.min_speech:
                    self.done.append((self.start, self.silence_start))
                self.start = None
                self.split_at = self.resume_at = self.silence_start = 0

    def finish(self, n_samples: int) -> None:
        """Close the span still open when the audio ends, there."""
        if self.start is not None and n_samples - self.start > self.min_speech:
            self.done.append((self.start, n_samples))
        self.start = None


class _Padder:
    """faster-whisper's padding of finished spans; a span is final once the next one is known."""

    def __init__(self, options: VadOptions) -> None:
        self.pad = SAMPLE_RATE * options.speech_pad_ms / 1000
        self.pending: list[int] | None = None  # [start, end] of the span waiting for its successor

    def push(self, start: int, end: int) -> SpeechRegion | None:
        previous = self.pending
        if previous is None:
            self.pending = [int(max(0, start - self.pad)), end]
            return None
        gap = start - previous[1]
        if gap < 2 * self.pad:  # too close to pad both: split the gap between them
            previous[1] += int(gap // 2)
            start = int(max(0, start - gap // 2))
        else:
            previous[1] = int(previous[1] + self.pad)
            start = int(max(0, start - self.pad))
        self.pending = [start, end]
        return SpeechRegion(previous[0], previous[1])

    def finish(self, n_samples: int) -> SpeechRegion | None:
        if self.pending is None:
            return None
        return SpeechRegion(self.pending[0], int(min(n_samples, self.pending[1] + self.pad)))


def speech_regions(
    blocks: Iterable[np.ndarray], options: VadOptions = VadOptions(), model: SileroVad | None = None
) -> Iterator[SpeechRegion]:
    """The speech in a stream of 16 kHz mono float32 blocks (any sizes), region by region as found.

    Equals faster-whisper's `get_speech_timestamps(audio, options)` on the concatenated audio
    with the same model; a region is yielded as soon as the next one starts (the padding
    between two regions depends on both), the last one when the stream ends.
    """
    finder = SpeechFinder(options, model)
    for block in blocks:
        yield from finder.feed(block)
    yield from finder.finish()


class SpeechFinder:
    """`speech_regions`, pushed: for a reader that streams the audio for its own purpose (the
    features' first pass) and lets voice activity detection see the same blocks on the way."""

    def __init__(self, options: VadOptions = VadOptions(), model: SileroVad | None = None) -> None:
        self._stream = _ProbabilityStream(model or silero_vad())
        self._detector, self._padder = _Detector(options), _Padder(options)
        self._threshold, self._silence_threshold = options.threshold, options.silence_threshold
        self._n_samples = self._pos = 0
        # Where speech is cut into windows (`window_s`), the cuts look for the quietest frames:
        # every frame's probability is kept, 4 bytes a frame (900 kB for two hours).
        self._probabilities: list[np.ndarray] | None = [] if options.window_s is not None else None

    @property
    def probabilities(self) -> np.ndarray | None:
        """With `window_s`, every frame's speech probability so far (frame i: samples
        [512 i, 512 (i + 1))); else None."""
        if self._probabilities is None:
            return None
        return np.concatenate(self._probabilities) if self._probabilities else np.zeros(0, np.float32)

    def feed(self, block: np.ndarray) -> list[SpeechRegion]:
        """The regions that became final with this block."""
        self._n_samples += len(block)
        return [region for probs in self._stream.feed(block) for region in self._step(probs)]

    def finish(self) -> list[SpeechRegion]:
        """The regions still open when the audio ends."""
        regions = self._step(self._stream.finish())
        self._detector.finish(self._n_samples)
        regions += _drain(self._detector, self._padder)
        if (region := self._padder.finish(self._n_samples)) is not None:
            regions.append(region)
        return regions

    def _step(self, probs: np.ndarray) -> list[SpeechRegion]:
        if self._probabilities is not None:
            self._probabilities.append(probs)
        regions: list[SpeechRegion] = []
        # compared in float32, as faster-whisper compares the model's float32 scalars
        speech, silence = (probs >= self._threshold).tolist(), (probs < self._silence_threshold).tolist()
        for is_speech, is_silence in zip(speech, silence, strict=True):
            self._detector.step(self._pos, is_speech, is_silence)
            if self._detector.done:
                regions += _drain(self._detector, self._padder)
            self._pos += FRAME
        return regions


def decoded_stretches(
    regions: Iterable[SpeechRegion],
    bridge_gap_s: float,
    window_s: float | None = None,
    probabilities: np.ndarray | None = None,
    silence: float = VadOptions().silence_threshold,
) -> list[SpeechRegion]:
    """The stretches the seek loop decodes: `regions` joined across pauses under `bridge_gap_s`.

    With `window_s`, a stretch longer than that is cut into pieces of at most `window_s`, each
    cut at the quietest moment Silero heard (`probabilities`, one per frame) in the second half
    of the piece it ends, so that a piece ends between sentences rather than inside a phrase.
    """
    bridge = bridge_gap_s * SAMPLE_RATE
    stretches: list[SpeechRegion] = []
    for region in regions:
        if stretches and region.start - stretches[-1].end < bridge:
            stretches[-1] = SpeechRegion(stretches[-1].start, region.end)
        else:
            stretches.append(region)
    if window_s is None:
        return stretches
    limit = round(window_s * SAMPLE_RATE)
    return [piece for s in stretches for piece in _cut(s, limit, probabilities, silence)]


QUIET_WIDTH = 7  # frames (224 ms): a cut needs this much quiet around it, not a single low frame


def _cut(stretch: SpeechRegion, limit: int, probabilities: np.ndarray | None, silence: float) -> list[SpeechRegion]:
    """`stretch` in pieces of at most `limit` samples, each cut in the middle of the pause where
    speech is least likely (the highest probability over QUIET_WIDTH frames around a frame is
    the lowest, the latest such frame on ties; the pause: the frames around it below `silence`);
    without probabilities, every `limit` samples."""
    half = QUIET_WIDTH // 2
    pieces: list[SpeechRegion] = []
    start = stretch.start
    while stretch.end - start > limit:
        end = start + limit
        first, last = -(-(start + limit // 2) // FRAME), (start + limit) // FRAME  # frames a piece may end at
        if probabilities is not None and len(probabilities) and first < last:
            lo, hi = first - half, last + half
            around = probabilities[max(lo, 0) : min(hi, len(probabilities))]
            if len(around):
                around = np.pad(around, (max(-lo, 0), max(hi - len(probabilities), 0)), mode="edge")
                quiet = np.lib.stride_tricks.sliding_window_view(around, QUIET_WIDTH).max(axis=1)
                end = (
                    _middle_of_pause(probabilities, last - 1 - int(np.argmin(quiet[::-1])), silence, first, last)
                    * FRAME
                )
        pieces.append(SpeechRegion(start, end))
        start = end
    pieces.append(SpeechRegion(start, stretch.end))
    return pieces


def _middle_of_pause(probabilities: np.ndarray, frame: int, silence: float, first: int, last: int) -> int:
    """The middle of the run of frames below `silence` around `frame`, kept within [first, last)."""
    start = end = frame
    while start > first and probabilities[start - 1] < silence:
        start -= 1
    while end + 1 < last and probabilities[end + 1] < silence:
        end += 1
    return (start + end + 1) // 2 if probabilities[frame] < silence else frame


def _drain(detector: _Detector, padder: _Padder) -> list[SpeechRegion]:
    regions = [region for span in detector.done if (region := padder.push(*span)) is not None]
    detector.done.clear()
    return regions


@dataclass(frozen=True)
class SpeechChunk:
    """Consecutive regions decoded together: samples [offset, offset + n_samples) of the speech timeline."""

    regions: tuple[SpeechRegion, ...]
    offset: int
    n_samples: int

    @property
    def start(self) -> float:
        return self.offset / SAMPLE_RATE

    @property
    def end(self) -> float:
        return (self.offset + self.n_samples) / SAMPLE_RATE


class SpeechTimeline:
    """The recording with its non-speech cut out, and the way back to the recording's clock.

    The speech timeline is the regions' samples back to back. Decoding runs on it; `restore`
    then maps each time t to t plus the silence removed before the region t falls in, which
    is faster-whisper's `SpeechTimestampsMap` (times rounded to 10 ms as there).
    """

    def __init__(self, regions: Sequence[SpeechRegion], max_chunk_duration: float = 30.0) -> None:
        """`regions` in order and disjoint, as `speech_regions` yields them.

        Chunks group consecutive regions while their speech totals at most
        `max_chunk_duration` (faster-whisper's `collect_chunks` for batched decoding); a
        longer region stands alone.
        """
        self.regions = tuple(regions)
        for a, b in zip(self.regions, self.regions[1:], strict=False):
            if b.start < a.end:
                raise ValueError(f"speech regions must be in order and disjoint: {a} then {b}")
        self._ends: list[int] = []  # each region's end on the speech timeline
        self._shifts: list[float] = []  # seconds of non-speech removed before each region
        removed = previous_end = 0
        for region in self.regions:
            removed += region.start - previous_end
            previous_end = region.end
            self._ends.append(region.end - removed)
            self._shifts.append(removed / SAMPLE_RATE)
        self.n_samples = self._ends[-1] if self._ends else 0
        self.chunks = self._group(max_chunk_duration * SAMPLE_RATE)

    def _group(self, limit: float) -> tuple[SpeechChunk, ...]:
        chunks: list[SpeechChunk] = []
        members: list[SpeechRegion] = []
        offset = size = 0
        for region in self.regions:
            length = region.end - region.start
            if members and size + length > limit:
                chunks.append(SpeechChunk(tuple(members), offset, size))
                offset, members, size = offset + size, [], 0
            members.append(region)
            size += length
        if members:
            chunks.append(SpeechChunk(tuple(members), offset, size))
        return tuple(chunks)

    @property
    def duration(self) -> float:
        """Seconds of speech kept."""
        return self.n_samples / SAMPLE_RATE

    def speech_samples(self, blocks: Iterable[np.ndarray], chunk_samples: int = N_SAMPLES) -> Iterator[np.ndarray]:
        """Stream only the regions' samples out of a fresh pass over the original blocks.

        Yields float32 arrays of `chunk_samples` samples (the last may be shorter), like
        `audio.iter_audio`, so `MelSource(lambda: timeline.speech_samples(iter_audio(path)))`
        serves the speech timeline's windows in bounded memory.
        """
        out: list[np.ndarray] = []
        n_out = pos = index = 0
        for block in blocks:
            end = pos + len(block)
            while index < len(self.regions) and self.regions[index].start < end:
                region = self.regions[index]
                piece = block[max(region.start - pos, 0) : min(region.end, end) - pos]
                if len(piece):
                    out.append(np.asarray(piece, dtype=np.float32))
                    n_out += len(piece)
                if region.end > end:
                    break
                index += 1
            pos = end
            if n_out >= chunk_samples:
                joined = np.concatenate(out)
                n_full = len(joined) // chunk_samples * chunk_samples
                for start in range(0, n_full, chunk_samples):
                    yield joined[start : start + chunk_samples]
                out, n_out = [joined[n_full:]], len(joined) - n_full
            if index == len(self.regions):
                break
        if n_out:
            yield np.concatenate(out)

    def clip_timestamps(self) -> tuple[float, ...]:
        """Start and end of every chunk on the speech timeline, for `TranscriptionOptions.clip_timestamps`.

        The seek loop then begins a fresh window at each chunk, as faster-whisper's batched
        decoding does, instead of letting one window run across unrelated stretches. Times
        are whole mel frames (10 ms), rounded down so the last one is the content's end.
        """
        return tuple(
            t
            for chunk in self.chunks
            for t in (chunk.offset // HOP_LENGTH / 100, (chunk.offset + chunk.n_samples) // HOP_LENGTH / 100)
        )

    def region_index(self, t: float, is_end: bool = False) -> int:
        """The region that speech-timeline time `t` belongs to; at a boundary, the earlier one if `is_end`."""
        if not self.regions:
            raise ValueError("no speech regions: no time on the speech timeline maps back")
        sample = int(t * SAMPLE_RATE)
        index = bisect.bisect_left(self._ends, sample)
        if is_end and index < len(self._ends) and self._ends[index] == sample:
            return index
        return min(bisect.bisect_right(self._ends, sample), len(self._ends) - 1)

    def original_time(self, t: float, is_end: bool = False, region: int | None = None) -> float:
        """Speech-timeline time `t` (seconds) on the original recording's clock."""
        index = self.region_index(t, is_end) if region is None else region
        return round(self._shifts[index] + t, 2)

    def restore(self, segments: Iterable[Segment]) -> tuple[Segment, ...]:
        """Decoded segments with their (and their words') times moved back onto the original audio.

        As faster-whisper: a word's start and end go by the region of its midpoint, so a word
        is never torn across a cut; a segment with words spans its first to last word, one
        without maps its start, and its end as an end (a boundary belongs to the region before).
        """
        restored = []
        for segment in segments:
            if segment.words:
                words = []
                for word in segment.words:
                    index = self.region_index((word.start + word.end) / 2)
                    words.append(
                        replace(
                            word,
                            start=self.original_time(word.start, region=index),
                            end=self.original_time(word.end, region=index),
                        )
                    )
                restored.append(replace(segment, start=words[0].start, end=words[-1].end, words=tuple(words)))
            else:
                restored.append(
                    replace(
                        segment,
                        start=self.original_time(segment.start),
                        end=self.original_time(segment.end, is_end=True),
                    )
                )
        return tuple(restored)

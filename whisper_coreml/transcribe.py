"""Long-form transcription: openai-whisper's seek loop over 30-s windows.

Per window: decode with temperature fallback, gate silence on the no-speech probability,
split the tokens into timestamped segments, and move the window to the last complete
timestamp so no sentence is cut in half. The prompt carries the previous text forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from .audio import HOP_LENGTH, N_FRAMES, SAMPLE_RATE, MelSource
from .decoding import TIME_PRECISION, DecodingOptions, DecodingResult, decode_windows, detect_language
from .engines.base import Engine
from .hallucination import Window as HallucinationWindow
from .hallucination import skip_hallucinations
from .options import TranscriptionOptions
from .packing import Pack
from .result import Segment, TranscriptionResult
from .timing import add_word_timestamps, find_pauses, fit_words_to_pauses, speech_end
from .tokenizer import Tokenizer

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
INPUT_STRIDE = 2  # mel frames per audio position (and per timestamp step)

Progress = Callable[[float, float], None]
"""Called with (seconds done, total seconds) after every window."""


@dataclass(frozen=True)
class SeekState:
    """Where the seek loop stands between two windows: with the segments so far (and the
    language), exactly what it needs to go on as if it had never stopped."""

    seek: int
    clip_idx: int
    prompt_reset_since: int
    last_speech_timestamp: float


@dataclass(frozen=True)
class Resumed:
    """A transcription restored from a journal: its language, state and segments so far."""

    language: str
    state: SeekState
    segments: tuple[Segment, ...]


class WindowJournal(Protocol):
    """Keeps each finished window so that an interrupted transcription resumes after the last
    one (see journal.py); the loop calls `restore` once, `begin` when starting afresh, then
    `window` after every window, skipped ones included."""

    def restore(self) -> Resumed | None: ...

    def begin(self, language: str) -> None: ...

    def window(self, state: SeekState, segments: Sequence[Segment]) -> None: ...


@dataclass(frozen=True)
class Encode:
    """A seek loop's request: the audio features of this (n_mels, 3000) window."""

    mel: np.ndarray


@dataclass(frozen=True)
class Decode:
    """A seek loop's request: this window decoded with these options."""

    features: Any
    tokenizer: Tokenizer
    options: DecodingOptions


@dataclass(frozen=True)
class Together:
    """A seek loop's request: run these loops (independent stretches of its input) side by side
    with everything else; the answer is their results, in order."""

    loops: tuple[Loop, ...]


class Frames(Protocol):
    """Where a seek loop reads its windows: a file's `MelSource`, or a `Pack` of its stretches."""

    @property
    def n_frames(self) -> int: ...

    def window(self, seek: int, n_frames: int | None = None) -> np.ndarray: ...


Request = Encode | Decode | Together
Loop = Generator[Request, Any, Any]
SeekLoop = Generator[Request, Any, TranscriptionResult]
"""A transcription that asks for the model's work (`Encode`, `Decode`) and is sent the answers, so
that a `Batcher` can run the windows of several transcriptions through the engine together."""


def decode_with_fallback(
    features: Any, tokenizer: Tokenizer, base: DecodingOptions, options: TranscriptionOptions
) -> Generator[Request, Any, DecodingResult]:
    """Retry at rising temperatures while the text loops (gzip ratio) or is unlikely (logprob).

    A window that is unlikely but probably silent is not retried: the no-speech gate will
    drop it anyway.
    """
    result = None
    for t in options.temperature:
        # Beam search at T = 0, best-of-N sampling above it (DecodingOptions uses each only there).
        at_t = replace(
            base,
            temperature=t,
            best_of=options.best_of,
            beam_size=options.beam_size,
            patience=options.patience,
            length_penalty=options.length_penalty,
        )
        result = yield Decode(features, tokenizer, at_t)
        too_repetitive = (
            options.compression_ratio_threshold is not None
            and result.compression_ratio > options.compression_ratio_threshold
        )
        too_unlikely = options.logprob_threshold is not None and result.avg_logprob < options.logprob_threshold
        silent = (
            options.no_speech_threshold is not None
            and result.no_speech_prob > options.no_speech_threshold
            and too_unlikely
        )
        if silent or not (too_repetitive or too_unlikely):
            break
    assert result is not None, "at least one temperature is required"
    return result


def split_segments(
    result: DecodingResult, tokenizer: Tokenizer, time_offset: float, segment_size: int
) -> tuple[list[tuple[float, float, list[int]]], int]:
    """Cut a window's tokens at timestamp pairs: [(start, end, tokens)] and how far to seek.

    The window advances to the last complete timestamp pair, so the unfinished sentence after
    it is decoded again with full context; a window ending in a lone timestamp was complete.
    """
    tokens = list(result.tokens)
    ts_begin = tokenizer.timestamp_begin
    is_ts = [t >= ts_begin for t in tokens]
    single_timestamp_ending = _single_timestamp_ending(tokens, tokenizer)
    consecutive = [i + 1 for i in range(len(tokens) - 1) if is_ts[i] and is_ts[i + 1]]
    pieces: list[tuple[float, float, list[int]]] = []
    if consecutive:
        slices = consecutive + ([len(tokens)] if single_timestamp_ending else [])
        last = 0
        for current in slices:
            piece = tokens[last:current]
            start = time_offset + (piece[0] - ts_begin) * TIME_PRECISION
            end = time_offset + (piece[-1] - ts_begin) * TIME_PRECISION
            pieces.append((start, end, piece))
            last = current
        if single_timestamp_ending:
            return pieces, segment_size
        return pieces, (tokens[last - 1] - ts_begin) * INPUT_STRIDE
    duration = segment_size * HOP_LENGTH / SAMPLE_RATE
    timestamps = [t for t in tokens if t >= ts_begin]
    if timestamps and timestamps[-1] != ts_begin:
        duration = (timestamps[-1] - ts_begin) * TIME_PRECISION
    return [(time_offset, time_offset + duration, tokens)], segment_size


def transcribe(
    engine: Engine,
    tokenizer: Tokenizer,
    source: MelSource,
    options: TranscriptionOptions = TranscriptionOptions(),
    progress: Progress | None = None,
    model_name: str = "",
    journal: WindowJournal | None = None,
    batch_size: int = 1,
) -> TranscriptionResult:
    """Transcribe (or translate) everything `source` holds, `batch_size` windows at a time
    (more than one only with `options.independent_stretches`, whose stretches run side by side).

    With a `journal`, windows it already holds are not decoded again: the loop resumes from
    its last state and gives the result an uninterrupted run would have given.
    """
    outcome: list[TranscriptionResult | BaseException] = []
    batcher = Batcher(engine, batch_size)
    batcher.add(seek_loop(engine, tokenizer, source, options, progress, model_name, journal), outcome.append)
    batcher.run()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def seek_loop(
    engine: Engine,
    tokenizer: Tokenizer,
    source: MelSource,
    options: TranscriptionOptions = TranscriptionOptions(),
    progress: Progress | None = None,
    model_name: str = "",
    journal: WindowJournal | None = None,
) -> SeekLoop:
    """`transcribe` as a `SeekLoop`: it yields each window's encoder and decoder work."""
    content_frames = source.n_frames
    if (options.vad is None) != (source.speech is None):
        raise ValueError("options.vad and the MelSource disagree: open the source with vad=options.vad")
    resumed = journal.restore() if journal is not None else None
    language = resumed.language if resumed is not None else options.language
    if language is None:
        if tokenizer.multilingual:
            language, _ = detect_language(engine, engine.encode(source.window(0)), tokenizer)
        else:
            language = "en"
    if journal is not None and resumed is None:
        journal.begin(language)
    tokenizer = tokenizer.with_language(language, options.task)
    base = DecodingOptions(
        task=options.task,
        language=language,
        suppress_tokens=options.suppress_tokens,
        suppress_blank=options.suppress_blank,
        without_timestamps=options.without_timestamps,
        max_initial_timestamp=options.max_initial_timestamp,
        compression_ratio_threshold=options.compression_ratio_threshold,
    )

    if source.speech is not None:  # each stretch of speech is a clip of its own: windows start on the voice
        seek_points = [t for r in source.speech for t in r.frames]
    else:
        seek_points = [round(t * FRAMES_PER_SECOND) for t in options.clip_timestamps] or [0]
    if len(seek_points) % 2 == 1:
        seek_points.append(content_frames)
    # Clips reaching past the end of the audio end with it (an empty window has nothing to decode).
    clips = [(start, min(end, content_frames)) for start, end in zip(seek_points[::2], seek_points[1::2], strict=True)]
    clips = clips or [(content_frames, content_frames)]  # no speech at all: nothing to decode

    initial_prompt = tokenizer.encode(" " + options.initial_prompt.strip()) if options.initial_prompt else []
    remaining_prompt_length = engine.dims.n_text_ctx // 2 - 1 - len(initial_prompt)

    def decode_clips(
        view: Frames,
        clips: Sequence[tuple[int, int]],
        stop: int,
        state: SeekState,
        segments: list[Segment],
        on_window: Callable[[SeekState, Sequence[Segment]], None],
    ) -> Generator[Request, Any, list[Segment]]:
        """Decode `view` from `state` until clip `stop` begins; every finished window (skipped
        ones too) goes to `on_window` with the state after it and its new segments."""
        content_frames = view.n_frames
        all_tokens: list[int] = [*initial_prompt, *(t for s in segments for t in s.tokens)]
        seek, clip_idx = state.seek, state.clip_idx
        prompt_reset_since, last_speech_timestamp = state.prompt_reset_since, state.last_speech_timestamp

        def finish_window(new: Sequence[Segment] = ()) -> None:
            on_window(SeekState(seek, clip_idx, prompt_reset_since, last_speech_timestamp), new)

        while clip_idx < stop:
            clip_start, clip_end = clips[clip_idx]
            seek = max(seek, clip_start)
            if seek >= clip_end:
                clip_idx += 1
                if clip_idx < len(clips):
                    seek = clips[clip_idx][0]
                continue
            time_offset = seek * HOP_LENGTH / SAMPLE_RATE
            segment_size = min(N_FRAMES, content_frames - seek, clip_end - seek)
            mel = view.window(seek, segment_size)
            if np.ptp(mel[:, :segment_size]) < 1e-6:
                # Flat at the floor: nothing in this window comes within 80 dB of the file's peak
                # (digital silence). Whisper hallucinates "you" on such input and the no-speech gate
                # lets it through, so skip the window without decoding it.
                seek += segment_size
                finish_window()
                continue
            features = yield Encode(mel)
            if options.carry_initial_prompt or options.independent_stretches:
                ignored = max(len(initial_prompt), prompt_reset_since)
                prompt = initial_prompt + all_tokens[ignored:][-remaining_prompt_length:]
            else:
                prompt = all_tokens[prompt_reset_since:]
            result = yield from decode_with_fallback(features, tokenizer, replace(base, prompt=tuple(prompt)), options)

            previous_seek = seek
            if options.no_speech_threshold is not None and result.no_speech_prob > options.no_speech_threshold:
                if options.logprob_threshold is None or result.avg_logprob <= options.logprob_threshold:
                    seek += segment_size  # silence: skip the whole window
                    finish_window()
                    continue
            pieces, advance = split_segments(result, tokenizer, time_offset, segment_size)
            seek += advance
            window = [
                Segment(
                    id=0,
                    seek=previous_seek,
                    start=start,
                    end=end,
                    text=tokenizer.decode(piece),
                    tokens=tuple(piece),
                    temperature=result.temperature,
                    avg_logprob=result.avg_logprob,
                    compression_ratio=result.compression_ratio,
                    no_speech_prob=result.no_speech_prob,
                )
                for start, end, piece in pieces
            ]
            if options.word_timestamps:
                window = add_word_timestamps(
                    window,
                    engine,
                    features,
                    tokenizer,
                    segment_size,
                    last_speech_timestamp,
                    options.prepend_punctuations,
                    options.append_punctuations,
                )
                last_word_end = speech_end(window)
                single_ending = _single_timestamp_ending(result.tokens, tokenizer)
                # Unless the window ended on a lone timestamp (speech continues), resume right after
                # the last word rather than at the last timestamp token.
                if not single_ending and last_word_end is not None and last_word_end > time_offset:
                    seek = round(last_word_end * FRAMES_PER_SECOND)
                if options.hallucination_silence_threshold is not None:
                    at = HallucinationWindow(
                        previous_seek, segment_size, content_frames, last_speech_timestamp, single_ending
                    )
                    kept, seek = skip_hallucinations(window, seek, at, options.hallucination_silence_threshold)
                    if kept is None:  # an invention after a long silence: decode from its start instead
                        finish_window()
                        continue
                    window, last_word_end = kept, speech_end(kept)
                if last_word_end is not None:
                    last_speech_timestamp = last_word_end
                if options.words_at_pauses:  # after seeking, so the text stays openai-whisper's
                    pauses = find_pauses(mel[:, :segment_size])
                    window = fit_words_to_pauses(window, [(time_offset + a, time_offset + b) for a, b in pauses])
            first_new = len(segments)
            for segment in window:
                if segment.start == segment.end or not segment.text.strip():
                    # Instantaneous or blank: kept for the record (as openai-whisper does), but empty.
                    segment = replace(segment, text="", tokens=(), words=() if options.word_timestamps else None)
                segments.append(replace(segment, id=len(segments)))
                all_tokens.extend(segment.tokens)
            if not options.condition_on_previous_text or result.temperature > 0.5:
                prompt_reset_since = len(all_tokens)
            finish_window(segments[first_new:])
        return segments

    segments: list[Segment] = []
    state = SeekState(seek=clips[0][0], clip_idx=0, prompt_reset_since=0, last_speech_timestamp=0.0)
    if resumed is not None:
        segments, state = list(resumed.segments), resumed.state
    reported = [state.seek if resumed is not None else 0]

    def record(state: SeekState, new: Sequence[Segment]) -> None:
        if journal is not None:
            journal.window(state, new)
        reported[0] = state.seek
        _report(progress, state.seek, content_frames)

    if resumed is not None:
        _report(progress, state.seek, content_frames)
    if not options.independent_stretches:
        segments = yield from decode_clips(source, clips, len(clips), state, segments, record)
    else:
        # The clips are packed into windows (packing.py), and every pack from the resumed one on
        # is a seek loop of its own, started from nothing; they run side by side and are
        # journaled, a pack at a time, in the file's order.
        window_s = options.vad.window_s if options.vad is not None else None
        limit = N_FRAMES if window_s is None else round(window_s * FRAMES_PER_SECOND)
        packs: list[tuple[Pack, int]] = []  # with how many clips end with them
        for pack in Pack.of(clips, limit):  # packed from the first clip, so a resumed run packs alike
            upto = pack.clips + (packs[-1][1] if packs else 0)
            packs.append((pack, upto))
        packs = [(p, upto) for p, upto in packs if upto > state.clip_idx]
        before = [s for s in segments if not packs or s.seek < packs[0][0].spans[0][0]]

        def decode_packed(pack: Pack) -> Generator[Request, Any, list[Segment]]:
            view = pack.frames(source)
            start = SeekState(0, 0, 0, 0.0)
            decoded = yield from decode_clips(view, [(0, view.n_frames)], 1, start, [], lambda *_: None)
            return pack.place(decoded)

        voiced = [r.frames for r in source.voiced or ()]
        in_order = _InOrder(record, len(before), len(packs), source, [p.spans[0] for p, _ in packs])
        loops = []
        for k, (pack, upto) in enumerate(packs):
            after = SeekState(pack.spans[-1][1], upto, 0, pack.spans[-1][1] / FRAMES_PER_SECOND)

            def decode_pack(pack: Pack = pack, k: int = k, after: SeekState = after) -> Loop:
                placed = yield from decode_packed(pack)
                # speech the decoder passed over in the pack, decoded alone (unless it is the pack)
                missed = [span for span in pack.unheard(placed, voiced) if (span,) != pack.spans]
                for span in missed:
                    placed += yield from decode_packed(Pack((span,), 1))
                if missed:
                    placed.sort(key=lambda s: s.start)
                in_order.window(k, after, placed)
                return placed

            loops.append(in_order.closing(k, decode_pack()))
        decoded = yield Together(tuple(loops))
        segments = [replace(s, id=i) for i, s in enumerate([*before, *(s for part in decoded for s in part)])]
    if reported[0] < content_frames:  # the clips ended before the audio: the rest holds no speech
        _report(progress, content_frames, content_frames)

    return TranscriptionResult(
        segments=tuple(segments),
        language=language,
        duration=source.duration,
        model=model_name,
        task=options.task,
    )


class _InOrder:
    """Windows of clips decoded side by side, passed on (journaled, reported) in the file's order:
    a clip's windows as soon as every clip before it has finished. Segment ids count on from
    those before; the source keeps the audio of the first unfinished clip readable."""

    def __init__(
        self,
        record: Callable[[SeekState, Sequence[Segment]], None],
        passed: int,
        n_clips: int,
        source: MelSource,
        clips: Sequence[tuple[int, int]],
    ) -> None:
        self.record = record
        self.passed = passed
        self.pending: list[list[tuple[SeekState, Sequence[Segment]]]] = [[] for _ in range(n_clips)]
        self.finished = [False] * n_clips
        self.next = 0
        self.source = source
        self.clips = clips
        source.hold(clips[0][0] if clips else None)

    def window(self, clip: int, state: SeekState, new: Sequence[Segment]) -> None:
        self.pending[clip].append((state, new))
        self._flush()

    def closing(
        self, clip: int, loop: Generator[Request, Any, list[Segment]]
    ) -> Generator[Request, Any, list[Segment]]:
        """`loop`, telling this when it has finished."""
        segments = yield from loop
        self.finished[clip] = True
        self._flush()
        return segments

    def _flush(self) -> None:
        while self.next < len(self.pending):
            for state, new in self.pending[self.next]:
                self.record(state, [replace(s, id=self.passed + i) for i, s in enumerate(new)])
                self.passed += len(new)
                self.source.hold(state.seek)
            self.pending[self.next] = []
            if not self.finished[self.next]:
                break
            self.next += 1
            self.source.hold(self.clips[self.next][0] if self.next < len(self.clips) else None)


def _single_timestamp_ending(tokens: Sequence[int], tokenizer: Tokenizer) -> bool:
    """True when the window's tokens end with text then one timestamp (speech runs on)."""
    return [t >= tokenizer.timestamp_begin for t in tokens[-2:]] == [False, True]


def _report(progress: Progress | None, seek: int, content_frames: int) -> None:
    if progress is not None:
        progress(min(seek, content_frames) / FRAMES_PER_SECOND, content_frames / FRAMES_PER_SECOND)


class Batcher:
    """Runs seek loops together: their windows go through the encoder, and then the decoder, in
    batches of up to `batch_size` (see `Engine.encode_batch`, `decoding.decode_windows`).

    Each loop decodes exactly as it would alone; only the engine's work is shared. Loops can be
    added while others run; `done` gets each loop's result, or the exception that ended it
    (which ends that loop only).
    """

    def __init__(self, engine: Engine, batch_size: int = 8) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.waiting: list[tuple[SeekLoop, Request, Callable[[Any], None]]] = []

    def add(self, loop: SeekLoop, done: Callable[[TranscriptionResult | BaseException], None]) -> None:
        self._advance(loop, None, done)

    def run(self) -> None:
        """Until every loop has finished (`add` may be called by a `done` callback meanwhile)."""
        while self.waiting:
            self.step()

    def step(self) -> None:
        """One round: a batch of windows through the encoder if any loop waits for one, else
        every waiting window through the decoder (in batches)."""
        if not self.waiting:
            return
        encodes = [i for i, (_, request, _) in enumerate(self.waiting) if isinstance(request, Encode)]
        chosen = encodes[: self.batch_size] or list(range(len(self.waiting)))
        requests = [self.waiting[i][1] for i in chosen]
        if encodes:  # encode first: every loop then waits at a decode, and they decode together
            answers = self.engine.encode_batch([r.mel for r in requests if isinstance(r, Encode)])
        else:
            work = [(r.features, r.tokenizer, r.options) for r in requests if isinstance(r, Decode)]
            answers = decode_windows(self.engine, work, self.batch_size)
        served = [self.waiting[i] for i in chosen]
        self.waiting = [w for i, w in enumerate(self.waiting) if i not in chosen]
        for (loop, _, done), answer in zip(served, answers, strict=True):
            self._advance(loop, answer, done)

    def _advance(
        self,
        loop: Generator[Request, Any, Any],
        answer: Any,
        done: Callable[[Any], None],
        error: Exception | None = None,
    ) -> None:
        try:
            request = loop.send(answer) if error is None else loop.throw(error)
        except StopIteration as stop:
            done(stop.value)
        except Exception as failure:  # noqa: BLE001 - it ends this loop only; `done` decides what it means
            done(failure)
        else:
            if isinstance(request, Together):
                self._together(loop, request.loops, done)
            else:
                self.waiting.append((loop, request, done))

    def _together(self, parent: Loop, loops: Sequence[Loop], done: Callable[[Any], None]) -> None:
        """Run `loops`, at most a batch of them at a time (each holds a window's features), then
        answer `parent` with their results (or the first error among them)."""
        results: list[Any] = [None] * len(loops)
        queue = list(enumerate(loops))
        left = [len(loops)]

        def start_next() -> None:
            if queue:
                i, loop = queue.pop(0)
                self._advance(loop, None, functools.partial(finish, i))

        def finish(i: int, result: Any) -> None:
            results[i] = result
            left[0] -= 1
            if left[0] == 0:
                failure = next((r for r in results if isinstance(r, Exception)), None)
                self._advance(parent, results, done, failure)
            else:
                start_next()

        if not loops:
            self._advance(parent, [], done)
        for _ in range(min(self.batch_size, len(loops))):
            start_next()

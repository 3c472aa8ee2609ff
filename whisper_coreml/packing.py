"""Stretches of speech packed into windows, for one long file decoded side by side.

faster-whisper's batched mode joins the speech VAD finds into 30-s chunks with the silences
between left out, and decodes each chunk on its own; a window per stretch instead leaves most
of the model's work on padding when the speech comes in short turns (an interview's answers,
a film's lines among music), since the encoder always reads a full 30 s. A `Pack` is such a
chunk of consecutive stretches, with one change: a second of silence (the file's own floor)
between two stretches, where faster-whisper butts them together, so that Whisper hears a
pause between unrelated lines rather than one voice cutting into another's.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .audio import HOP_LENGTH, N_FRAMES, SAMPLE_RATE, MelSource
from .result import Segment, Word

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH
GAP = FRAMES_PER_SECOND  # frames of silence between two stretches of a pack


@dataclass(frozen=True)
class Pack:
    """Consecutive stretches decoded as one: `spans` are their mel frames [start, end) in the
    file, in order, apart; `clips` is how many of the clips given to `of` it holds."""

    spans: tuple[tuple[int, int], ...]
    clips: int
    starts: tuple[int, ...] = field(init=False, repr=False)  # where each span begins in the pack

    def __post_init__(self) -> None:
        starts = itertools.accumulate((b - a + GAP for a, b in self.spans[:-1]), initial=0)
        object.__setattr__(self, "starts", tuple(starts))

    @staticmethod
    def of(clips: Sequence[tuple[int, int]], limit: int) -> list[Pack]:
        """`clips` (frame spans in order) packed greedily, in order, into packs of at most `limit`
        frames, gaps included (a longer clip is a pack of its own). Clips that touch (a stretch
        VAD cut in two, which rounding to frames can overlap by one) join into one span, and
        empty ones go with the pack before them (or the next, at the start)."""
        packs: list[Pack] = []
        spans: list[tuple[int, int]] = []
        taken = size = 0
        for start, stop in clips:
            end = spans[-1][1] if spans else 0
            start = max(start, end)
            if stop <= start:
                taken += 1
                continue
            if spans and start == end:  # no gap: the same stretch of speech goes on
                grown = size + stop - start
            else:
                grown = size + (GAP if spans else 0) + stop - start
            if spans and grown > limit:
                packs.append(Pack(tuple(spans), taken))
                spans, taken, size = [], 0, 0
                grown = stop - start
            if spans and start == spans[-1][1]:
                spans[-1] = (spans[-1][0], stop)
            else:
                spans.append((start, stop))
            taken += 1
            size = grown
        if spans:
            packs.append(Pack(tuple(spans), taken))
        elif packs and taken:
            packs[-1] = Pack(packs[-1].spans, packs[-1].clips + taken)
        return packs

    @property
    def n_frames(self) -> int:
        return self.starts[-1] + self.spans[-1][1] - self.spans[-1][0]

    def frames(self, source: MelSource) -> PackedFrames:
        return PackedFrames(source, self)

    def place(self, segments: Sequence[Segment]) -> list[Segment]:
        """Segments decoded from `frames` (times on the pack's clock, from 0) on the file's clock.

        As faster-whisper's `restore_speech_timestamps`: a word goes by the stretch of its
        midpoint (so it is never torn across a gap), a segment with words spans its first to
        last word; one without maps its start to the stretch at or after it, its end to the
        one at or before it. `seek` is where the segment's window began in the file.
        """
        placed = []
        for s in segments:
            seek = round(self._to_file(s.seek / FRAMES_PER_SECOND, self._span_from(s.seek)) * FRAMES_PER_SECOND)
            if s.words:
                words = tuple(self._place_word(w) for w in s.words)
                placed.append(replace(s, seek=seek, start=words[0].start, end=words[-1].end, words=words))
            else:
                start, end = s.start * FRAMES_PER_SECOND, s.end * FRAMES_PER_SECOND
                placed.append(
                    replace(
                        s,
                        seek=seek,
                        start=self._to_file(s.start, self._span_from(start)),
                        end=self._to_file(s.end, self._span_upto(end)),
                    )
                )
        return placed

    def _place_word(self, word: Word) -> Word:
        """`word` in the stretch it overlaps most (the nearer one when it lies in a gap)."""
        start, end = word.start * FRAMES_PER_SECOND, word.end * FRAMES_PER_SECOND
        first, last = self._span_from(start), self._span_upto(end)
        overlaps = {i: min(end, self._end(i)) - max(start, self.starts[i]) for i in range(first, last + 1)}
        span = max(overlaps, key=overlaps.__getitem__) if overlaps and max(overlaps.values()) > 0 else None
        if span is None:  # in a gap: the nearer stretch
            before, after = self._span_upto(start), self._span_from(end)
            span = before if start - self._end(before) < self.starts[after] - end else after
        return replace(word, start=self._to_file(word.start, span), end=self._to_file(word.end, span))

    def unheard(self, placed: Sequence[Segment], voiced: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """Where in this pack VAD heard a voice (`voiced`: its regions' frames in the file, before
        bridging, in order) and `placed` (this pack's segments, on the file's clock) has no text: speech the
        decoder passed over, as Whisper sometimes does with a short line between longer ones, or
        a quiet voice after a pause. Each comes with the pause before it in its span, as the seek
        loop decodes a bridged pause (Silero may have missed a voice's start there), and unheard
        regions of a span next to each other come as one."""
        heard: list[tuple[float, float]] = []
        for s in placed:
            if s.text.strip():
                heard += [(w.start, w.end) for w in s.words] if s.words else [(s.start, s.end)]
        missed: list[tuple[int, int]] = []
        for a, b in self.spans:
            run: tuple[int, int] | None = None
            previous_end = a
            for v0, v1 in voiced:
                if v0 >= b:  # in order: the rest lie past this span
                    break
                lo, hi = max(a, v0), min(b, v1)
                if lo >= hi:
                    continue
                if any(t0 < hi / FRAMES_PER_SECOND and t1 > lo / FRAMES_PER_SECOND for t0, t1 in heard):
                    if run is not None:
                        missed.append(run)
                    run = None
                else:
                    run = (previous_end, hi) if run is None else (run[0], hi)
                previous_end = hi
            if run is not None:
                missed.append(run)
        return missed

    def _end(self, span: int) -> int:
        return self.starts[span] + self.spans[span][1] - self.spans[span][0]

    def _span_from(self, frame: float) -> int:
        """The span holding `frame`, or the first after it (when `frame` is in a gap)."""
        ends = [self._end(i) for i in range(len(self.spans))]
        return min(bisect.bisect_right(ends, frame), len(self.spans) - 1)

    def _span_upto(self, frame: float) -> int:
        """The span holding `frame` (its end included), or the last before it."""
        return max(bisect.bisect_left(self.starts, frame) - 1, 0)

    def _to_file(self, t: float, span: int) -> float:
        """Pack time `t` (seconds) in the file, within span `span` (clamped to its edges)."""
        a, b = self.spans[span]
        frame = a + min(max(t * FRAMES_PER_SECOND - self.starts[span], 0.0), b - a)
        return round(frame / FRAMES_PER_SECOND, 2)


class PackedFrames:
    """A pack's features as one stream: each span's `MelSource.window` frames, and silent frames
    between them."""

    def __init__(self, source: MelSource, pack: Pack) -> None:
        self.source = source
        self.pack = pack

    @property
    def n_frames(self) -> int:
        return self.pack.n_frames

    def window(self, seek: int, n_frames: int | None = None) -> np.ndarray:
        """(n_mels, 3000) features from frame `seek` of the pack, zero past its content, as
        `MelSource.window` gives them for a file."""
        size = min(N_FRAMES, self.n_frames - seek, N_FRAMES if n_frames is None else n_frames)
        out = np.zeros((self.source.n_mels, N_FRAMES), np.float32)
        if size <= 0:
            return out
        out[:, :size] = self.source.silence
        for (a, b), offset in zip(self.pack.spans, self.pack.starts, strict=True):
            lo, hi = max(seek, offset), min(seek + size, offset + b - a)
            if lo < hi:
                out[:, lo - seek : hi - seek] = self.source.window(a + lo - offset, hi - lo)[:, : hi - lo]
        return out

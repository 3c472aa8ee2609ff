"""openai-whisper's `hallucination_silence_threshold`: drop likely inventions that silence surrounds.

Whisper invents text over long silences ("Thank you.", a loop of dots) and, having seeked past
the silence, loses the speech after it. With word timestamps, openai-whisper scores each
segment's first eight words (very unlikely, implausibly short or long) and, when an anomalous
segment has more than `threshold` seconds of silence on either side, drops it with everything
after it in the window and seeks to where it began, so the next window decodes the speech
that follows afresh. This module is that rule, on our `Segment`s, with its arithmetic kept
exactly so the text equals openai-whisper's under the same option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .audio import HOP_LENGTH, N_FRAMES, SAMPLE_RATE
from .result import Segment, Word
from .timing import speech_end

FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH
PUNCTUATION = "\"'“¿([{-\"'.。,，!！?？:：”)]}、"


def word_anomaly_score(word: Word) -> float:
    """How unlike a spoken word this is: improbable, or far too short or long."""
    duration = word.end - word.start
    score = 1.0 if word.probability < 0.15 else 0.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def is_segment_anomaly(segment: Segment | None) -> bool:
    if segment is None or not segment.words:
        return False
    words = [w for w in segment.words if w.word not in PUNCTUATION][:8]
    score = sum(word_anomaly_score(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def _next_with_words(segments: Sequence[Segment]) -> Segment | None:
    return next((s for s in segments if s.words), None)


@dataclass(frozen=True)
class Window:
    """Where the seek loop stands in one decoded window (frames; seconds where named so)."""

    previous_seek: int  # the window's first frame
    segment_size: int  # frames of content it covered
    content_frames: int  # of the whole input
    last_speech_timestamp: float  # where speech ended before this window
    single_timestamp_ending: bool

    @property
    def time_offset(self) -> float:
        return self.previous_seek / FRAMES_PER_SECOND

    @property
    def end_time(self) -> float:
        """openai-whisper's window_end_time: a full 30 s past the start, however much content."""
        return (self.previous_seek + N_FRAMES) / FRAMES_PER_SECOND


def skip_hallucinations(
    segments: Sequence[Segment], seek: int, window: Window, threshold: float
) -> tuple[list[Segment] | None, int]:
    """The window's segments to keep and where to seek next; None drops the whole window.

    `seek` is where the loop would go without the rule (after the last word, word timing on).
    """
    time_offset = window.time_offset
    if not window.single_timestamp_ending:
        last_word_end = speech_end(segments)
        if last_word_end is not None and last_word_end > time_offset:
            if window.end_time - last_word_end > threshold:
                seek = round(last_word_end * FRAMES_PER_SECOND)
            else:
                seek = window.previous_seek + window.segment_size

    # A first segment that may be invented, after a long silence: skip just the silence.
    first = _next_with_words(segments)
    if first is not None and is_segment_anomaly(first):
        gap = first.start - time_offset
        if gap > threshold:
            return None, window.previous_seek + round(gap * FRAMES_PER_SECOND)

    # Any later one surrounded by silence or by more anomalies: cut it and what follows.
    kept = list(segments)
    last_end = window.last_speech_timestamp
    for index, segment in enumerate(kept):
        if not segment.words:
            continue
        if is_segment_anomaly(segment):
            following = _next_with_words(kept[index + 1 :])
            next_start = following.words[0].start if following is not None and following.words else None
            if next_start is None:
                next_start = time_offset + window.segment_size / FRAMES_PER_SECOND
            silence_before = (
                segment.start - last_end > threshold or segment.start < threshold or segment.start - time_offset < 2.0
            )
            silence_after = (
                next_start - segment.end > threshold
                or is_segment_anomaly(following)
                or window.end_time - segment.end < 2.0
            )
            if silence_before and silence_after:
                seek = round(max(time_offset + 1, segment.start) * FRAMES_PER_SECOND)
                if window.content_frames / FRAMES_PER_SECOND - segment.end < threshold:
                    seek = window.content_frames
                del kept[index:]
                break
        last_end = segment.end
    return kept, seek

"""Word timestamps: where each word sits in the audio, from the decoder's own cross-attention.

Some cross-attention heads of a trained Whisper ("alignment heads", listed with each checkpoint)
look at the audio frames being spoken. Teacher-forcing the decoded text once more and reading
those heads gives a token x frame attention matrix; dynamic time warping finds the monotonic
path through it, and the path's jumps are where words start and end. The semantics (median
filter of width 7, z-normalisation over tokens, punctuation merging, duration clamps, repair of
segment boundaries) are openai-whisper's, so times match it on the same weights.

Every engine provides the heads' weights (`Engine.align`), so this works on PyTorch, Core ML
and the reference executor alike.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .audio import HOP_LENGTH, SAMPLE_RATE
from .engines.base import Engine
from .result import Segment, Word
from .tokenizer import Tokenizer

FRAMES_PER_TOKEN = 2  # the encoder halves the mel frame rate
TOKENS_PER_SECOND = SAMPLE_RATE / HOP_LENGTH / FRAMES_PER_TOKEN  # 50 audio positions per second
SENTENCE_END_MARKS = ".。!！?？"


@dataclass
class _Timing:
    """A word while its timing is being worked out (merging punctuation edits it in place)."""

    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a sliding window of odd `width` along the last axis, edges reflected."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.sort(windows, axis=-1)[..., pad]


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotonic path through `cost` (N, M) from (0, 0) to (N-1, M-1).

    Returns the row and column index of every step. Cells on one anti-diagonal depend only on
    the two before it, so each diagonal is one vectorised step (a 200 x 1500 matrix takes
    1700 numpy steps, not 300,000 Python ones). Ties break as openai-whisper's DTW breaks them:
    diagonal only when strictly cheapest, then up, else left.
    """
    n, m = cost.shape
    total = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    total[0, 0] = 0
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        diagonal, up, left = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        choice = np.where((diagonal < up) & (diagonal < left), 0, np.where((up < diagonal) & (up < left), 1, 2)).astype(
            np.int8
        )
        best = np.choose(choice, [diagonal, up, left])
        total[i, j] = cost[i - 1, j - 1] + best
        trace[i, j] = choice
    trace[0, :] = 2
    trace[:, 0] = 1
    rows, cols = [], []
    i, j = n, m
    while i > 0 or j > 0:
        rows.append(i - 1)
        cols.append(j - 1)
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    return np.array(rows[::-1]), np.array(cols[::-1])


def find_alignment(
    engine: Engine,
    features: Any,
    tokenizer: Tokenizer,
    text_tokens: Sequence[int],
    num_frames: int,
    medfilt_width: int = 7,
) -> list[_Timing]:
    """Start, end and mean token probability of every word of `text_tokens` in one window.

    `num_frames` is how many mel frames of the window hold audio: attention beyond them
    (padding) is cut off and the rest renormalised, which is the softmax over the real frames.
    """
    if not text_tokens:
        return []
    sot = tokenizer.sot_sequence
    tokens = [*sot, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]
    following, weights = engine.align(features, tokens, tokenizer.eot)
    probs = following[len(sot) : len(sot) + len(text_tokens)]  # each text token's probability

    weights = weights[:, :, : num_frames // FRAMES_PER_TOKEN].astype(np.float32)
    weights = weights / weights.sum(axis=-1, keepdims=True)
    weights = (weights - weights.mean(axis=-2, keepdims=True)) / weights.std(axis=-2, keepdims=True)
    matrix = median_filter(weights, medfilt_width).mean(axis=0)[len(sot) : -1]
    text_indices, time_indices = dtw(-matrix.astype(np.float64))

    words, word_tokens = tokenizer.split_to_word_tokens([*text_tokens, tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] / TOKENS_PER_SECOND
    return [
        _Timing(word, tokens, start, end, float(np.mean(probs[i:j])))
        for word, tokens, start, end, i, j in zip(
            words,
            word_tokens,
            jump_times[boundaries[:-1]],
            jump_times[boundaries[1:]],
            boundaries[:-1],
            boundaries[1:],
            strict=False,  # the final <|endoftext|> "word" has no span
        )
    ]


def merge_punctuations(alignment: list[_Timing], prepended: str, appended: str) -> None:
    """Fold opening punctuation into the following word and closing punctuation into the
    preceding one, so a quote or full stop never becomes a word of its own."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def add_word_timestamps(
    segments: Sequence[Segment],
    engine: Engine,
    features: Any,
    tokenizer: Tokenizer,
    num_frames: int,
    last_speech_timestamp: float,
    prepend_punctuations: str,
    append_punctuations: str,
) -> list[Segment]:
    """`segments` of one window with their words, and their start/end moved to the speech.

    Words longer than twice the median word (capped at 0.7 s) are clamped next to sentence
    ends, where attention tends to smear into the pause; a segment's first/last word and the
    segment's own timestamps are reconciled so neither runs half a second past the other.
    """
    if not segments:
        return []
    tokens_per_segment = [[t for t in s.tokens if t < tokenizer.eot] for s in segments]
    alignment = find_alignment(
        engine, features, tokenizer, [t for tokens in tokens_per_segment for t in tokens], num_frames
    )
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median_duration = min(0.7, float(np.median(durations))) if len(durations) else 0.0
    max_duration = median_duration * 2
    if len(durations):
        for previous, timing in itertools.pairwise(alignment):
            if timing.end - timing.start > max_duration:
                if timing.word in SENTENCE_END_MARKS:
                    timing.end = timing.start + max_duration
                elif previous.word in SENTENCE_END_MARKS:
                    timing.start = timing.end - max_duration
    merge_punctuations(alignment, prepend_punctuations, append_punctuations)

    time_offset = segments[0].seek * HOP_LENGTH / SAMPLE_RATE
    result: list[Segment] = []
    index = 0
    for segment, text_tokens in zip(segments, tokens_per_segment, strict=True):
        words: list[list[Any]] = []  # [start, end, word, probability], edited below
        saved = 0
        while index < len(alignment) and saved < len(text_tokens):
            timing = alignment[index]
            if timing.word:
                words.append(
                    [
                        round(time_offset + timing.start, 2),
                        round(time_offset + timing.end, 2),
                        timing.word,
                        timing.probability,
                    ]
                )
            saved += len(timing.tokens)
            index += 1
        start, end = segment.start, segment.end
        if words:
            first = words[0]
            # A first word that ends long after the previous speech and is itself too long
            # has absorbed a pause: cut it (and a too-long second word) to max_duration.
            if first[1] - last_speech_timestamp > median_duration * 4 and (
                first[1] - first[0] > max_duration or (len(words) > 1 and words[1][1] - first[0] > max_duration * 2)
            ):
                if len(words) > 1 and words[1][1] - words[1][0] > max_duration:
                    boundary = max(words[1][1] / 2, words[1][1] - max_duration)
                    first[1] = words[1][0] = boundary
                first[0] = max(0, first[1] - max_duration)
            if start < first[1] and start - 0.5 > first[0]:
                first[0] = max(0, min(first[1] - median_duration, start))
            else:
                start = first[0]
            last = words[-1]
            if end > last[0] and end + 0.5 < last[1]:
                last[1] = max(last[0] + median_duration, end)
            else:
                end = last[1]
            last_speech_timestamp = end
        result.append(
            replace(
                segment,
                start=float(start),
                end=float(end),
                words=tuple(Word(float(s), float(e), w, float(p)) for s, e, w, p in words),
            )
        )
    return result


def find_pauses(mel: np.ndarray, depth: float = 0.875, min_pause: float = 0.15) -> list[tuple[float, float]]:
    """Silences in one window's log-mel (n_mels, frames of audio), in seconds from its start.

    A frame is quiet when its loudest band sits `depth` below the window's loud frames (95th
    percentile); in Whisper's normalised log-mel one unit is 40 dB, so the default is 35 dB.
    Runs of quiet frames at least `min_pause` long are pauses.
    """
    if mel.shape[1] == 0:
        return []
    loudness = mel.max(axis=0)
    quiet = np.concatenate([[False], loudness < np.percentile(loudness, 95) - depth, [False]])
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))
    hop = HOP_LENGTH / SAMPLE_RATE
    runs = zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True)
    return [(a * hop, b * hop) for a, b in runs if (b - a) * hop >= min_pause]


def fit_words_to_pauses(segments: Sequence[Segment], pauses: Sequence[tuple[float, float]]) -> list[Segment]:
    """Move word edges out of the pauses the audio shows.

    Attention-based word times give the silence before a word to that word (or the one
    before): "letters" ends at 82.63 s and "than" starts there, though "than" is spoken from
    83.06 s. Subtitle cues then cannot see the pause between sentences. A pause over a word's
    start or end trims it; a pause inside a word cuts it on its shorter side (the short part
    being the neighbour's tail or the next word's lead). `pauses` are absolute seconds.
    """
    spans = [[w.start, w.end] for s in segments for w in s.words or ()]
    for g0, g1 in pauses:
        for i, (a, b) in enumerate(spans):
            if b <= g0 or a >= g1:
                continue
            if a >= g0:  # the pause covers the word's start
                if g1 < b - 0.05:
                    spans[i][0] = g1
            elif b <= g1:  # the pause covers its end
                if g0 > a + 0.05:
                    spans[i][1] = g0
            elif g0 - a < b - g1:  # inside, closer to the start: the lead was the previous word's tail
                spans[i][0] = g1
                if i > 0:
                    spans[i - 1][1] = max(spans[i - 1][1], g0)
            else:
                spans[i][1] = g0
    fitted: list[Segment] = []
    index = 0
    for segment in segments:
        words = []
        for word in segment.words or ():
            a, b = spans[index]
            words.append(replace(word, start=round(float(a), 2), end=round(float(b), 2)))
            index += 1
        fitted.append(replace(segment, words=tuple(words)) if segment.words else segment)
    return fitted


def speech_end(segments: Sequence[Segment]) -> float | None:
    """Where the last word of `segments` ends, else the last segment's end (None if empty)."""
    for segment in reversed(segments):
        if segment.words:
            return segment.words[-1].end
    return segments[-1].end if segments else None

"""Decoding one 30-s window: openai-whisper's greedy decoder and logit rules, engine-agnostic.

The rules (blank and non-speech suppression, timestamp pairing and monotonicity, the initial
timestamp cap, the timestamp-versus-text probability rule) are what make Whisper's timestamps
usable for subtitles; they are reproduced here with openai-whisper's exact semantics, on numpy
logits, so every engine decodes identically.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .engines.base import Engine
from .tokenizer import Tokenizer

CHUNK_LENGTH = 30
TIME_PRECISION = 0.02  # seconds per timestamp token: 30 s / 1500 audio positions


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode one window (openai-whisper's names and defaults)."""

    task: str = "transcribe"
    language: str | None = None
    temperature: float = 0.0
    sample_len: int | None = None  # at most this many new tokens; default n_text_ctx // 2
    best_of: int = 1  # independent samples when temperature > 0; the likeliest wins
    prompt: tuple[int, ...] = ()  # previous text, after <|startofprev|>
    prefix: tuple[int, ...] = ()  # forced start of the current text
    suppress_tokens: str | Sequence[int] = "-1"  # "-1" = the non-speech symbols
    suppress_blank: bool = True
    without_timestamps: bool = False
    max_initial_timestamp: float | None = 1.0
    seed: int = 0  # sampling is reproducible run to run


@dataclass(frozen=True)
class DecodingResult:
    """The chosen sequence for a window and the statistics that drive fallback and gating."""

    tokens: tuple[int, ...]
    text: str
    language: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float


def compression_ratio(text: str) -> float:
    """gzip ratio of the text: high values mean a repetition loop."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64, robust to -inf entries."""
    x = logits.astype(np.float64)
    top = x.max(axis=-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


class LogitFilter(Protocol):
    """A rule applied in place to the next-token logits (B, V) given the tokens so far (B, T)."""

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None: ...


class SuppressBlank:
    """The first sampled token may be neither a bare space nor end-of-text."""

    def __init__(self, tokenizer: Tokenizer, sample_begin: int) -> None:
        self.ids = [*tokenizer.encode(" "), tokenizer.eot]
        self.sample_begin = sample_begin

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.ids] = -np.inf


class SuppressTokens:
    """Never sample these tokens (non-speech symbols, task and control tokens)."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = list(ids)

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        logits[:, self.ids] = -np.inf


class ApplyTimestampRules:
    """Timestamps come in pairs, never decrease, start the text, and win when likelier in sum."""

    def __init__(self, tokenizer: Tokenizer, sample_begin: int, max_initial_timestamp_index: int | None) -> None:
        self.eot = tokenizer.eot
        self.no_timestamps = tokenizer.no_timestamps
        self.ts_begin = tokenizer.timestamp_begin
        self.sample_begin = sample_begin
        self.max_initial_timestamp_index = max_initial_timestamp_index

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        ts = self.ts_begin
        logits[:, self.no_timestamps] = -np.inf
        for k in range(tokens.shape[0]):
            sampled = tokens[k, self.sample_begin :]
            last_was_ts = len(sampled) >= 1 and sampled[-1] >= ts
            penultimate_was_ts = len(sampled) < 2 or sampled[-2] >= ts
            if last_was_ts:
                if penultimate_was_ts:  # a closed pair: text (or end) must follow
                    logits[k, ts:] = -np.inf
                else:  # an open pair: close it, or end
                    logits[k, : self.eot] = -np.inf
            timestamps = sampled[sampled >= ts]
            if len(timestamps) > 0:
                # never go back in time; a segment that just opened must have nonzero length
                last = timestamps[-1] if last_was_ts and not penultimate_was_ts else timestamps[-1] + 1
                logits[k, ts:last] = -np.inf
        if tokens.shape[1] == self.sample_begin:
            logits[:, :ts] = -np.inf  # the text starts with a timestamp
            if self.max_initial_timestamp_index is not None:
                logits[:, ts + self.max_initial_timestamp_index + 1 :] = -np.inf
        logprobs = log_softmax(logits)
        with np.errstate(divide="ignore"):
            ts_logprob = np.logaddexp.reduce(logprobs[:, ts:], axis=-1)
        text_logprob = logprobs[:, :ts].max(axis=-1)
        logits[ts_logprob > text_logprob, :ts] = -np.inf


def detect_language(engine: Engine, features: Any, tokenizer: Tokenizer) -> tuple[str, dict[str, float]]:
    """The likeliest language and every language's probability, from the logits after SOT."""
    logits = engine.decoder(features).step(np.array([[tokenizer.sot]]))[0, -1].astype(np.float64)
    ids = np.array(tokenizer.all_language_tokens)
    lang_logits = logits[ids]
    probs = np.exp(lang_logits - lang_logits.max())
    probs /= probs.sum()
    codes = tokenizer.all_language_codes
    return codes[int(probs.argmax())], {c: float(p) for c, p in zip(codes, probs, strict=True)}


class WindowDecoder:
    """Greedy (T=0) or best-of-N sampling (T>0) decoding of one window, openai-whisper style."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, options: DecodingOptions) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.options = options
        n_ctx = engine.dims.n_text_ctx
        self.n_ctx = n_ctx
        self.sample_len = options.sample_len or n_ctx // 2
        sot_sequence = list(tokenizer.sot_sequence)
        if options.without_timestamps:
            sot_sequence.append(tokenizer.no_timestamps)
        initial = sot_sequence + list(options.prefix[-(n_ctx // 2 - self.sample_len) :] if options.prefix else [])
        if options.prompt:
            initial = [tokenizer.sot_prev, *options.prompt[-(n_ctx // 2 - 1) :], *initial]
        self.initial_tokens = tuple(initial)
        self.sample_begin = len(initial)
        self.sot_index = initial.index(tokenizer.sot)
        self.filters: list[LogitFilter] = []
        if options.suppress_blank:
            self.filters.append(SuppressBlank(tokenizer, self.sample_begin))
        if suppress := self._suppress_tokens():
            self.filters.append(SuppressTokens(suppress))
        if not options.without_timestamps:
            max_index = None
            if options.max_initial_timestamp:
                max_index = round(options.max_initial_timestamp / TIME_PRECISION)
            self.filters.append(ApplyTimestampRules(tokenizer, self.sample_begin, max_index))

    def _suppress_tokens(self) -> list[int]:
        spec = self.options.suppress_tokens
        ids = [int(t) for t in spec.split(",") if t.strip()] if isinstance(spec, str) else list(spec)
        if -1 in ids:
            ids = [t for t in ids if t >= 0] + list(self.tokenizer.non_speech_tokens)
        t = self.tokenizer
        ids += [t.transcribe, t.translate, t.sot, t.sot_prev, t.sot_lm, t.no_speech]
        return sorted(set(ids))

    def decode(self, features: Any) -> DecodingResult:
        """Decode `features`; with best_of > 1 at T > 0, the likeliest of the samples wins."""
        options = self.options
        n = options.best_of if options.temperature > 0 else 1
        eot = self.tokenizer.eot
        rng = np.random.default_rng(options.seed)
        session = self.engine.decoder(features, n)
        tokens = np.tile(np.array(self.initial_tokens, dtype=np.int64), (n, 1))
        sum_logprobs = np.zeros(n)
        logits_at = session.step(tokens, positions=(self.sot_index, -1))
        sot_logits = logits_at[0, 0].astype(np.float64)
        no_speech_prob = float(np.exp(log_softmax(sot_logits[None])[0, self.tokenizer.no_speech]))
        logits = logits_at[:, -1].copy()
        for _ in range(self.sample_len):
            for f in self.filters:
                f.apply(logits, tokens)
            logprobs = log_softmax(logits)
            if options.temperature == 0:
                next_tokens = logits.argmax(axis=-1)
            else:
                scaled = logprobs / options.temperature
                gumbel = -np.log(-np.log(rng.random(scaled.shape)))
                next_tokens = (scaled + gumbel).argmax(axis=-1)
            finished = tokens[:, -1] == eot
            sum_logprobs += np.where(finished, 0.0, logprobs[np.arange(n), next_tokens])
            next_tokens[finished] = eot
            tokens = np.concatenate([tokens, next_tokens[:, None]], axis=1)
            if (next_tokens == eot).all() or tokens.shape[1] > self.n_ctx:
                break
            logits = session.step(next_tokens[:, None])[:, -1].copy()
        candidates = []
        for row in tokens:
            sampled = row[self.sample_begin :].tolist()
            candidates.append(tuple(sampled[: sampled.index(eot)] if eot in sampled else sampled))
        scores = [lp / max(len(c), 1) for c, lp in zip(candidates, sum_logprobs, strict=True)]
        best = int(np.argmax(scores))
        chosen = candidates[best]
        text = self.tokenizer.decode(chosen).strip()
        return DecodingResult(
            tokens=chosen,
            text=text,
            language=self.tokenizer.language or "en",
            avg_logprob=float(sum_logprobs[best] / (len(chosen) + 1)),
            no_speech_prob=no_speech_prob,
            temperature=options.temperature,
            compression_ratio=compression_ratio(text),
        )


def decode_window(engine: Engine, features: Any, tokenizer: Tokenizer, options: DecodingOptions) -> DecodingResult:
    """Decode one window's features with `options`."""
    return WindowDecoder(engine, tokenizer.with_language(options.language, options.task), options).decode(features)

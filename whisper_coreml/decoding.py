"""Decoding one 30-s window: openai-whisper's greedy, best-of-N and beam search decoders and logit rules.

The rules (blank and non-speech suppression, timestamp pairing and monotonicity, the initial
timestamp cap, the timestamp-versus-text probability rule) are what make Whisper's timestamps
usable for subtitles; they are reproduced here with openai-whisper's exact semantics, on numpy
logits, so every engine decodes identically. Beam search keeps `beam_size` live sequences in one decoder
session and asks the engine to `reorder` its cached rows after every step.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from .engines.base import Engine
from .errors import WhisperCoreMLError
from .tokenizer import Tokenizer

CHUNK_LENGTH = 30
LOOP_WINDOW = 60  # tokens whose text shows a repetition loop (WhisperKit's compressionCheckWindow)
LOOP_CHECK_EVERY = 10  # tokens between two looks
TIME_PRECISION = 0.02  # seconds per timestamp token: 30 s / 1500 audio positions


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode one window (openai-whisper's names and defaults)."""

    task: str = "transcribe"
    language: str | None = None
    temperature: float = 0.0
    sample_len: int | None = None  # at most this many new tokens; default n_text_ctx // 2
    best_of: int = 1  # independent samples when temperature > 0; the likeliest wins
    beam_size: int | None = None  # beam search at temperature 0 (None: greedy)
    patience: float | None = None  # beam search stops after round(beam_size * patience) finished sequences
    length_penalty: float | None = None  # None: rank by logprob / length; else Google NMT's ((5 + n) / 6) ** alpha
    prompt: tuple[int, ...] = ()  # previous text, after <|startofprev|>
    prefix: tuple[int, ...] = ()  # forced start of the current text
    suppress_tokens: str | Sequence[int] = "-1"  # "-1" = the non-speech symbols
    suppress_blank: bool = True
    without_timestamps: bool = False
    max_initial_timestamp: float | None = 1.0
    seed: int = 0  # sampling is reproducible run to run
    # A greedy or sampled sequence whose last LOOP_WINDOW tokens compress beyond this has looped:
    # it stops there instead of repeating to `sample_len` (see `Sampling.looping`). None: never.
    compression_ratio_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.beam_size is not None and self.beam_size < 1:
            raise DecodingOptionsError(f"beam_size must be at least 1, got {self.beam_size}")
        if self.patience is not None and self.beam_size is None:
            raise DecodingOptionsError("patience needs beam_size (it only applies to beam search)")
        if self.patience is not None and round((self.beam_size or 1) * self.patience) < 1:
            raise DecodingOptionsError(f"patience {self.patience} leaves no finished sequence to wait for")
        if self.length_penalty is not None and not 0 <= self.length_penalty <= 1:
            raise DecodingOptionsError(f"length_penalty must be between 0 and 1, got {self.length_penalty}")


class DecodingOptionsError(WhisperCoreMLError):
    """Decoding options that contradict each other or are out of range."""


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


def log_normalizers(logits: np.ndarray) -> np.ndarray:
    """Each row's log-sum-exp, the term `log_softmax` subtracts, in float64: a token's
    log-probability is then `logits[row, token] - normalizer[row]`.

    Greedy and beam search read a few log-probabilities per row, not the whole row, so they
    take this instead of `log_softmax`: exponentials in float32 summed in float64 are five
    times faster than a float64 pass (which was a tenth of a batch's time at 35 rows of 51,864
    a step) and within 3e-8 of it; openai-whisper computes the whole softmax in float32.
    """
    top = logits.max(axis=-1, keepdims=True)
    return top[..., 0].astype(np.float64) + np.log(np.exp(logits - top).sum(axis=-1, dtype=np.float64))


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` largest `values`, largest first; ties go to the lower index (deterministic)."""
    k = min(k, len(values))
    top = values.max()
    for margin in (4.0, 16.0):
        # Whisper's likeliest tokens lie within a few logits of the best: sort only those when
        # there are k of them (a full partition of the vocabulary took most of a beam's step).
        near = np.flatnonzero(values >= top - margin)
        if len(near) > 4096:  # a flat distribution: sorting these would cost more than partitioning
            break
        if len(near) >= k:
            return near[np.argsort(-values[near], kind="stable")[:k]]
    kth = np.partition(values, len(values) - k)[len(values) - k]
    above = np.flatnonzero(values > kth)
    tied = np.flatnonzero(values == kth)[: k - len(above)]
    chosen = np.concatenate([above, tied])
    return chosen[np.argsort(-values[chosen], kind="stable")]


def rank(candidates: Sequence[Sequence[int]], sum_logprobs: Sequence[float], length_penalty: float | None) -> int:
    """The candidate with the best length-normalised log-probability (openai-whisper's maximum likelihood ranker).

    Without a penalty the sum is divided by the length; with one, by Google NMT's
    ((5 + length) / 6) ** length_penalty, which favours longer sequences less as it falls to 0.
    """
    scores = []
    for tokens, logprob in zip(candidates, sum_logprobs, strict=True):
        n = len(tokens)
        scores.append(logprob / (max(n, 1) if length_penalty is None else ((5 + n) / 6) ** length_penalty))
    return int(np.argmax(scores))


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
        # Timestamps in sum against the likeliest text token, in log-probabilities: both share the
        # softmax's normaliser, so logits compare the same, without a pass over the vocabulary.
        stamps = logits[:, ts:].astype(np.float64)
        top = stamps.max(axis=-1)
        with np.errstate(invalid="ignore"):  # no timestamp allowed: -inf - -inf, NaN, never larger
            ts_sum = top + np.log(np.exp(stamps - top[:, None]).sum(axis=-1))
        logits[ts_sum > logits[:, :ts].max(axis=-1), :ts] = -np.inf


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
    """Greedy or beam search (T=0), or best-of-N sampling (T>0) decoding of one window, openai-whisper style."""

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
        self.filters = self.filters_at(self.sample_begin)

    def filters_at(self, sample_begin: int) -> list[LogitFilter]:
        """openai-whisper's logit rules for text sampled from column `sample_begin` on."""
        filters: list[LogitFilter] = []
        if self.options.suppress_blank:
            filters.append(SuppressBlank(self.tokenizer, sample_begin))
        if suppress := self._suppress_tokens():
            filters.append(SuppressTokens(suppress))
        if not self.options.without_timestamps:
            max_index = None
            if self.options.max_initial_timestamp:
                max_index = round(self.options.max_initial_timestamp / TIME_PRECISION)
            filters.append(ApplyTimestampRules(self.tokenizer, sample_begin, max_index))
        return filters

    def _suppress_tokens(self) -> list[int]:
        spec = self.options.suppress_tokens
        ids = [int(t) for t in spec.split(",") if t.strip()] if isinstance(spec, str) else list(spec)
        if -1 in ids:
            ids = [t for t in ids if t >= 0] + list(self.tokenizer.non_speech_tokens)
        t = self.tokenizer
        ids += [t.transcribe, t.translate, t.sot, t.sot_prev, t.sot_lm, t.no_speech]
        return sorted(set(ids))

    @property
    def rows(self) -> int:
        """Sequences decoded at once: the beams, the samples, or one."""
        options = self.options
        if options.temperature == 0:
            return options.beam_size or 1
        return options.best_of

    def decode(self, features: Any) -> DecodingResult:
        """Decode `features`: beam search at T = 0 with a beam size, else greedy or best-of-N sampling."""
        return decode_batch([self], [features])[0]

    def search(self, padding: int) -> Search:
        """This window's search, on token rows that start with `padding` filler tokens."""
        tokens = np.tile(np.array([0] * padding + list(self.initial_tokens), dtype=np.int64), (self.rows, 1))
        if self.options.temperature == 0 and self.options.beam_size:
            return BeamSearch(self, tokens, padding)
        return Sampling(self, tokens, padding)

    def result(self, search: Search, no_speech_prob: float) -> DecodingResult:
        """The best candidate of a finished search (every search is ranked the same way, `rank`)."""
        candidates, sum_logprobs = search.candidates()
        best = rank(candidates, sum_logprobs, self.options.length_penalty)
        chosen = tuple(int(t) for t in candidates[best])  # plain ints: results are JSON (journals, outputs)
        text = self.tokenizer.decode(chosen).strip()
        # a sequence stopped in a loop reports the loop's ratio, so the temperature fallback sees it
        ratio = max(compression_ratio(text), search.loop_ratios.get(best, 0.0))
        return DecodingResult(
            tokens=chosen,
            text=text,
            language=self.tokenizer.language or "en",
            avg_logprob=float(sum_logprobs[best] / (len(chosen) + 1)),
            no_speech_prob=no_speech_prob,
            temperature=self.options.temperature,
            compression_ratio=ratio,
        )


class Search:
    """One window's sequences between decoder steps: `advance` picks the next tokens from the
    logits (rules already applied) and says which cached rows go on, or None when done."""

    def __init__(self, decoder: WindowDecoder, tokens: np.ndarray, padding: int) -> None:
        self.decoder = decoder
        self.tokens = tokens  # (rows, padding + tokens so far)
        self.padding = padding
        self.sample_begin = padding + decoder.sample_begin
        self.eot = decoder.tokenizer.eot
        self.loop_ratios: dict[int, float] = {}  # candidate -> its loop's compression ratio, where one stopped it

    def too_long(self) -> bool:
        """The window's own tokens (filler not counted) fill the decoder's context."""
        return self.tokens.shape[1] - self.padding > self.decoder.n_ctx

    def candidate(self, sequence: Sequence[int]) -> tuple[int, ...]:
        """The sampled part of a sequence, up to (without) its end-of-text."""
        sampled = [int(t) for t in sequence[self.sample_begin :]]  # numpy rows hold np.int64, which JSON refuses
        return tuple(sampled[: sampled.index(self.eot)] if self.eot in sampled else sampled)

    def loop_ratio(self, sequence: np.ndarray) -> float | None:
        """The compression ratio of `sequence`'s last LOOP_WINDOW tokens when it is time to look
        (every LOOP_CHECK_EVERY tokens) and it is past `compression_ratio_threshold`; else None."""
        threshold = self.decoder.options.compression_ratio_threshold
        sampled = len(sequence) - self.sample_begin
        if threshold is None or sampled < LOOP_WINDOW or sampled % LOOP_CHECK_EVERY:
            return None
        ratio = compression_ratio(self.decoder.tokenizer.decode(sequence[-LOOP_WINDOW:].tolist()))
        return ratio if ratio > threshold else None

    def advance(self, logits: np.ndarray) -> list[int] | None: ...

    def candidates(self) -> tuple[list[tuple[int, ...]], list[float]]: ...


class Sampling(Search):
    """Greedy (T = 0) or independent samples (T > 0), each until its end-of-text or a loop.

    A sequence caught in a repetition loop ("I'm going to say, I'm going to say, ...") would
    run to `sample_len` (224 tokens; with best_of 5 samples, five rows of them) only for its
    compression ratio to send the window to the next temperature. Every LOOP_CHECK_EVERY tokens
    the text of each row's last LOOP_WINDOW tokens is compressed as openai-whisper compresses a
    window's text; a row past `compression_ratio_threshold` ends there, and its result carries
    that ratio: the same fallback, a fraction of the steps (WhisperKit stops loops early too).
    """

    def __init__(self, decoder: WindowDecoder, tokens: np.ndarray, padding: int) -> None:
        super().__init__(decoder, tokens, padding)
        self.rng = np.random.default_rng(decoder.options.seed)
        self.sum_logprobs = np.zeros(len(tokens))

    def advance(self, logits: np.ndarray) -> list[int] | None:
        temperature = self.decoder.options.temperature
        if temperature == 0:
            next_tokens = logits.argmax(axis=-1)
        else:
            gumbel = -np.log(-np.log(self.rng.random(logits.shape)))
            next_tokens = (log_softmax(logits) / temperature + gumbel).argmax(axis=-1)
        finished = (self.tokens[:, -1] == self.eot) | self.looping()
        chosen = logits[np.arange(len(logits)), next_tokens].astype(np.float64) - log_normalizers(logits)
        self.sum_logprobs += np.where(finished, 0.0, chosen)
        next_tokens[finished] = self.eot
        self.tokens = np.concatenate([self.tokens, next_tokens[:, None]], axis=1)
        if (next_tokens == self.eot).all() or self.too_long():
            return None
        return list(range(len(self.tokens)))

    def looping(self) -> np.ndarray:
        """Which rows have just been found in a loop (their ratios kept in `loop_ratios`)."""
        found = np.zeros(len(self.tokens), dtype=bool)
        for row, sequence in enumerate(self.tokens):
            if sequence[-1] != self.eot and (ratio := self.loop_ratio(sequence)) is not None:
                self.loop_ratios[row] = ratio
                found[row] = True
        return found

    def candidates(self) -> tuple[list[tuple[int, ...]], list[float]]:
        return [self.candidate(row) for row in self.tokens], self.sum_logprobs.tolist()


class BeamSearch(Search):
    """Beam search with openai-whisper's bookkeeping.

    Each step, every live sequence proposes its `beam_size + 1` likeliest continuations (one
    may be end-of-text, so at least `beam_size` others always remain), scored by summed
    log-probability; identical sequences count once. The best `beam_size` unfinished ones live
    on, and the session's cache rows follow them (`reorder`); the finished ones ranked above
    the last survivor are kept, at most `round(beam_size * patience)` in all. Search stops when
    that many have finished; if fewer than `beam_size` have by then, the best live sequences
    join them.

    When every live sequence is in a repetition loop (see `Sampling`), the search stops there:
    the loops join the finished sequences as live ones do at the end, and a loop that ranks
    best carries its ratio to the fallback, as openai-whisper's would after 224 tokens of it.
    (Cut short, a loop's mean log-probability is lower than after 224 tokens of it, so a
    finished sequence may now rank above it where openai-whisper's loop would have won.)
    """

    def __init__(self, decoder: WindowDecoder, tokens: np.ndarray, padding: int) -> None:
        super().__init__(decoder, tokens, padding)
        self.looped: list[float] = []  # each live row's loop ratio, once all of them loop
        self.beam_size = len(tokens)
        self.max_finished = round(self.beam_size * (decoder.options.patience or 1.0))
        self.sum_logprobs = np.zeros(self.beam_size)
        self.finished: dict[tuple[int, ...], float] = {}

    def advance(self, logits: np.ndarray) -> list[int] | None:
        normalizers = log_normalizers(logits)
        scores: dict[tuple[int, ...], float] = {}
        sources: dict[tuple[int, ...], int] = {}
        for row in range(self.beam_size):
            prefix = tuple(self.tokens[row].tolist())
            # the likeliest logits are the likeliest log-probabilities: a row shares its normaliser
            for token in top_k(logits[row], self.beam_size + 1).tolist():
                sequence = (*prefix, token)
                logprob = float(logits[row, token]) - normalizers[row]
                scores[sequence] = float(self.sum_logprobs[row] + logprob)
                sources[sequence] = row
        survivors: list[tuple[int, ...]] = []
        just_finished: dict[tuple[int, ...], float] = {}
        for sequence in sorted(scores, key=scores.__getitem__, reverse=True):
            if sequence[-1] == self.eot:
                just_finished[sequence] = scores[sequence]
                continue
            survivors.append(sequence)
            if len(survivors) == self.beam_size:
                break
        for sequence in sorted(just_finished, key=just_finished.__getitem__, reverse=True):
            if len(self.finished) >= self.max_finished:
                break
            self.finished[sequence] = just_finished[sequence]
        self.tokens = np.array(survivors, dtype=np.int64)
        self.sum_logprobs = np.array([scores[s] for s in survivors])
        if len(self.finished) >= self.max_finished or self.too_long():
            return None
        ratios = [self.loop_ratio(row) for row in self.tokens]
        if all(ratio is not None for ratio in ratios):
            self.looped = [ratio for ratio in ratios if ratio is not None]
            return None
        return [sources[s] for s in survivors]

    def candidates(self) -> tuple[list[tuple[int, ...]], list[float]]:
        finished = dict(self.finished)
        if len(finished) < self.beam_size:
            for row in np.argsort(self.sum_logprobs, kind="stable")[::-1]:
                finished[(*self.tokens[row].tolist(), self.eot)] = float(self.sum_logprobs[row])
                if self.looped:
                    self.loop_ratios[len(finished) - 1] = self.looped[row]
                if len(finished) >= self.beam_size:
                    break
        return [self.candidate(s) for s in finished], list(finished.values())


def decode_batch(decoders: Sequence[WindowDecoder], features: Sequence[Any]) -> list[DecodingResult]:
    """Decode several windows in one decoder session, each as it would be decoded alone.

    The decoders must share an engine and their options but for prompt, prefix and language
    (`search_key`). Token rows are left-padded to one length, so the logit rules see every
    window's text start at the same column; each step runs the windows' rows together, each
    window's search picks its own tokens, and a finished window leaves the session.
    """
    first = decoders[0]
    width = max(len(d.initial_tokens) for d in decoders)
    padding = [width - len(d.initial_tokens) for d in decoders]
    rows = first.rows
    if len(decoders) == 1:
        session = first.engine.decoder(features[0], rows)
        positions: Sequence[int] | np.ndarray = (first.sot_index, -1)
    else:
        session = first.engine.decoder_batch(features, rows, padding)
        positions = np.repeat([[p + d.sot_index, width - 1] for d, p in zip(decoders, padding, strict=True)], rows, 0)
    searches = [d.search(p) for d, p in zip(decoders, padding, strict=True)]
    logits_at = session.step(np.concatenate([s.tokens for s in searches]), positions)
    sot_logprobs = log_softmax(logits_at[::rows, 0])  # the no-speech probability, read at each window's first row
    no_speech_probs = [float(np.exp(row[first.tokenizer.no_speech])) for row in sot_logprobs]
    filters = first.filters if len(decoders) == 1 else first.filters_at(width)
    live = list(range(len(decoders)))
    logits = logits_at[:, -1].copy()
    for _ in range(first.sample_len):
        kept: list[int] = []
        still: list[int] = []
        for i, w in enumerate(live):
            window_logits = logits[i * rows : (i + 1) * rows]  # a window at a time: its rows stay in cache
            for f in filters:
                f.apply(window_logits, searches[w].tokens)
            sources = searches[w].advance(window_logits)
            if sources is not None:
                kept.extend(i * rows + r for r in sources)
                still.append(w)
        if not still:
            break
        session.reorder(kept)
        live = still
        logits = session.step(np.concatenate([searches[w].tokens[:, -1:] for w in live]))[:, -1].copy()
    return [d.result(s, p) for d, s, p in zip(decoders, searches, no_speech_probs, strict=True)]


def search_key(options: DecodingOptions) -> str:
    """What windows decoded in one batch must share: everything but the prompt, prefix and language."""
    return repr(replace(options, prompt=(), prefix=(), language=None))


def decode_windows(
    engine: Engine, requests: Sequence[tuple[Any, Tokenizer, DecodingOptions]], batch_size: int = 8
) -> list[DecodingResult]:
    """Decode every (features, tokenizer, options) request, up to `batch_size` windows at a time
    (windows are batched with others of the same `search_key`)."""
    decoders = [WindowDecoder(engine, t.with_language(o.language, o.task), o) for _, t, o in requests]
    groups: dict[str, list[int]] = {}
    for i, (_, _, options) in enumerate(requests):
        groups.setdefault(search_key(options), []).append(i)
    results: list[DecodingResult | None] = [None] * len(requests)
    for members in groups.values():
        for a in range(0, len(members), batch_size):
            chunk = members[a : a + batch_size]
            decoded = decode_batch([decoders[i] for i in chunk], [requests[i][0] for i in chunk])
            for i, result in zip(chunk, decoded, strict=True):
                results[i] = result
    return [r for r in results if r is not None]


def decode_window(engine: Engine, features: Any, tokenizer: Tokenizer, options: DecodingOptions) -> DecodingResult:
    """Decode one window's features with `options`."""
    return WindowDecoder(engine, tokenizer.with_language(options.language, options.task), options).decode(features)

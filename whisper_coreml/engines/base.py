"""The seam between decoding logic and whatever runs the network.

An engine turns a 30-s log-mel window into audio features and opens decoder sessions over
them; a session feeds tokens and returns next-token logits, keeping its own key/value cache.
Everything else (logit rules, fallback, seeking, timing) is engine-independent numpy code, so
PyTorch, Core ML and the reference executor produce the same transcript by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from ..model import ModelDimensions


class DecoderSession(Protocol):
    """Autoregressive decoding of a batch of sequences over the audio features of one window
    (or, from `Engine.decoder_batch`, of several: `rows` sequences per window, window-major)."""

    def step(self, tokens: np.ndarray, positions: Sequence[int] | np.ndarray = (-1,)) -> np.ndarray:
        """Append `tokens` (B, T) to the cached sequence; return float32 logits (B, P, V).

        `positions` (P of them, or a (B, P) array giving each row its own) index into the T new
        tokens, so a caller can read the logits at the start-of-transcript token (for the
        no-speech probability) and at the last token in one call without paying for the
        vocabulary projection everywhere else.
        """
        ...

    def reorder(self, rows: Sequence[int]) -> None:
        """Continue from the cached sequences `rows`: row i of the batch becomes what row `rows[i]` was.

        Beam search calls this after every step: within a window rows may repeat or vanish. In
        a batch of windows every window keeps `rows` rows, and a window whose rows all vanish
        has finished: the session forgets it (its audio features included).
        """
        ...


class Engine(Protocol):
    """Runs one Whisper model: audio encoder plus text decoder."""

    name: str
    dims: ModelDimensions
    alignment_heads: tuple[tuple[int, int], ...]  # (layer, head) pairs whose cross-attention tracks time

    def encode(self, mel: np.ndarray) -> Any:
        """Audio features for one (n_mels, 3000) window; opaque to everything but `decoder`."""
        ...

    def decoder(self, features: Any, batch_size: int = 1) -> DecoderSession:
        """A fresh session over `features`, replicated for `batch_size` sequences."""
        ...

    def encode_batch(self, mels: Sequence[np.ndarray]) -> list[Any]:
        """`encode` for several windows at once: one features object each."""
        ...

    def decoder_batch(self, features: Sequence[Any], rows: int, padding: Sequence[int]) -> DecoderSession:
        """One session over several windows, `rows` sequences each (window-major).

        Window w's first step starts with `padding[w]` filler tokens, so that prompts of
        different lengths line up; the filler is neither attended to nor counted as a position,
        and each window decodes as it would alone.
        """
        ...

    def align(self, features: Any, tokens: Sequence[int], vocab_end: int) -> tuple[np.ndarray, np.ndarray]:
        """Teacher-force `tokens` over `features` for word timing.

        Returns, for each position, the probability of the token that follows it among the
        first `vocab_end` vocabulary entries (Whisper's text tokens; NaN where the next token is
        outside them or there is none), and the alignment heads' cross-attention weights
        (A, T, n_audio_ctx), softmaxed over all audio frames. Probabilities rather than logits:
        (T, n_vocab) logits of a full window would be the largest thing in memory.
        """
        ...


class WindowByWindow:
    """Batch methods for engines that run one window at a time (the converted programs take
    one window's features): every window gets its own session, and a batch of windows is
    split among them. Results equal decoding each window alone; the time is the same too."""

    def encode(self, mel: np.ndarray) -> Any:
        raise NotImplementedError

    def decoder(self, features: Any, batch_size: int = 1) -> DecoderSession:
        raise NotImplementedError

    def encode_batch(self, mels: Sequence[np.ndarray]) -> list[Any]:
        return [self.encode(mel) for mel in mels]

    def decoder_batch(self, features: Sequence[Any], rows: int, padding: Sequence[int]) -> DecoderSession:
        return SessionPerWindow([self.decoder(f, rows) for f in features], rows, padding)


class SessionPerWindow:
    """A batch of windows as one session over per-window sessions (see `WindowByWindow`)."""

    def __init__(self, sessions: list[DecoderSession], rows: int, padding: Sequence[int]) -> None:
        self.sessions = sessions
        self.rows = rows
        self.padding: list[int] | None = list(padding)  # dropped from the first step's tokens

    def step(self, tokens: np.ndarray, positions: Sequence[int] | np.ndarray = (-1,)) -> np.ndarray:
        at = np.asarray(positions) % tokens.shape[1]
        out = []
        for w, session in enumerate(self.sessions):
            first, pad = w * self.rows, self.padding[w] if self.padding is not None else 0
            wanted = at[first] if at.ndim == 2 else at  # the rows of a window share their positions
            out.append(session.step(tokens[first : first + self.rows, pad:], tuple(int(p) - pad for p in wanted)))
        self.padding = None
        return np.concatenate(out)

    def reorder(self, rows: Sequence[int]) -> None:
        kept = []
        for i in range(0, len(rows), self.rows):
            window = rows[i] // self.rows
            self.sessions[window].reorder([r - window * self.rows for r in rows[i : i + self.rows]])
            kept.append(self.sessions[window])
        self.sessions = kept

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
    """Autoregressive decoding over one window's audio features for a batch of sequences."""

    def step(self, tokens: np.ndarray, positions: Sequence[int] = (-1,)) -> np.ndarray:
        """Append `tokens` (B, T) to the cached sequence; return float32 logits (B, len(positions), V).

        `positions` index into the T new tokens, so a caller can read the logits at the
        start-of-transcript token (for the no-speech probability) and at the last token in
        one call without paying for the vocabulary projection everywhere else.
        """
        ...

    def reorder(self, rows: Sequence[int]) -> None:
        """Continue from the cached sequences `rows`: row i of the batch becomes what row `rows[i]` was.

        Beam search calls this after every step (rows may repeat or vanish); the batch size
        stays the same, and the audio features are shared by every row anyway.
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

    def align(self, features: Any, tokens: Sequence[int], vocab_end: int) -> tuple[np.ndarray, np.ndarray]:
        """Teacher-force `tokens` over `features` for word timing.

        Returns, for each position, the probability of the token that follows it among the
        first `vocab_end` vocabulary entries (Whisper's text tokens; NaN where the next token is
        outside them or there is none), and the alignment heads' cross-attention weights
        (A, T, n_audio_ctx), softmaxed over all audio frames. Probabilities rather than logits:
        (T, n_vocab) logits of a full window would be the largest thing in memory.
        """
        ...

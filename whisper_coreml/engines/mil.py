"""The `mil` engine: a converted bundle, run by the numpy reference executor (`coreml.mil`), on any OS.

It drives the converted `encoder.mlpackage`, `decoder.mlpackage` and (for a batch of the beam
size) the beam decoder exactly as the Core ML engine does on a Mac (same inputs, same
state handling), so a bundle can be checked and used where Core ML is not available. The
session logic here is shared with `engines.coreml`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..coreml.bundle import Bundle, load_bundle
from ..coreml.export import MASK_VALUE
from ..errors import ModelError
from .base import WindowByWindow


@dataclass(frozen=True)
class EncodedWindow:
    """What the encoder gives the decoder for one 30-s window."""

    audio_features: np.ndarray  # (1, n_audio_ctx, n_audio_state)
    cross_k: np.ndarray  # (n_layer, n_head, n_audio_ctx, head_dim)
    cross_v: np.ndarray


class StepSession(ABC):
    """Feeds a one-token-per-call decoder; `step` takes any number of tokens for a batch of sequences.

    Subclasses implement `_rows(tokens (B,), position) -> (logits (B, V), alignment (B, A, n_audio_ctx))`
    for one token of every sequence, and `reorder`; this class walks the tokens one at a time,
    keeps the position, and returns the logits at the requested `positions` only. The
    alignment heads' cross-attention weights of every token are kept for word timing, with
    each row's lineage through `reorder`, so a row's history is that of the sequence it continues.
    """

    def __init__(self, batch_size: int, max_tokens: int) -> None:
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.offset = 0
        self.alignment: list[np.ndarray] = []  # per token: (B, A, n_audio_ctx)
        self.lineage = np.zeros((0, batch_size), dtype=np.int64)  # [t, i]: the row at token t that row i continues

    @abstractmethod
    def _rows(self, tokens: np.ndarray, position: int) -> tuple[np.ndarray, np.ndarray]:
        """One token per sequence at `position`: logits (B, V) and alignment weights (B, A, n_audio_ctx)."""

    @abstractmethod
    def _reorder_cache(self, rows: np.ndarray) -> None:
        """Make cache row i a copy of what cache row `rows[i]` was."""

    def reorder(self, rows: Sequence[int]) -> None:
        index = np.asarray(rows, dtype=np.int64)
        if index.shape != (self.batch_size,) or not ((0 <= index) & (index < self.batch_size)).all():
            raise ValueError(f"reorder needs {self.batch_size} row indices below {self.batch_size}, got {list(rows)}")
        if (index == np.arange(self.batch_size)).all():
            return
        self.lineage = self.lineage[:, index]
        self._reorder_cache(index)

    def step(self, tokens: np.ndarray, positions: Sequence[int] = (-1,)) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[0] != self.batch_size:
            raise ValueError(f"tokens must be ({self.batch_size}, T), got {tokens.shape}")
        t = tokens.shape[1]
        if t == 0:
            raise ValueError("step needs at least one token")
        wanted = {p % t for p in positions}
        if self.offset + t > self.max_tokens:
            raise ModelError(
                f"the converted decoder holds at most {self.max_tokens} tokens per window "
                f"({self.offset} + {t} requested); convert with a larger --max-tokens"
            )
        kept: dict[int, np.ndarray] = {}
        for i in range(t):
            logits, alignment = self._rows(tokens[:, i].astype(np.int32), self.offset)
            self.offset += 1
            self.alignment.append(alignment)
            if i in wanted:
                kept[i] = logits
        self.lineage = np.concatenate([self.lineage, np.tile(np.arange(self.batch_size), (t, 1))])
        order = [p % t for p in positions]
        return np.stack([kept[i] for i in order], axis=1).astype(np.float32)

    @property
    def alignment_weights(self) -> np.ndarray:
        """(B, A, tokens so far, n_audio_ctx): the alignment heads' cross-attention weights."""
        if not self.alignment:
            return np.zeros((self.batch_size, 0, 0, 0))
        return np.stack([a[rows] for a, rows in zip(self.alignment, self.lineage, strict=True)], axis=2)


def _copies(rows: np.ndarray, items: list[Any], copy: Callable[[Any, Any], None]) -> list[Any]:
    """`items` rearranged as `rows` says, reusing each item once and copying (`copy(source, spare)`) for repeats."""
    chosen: list[Any] = [None] * len(rows)
    used: set[int] = set()
    for i, r in enumerate(rows.tolist()):
        if r not in used:
            chosen[i] = items[r]
            used.add(r)
    spare = [items[j] for j in range(len(items)) if j not in used]
    for i, r in enumerate(rows.tolist()):
        if chosen[i] is None:
            chosen[i] = spare.pop()
            copy(items[r], chosen[i])
    return chosen


class StatefulSession(StepSession):
    """macOS 15 one-token decoder: caches and cross keys/values live in one state per sequence.

    `reorder` permutes the states and copies a state's caches (read, then written) only for
    rows that repeat; the beam decoder (`StatefulBeamSession`) does better.
    """

    CACHES = ("k_cache", "v_cache")

    def __init__(self, program: Any, window: EncodedWindow, batch_size: int, max_tokens: int) -> None:
        super().__init__(batch_size, max_tokens)
        self.program = program
        self.states = []
        for _ in range(batch_size):
            state = program.make_state()
            # Loaded once per window, never per token; Core ML states are always float16.
            state.write_state("cross_k", np.ascontiguousarray(window.cross_k, dtype=np.float16))
            state.write_state("cross_v", np.ascontiguousarray(window.cross_v, dtype=np.float16))
            self.states.append(state)

    def _rows(self, tokens: np.ndarray, position: int) -> tuple[np.ndarray, np.ndarray]:
        logits, alignment = [], []
        for token, state in zip(tokens.tolist(), self.states, strict=True):
            out = self.program.predict(
                {"token": np.array([[token]], dtype=np.int32), "position": np.array([position], dtype=np.int32)},
                state,
            )
            logits.append(np.asarray(out["logits"]).reshape(-1))
            alignment.append(np.asarray(out["alignment"])[0])
        return np.stack(logits), np.stack(alignment)

    def _reorder_cache(self, rows: np.ndarray) -> None:
        def copy(source: Any, target: Any) -> None:
            for name in self.CACHES:
                target.write_state(name, np.array(source.read_state(name)))

        self.states = _copies(rows, self.states, copy)


class StatelessSession(StepSession):
    """macOS 13/14 one-token decoder: the session owns the caches, passes them in and writes back the new slice."""

    def __init__(
        self, program: Any, window: EncodedWindow, batch_size: int, cache_shape: tuple[int, ...], dtype: type
    ) -> None:
        max_tokens = cache_shape[2]
        super().__init__(batch_size, max_tokens)
        self.program = program
        self.window = window
        shape = cache_shape
        self.k = [np.zeros(shape, dtype=dtype) for _ in range(batch_size)]
        self.v = [np.zeros(shape, dtype=dtype) for _ in range(batch_size)]
        self.mask = np.full((1, max_tokens), MASK_VALUE, dtype=dtype)  # every sequence has the same length

    def _rows(self, tokens: np.ndarray, position: int) -> tuple[np.ndarray, np.ndarray]:
        logits, alignment = [], []
        for token, k, v in zip(tokens.tolist(), self.k, self.v, strict=True):
            out = self.program.predict(
                {
                    "token": np.array([[token]], dtype=np.int32),
                    "position": np.array([position], dtype=np.int32),
                    "k_cache": k,
                    "v_cache": v,
                    "cross_k": self.window.cross_k,
                    "cross_v": self.window.cross_v,
                    "mask": self.mask,
                }
            )
            k[:, :, position] = np.asarray(out["k_new"])[:, :, 0]
            v[:, :, position] = np.asarray(out["v_new"])[:, :, 0]
            logits.append(np.asarray(out["logits"]).reshape(-1))
            alignment.append(np.asarray(out["alignment"])[0])
        self.mask[0, position] = 0
        return np.stack(logits), np.stack(alignment)

    def _reorder_cache(self, rows: np.ndarray) -> None:
        def copy(source: np.ndarray, target: np.ndarray) -> None:
            target[...] = source

        self.k = _copies(rows, self.k, copy)
        self.v = _copies(rows, self.v, copy)


class StatefulBeamSession(StepSession):
    """The macOS 15 beam decoder: every row in one call and one state; `reorder` becomes the next call's `beam` input.

    The program gathers its cache rows by `beam` before it writes the new token's keys and
    values, so reordering costs the host nothing.
    """

    def __init__(self, program: Any, window: EncodedWindow, batch_size: int, max_tokens: int) -> None:
        super().__init__(batch_size, max_tokens)
        self.program = program
        self.state = program.make_state()
        self.state.write_state("cross_k", np.ascontiguousarray(window.cross_k, dtype=np.float16))
        self.state.write_state("cross_v", np.ascontiguousarray(window.cross_v, dtype=np.float16))
        self.beam = np.arange(batch_size, dtype=np.int32)

    def _rows(self, tokens: np.ndarray, position: int) -> tuple[np.ndarray, np.ndarray]:
        inputs = {"token": tokens[:, None], "position": np.array([position], dtype=np.int32), "beam": self.beam}
        out = self.program.predict(inputs, self.state)
        self.beam = np.arange(self.batch_size, dtype=np.int32)
        return np.asarray(out["logits"])[:, 0], np.asarray(out["alignment"])

    def _reorder_cache(self, rows: np.ndarray) -> None:
        self.beam = self.beam[rows]  # two reorders before a step compose


class StatelessBeamSession(StepSession):
    """The macOS 13/14 beam decoder: every row in one call; the host owns the caches and reorders them by indexing."""

    def __init__(
        self, program: Any, window: EncodedWindow, batch_size: int, cache_shape: tuple[int, ...], dtype: type
    ) -> None:
        max_tokens = cache_shape[3]
        super().__init__(batch_size, max_tokens)
        self.program = program
        self.window = window
        self.k = np.zeros(cache_shape, dtype=dtype)
        self.v = np.zeros(cache_shape, dtype=dtype)
        self.mask = np.full((1, max_tokens), MASK_VALUE, dtype=dtype)

    def _rows(self, tokens: np.ndarray, position: int) -> tuple[np.ndarray, np.ndarray]:
        out = self.program.predict(
            {
                "token": tokens[:, None],
                "position": np.array([position], dtype=np.int32),
                "k_cache": self.k,
                "v_cache": self.v,
                "cross_k": self.window.cross_k,
                "cross_v": self.window.cross_v,
                "mask": self.mask,
            }
        )
        self.k[:, :, :, position] = np.asarray(out["k_new"])[:, :, :, 0]
        self.v[:, :, :, position] = np.asarray(out["v_new"])[:, :, :, 0]
        self.mask[0, position] = 0
        return np.asarray(out["logits"])[:, 0], np.asarray(out["alignment"])

    def _reorder_cache(self, rows: np.ndarray) -> None:
        self.k = self.k[:, rows]
        self.v = self.v[:, rows]


class BundleEngine(WindowByWindow, ABC):
    """What the mil and coreml engines share: a checked bundle, its dimensions and the session choice."""

    name = "bundle"

    def __init__(self, bundle: str | Path | Bundle, verify_checksums: bool = True) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify_checksums)
        manifest = self.bundle.manifest
        # The decoder's cache length is the context decoding may use.
        self.dims = replace(manifest.dims, n_text_ctx=manifest.max_tokens)
        self.stateful = manifest.stateful
        self.float_dtype: type = np.float16 if manifest.precision == "float16" else np.float32
        self.max_tokens = manifest.max_tokens
        self.alignment_heads = manifest.alignment_heads

    def _window(self, out: dict[str, Any]) -> EncodedWindow:
        arrays = []
        for name in ("audio_features", "cross_k", "cross_v"):
            array = np.array(out[name], dtype=self.float_dtype)
            array.flags.writeable = False  # a window's features never change; executors may cache them
            arrays.append(array)
        return EncodedWindow(*arrays)

    def _mel(self, mel: np.ndarray) -> dict[str, np.ndarray]:
        mel = np.asarray(mel)
        expected = (self.dims.n_mels, 3000)
        if mel.shape != expected:
            raise ValueError(f"mel must be {expected}, got {mel.shape}")
        return {"mel": mel[None].astype(self.float_dtype)}

    @abstractmethod
    def decoder(self, features: EncodedWindow, batch_size: int = 1) -> StepSession:
        """A session over `features` on this engine's decoder program."""

    def align(self, features: EncodedWindow, tokens: Sequence[int], vocab_end: int) -> tuple[np.ndarray, np.ndarray]:
        """The converted decoder returns the alignment heads' weights with every token's logits."""
        session = self.decoder(features)
        probs = np.full(len(tokens), np.nan)
        for i, token in enumerate(tokens):
            logits = session.step(np.array([[token]]))[0, -1, :vocab_end].astype(np.float64)
            if i + 1 < len(tokens) and tokens[i + 1] < vocab_end:
                logits = np.exp(logits - logits.max())
                probs[i] = logits[tokens[i + 1]] / logits.sum()
        return probs, session.alignment_weights[0].astype(np.float32)

    def _session(self, program: Any, features: EncodedWindow, batch_size: int, beam_program: Any = None) -> StepSession:
        """The beam decoder for a batch of its size, else the one-token decoder with one cache per sequence."""
        manifest = self.bundle.manifest
        if beam_program is not None and batch_size == manifest.beam_size and manifest.beam_decoder is not None:
            if self.stateful:
                return StatefulBeamSession(beam_program, features, batch_size, self.max_tokens)
            cache = manifest.beam_decoder.get("k_cache").shape
            return StatelessBeamSession(beam_program, features, batch_size, cache, self.float_dtype)
        if self.stateful:
            return StatefulSession(program, features, batch_size, self.max_tokens)
        cache_shape = manifest.decoder.get("k_cache").shape
        return StatelessSession(program, features, batch_size, cache_shape, self.float_dtype)


class MilEngine(BundleEngine):
    """A converted bundle on the numpy reference executor."""

    name = "mil"

    def __init__(self, bundle: str | Path | Bundle, verify_checksums: bool = True) -> None:
        from ..coreml.mil import MilProgram

        super().__init__(bundle, verify_checksums)
        self.encoder = MilProgram.load(self.bundle.encoder_path)
        self.decoder_program = MilProgram.load(self.bundle.decoder_path, blas_threads=1)
        beam = self.bundle.beam_decoder
        self.beam_program = MilProgram.load(beam[0], 1, beam[1] or "main") if beam is not None else None

    def encode(self, mel: np.ndarray) -> EncodedWindow:
        return self._window(self.encoder.predict(self._mel(mel)))

    def decoder(self, features: EncodedWindow, batch_size: int = 1) -> StepSession:
        return self._session(self.decoder_program, features, batch_size, self.beam_program)

"""The `mil` engine: a converted bundle, run by the numpy reference executor (`coreml.mil`), on any OS.

It drives the converted `encoder.mlpackage` and `decoder.mlpackage` exactly as the Core ML
engine does on a Mac (same inputs, same state handling), so a bundle can be checked and used
where Core ML is not available. The session logic here is shared with `engines.coreml`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..coreml.bundle import Bundle, load_bundle
from ..coreml.export import MASK_VALUE
from ..errors import ModelError


@dataclass(frozen=True)
class EncodedWindow:
    """What the encoder gives the decoder for one 30-s window."""

    audio_features: np.ndarray  # (1, n_audio_ctx, n_audio_state)
    cross_k: np.ndarray  # (n_layer, n_head, n_audio_ctx, head_dim)
    cross_v: np.ndarray


class StepSession:
    """Feeds a one-token-per-call decoder; `step` takes any number of tokens for a batch of sequences.

    Subclasses implement `_call(sequence, token, position) -> (logits (V,), alignment (A, n_audio_ctx))`
    for one sequence; this class walks the tokens one at a time, keeps the position, and returns
    the logits at the requested `positions` only. Sequences of a batch are independent (one
    state or cache each). The alignment heads' cross-attention weights of every token are
    kept in `alignment` for word timing.
    """

    def __init__(self, batch_size: int, max_tokens: int) -> None:
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.offset = 0
        self.alignment: list[np.ndarray] = []  # per token: (B, A, n_audio_ctx)

    def _call(self, sequence: int, token: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

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
            logits, alignment = [], []
            for b in range(self.batch_size):
                lg, al = self._call(b, int(tokens[b, i]), self.offset)
                logits.append(lg)
                alignment.append(al)
            self.offset += 1
            self.alignment.append(np.stack(alignment))
            if i in wanted:
                kept[i] = np.stack(logits)
        order = [p % t for p in positions]
        return np.stack([kept[i] for i in order], axis=1).astype(np.float32)

    @property
    def alignment_weights(self) -> np.ndarray:
        """(B, A, tokens so far, n_audio_ctx): the alignment heads' cross-attention weights."""
        return np.stack(self.alignment, axis=2) if self.alignment else np.zeros((self.batch_size, 0, 0, 0))


class StatefulSession(StepSession):
    """macOS 15 decoder: caches and cross keys/values live in one state per sequence."""

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

    def _call(self, sequence: int, token: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        out = self.program.predict(
            {"token": np.array([[token]], dtype=np.int32), "position": np.array([position], dtype=np.int32)},
            self.states[sequence],
        )
        return np.asarray(out["logits"]).reshape(-1), np.asarray(out["alignment"])[0]


class StatelessSession(StepSession):
    """macOS 13/14 decoder: the session owns the caches, passes them in and writes back the new slice."""

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
        self.mask = [np.full((1, max_tokens), MASK_VALUE, dtype=dtype) for _ in range(batch_size)]

    def _call(self, sequence: int, token: int, position: int) -> tuple[np.ndarray, np.ndarray]:
        out = self.program.predict(
            {
                "token": np.array([[token]], dtype=np.int32),
                "position": np.array([position], dtype=np.int32),
                "k_cache": self.k[sequence],
                "v_cache": self.v[sequence],
                "cross_k": self.window.cross_k,
                "cross_v": self.window.cross_v,
                "mask": self.mask[sequence],
            }
        )
        self.k[sequence][:, :, position] = np.asarray(out["k_new"])[:, :, 0]
        self.v[sequence][:, :, position] = np.asarray(out["v_new"])[:, :, 0]
        self.mask[sequence][0, position] = 0
        return np.asarray(out["logits"]).reshape(-1), np.asarray(out["alignment"])[0]


class BundleEngine(ABC):
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

    def _session(self, program: Any, features: EncodedWindow, batch_size: int) -> StepSession:
        if self.stateful:
            return StatefulSession(program, features, batch_size, self.max_tokens)
        cache_shape = self.bundle.manifest.decoder.get("k_cache").shape
        return StatelessSession(program, features, batch_size, cache_shape, self.float_dtype)


class MilEngine(BundleEngine):
    """A converted bundle on the numpy reference executor."""

    name = "mil"

    def __init__(self, bundle: str | Path | Bundle, verify_checksums: bool = True) -> None:
        from ..coreml.mil import MilProgram

        super().__init__(bundle, verify_checksums)
        self.encoder = MilProgram.load(self.bundle.encoder_path)
        self.decoder_program = MilProgram.load(self.bundle.decoder_path, blas_threads=1)

    def encode(self, mel: np.ndarray) -> EncodedWindow:
        return self._window(self.encoder.predict(self._mel(mel)))

    def decoder(self, features: EncodedWindow, batch_size: int = 1) -> StepSession:
        return self._session(self.decoder_program, features, batch_size)

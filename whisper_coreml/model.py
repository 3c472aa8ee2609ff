"""A compact Whisper in PyTorch, written to trace cleanly for Core ML.

Every cache is an explicit tensor argument rather than state hidden in hooks, and `forward`
has no data-dependent Python branching, so the same modules serve the PyTorch engine and the
Core ML converter. Parameter names follow openai-whisper's checkpoints, which lets an openai
`.pt` load as it is and gives every other weight format one target to map into.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KV = tuple[Tensor, Tensor]


class LayerCache(NamedTuple):
    """One decoder layer's self-attention keys/values: the first call's (`prefix`) and each row's since (`own`).

    The prefix may hold one row per window, shared by that window's rows (window-major, as the
    cross-attention keys/values): beams and samples start from the same prompt, up to 224
    tokens, and then neither copy it row by row nor carry it through every step's
    concatenation and reordering, only their own tokens.
    """

    prefix: KV
    own: KV | None = None

    @property
    def length(self) -> int:
        """Positions cached: the prefix's and the row's own."""
        return self.prefix[0].shape[2] + (0 if self.own is None else self.own[0].shape[2])


@dataclass(frozen=True)
class ModelDimensions:
    """The ten numbers that define a Whisper architecture."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @property
    def is_multilingual(self) -> bool:
        """English-only vocabularies stop at 51864 entries; multilingual ones go beyond."""
        return self.n_vocab >= 51865

    @property
    def num_languages(self) -> int:
        """99 languages for most models; large-v3 added Cantonese (one more vocabulary entry)."""
        return self.n_vocab - 51765 - int(self.is_multilingual)


def default_alignment_heads(n_layer: int, n_head: int) -> tuple[tuple[int, int], ...]:
    """openai-whisper's default when a checkpoint names none: every head of the second half of the layers."""
    return tuple((layer, head) for layer in range(n_layer // 2, n_layer) for head in range(n_head))


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """The encoder's fixed positional embedding, for checkpoints that do not store it.

    Computed on the CPU even while an engine builds the model on the meta device, where this
    arithmetic would import ~800 of PyTorch's modules (75 MB resident, and time).
    """
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2, device="cpu"))
    scaled = torch.arange(length, device="cpu")[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 so half-precision weights stay numerically stable."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).type(x.dtype)


def by_window(y: Tensor, windows: int) -> Tensor:
    """(rows, heads, t, m) -> (windows, heads, n * t, m): a window's n rows (window-major) as one sequence."""
    b, h, t, m = y.shape
    n = b // windows
    return y.view(windows, n, h, t, m).transpose(1, 2).reshape(windows, h, n * t, m)


def by_row(y: Tensor, rows: int) -> Tensor:
    """The inverse of `by_window`: (windows, heads, n * t, m) -> (rows, heads, t, m)."""
    w, h, nt, m = y.shape
    n = rows // w
    return y.view(w, h, n, nt // n, m).transpose(1, 2).reshape(rows, h, nt // n, m)


class MultiHeadAttention(nn.Module):
    """Attention whose keys and values are passed in, so callers own every cache.

    `kv_dtype`, when an engine sets it, is the format `project_kv` keeps keys and values in
    (a smaller one than the activations': see `attend`); None keeps the activations'.
    `qkv`, when an engine sets it, computes the query, key and value of self-attention as one
    product (their weights stacked, the key's bias zero): one call instead of three a step.
    """

    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.kv_dtype: torch.dtype | None = None
        self.qkv: nn.Module | None = None
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, T, n_state) -> (B, n_head, T, head_dim)."""
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, -1).transpose(1, 2)

    def project_kv(self, x: Tensor) -> KV:
        """Keys and values of `x`, split into heads: computed once per window for cross-attention."""
        return self._kv(self.key(x), self.value(x))

    def _kv(self, k: Tensor, v: Tensor) -> KV:
        k, v = self.split_heads(k), self.split_heads(v)
        return (k, v) if self.kv_dtype is None else (k.to(self.kv_dtype), v.to(self.kv_dtype))

    def project_qkv(self, x: Tensor) -> tuple[Tensor, KV]:
        """Queries (not split) and head-split keys and values of `x`, for self-attention."""
        if self.qkv is None:
            return self.query(x), self.project_kv(x)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return q, self._kv(k, v)

    def attend(self, query: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention of the projected `query` (B, T, n_state) over head-split `k`, `v`; `mask` is additive.

        `k` and `v` may be kept in a smaller format than the queries (`kv_dtype`): the queries
        meet them in it, and the result comes back in the queries' own.
        """
        q = self.split_heads(query).to(k.dtype)
        if k.shape[0] < q.shape[0] and mask is None:
            # Several sequences over each window's audio (beams, best_of samples, or the rows of
            # a batch of windows, window-major): a window's queries share its keys, so they
            # attend as one sequence of n*T queries instead of copying the keys n times.
            w = k.shape[0]
            out = by_row(F.scaled_dot_product_attention(by_window(q, w), k, v), q.shape[0])
        elif q.shape[2] == 1 and not (k.dtype == torch.bfloat16 and k.is_cpu):
            # One query per step while decoding: plain matmuls beat the fused kernel's setup cost
            # (on a CPU in float32; there in bfloat16 the fused kernel is 2.8x faster than either).
            scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
            out = (scores if mask is None else scores + mask).softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(out.transpose(1, 2).flatten(2).to(query.dtype))

    def attend_cached(self, query: Tensor, prefix: KV, own: KV, mask: Tensor | None = None) -> Tensor:
        """Attention of the projected `query` over a cache's `prefix` then each row's `own` keys, as one softmax.

        The prefix holds one row per window or one per row (see `LayerCache`); `mask` is
        additive over the prefix's positions followed by the own ones.
        """
        q = self.split_heads(query)
        b, w, p = q.shape[0], prefix[0].shape[0], prefix[0].shape[2]
        shared = by_row(by_window(q, w) @ prefix[0].transpose(-1, -2), b)
        scores = torch.cat([shared, q @ own[0].transpose(-1, -2)], dim=-1) * q.shape[-1] ** -0.5
        if mask is not None:
            scores = scores + mask.to(scores.dtype)
        weights = scores.softmax(dim=-1)
        out = by_row(by_window(weights[..., :p], w) @ prefix[1], b) + weights[..., p:] @ own[1]
        return self.out(out.transpose(1, 2).flatten(2))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block; decoder blocks add cross-attention over the audio."""

    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = LayerNorm(n_state) if cross_attention else None
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = LayerNorm(n_state)

    def forward(
        self, x: Tensor, past: LayerCache | None = None, cross_kv: KV | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, LayerCache]:
        """The block's output and its self-attention cache: `past` with `x`'s keys/values added."""
        q, (k, v) = self.attn.project_qkv(self.attn_ln(x))
        if past is None:
            x = x + self.attn.attend(q, k, v, mask=mask)
            cache = LayerCache((k, v))
        else:
            if past.own is not None:
                k, v = torch.cat([past.own[0], k], dim=2), torch.cat([past.own[1], v], dim=2)
            x = x + self.attn.attend_cached(q, past.prefix, (k, v), mask=mask)
            cache = LayerCache(past.prefix, (k, v))
        if self.cross_attn is not None and self.cross_attn_ln is not None and cross_kv is not None:
            x = x + self.cross_attn.attend(self.cross_attn.query(self.cross_attn_ln(x)), *cross_kv)
        return x + self.mlp(self.mlp_ln(x)), cache


class AudioEncoder(nn.Module):
    """Log-mel (B, n_mels, 3000) -> audio features (B, 1500, n_state)."""

    def __init__(self, n_mels: int, n_ctx: int, n_state: int, n_head: int, n_layer: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(n_ctx, n_state))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(n_state, n_head) for _ in range(n_layer))
        self.ln_post = LayerNorm(n_state)

    def forward(self, mel: Tensor) -> Tensor:
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).permute(0, 2, 1)
        x = (x + self.positional_embedding).to(x.dtype)
        for block in self.blocks:
            x, _ = block(x)
        return self.ln_post(x)


class TextDecoder(nn.Module):
    """Tokens -> next-token logits, with the self-attention cache passed in and returned.

    The cache is one `LayerCache` per layer, its tensors (rows, n_head, positions, head_dim); the
    cross-attention keys and values come from `cross_kv` once per 30-s window.
    """

    def __init__(self, n_vocab: int, n_ctx: int, n_state: int, n_head: int, n_layer: int) -> None:
        super().__init__()
        # Left uninitialised like `positional_embedding` (weights are always loaded over it): a
        # random initialisation on the meta device, where engines build the model, would import
        # ~800 of PyTorch's modules, as `sinusoids` would.
        self.token_embedding = nn.Embedding(n_vocab, n_state, _weight=torch.empty(n_vocab, n_state))
        self.positional_embedding = nn.Parameter(torch.empty(n_ctx, n_state))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(n_state, n_head, cross_attention=True) for _ in range(n_layer)
        )
        self.ln = LayerNorm(n_state)

    def cross_kv(self, audio_features: Tensor) -> list[KV]:
        """Every layer's cross-attention keys and values for one window of audio."""
        kv = [block.cross_attn.project_kv(audio_features) for block in self.blocks]  # type: ignore[union-attr]
        return [(k.contiguous(), v.contiguous()) for k, v in kv]  # read once per token: keep them dense

    def embed(self, tokens: Tensor, offset: int) -> Tensor:
        """Token plus positional embedding for positions offset .. offset + T - 1."""
        positions = self.positional_embedding[offset : offset + tokens.shape[-1]]
        # in the positions' format: an engine may keep the token table smaller than the activations
        return (self.token_embedding(tokens) + positions).to(positions.dtype)

    def logits(self, x: Tensor) -> Tensor:
        """Final norm and the tied output projection, always in float32."""
        return self.ln(x).float() @ self.token_embedding.weight.float().T

    def forward(
        self, tokens: Tensor, cross_kv: list[KV], cache: list[LayerCache] | None = None, padding: Tensor | None = None
    ) -> tuple[Tensor, list[LayerCache]]:
        """Hidden states (B, T, n_state) for `tokens` following the `cache`d positions, and the new cache.

        The vocabulary projection is left to `logits`, so callers pay for it only at the
        positions they read. `padding` (B,) counts the filler tokens each row starts with, so
        windows whose prompts differ in length decode as one batch: a row's positions count
        from its first real token, and no real token attends to filler.
        """
        offset = 0 if cache is None else cache[0].length
        t = tokens.shape[-1]
        mask = None
        if padding is None:
            x = self.embed(tokens, offset)
            if t > 1:  # a prompt: causal over the new positions, open over the cached ones
                mask = torch.full((t, offset + t), float("-inf"), device=tokens.device).triu_(offset + 1)
        else:
            queries = torch.arange(offset, offset + t, device=tokens.device)
            positions = (queries[None] - padding[:, None]).clamp(min=0)
            x = self.token_embedding(tokens) + self.positional_embedding[positions]
            x = x.to(self.positional_embedding.dtype)  # as `embed`: in the positions' format
            keys = torch.arange(offset + t, device=tokens.device)
            # Filler is hidden from every query but itself (a query that saw nothing would be NaN,
            # and NaN values poison the weighted sum even where their weight is zero).
            hidden = (keys[None, None] < padding[:, None, None]) & (keys[None, None] != queries[None, :, None])
            hidden |= keys[None, None] > queries[None, :, None]  # causal
            mask = torch.zeros(hidden.shape, dtype=x.dtype, device=tokens.device).masked_fill_(hidden, float("-inf"))
            mask = mask[:, None]
        new_cache: list[LayerCache] = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if cache is None else cache[i], cross_kv[i], mask)
            new_cache.append(kv)
        return x, new_cache


class Whisper(nn.Module):
    """Encoder plus decoder; the engines call the halves separately."""

    def __init__(self, dims: ModelDimensions) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(
            dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer
        )
        self.decoder = TextDecoder(
            dims.n_vocab, dims.n_text_ctx, dims.n_text_state, dims.n_text_head, dims.n_text_layer
        )

    def forward(self, mel: Tensor, tokens: Tensor) -> Tensor:
        """Full-sequence logits: what parity tests compare against other implementations."""
        hidden, _ = self.decoder(tokens, self.decoder.cross_kv(self.encoder(mel)))
        return self.decoder.logits(hidden)

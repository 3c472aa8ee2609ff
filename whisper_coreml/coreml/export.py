"""Torch modules that trace into the Core ML encoder and decoder.

They are thin wrappers over `model.Whisper`'s own submodules (same parameters, no copies), with
the attention written out as plain matmul + softmax so that every shape is static, the
cross-attention weights of the alignment heads can be returned, and nothing depends on
PyTorch's fused kernels. Layouts are chosen for the Neural Engine: four-dimensional caches
with the head dimension last.

- `EncoderExport`: log-mel (1, n_mels, 3000) -> encoder output (1, 1500, n_state) and every
  decoder layer's cross-attention keys and values, stacked as (n_layer, n_head, 1500, head_dim).
- `StatefulDecoderExport`: one token per call; the self-attention cache and the cross-attention
  keys/values are registered buffers that become Core ML states (macOS 15). The token's keys
  and values are written into the cache at `position` in place.
- `StatelessDecoderExport`: the same step with the cache and the cross keys/values passed in
  and the new token's keys/values returned; an additive `mask` marks the cache's valid slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..model import MultiHeadAttention, ResidualAttentionBlock, Whisper

MASK_VALUE = -1.0e4  # additive mask: far below any attention score, and finite in float16


def _layer_norm(ln: nn.LayerNorm, x: Tensor) -> Tensor:
    """Our `LayerNorm` without its float32 round trip: the converter chooses the precision."""
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


def _mlp(block: ResidualAttentionBlock, x: Tensor) -> Tensor:
    fc1, _, fc2 = block.mlp
    return fc2(F.gelu(fc1(_layer_norm(block.mlp_ln, x))))


# Shapes are Python ints held by the modules, never `tensor.shape`: the tracer would record size
# ops for those, and static constants are what the Neural Engine wants anyway.


def _heads(x: Tensor, n_head: int, head_dim: int) -> Tensor:
    """(1, T, n_state) -> (n_head, T, head_dim)."""
    return x.reshape(-1, n_head, head_dim).transpose(0, 1)


def _merge(x: Tensor, n_state: int) -> Tensor:
    """(n_head, T, head_dim) -> (1, T, n_state)."""
    return x.transpose(0, 1).reshape(1, -1, n_state)


def _attention(
    q: Tensor, k: Tensor, v: Tensor, head_dim: int, mask: Tensor | None = None, split_scale: bool = False
) -> tuple[Tensor, Tensor]:
    """Head-split attention and its weights.

    The encoder splits the 1/sqrt(d) scale between q and k (as openai-whisper does) so its
    1500 x 1500 scores stay in float16 range; the decoder scales its single query only, rather
    than the whole cache on every token.
    """
    if split_scale:
        scores = (q * head_dim**-0.25) @ (k * head_dim**-0.25).transpose(-1, -2)
    else:
        scores = (q * head_dim**-0.5) @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores + mask
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


class EncoderExport(nn.Module):
    """Audio encoder plus every decoder layer's cross-attention keys and values."""

    def __init__(self, model: Whisper) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.decoder_blocks = model.decoder.blocks
        dims = model.dims
        self.audio_heads = (dims.n_audio_head, dims.n_audio_state // dims.n_audio_head)
        self.text_heads = (dims.n_text_head, dims.n_text_state // dims.n_text_head)
        self.n_audio_state = dims.n_audio_state

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        enc = self.encoder
        x = F.gelu(enc.conv1(mel))
        x = F.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.positional_embedding
        for block in enc.blocks:
            attn: MultiHeadAttention = block.attn
            h = _layer_norm(block.attn_ln, x)
            q, k, v = (_heads(p(h), *self.audio_heads) for p in (attn.query, attn.key, attn.value))
            out, _ = _attention(q, k, v, self.audio_heads[1], split_scale=True)
            x = x + attn.out(_merge(out, self.n_audio_state))
            x = x + _mlp(block, x)
        features = _layer_norm(enc.ln_post, x)
        keys, values = [], []
        for block in self.decoder_blocks:
            cross: MultiHeadAttention = block.cross_attn
            keys.append(_heads(cross.key(features), *self.text_heads))
            values.append(_heads(cross.value(features), *self.text_heads))
        return features, torch.stack(keys), torch.stack(values)


class _DecoderStep(nn.Module):
    """What both decoder variants share: embedding, cross-attention, MLP, logits, alignment weights."""

    def __init__(self, model: Whisper, max_tokens: int, alignment_heads: tuple[tuple[int, int], ...]) -> None:
        super().__init__()
        dims = model.dims
        if not 1 <= max_tokens <= dims.n_text_ctx:
            raise ValueError(f"max_tokens must be between 1 and {dims.n_text_ctx}, got {max_tokens}")
        decoder = model.decoder
        self.token_embedding = decoder.token_embedding
        # Only the positions the cache can hold; a fresh tensor so the slice is all that gets stored.
        self.positional_embedding = nn.Parameter(decoder.positional_embedding.detach()[:max_tokens].clone())
        self.blocks = decoder.blocks
        self.ln = decoder.ln
        self.n_head = dims.n_text_head
        self.n_layer = dims.n_text_layer
        self.head_dim = dims.n_text_state // dims.n_text_head
        self.n_state = dims.n_text_state
        self.max_tokens = max_tokens
        self.alignment_heads = alignment_heads
        self.register_buffer("slots", torch.arange(max_tokens, dtype=torch.int32), persistent=False)

    def embed(self, token: Tensor, position: Tensor) -> Tensor:
        """(1, 1) token and (1,) position -> (1, 1, n_state)."""
        return self.token_embedding(token) + self.positional_embedding[position][None]

    def cross(self, i: int, block: ResidualAttentionBlock, x: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        cross: MultiHeadAttention = block.cross_attn  # type: ignore[assignment]
        q = _heads(cross.query(_layer_norm(block.cross_attn_ln, x)), self.n_head, self.head_dim)  # type: ignore[arg-type]
        out, weights = _attention(q, k, v, self.head_dim)
        return x + cross.out(_merge(out, self.n_state)), weights

    def finish(self, x: Tensor, cross_weights: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Logits (1, 1, n_vocab) through the tied embedding, and the alignment heads' weights (1, A, 1500)."""
        logits = F.linear(_layer_norm(self.ln, x), self.token_embedding.weight)
        alignment = torch.cat([cross_weights[layer][head : head + 1, 0] for layer, head in self.alignment_heads])
        return logits, alignment[None]


class StatefulDecoderExport(_DecoderStep):
    """One token per call; caches live in the model as Core ML state.

    States: `k_cache`, `v_cache` (n_layer, n_head, max_tokens, head_dim), written at `position`;
    `cross_k`, `cross_v` (n_layer, n_head, n_audio_ctx, head_dim), written by the host once per
    window (MLState.write_state) and only read here.
    """

    STATES = ("k_cache", "v_cache", "cross_k", "cross_v")

    def __init__(
        self,
        model: Whisper,
        max_tokens: int,
        alignment_heads: tuple[tuple[int, int], ...],
        dtype: torch.dtype = torch.float16,
    ) -> None:
        super().__init__(model, max_tokens, alignment_heads)
        dims = model.dims
        cache = (dims.n_text_layer, self.n_head, max_tokens, self.head_dim)
        cross = (dims.n_text_layer, self.n_head, dims.n_audio_ctx, self.head_dim)
        self.register_buffer("k_cache", torch.zeros(cache, dtype=dtype))
        self.register_buffer("v_cache", torch.zeros(cache, dtype=dtype))
        self.register_buffer("cross_k", torch.zeros(cross, dtype=dtype))
        self.register_buffer("cross_v", torch.zeros(cross, dtype=dtype))

    def forward(self, token: Tensor, position: Tensor) -> tuple[Tensor, Tensor]:
        x = self.embed(token, position)
        mask = (self.slots > position).to(x.dtype) * MASK_VALUE  # (max_tokens,): later slots are not written yet
        p = position[0]
        weights: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            attn: MultiHeadAttention = block.attn
            h = _layer_norm(block.attn_ln, x)
            q, k, v = (_heads(proj(h), self.n_head, self.head_dim) for proj in (attn.query, attn.key, attn.value))
            self.k_cache[i : i + 1, :, p : p + 1, :] = k[None].to(self.k_cache.dtype)
            self.v_cache[i : i + 1, :, p : p + 1, :] = v[None].to(self.v_cache.dtype)
            out, _ = _attention(q, self.k_cache[i].to(x.dtype), self.v_cache[i].to(x.dtype), self.head_dim, mask)
            x = x + attn.out(_merge(out, self.n_state))
            x, w = self.cross(i, block, x, self.cross_k[i].to(x.dtype), self.cross_v[i].to(x.dtype))
            weights.append(w)
            x = x + _mlp(block, x)
        return self.finish(x, weights)


class StatelessDecoderExport(_DecoderStep):
    """One token per call with every cache passed in (macOS 13/14).

    Inputs: `token` (1, 1), `position` (1,), `k_cache`/`v_cache` (n_layer, n_head, max_tokens,
    head_dim), `cross_k`/`cross_v` (n_layer, n_head, n_audio_ctx, head_dim) and `mask`
    (1, max_tokens), 0 where the cache holds a token and -1e4 elsewhere. Outputs: logits,
    alignment weights, and `k_new`/`v_new` (n_layer, n_head, 1, head_dim), which the caller
    writes into its cache at `position`.
    """

    def forward(
        self,
        token: Tensor,
        position: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.embed(token, position)
        full_mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1)  # the new token sees itself
        weights: list[Tensor] = []
        new_k: list[Tensor] = []
        new_v: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            attn: MultiHeadAttention = block.attn
            h = _layer_norm(block.attn_ln, x)
            q, k, v = (_heads(proj(h), self.n_head, self.head_dim) for proj in (attn.query, attn.key, attn.value))
            new_k.append(k)
            new_v.append(v)
            keys = torch.cat([k_cache[i], k], dim=1)
            values = torch.cat([v_cache[i], v], dim=1)
            out, _ = _attention(q, keys, values, self.head_dim, full_mask)
            x = x + attn.out(_merge(out, self.n_state))
            x, w = self.cross(i, block, x, cross_k[i], cross_v[i])
            weights.append(w)
            x = x + _mlp(block, x)
        logits, alignment = self.finish(x, weights)
        return logits, alignment, torch.stack(new_k), torch.stack(new_v)


def _batch_heads(x: Tensor, batch: int, n_head: int, head_dim: int) -> Tensor:
    """(B, 1, n_state) -> (B, n_head, 1, head_dim)."""
    return x.reshape(batch, 1, n_head, head_dim).transpose(1, 2)


class _BeamStep(_DecoderStep):
    """`batch` sequences per call, one token each, all at the same position (beam search keeps them equal).

    The cross-attention keys/values are stored once and shared: each head attends with all
    `batch` queries in one (n_head, batch, head_dim) x (n_head, head_dim, n_audio_ctx) product.
    """

    def __init__(self, model: Whisper, max_tokens: int, alignment_heads: tuple[tuple[int, int], ...], batch: int):
        super().__init__(model, max_tokens, alignment_heads)
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.batch = batch

    def embed_rows(self, token: Tensor, position: Tensor) -> Tensor:
        """(B, 1) tokens at one (1,) position -> (B, 1, n_state)."""
        return self.token_embedding(token) + self.positional_embedding[position][None]

    def qkv(self, attn: MultiHeadAttention, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shape = (self.batch, self.n_head, self.head_dim)
        return tuple(_batch_heads(p(h), *shape) for p in (attn.query, attn.key, attn.value))  # type: ignore[return-value]

    def self_attention(
        self, attn: MultiHeadAttention, x: Tensor, q: Tensor, keys: Tensor, values: Tensor, mask: Tensor
    ) -> Tensor:
        """Each row's query over its own cache rows (B, n_head, T, head_dim)."""
        out, _ = _attention(q, keys, values, self.head_dim, mask)
        return x + attn.out(out.transpose(1, 2).reshape(self.batch, 1, self.n_state))

    def cross_rows(self, block: ResidualAttentionBlock, x: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """All rows' cross-attention over one (n_head, n_audio_ctx, head_dim) copy; weights (n_head, B, n_audio_ctx)."""
        cross: MultiHeadAttention = block.cross_attn  # type: ignore[assignment]
        q = cross.query(_layer_norm(block.cross_attn_ln, x)).reshape(self.batch, self.n_head, self.head_dim)
        out, weights = _attention(q.transpose(0, 1), k, v, self.head_dim)  # (n_head, B, head_dim)
        return x + cross.out(out.transpose(0, 1).reshape(self.batch, 1, self.n_state)), weights

    def finish_rows(self, x: Tensor, cross_weights: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Logits (B, 1, n_vocab) and the alignment heads' weights (B, A, n_audio_ctx)."""
        logits = F.linear(_layer_norm(self.ln, x), self.token_embedding.weight)
        alignment = torch.stack([cross_weights[layer][head] for layer, head in self.alignment_heads])
        return logits, alignment.transpose(0, 1)


class StatefulBeamDecoderExport(_BeamStep):
    """Beam search's decoder: `batch` rows per call, whose caches are reordered inside the program.

    Inputs: `token` (B, 1), `position` (1,) and `beam` (B,): row i continues the cached row
    `beam[i]` (0..B-1 when nothing is reordered). States: `k_cache`, `v_cache` (n_layer, B,
    n_head, max_tokens, head_dim), gathered by `beam` and then written at `position`; `cross_k`,
    `cross_v` (n_layer, n_head, n_audio_ctx, head_dim), one copy for every row. Reordering on
    the device costs one pass over the cache per step, next to the weights every step reads
    anyway, and saves the host from reading and writing B caches between calls.
    """

    STATES = StatefulDecoderExport.STATES

    def __init__(
        self,
        model: Whisper,
        max_tokens: int,
        alignment_heads: tuple[tuple[int, int], ...],
        batch: int,
        dtype: torch.dtype = torch.float16,
    ) -> None:
        super().__init__(model, max_tokens, alignment_heads, batch)
        dims = model.dims
        cache = (dims.n_text_layer, batch, self.n_head, max_tokens, self.head_dim)
        cross = (dims.n_text_layer, self.n_head, dims.n_audio_ctx, self.head_dim)
        self.register_buffer("k_cache", torch.zeros(cache, dtype=dtype))
        self.register_buffer("v_cache", torch.zeros(cache, dtype=dtype))
        self.register_buffer("cross_k", torch.zeros(cross, dtype=dtype))
        self.register_buffer("cross_v", torch.zeros(cross, dtype=dtype))

    def forward(self, token: Tensor, position: Tensor, beam: Tensor) -> tuple[Tensor, Tensor]:
        x = self.embed_rows(token, position)
        mask = (self.slots > position).to(x.dtype) * MASK_VALUE
        p = position[0]
        weights: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            attn: MultiHeadAttention = block.attn
            q, k, v = self.qkv(attn, _layer_norm(block.attn_ln, x))
            self.k_cache[i : i + 1] = self.k_cache[i].index_select(0, beam)[None]
            self.v_cache[i : i + 1] = self.v_cache[i].index_select(0, beam)[None]
            self.k_cache[i : i + 1, :, :, p : p + 1, :] = k[None].to(self.k_cache.dtype)
            self.v_cache[i : i + 1, :, :, p : p + 1, :] = v[None].to(self.v_cache.dtype)
            x = self.self_attention(attn, x, q, self.k_cache[i].to(x.dtype), self.v_cache[i].to(x.dtype), mask)
            x, w = self.cross_rows(block, x, self.cross_k[i].to(x.dtype), self.cross_v[i].to(x.dtype))
            weights.append(w)
            x = x + _mlp(block, x)
        return self.finish_rows(x, weights)


class StatelessBeamDecoderExport(_BeamStep):
    """Beam search's decoder for macOS 13/14: `batch` rows per call, the caller owning (and reordering) the caches.

    Inputs: `token` (B, 1), `position` (1,), `k_cache`/`v_cache` (n_layer, B, n_head,
    max_tokens, head_dim), `cross_k`/`cross_v` (n_layer, n_head, n_audio_ctx, head_dim) and
    `mask` (1, max_tokens) shared by the rows. Outputs: logits (B, 1, n_vocab), alignment
    (B, A, n_audio_ctx), and `k_new`/`v_new` (n_layer, B, n_head, 1, head_dim).
    """

    def forward(
        self,
        token: Tensor,
        position: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        mask: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.embed_rows(token, position)
        full_mask = torch.cat([mask, torch.zeros_like(mask[:, :1])], dim=1)
        weights: list[Tensor] = []
        new_k: list[Tensor] = []
        new_v: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            attn: MultiHeadAttention = block.attn
            q, k, v = self.qkv(attn, _layer_norm(block.attn_ln, x))
            new_k.append(k)
            new_v.append(v)
            keys = torch.cat([k_cache[i], k], dim=2)
            values = torch.cat([v_cache[i], v], dim=2)
            x = self.self_attention(attn, x, q, keys, values, full_mask)
            x, w = self.cross_rows(block, x, cross_k[i], cross_v[i])
            weights.append(w)
            x = x + _mlp(block, x)
        logits, alignment = self.finish_rows(x, weights)
        return logits, alignment, torch.stack(new_k), torch.stack(new_v)

"""The PyTorch engine: our `model.Whisper` on CPU, CUDA or Apple's MPS, on any OS."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .. import openmp
from ..errors import ModelError
from ..model import KV, LayerNorm, Whisper, default_alignment_heads
from ..weights import Weights
from .precision import resolve_precision
from .quantize import FEW_ROWS, MANY_ROWS, Int8Linear, kernel_library, quantize_linears

# The format activations flow in through each half; int8 layers take and give float32.
ACTIVATIONS = {"float32": torch.float32, "int8": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(device: str | None) -> torch.device:
    """`None`/'auto' picks CUDA, then MPS, then CPU; an explicit choice must exist."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available on this machine")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelError("--device mps: Apple's Metal backend is not available on this machine")
    if device not in ("cpu", "cuda", "mps"):
        raise ModelError(f"--device {device}: choose cpu, cuda, mps or auto")
    return torch.device(device)


class BlockedProjection:
    """The vocabulary projection as a batch of column blocks, so it runs on every CPU thread.

    A decoding step projects one hidden row onto the whole vocabulary (80 MB of fp32 weights
    for tiny): memory-bound, and PyTorch's CPU backend runs such a one-row product on a single
    core. Viewing the (n_state, n_vocab) matrix as `threads` column blocks turns it into a
    batched product, which PyTorch spreads over its own threads: a step's projection takes
    half the time on two cores. The blocks are views of the embedding's own storage.
    """

    def __init__(self, model: Whisper, storage: Tensor, threads: int) -> None:
        self.norm = model.decoder.ln
        self.n_vocab = model.dims.n_vocab
        n_state, padded = storage.shape
        self.blocks = storage.view(n_state, threads, padded // threads).permute(1, 0, 2)

    def __call__(self, hidden: Tensor) -> Tensor:
        h = self.norm(hidden).float()
        rows = h.reshape(-1, h.shape[-1])
        n = self.blocks.shape[0]
        out = torch.bmm(rows.expand(n, *rows.shape), self.blocks)  # (blocks, rows, block width)
        logits = out.permute(1, 0, 2).reshape(rows.shape[0], -1)[:, : self.n_vocab]
        return logits.reshape(*h.shape[:-1], self.n_vocab)


class Projection:
    """The final norm and the vocabulary projection in the weights' own format; float32 logits.

    `weight` is (n_state, n_vocab) or an `Int8Linear`; a half-precision product is what
    openai-whisper computes on GPUs too.
    """

    def __init__(self, norm: nn.Module, weight: Tensor | Int8Linear) -> None:
        self.norm = norm
        self.weight = weight

    def __call__(self, hidden: Tensor) -> Tensor:
        h = self.norm(hidden)
        if isinstance(self.weight, Int8Linear):
            return self.weight(h.float())
        return (h.to(self.weight.dtype) @ self.weight).float()


def _convert(half: nn.Module, fmt: str, rows: str, many_rows: tuple[str, ...] = ()) -> None:
    """Put one half of the model into `fmt`, in place, module by module (no second copy of the half).

    Layer norms stay float32 (they compute in it). Under int8 the token table becomes float16:
    the projection gets its own int8 copy (TorchEngine._projection), lookups read a few rows a step.
    """
    if fmt == "int8":
        quantize_linears(half, rows, many_rows)
    for module in half.modules():
        dtype = ACTIVATIONS[fmt]
        if isinstance(module, LayerNorm):
            dtype = torch.float32
        elif isinstance(module, nn.Embedding) and fmt == "int8":
            dtype = torch.float16
        module._apply(lambda t, dtype=dtype: t.to(dtype) if t.is_floating_point() else t, recurse=False)


class TorchSession:
    """A decoder session whose self-attention cache grows by concatenation; `reorder` selects its rows.

    Over a batch of windows the cross-attention keys/values hold one entry per window and the
    rows are window-major, `rows` per window (see `MultiHeadAttention.attend`); `padding` is
    each row's count of leading filler tokens.
    """

    def __init__(
        self, model: Whisper, cross_kv: list[KV], logits: Callable[[Tensor], Tensor], padding: Tensor | None = None
    ) -> None:
        self.model = model
        self.cross_kv = cross_kv
        self.logits = logits
        self.padding = padding
        self.cache: list[KV] | None = None

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, positions: Sequence[int] | np.ndarray = (-1,)) -> np.ndarray:
        device = self.cross_kv[0][0].device
        at = np.asarray(positions)
        copies = self._copies(tokens)
        if copies > 1:
            # Every window's rows start alike (beams, samples): run each window's prompt once and
            # copy the result, instead of the whole prompt (up to 224 tokens) once per beam.
            logits = self._step(tokens[::copies], at[::copies] if at.ndim == 2 else at, device)
            self.cache = [(k.repeat_interleave(copies, 0), v.repeat_interleave(copies, 0)) for k, v in self.cache]
            return np.repeat(logits, copies, axis=0)
        return self._step(tokens, at, device)

    def _copies(self, tokens: np.ndarray) -> int:
        """How many identical rows each window's first step holds (1 once the cache exists)."""
        n = tokens.shape[0] // self.cross_kv[0][0].shape[0]
        if self.cache is not None or n == 1:
            return 1
        grouped = tokens.reshape(-1, n, tokens.shape[1])
        return n if (grouped == grouped[:, :1]).all() else 1

    def _step(self, tokens: np.ndarray, at: np.ndarray, device: torch.device) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).to(device)
        padding = self.padding
        if padding is not None and padding.shape[0] != x.shape[0]:  # the first step of copies: one row a window
            padding = padding[:: padding.shape[0] // x.shape[0]]
        hidden, self.cache = self.model.decoder(x, self.cross_kv, self.cache, padding)
        if at.ndim == 2:  # each row its own positions
            rows = torch.arange(hidden.shape[0], device=device)[:, None]
            return self.logits(hidden[rows, torch.from_numpy(at % x.shape[1]).to(device)]).cpu().numpy()
        return self.logits(hidden[:, at.tolist()]).cpu().numpy()

    @torch.inference_mode()
    def reorder(self, rows: Sequence[int]) -> None:
        if self.cache is None or list(rows) == list(range(self.cache[0][0].shape[0])):
            return
        device = self.cross_kv[0][0].device
        n_windows = self.cross_kv[0][0].shape[0]
        per_window = self.cache[0][0].shape[0] // n_windows
        windows = [r // per_window for r in rows[::per_window]]
        if windows != list(range(n_windows)):  # finished windows leave the batch
            keep = torch.tensor(windows, device=device)
            self.cross_kv = [(k.index_select(0, keep), v.index_select(0, keep)) for k, v in self.cross_kv]
        index = torch.tensor(list(rows), device=device)
        self.cache = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.cache]
        if self.padding is not None:
            self.padding = self.padding.index_select(0, index)


class TorchEngine:
    """Whisper in PyTorch, each half in the format its compute type gives it on this device (precision.py)."""

    name = "torch"

    def __init__(self, weights: Weights, device: str | None = None, compute_type: str | None = None) -> None:
        self.device = pick_device(device)
        if self.device.type == "cpu":
            openmp.warn_if_late()
        # all of the user's threads while the cores are free, one while other processes hold them
        self.threads = openmp.ThreadGovernor(torch.get_num_threads()) if self.device.type == "cpu" else None
        self.precision = resolve_precision(compute_type, self.device)
        self.dims = weights.dims
        with torch.device("meta"):  # no random initialisation to overwrite: large-v3 would need 6 GB more
            model = Whisper(weights.dims)
        # The checkpoint's own tensors, converted module by module: never a float32 copy of the
        # whole model beside the checkpoint when the formats are smaller.
        model.load_state_dict(weights.state_dict, assign=True)
        self.model = model.eval()
        self.encoder_dtype = ACTIVATIONS[self.precision.encoder]
        self.decoder_dtype = ACTIVATIONS[self.precision.decoder]
        self.logits = self._projection()  # first: its tables are made from the checkpoint's embedding
        _convert(self.model.encoder, self.precision.encoder, MANY_ROWS)
        # The decoder reads one token's row at a time, but its cross-attention keys and values
        # are projected from all 1500 audio frames once per window.
        _convert(self.model.decoder, self.precision.decoder, FEW_ROWS, ("cross_attn.key", "cross_attn.value"))
        self.model.to(self.device)
        self.alignment_heads = weights.alignment_heads or default_alignment_heads(
            weights.dims.n_text_layer, weights.dims.n_text_head
        )

    @property
    def compute_type(self) -> str:
        """The compute type this engine runs: `auto` resolved for this device."""
        return self.precision.name

    def _projection(self) -> Callable[[Tensor], Tensor]:
        """The final norm and the per-token vocabulary projection over the tied embedding."""
        decoder = self.model.decoder
        embedding = decoder.token_embedding
        if self.precision.decoder == "int8":
            return Projection(decoder.ln, Int8Linear(embedding.weight, None, kernel_library(FEW_ROWS), per_row=True))
        # Store the tied embedding column-major: the per-token vocabulary projection then reads
        # contiguous memory (twice as fast on CPU), and token lookups barely notice. On a
        # multi-core CPU the columns are padded to a whole number of blocks (BlockedProjection).
        n_vocab, n_state = embedding.weight.shape
        dtype = self.decoder_dtype
        threads = torch.get_num_threads() if self.device.type == "cpu" and dtype == torch.float32 else 1
        storage = torch.zeros(n_state, -(-n_vocab // threads) * threads, dtype=dtype, device=self.device)
        storage[:, :n_vocab] = embedding.weight.detach().T
        embedding.weight = nn.Parameter(storage[:, :n_vocab].T, requires_grad=False)
        if threads > 1:
            return BlockedProjection(self.model, storage, threads)
        return Projection(decoder.ln, storage[:, :n_vocab])

    @torch.inference_mode()
    def encode(self, mel: np.ndarray) -> list[KV]:
        if self.threads is not None:
            self.threads.adjust()  # once a window
        x = torch.from_numpy(np.ascontiguousarray(mel)).to(self.device, self.encoder_dtype)[None]
        return self.model.decoder.cross_kv(self.model.encoder(x).to(self.decoder_dtype))

    def decoder(self, features: list[KV], batch_size: int = 1) -> TorchSession:
        # The cross-attention keys/values stay batch 1 for any batch: attention shares them.
        return TorchSession(self.model, features, self.logits)

    @torch.inference_mode()
    def encode_batch(self, mels: Sequence[np.ndarray]) -> list[list[KV]]:
        if self.device.type == "cpu":
            # A window's matrix products already fill every core; a batch would only hold
            # several windows' attention matrices (~0.4 GB each for 8 windows of tiny) at once.
            return [self.encode(mel) for mel in mels]
        x = torch.from_numpy(np.stack(mels)).to(self.device, self.encoder_dtype)
        kv = self.model.decoder.cross_kv(self.model.encoder(x).to(self.decoder_dtype))
        return [[(k[w : w + 1], v[w : w + 1]) for k, v in kv] for w in range(len(mels))]

    @torch.inference_mode()
    def decoder_batch(self, features: Sequence[list[KV]], rows: int, padding: Sequence[int]) -> TorchSession:
        layers = range(len(features[0]))
        kv = [(torch.cat([f[i][0] for f in features]), torch.cat([f[i][1] for f in features])) for i in layers]
        pad = torch.tensor(padding, device=self.device).repeat_interleave(rows) if any(padding) else None
        return TorchSession(self.model, kv, self.logits, pad)

    @torch.inference_mode()
    def align(self, features: list[KV], tokens: Sequence[int], vocab_end: int) -> tuple[np.ndarray, np.ndarray]:
        # Hooks catch what each cross-attention reads, and only the alignment heads' weights are
        # recomputed from it: the model's forward stays the one the converter traces.
        blocks = self.model.decoder.blocks
        queries: dict[int, Tensor] = {}
        hooks = [
            blocks[layer].cross_attn_ln.register_forward_hook(
                lambda _module, _inputs, out, layer=layer: queries.__setitem__(layer, out)
            )
            for layer in {layer for layer, _ in self.alignment_heads}
        ]
        try:
            ids = torch.tensor([list(tokens)], device=self.device)
            hidden, _ = self.model.decoder(ids, features)
        finally:
            for hook in hooks:
                hook.remove()
        following = torch.tensor([*tokens[1:], vocab_end], device=self.device)
        probs = torch.full((len(tokens),), float("nan"))
        for a in range(0, len(tokens), 32):  # a few rows of logits at a time
            b = min(a + 32, len(tokens))
            logprobs = self.logits(hidden[:, a:b])[0, :, :vocab_end].float().log_softmax(dim=-1)
            inside = following[a:b] < vocab_end
            rows = torch.arange(b - a, device=self.device)[inside]
            probs[a:b][inside.cpu()] = logprobs[rows, following[a:b][inside]].exp().cpu()
        weights = []
        for layer, head in self.alignment_heads:
            attention = blocks[layer].cross_attn
            q = attention.split_heads(attention.query(queries[layer]))[0, head].float()
            k = features[layer][0][0, head].float()
            weights.append(((q @ k.T) * q.shape[-1] ** -0.5).softmax(dim=-1))
        return probs.numpy(), torch.stack(weights).cpu().numpy()

"""The PyTorch engine: our `model.Whisper` on CPU, CUDA or Apple's MPS, on any OS."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import openmp
from ..errors import ModelError
from ..model import KV, LayerCache, LayerNorm, Whisper, default_alignment_heads
from ..weights import Weights
from .precision import resolve_precision
from .quantize import FEW_ROWS, MANY_ROWS, Int8Linear, kernel_library, quantize_linears

# The format activations flow in through each half; int8 layers take and give float32.
ACTIVATIONS = {"float32": torch.float32, "int8": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REFINED = 16  # logits of each row an int8 vocabulary projection computes again (RankedProjection)


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
    """The float32 vocabulary projection on the CPU: one hidden row as a batch of column blocks, several through oneDNN.

    A decoding step projects its rows onto the whole vocabulary (80 MB of weights for tiny):
    memory-bound, and PyTorch's CPU backend runs a one-row product on a single core. Viewing the
    (n_state, n_vocab) matrix as `threads` column blocks turns it into a batched product, which
    PyTorch spreads over its threads: half the time on two cores. The blocks are views of the
    embedding's own storage. For several rows (beams, samples, batched windows) the same
    layout is 1.6-1.9x slower than a copy of the weights in oneDNN's own blocked layout (`packed`,
    same results); that copy costs the model's embedding size in memory again, and one row reads
    it slower than the blocks, so it serves only the calls of several rows.
    """

    def __init__(self, model: Whisper, storage: Tensor, threads: int, packed: Tensor | None) -> None:
        self.norm = model.decoder.ln
        self.n_vocab = model.dims.n_vocab
        n_state, padded = storage.shape
        self.blocks = storage.view(n_state, threads, padded // threads).permute(1, 0, 2)
        self.packed = packed

    def __call__(self, hidden: Tensor) -> Tensor:
        h = self.norm(hidden).float()
        rows = h.reshape(-1, h.shape[-1])
        if self.packed is not None and rows.shape[0] > 1:
            logits = torch.ops.mkldnn._linear_pointwise(rows, self.packed, None, "none", [], "")
        else:
            n = self.blocks.shape[0]
            out = torch.bmm(rows.expand(n, *rows.shape), self.blocks)  # (blocks, rows, block width)
            logits = out.permute(1, 0, 2).reshape(rows.shape[0], -1)[:, : self.n_vocab]
        return logits.reshape(*h.shape[:-1], self.n_vocab)


class RowSplitLinear(nn.Linear):
    """A float32 decoder layer on the CPU whose one-row products run on every thread.

    A greedy step feeds each layer one row: PyTorch computes that product (a matrix-vector one)
    on a single core, and it is memory-bound (tiny.en's decoder layers are 38 MB, read once per
    token; cold from memory, 60 us for a 384 x 384 layer here). Viewing the weights' output
    features as `blocks` column blocks makes it a batched product over the same storage, which
    PyTorch spreads over its threads (43 us; a tiny.en greedy step in int8 8.5 -> 7.0 ms,
    float32 10.2 -> 8.7 ms on an AMD EPYC, 2 threads). Each output is still one dot product
    over the same inputs: the results are the same bits, checked on this CPU's kernels before
    a layer is swapped (`split_rows`). Several rows keep `F.linear`, whose kernel threads them itself and whose
    sums a split would reorder. Under int8 these layers keep float16 weights instead
    (`quantize.HalfWeightLinear`): half the bytes beat the split at several rows by far (beam 5:
    a step 0.75x); at one row, where fbgemm's product runs on one thread, they are about level.
    """

    blocks: Tensor
    block_bias: Tensor | None

    @classmethod
    def of(cls, layer: nn.Linear, blocks: int) -> RowSplitLinear:
        """`layer` itself (the same parameters) with `blocks` column-block views of its weights."""
        layer.__class__ = cls
        assert isinstance(layer, cls)
        out_features, in_features = layer.weight.shape
        layer.blocks = layer.weight.detach().view(blocks, out_features // blocks, in_features).transpose(1, 2)
        bias = layer.bias
        layer.block_bias = None if bias is None else bias.detach().view(blocks, 1, out_features // blocks)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        if x.numel() != x.shape[-1]:
            return super().forward(x)
        row = x.reshape(1, -1).expand(self.blocks.shape[0], 1, x.shape[-1])
        if self.block_bias is None:
            out = torch.bmm(row, self.blocks)
        else:
            out = torch.baddbmm(self.block_bias, row, self.blocks)
        return out.reshape(*x.shape[:-1], -1)


def split_rows(decoder: nn.Module, threads: int, many_rows: tuple[str, ...]) -> None:
    """Make a CPU decoder's float32 layers `RowSplitLinear`s, in place, except those whose names end
    with one of `many_rows`, where this CPU's kernels give the split product the same bits as
    the plain one (one probe per layer shape)."""
    if threads < 2:
        return
    agrees: dict[tuple[int, int], bool] = {}
    for name, layer in decoder.named_modules():
        if type(layer) is not nn.Linear or layer.weight.dtype != torch.float32 or name.endswith(many_rows):
            continue
        out_features, in_features = layer.weight.shape
        if out_features % threads:
            continue
        shape = (out_features, in_features)
        if shape not in agrees:
            probe = nn.Linear(in_features, out_features)
            x = torch.randn(1, 1, in_features)
            with torch.inference_mode():
                agrees[shape] = torch.equal(F.linear(x, probe.weight, probe.bias), RowSplitLinear.of(probe, threads)(x))
        if agrees[shape]:
            RowSplitLinear.of(layer, threads)


def fuse_self_attention(decoder: nn.Module) -> None:
    """Give every decoder block's self-attention one product for its query, key and value
    (`MultiHeadAttention.qkv`: the weights stacked, the key's zero bias), in place of the three.

    A decoding step feeds the three layers the same rows, one call each: stacked, they are one
    call over one contiguous weight, and each output is the same dot product (tiny.en int8,
    AMD EPYC, 2 threads: a step 0.95x with one row, 0.93x with five, the same logits to the bit).
    """
    for block in decoder.blocks:
        attention = block.attn
        query, key, value = attention.query, attention.key, attention.value
        with torch.device("meta"):  # no initialisation: the parameters are assigned below
            fused = nn.Linear(query.in_features, 3 * query.out_features)
        weights = torch.cat([query.weight, key.weight, value.weight]).detach()
        bias = torch.cat([query.bias, torch.zeros_like(query.bias), value.bias]).detach()
        fused.weight, fused.bias = nn.Parameter(weights, False), nn.Parameter(bias, False)
        attention.qkv = fused
        del attention.query, attention.key, attention.value


def pack_for_onednn(weight: Tensor, rows: int = 5) -> Tensor | None:
    """`weight` (out, in) in oneDNN's blocked layout for products of about `rows` rows (the beam
    size), or None where this PyTorch has no oneDNN for the CPU, or its kernel does not run here."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.float(), rows)
        torch.ops.mkldnn._linear_pointwise(torch.zeros(2, weight.shape[1]), packed, None, "none", [], "")
    except (AttributeError, RuntimeError):  # internal operators: a PyTorch or CPU without them
        return None
    return packed


class Projection:
    """The final norm and the vocabulary projection in the weights' own format, (n_state, n_vocab);
    float32 logits. A half-precision product is what openai-whisper computes on GPUs too."""

    def __init__(self, norm: nn.Module, weight: Tensor) -> None:
        self.norm = norm
        self.weight = weight

    def __call__(self, hidden: Tensor) -> Tensor:
        return (self.norm(hidden).to(self.weight.dtype) @ self.weight).float()


class RankedProjection:
    """The final norm and an int8 vocabulary projection (`weight`) that ranks the vocabulary, after
    which each row's `REFINED` best logits are computed again in float32 from `table`'s float16 rows.

    Every choice decoding makes is among those few (the argmax, the beams' candidates, the
    timestamp rule against the best text token, the no-speech gate), so it sees float16's
    accuracy at int8's traffic: int8's 8-bit activations moved tiny.en's logits far more than
    any other layer did (teacher-forced on `en/`, a Xeon: the top-2 margin off float32's by
    0.100 on average, 0.039 refined; the argmax changed at 10 of 723 tokens, then 3; a float16
    projection is as near and 1.1x the step's time, the refinement 1.02x).
    """

    def __init__(self, norm: nn.Module, weight: Int8Linear, table: nn.Embedding) -> None:
        self.norm = norm
        self.weight = weight
        self.table = table  # the token embedding: the engine converts it to float16 after this is made

    def __call__(self, hidden: Tensor) -> Tensor:
        h = self.norm(hidden).float()
        logits = self.weight(h)
        rows, flat = h.reshape(-1, h.shape[-1]), logits.view(-1, logits.shape[-1])
        best = flat.topk(REFINED, dim=-1).indices
        # each row's own products, summed alone: a row's logits do not depend on the rows beside it
        flat.scatter_(1, best, (self.table.weight[best].float() * rows[:, None]).sum(-1))
        return logits


def _convert(half: nn.Module, fmt: str, rows: str, many_rows: tuple[str, ...] = (), keep: tuple[str, ...] = ()) -> None:
    """Put one half of the model into `fmt`, in place, module by module (no second copy of the half).

    Under int8 the layers named by `keep` (prefixes) stay float32.

    Layer norms stay float32 (they compute in it). Under int8 the token table becomes float16:
    the projection gets its own int8 copy (TorchEngine._projection), lookups read a few rows a step.
    """
    if fmt == "int8":
        quantize_linears(half, rows, many_rows, keep)
    for module in half.modules():
        dtype = ACTIVATIONS[fmt]
        if isinstance(module, LayerNorm):
            dtype = torch.float32
        elif isinstance(module, nn.Embedding) and fmt == "int8":
            dtype = torch.float16
        module._apply(lambda t, dtype=dtype: t.to(dtype) if t.is_floating_point() else t, recurse=False)


class TorchSession:
    """A decoder session over `model.LayerCache`s: the first step's keys/values, then each row's own.

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
        self.cache: list[LayerCache] | None = None
        self.rows = 0  # rows decoded, all windows together

    @torch.inference_mode()
    def step(self, tokens: np.ndarray, positions: Sequence[int] | np.ndarray = (-1,)) -> np.ndarray:
        device = self.cross_kv[0][0].device
        at = np.asarray(positions)
        copies = self._copies(tokens)
        self.rows = tokens.shape[0]
        if copies > 1:
            # Every window's rows start alike (beams, samples): its prompt (up to 224 tokens) runs
            # once, and the cache keeps it once as the prefix all of the window's rows attend to.
            logits = self._step(tokens[::copies], at[::copies] if at.ndim == 2 else at, device)
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
        rows = list(rows)
        if self.cache is None or rows == list(range(self.rows)):
            return
        device = self.cross_kv[0][0].device
        n_windows = self.cross_kv[0][0].shape[0]
        per_window = self.rows // n_windows
        windows = [r // per_window for r in rows[::per_window]]
        index = torch.tensor(rows, device=device)
        kept = None if windows == list(range(n_windows)) else torch.tensor(windows, device=device)
        if kept is not None:  # finished windows leave the batch
            self.cross_kv = [(k.index_select(0, kept), v.index_select(0, kept)) for k, v in self.cross_kv]
        # a prefix of one row a window follows the windows; one of a row for every row, the rows
        prefix_rows = kept if self.cache[0].prefix[0].shape[0] == n_windows else index
        self.cache = [_select(c, prefix_rows, index) for c in self.cache]
        if self.padding is not None:
            self.padding = self.padding.index_select(0, index)
        self.rows = len(rows)


def _select(cache: LayerCache, prefix_rows: Tensor | None, rows: Tensor) -> LayerCache:
    """`cache` with its prefix's `prefix_rows` (None: all) and its own keys/values' `rows`."""
    prefix = cache.prefix if prefix_rows is None else (*(t.index_select(0, prefix_rows) for t in cache.prefix),)
    own = None if cache.own is None else (*(t.index_select(0, rows) for t in cache.own),)
    return LayerCache(prefix, own)  # type: ignore[arg-type]


def _return_freed_memory() -> None:
    """Hand the memory the checkpoint's tensors and the conversion's scratch held back to the system.

    glibc keeps freed blocks for reuse, and most of those are never reused (tiny.en int8: 24 MB
    of 357, base 65 of 466); other C libraries have no `malloc_trim` and are left alone.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # no such symbol; Windows opens no process handle
        return
    trim(0)


class TorchEngine:
    """Whisper in PyTorch, each half in the format its compute type gives it on this device (precision.py).

    The engine takes the checkpoint's tensors (`weights.state_dict` is left empty), so each is
    freed as soon as its module is converted: holding them to the end kept the checkpoint
    beside the model (a float16 base loaded as float32 peaked at 763 MB, 637 MB taken).
    Pass a copy of the dict to build another engine from the same weights.
    """

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
        weights.state_dict.clear()  # the model's references are the only ones left
        self.model = model.eval()
        self.encoder_dtype = ACTIVATIONS[self.precision.encoder]
        self.decoder_dtype = ACTIVATIONS[self.precision.decoder]
        self.logits = self._projection()  # first: its tables are made from the checkpoint's embedding
        # The first encoder block stays float32 under int8: its products carry half of the encoder's
        # int8 error (tiny.en on a long file's window, AMD EPYC: 7.9% of the norm from float32's
        # output, 4.1% with it kept; base 9.0 -> 4.2%), enough to move word boundaries by 0.26 s.
        _convert(self.model.encoder, self.precision.encoder, MANY_ROWS, keep=("blocks.0.",))
        # The decoder reads one token's row at a time, but its cross-attention keys and values
        # are projected from all 1500 audio frames once per window.
        many_rows = ("cross_attn.key", "cross_attn.value")
        decoder = self.model.decoder
        if self.precision.decoder == "int8":  # float32 keeps openai-whisper's products as they are
            fuse_self_attention(decoder)
        # Keys and values kept in a format of their own (precision.py) are projected in it too: 1500
        # rows a window, compute-bound like the encoder, where bfloat16 on AMX is as fast as int8
        # and nearer float32 (teacher-forced, base on `en/`: the top-2 margin off float32's by 0.055
        # with them int8, 0.018 in bfloat16).
        audio_kv = [f"blocks.{i}.{name}" for i in range(len(decoder.blocks)) for name in many_rows]
        kv_format = self.precision.attention
        _convert(decoder, self.precision.decoder, FEW_ROWS, many_rows, keep=tuple(audio_kv) if kv_format else ())
        self.kv_input = self.decoder_dtype if kv_format is None else ACTIVATIONS[kv_format]
        if kv_format is not None:
            for name in audio_kv:
                decoder.get_submodule(name).to(self.kv_input)
        self.model.to(self.device)
        if self.device.type == "cpu":
            split_rows(self.model.decoder, torch.get_num_threads(), many_rows)
        if self.precision.attention:  # attention over the audio frames in its own format (precision.py)
            for block in self.model.encoder.blocks:
                block.attn.kv_dtype = ACTIVATIONS[self.precision.attention]
            for block in self.model.decoder.blocks:
                block.cross_attn.kv_dtype = ACTIVATIONS[self.precision.attention]
        self.alignment_heads = weights.alignment_heads or default_alignment_heads(
            weights.dims.n_text_layer, weights.dims.n_text_head
        )
        _return_freed_memory()

    @property
    def compute_type(self) -> str:
        """The compute type this engine runs: `auto` resolved for this device."""
        return self.precision.name

    def _projection(self) -> Callable[[Tensor], Tensor]:
        """The final norm and the per-token vocabulary projection over the tied embedding."""
        decoder = self.model.decoder
        embedding = decoder.token_embedding
        if self.precision.decoder == "int8":
            ranking = Int8Linear(embedding.weight, None, kernel_library(FEW_ROWS), per_row=True)
            return RankedProjection(decoder.ln, ranking, embedding)
        # Store the tied embedding column-major: the per-token vocabulary projection then reads
        # contiguous memory (twice as fast on CPU), and token lookups barely notice. On a
        # CPU the columns are padded to a whole number of blocks, one a thread (BlockedProjection).
        n_vocab, n_state = embedding.weight.shape
        dtype = self.decoder_dtype
        on_cpu = self.device.type == "cpu" and dtype == torch.float32
        threads = torch.get_num_threads() if on_cpu else 1
        packed = pack_for_onednn(embedding.weight.detach()) if on_cpu else None
        storage = torch.zeros(n_state, -(-n_vocab // threads) * threads, dtype=dtype, device=self.device)
        storage[:, :n_vocab] = embedding.weight.detach().T
        embedding.weight = nn.Parameter(storage[:, :n_vocab].T, requires_grad=False)
        if on_cpu:
            return BlockedProjection(self.model, storage, threads, packed)
        return Projection(decoder.ln, storage[:, :n_vocab])

    @torch.inference_mode()
    def encode(self, mel: np.ndarray) -> list[KV]:
        x = torch.from_numpy(np.ascontiguousarray(mel)).to(self.device, self.encoder_dtype)[None]
        # the encoder's time is ours alone: what others do meanwhile sets the threads (openmp.py)
        with self.threads.measure() if self.threads is not None else contextlib.nullcontext():
            return self.model.decoder.cross_kv(self.model.encoder(x).to(self.kv_input))

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
        kv = self.model.decoder.cross_kv(self.model.encoder(x).to(self.kv_input))
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

"""A reference executor for Core ML programs: a saved `.mlpackage`, run op by op in numpy.

Core ML itself only runs on Apple's systems. This executor loads the same `.mlpackage` back into
its MIL program (coremltools' milproto loader, which works everywhere) and interprets it, so
converted models can be run, checked and tested on any OS.

Semantics, chosen to match what Core ML computes:

- float16: every op whose output is declared fp16 computes in float32 and rounds its result
  to float16 (values are kept as float32 arrays holding float16-exact numbers, so numpy's
  BLAS does the matmuls); float16 consts are widened once at load. Overflow gives inf, as
  float16 arithmetic does.
- State (macOS 15 `ct.StateType`): `read_state` reads and `coreml_update_state` replaces a
  state's value in a `MilState`, which persists across `predict` calls like `MLState`.
- Compressed weights (`constexpr_*` ops from `coremltools.optimize`) are decompressed once
  at load.

Every op is an entry in `OPS`; a program using an op that is not there fails at load with an
error that names it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from . import import_coremltools

# --- the op registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpImpl:
    fn: Callable[..., Any]
    out_shape: bool = False  # the function wants the declared output shape as `out_shape`
    load_time: bool = False  # a constexpr: evaluated once when the program is loaded
    moves: bool = False  # only moves or selects values of its own dtype: its result needs no rounding


OPS: dict[str, OpImpl] = {}


def op(
    *names: str, out_shape: bool = False, load_time: bool = False, moves: bool = False
) -> Callable[[Callable], Callable]:
    """Register `fn` as the implementation of the MIL ops `names`; it is called with the op's named inputs."""

    def register(fn: Callable) -> Callable:
        for name in names:
            OPS[name] = OpImpl(fn, out_shape, load_time, moves)
        return fn

    return register


class UnsupportedOpError(ModelError):
    """The program uses an op the reference executor does not implement."""


def _f32(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _ints(x: Any) -> list[int]:
    return [int(v) for v in np.asarray(x).reshape(-1)]


def _bools(x: Any, n: int) -> list[bool]:
    return [False] * n if x is None else [bool(v) for v in np.asarray(x).reshape(-1)]


# Elementwise ops: numpy's broadcasting is MIL's.
_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": np.true_divide,
    "floor_div": np.floor_divide,
    "mod": np.mod,
    "pow": np.power,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}
for _name, _fn in _BINARY.items():
    op(_name, moves=_name in ("maximum", "minimum"))(lambda x, y, _fn=_fn: _fn(x, y))

_UNARY: dict[str, Callable[[Any], Any]] = {
    "abs": np.abs,
    "exp": np.exp,
    "exp2": np.exp2,
    "log": np.log,
    "sqrt": np.sqrt,
    "tanh": np.tanh,
    "sin": np.sin,
    "cos": np.cos,
    "floor": np.floor,
    "ceil": np.ceil,
    "round": np.round,
    "sign": np.sign,
    "square": np.square,
    "logical_not": np.logical_not,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-_f32(x))),
    "silu": lambda x: _f32(x) / (1.0 + np.exp(-_f32(x))),
    "identity": lambda x: x,
}
for _name, _fn in _UNARY.items():
    op(_name, moves=_name in ("abs", "relu", "identity"))(lambda x, _fn=_fn: _fn(x))


@op("rsqrt")
def _rsqrt(x: np.ndarray, epsilon: Any = 1e-12) -> np.ndarray:
    return 1.0 / np.sqrt(_f32(x) + float(epsilon))


@op("inverse")
def _inverse(x: np.ndarray, epsilon: Any = 1e-4) -> np.ndarray:
    return 1.0 / (_f32(x) + float(epsilon))


@op("clip")
def _clip(x: np.ndarray, alpha: Any, beta: Any) -> np.ndarray:
    return np.clip(x, float(alpha), float(beta))


def erf(x: np.ndarray) -> np.ndarray:
    """erf to within 1.2e-7 relative (Numerical Recipes' Chebyshev fit of erfc), vectorised in float64."""
    x = np.asarray(x)
    z = np.abs(x.astype(np.float64 if x.dtype == np.float64 else np.float32))
    t = 1.0 / (1.0 + 0.5 * z)
    poly = -1.26551223 + t * (
        1.00002368
        + t
        * (
            0.37409196
            + t
            * (
                0.09678418
                + t
                * (
                    -0.18628806
                    + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))
                )
            )
        )
    )
    erfc = t * np.exp(-z * z + poly)
    return np.where(x >= 0, 1.0 - erfc, erfc - 1.0)


op("erf")(lambda x: erf(x))


@op("gelu")
def _gelu(x: np.ndarray, mode: str = "EXACT") -> np.ndarray:
    x = _f32(x)
    if mode == "EXACT":
        return 0.5 * x * (1.0 + erf(x * np.float32(1.0 / math.sqrt(2.0))))
    if mode == "TANH_APPROXIMATION":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if mode == "SIGMOID_APPROXIMATION":
        return x / (1.0 + np.exp(-1.702 * x))
    raise ValueError(f"gelu mode {mode!r} is not supported")


@op("softmax")
def _softmax(x: np.ndarray, axis: Any = -1) -> np.ndarray:
    x = _f32(x)
    e = x - x.max(axis=int(axis), keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=int(axis), keepdims=True)
    return e


@op("layer_norm")
def _layer_norm(
    x: np.ndarray, axes: Any = None, gamma: Any = None, beta: Any = None, epsilon: Any = 1e-5
) -> np.ndarray:
    x = _f32(x)
    axes_t = tuple(range(x.ndim)) if axes is None else tuple(a % x.ndim for a in _ints(axes))
    mean = x.mean(axis=axes_t, keepdims=True)
    centred = x - mean
    var = np.mean(np.square(centred), axis=axes_t, keepdims=True)
    out = centred / np.sqrt(var + np.float32(epsilon))
    if gamma is not None:
        out *= gamma
    if beta is not None:
        out += beta
    return out


@op("linear")
def _linear(x: np.ndarray, weight: np.ndarray, bias: Any = None, weight_t: np.ndarray | None = None) -> np.ndarray:
    """x @ weight.T + bias; `weight_t` is a constant weight transposed once at load (contiguous: BLAS-friendly)."""
    w_t = weight.T if weight_t is None else weight_t
    out = np.matmul(x.reshape(-1, x.shape[-1]), w_t).reshape(*x.shape[:-1], w_t.shape[-1])
    return out if bias is None else out + bias


@op("matmul")
def _matmul(x: np.ndarray, y: np.ndarray, transpose_x: Any = False, transpose_y: Any = False) -> np.ndarray:
    if bool(transpose_x):
        x = np.swapaxes(x, -1, -2)
    if bool(transpose_y):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _conv_padding(pad_type: str, pad: Any, size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    if pad_type == "valid":
        return 0, 0
    if pad_type in ("same", "same_lower"):
        extent = (kernel - 1) * dilation + 1
        total = max((math.ceil(size / stride) - 1) * stride + extent - size, 0)
        small = total // 2
        return (small, total - small) if pad_type == "same" else (total - small, small)
    raise ValueError(f"conv pad_type {pad_type!r} is not supported")


@op("conv")
def _conv(
    x: np.ndarray,
    weight: np.ndarray,
    bias: Any = None,
    strides: Any = None,
    pad_type: str = "valid",
    pad: Any = None,
    dilations: Any = None,
    groups: Any = 1,
) -> np.ndarray:
    """N-d convolution (N, C, *spatial) as im2col + matmul, per group."""
    x = _f32(x)
    nd = x.ndim - 2
    kernel = weight.shape[2:]
    strides_l = _ints(strides) if strides is not None else [1] * nd
    dilations_l = _ints(dilations) if dilations is not None else [1] * nd
    pads: list[tuple[int, int]] = []
    pad_l = _ints(pad) if pad is not None else [0] * (2 * nd)
    for i in range(nd):
        if pad_type == "custom":
            pads.append((pad_l[2 * i], pad_l[2 * i + 1]))
        else:
            pads.append(_conv_padding(pad_type, pad, x.shape[2 + i], kernel[i], strides_l[i], dilations_l[i]))
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    extents = [(k - 1) * d + 1 for k, d in zip(kernel, dilations_l, strict=True)]
    windows = np.lib.stride_tricks.sliding_window_view(x, extents, axis=tuple(range(2, 2 + nd)))
    # windows: (N, C, *positions, *extents) -> keep every stride-th position and dilation-th tap
    index = (
        slice(None),
        slice(None),
        *(slice(None, None, s) for s in strides_l),
        *(slice(None, None, d) for d in dilations_l),
    )
    windows = windows[index]
    n, c = windows.shape[:2]
    positions = windows.shape[2 : 2 + nd]
    g = int(groups)
    cin, cout = c // g, weight.shape[0] // g
    # (N, G, Cin, *P, *K) -> (N, G, *P, Cin, *K) -> (N, G, prod(P), Cin * prod(K))
    w = windows.reshape(n, g, cin, *positions, *kernel)
    perm = (0, 1, *range(3, 3 + nd), 2, *range(3 + nd, 3 + 2 * nd))
    cols = w.transpose(perm).reshape(n, g, int(np.prod(positions)), cin * int(np.prod(kernel)))
    wt = _f32(weight).reshape(g, cout, cin * int(np.prod(kernel)))
    out = np.matmul(cols, np.swapaxes(wt, -1, -2))  # (N, G, P, Cout)
    out = np.moveaxis(out, -1, 2).reshape(n, g * cout, *positions)
    if bias is not None:
        out = out + _f32(bias).reshape(1, -1, *([1] * nd))
    return out


@op("transpose", moves=True)
def _transpose(x: np.ndarray, perm: Any) -> np.ndarray:
    return np.transpose(x, _ints(perm))


@op("reshape", out_shape=True, moves=True)
def _reshape(x: np.ndarray, shape: Any, out_shape: tuple[int, ...] | None = None) -> np.ndarray:
    if out_shape is not None:  # the program's declared shape settles MIL's -1 and 0 rules
        return np.reshape(x, out_shape)
    return np.reshape(x, _ints(shape))


@op("expand_dims", moves=True)
def _expand_dims(x: np.ndarray, axes: Any) -> np.ndarray:
    return np.expand_dims(x, tuple(_ints(axes)))


@op("squeeze", moves=True)
def _squeeze(x: np.ndarray, axes: Any = None) -> np.ndarray:
    return np.squeeze(x) if axes is None else np.squeeze(x, tuple(_ints(axes)))


def _slices(
    shape: Sequence[int], begin: Any, end: Any, stride: Any, begin_mask: Any, end_mask: Any, squeeze_mask: Any
) -> tuple[tuple[Any, ...], tuple[int, ...]]:
    """numpy indices for MIL's slice_by_index parameters, and the axes `squeeze_mask` removes."""
    rank = len(shape)
    b, e = _ints(begin), _ints(end)
    s = _ints(stride) if stride is not None else [1] * rank
    bm, em, sm = _bools(begin_mask, rank), _bools(end_mask, rank), _bools(squeeze_mask, rank)
    index: list[Any] = []
    for i in range(rank):
        if sm[i]:
            index.append(slice(b[i], b[i] + 1 if b[i] != -1 else None, 1))
        else:
            index.append(slice(None if bm[i] else b[i], None if em[i] else e[i], s[i]))
    return tuple(index), tuple(i for i in range(rank) if sm[i])


@op("slice_by_index", moves=True)
def _slice_by_index(
    x: np.ndarray,
    begin: Any,
    end: Any,
    stride: Any = None,
    begin_mask: Any = None,
    end_mask: Any = None,
    squeeze_mask: Any = None,
) -> np.ndarray:
    x = np.asarray(x)
    index, squeeze = _slices(x.shape, begin, end, stride, begin_mask, end_mask, squeeze_mask)
    out = x[index]
    return np.squeeze(out, squeeze) if squeeze else out


@op("slice_by_size", moves=True)
def _slice_by_size(x: np.ndarray, begin: Any, size: Any) -> np.ndarray:
    index = tuple(slice(b, None if n == -1 else b + n) for b, n in zip(_ints(begin), _ints(size), strict=True))
    return np.asarray(x)[index]


@op("slice_update", moves=True)
def _slice_update(
    x: np.ndarray,
    update: np.ndarray,
    begin: Any,
    end: Any,
    stride: Any = None,
    begin_mask: Any = None,
    end_mask: Any = None,
    squeeze_mask: Any = None,
) -> np.ndarray:
    out = np.array(x, copy=True)
    index, _ = _slices(out.shape, begin, end, stride, begin_mask, end_mask, squeeze_mask)
    target = out[index]
    if target.size != np.size(update):
        raise ValueError(f"slice_update: update of shape {np.shape(update)} does not fit slice of shape {target.shape}")
    out[index] = np.reshape(update, target.shape)
    return out


@op("concat", moves=True)
def _concat(values: Sequence[np.ndarray], axis: Any, interleave: Any = False) -> np.ndarray:
    arrays = [np.asarray(v) for v in values]
    axis = int(axis)
    if not bool(interleave):
        return np.concatenate(arrays, axis=axis)
    # interleave: equal-sized inputs, output takes one slice of each input in turn
    stacked = np.stack(arrays, axis=axis + 1 if axis >= 0 else axis)
    shape = list(arrays[0].shape)
    shape[axis] *= len(arrays)
    return stacked.reshape(shape)


@op("stack", moves=True)
def _stack(values: Sequence[np.ndarray], axis: Any = 0) -> np.ndarray:
    return np.stack([np.asarray(v) for v in values], axis=int(axis))


@op("split", moves=True)
def _split(x: np.ndarray, num_splits: Any = None, split_sizes: Any = None, axis: Any = 0) -> tuple[np.ndarray, ...]:
    if split_sizes is not None:
        points = np.cumsum(_ints(split_sizes))[:-1]
        return tuple(np.split(x, points, axis=int(axis)))
    return tuple(np.split(x, int(num_splits), axis=int(axis)))


@op("tile", moves=True)
def _tile(x: np.ndarray, reps: Any) -> np.ndarray:
    return np.tile(x, _ints(reps))


@op("gather", moves=True)
def _gather(
    x: np.ndarray, indices: Any, axis: Any = 0, batch_dims: Any = 0, validate_indices: Any = False
) -> np.ndarray:
    if int(batch_dims) != 0:
        raise ValueError("gather with batch_dims != 0 is not supported")
    x = np.asarray(x)
    axis = int(axis) % x.ndim
    idx = np.asarray(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return np.take(x, idx, axis=axis)


@op("gather_along_axis", moves=True)
def _gather_along_axis(x: np.ndarray, indices: Any, axis: Any = 0, validate_indices: Any = False) -> np.ndarray:
    x = np.asarray(x)
    axis = int(axis) % x.ndim
    idx = np.asarray(indices).astype(np.int64)
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    return np.take_along_axis(x, idx, axis=axis)


@op("select", moves=True)
def _select(cond: Any, a: Any, b: Any) -> np.ndarray:
    return np.where(np.asarray(cond, dtype=bool), a, b)


_CAST_TYPES = {
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "bool": np.bool_,
}


@op("cast")
def _cast(x: Any, dtype: str) -> np.ndarray:
    if dtype not in _CAST_TYPES:
        raise ValueError(f"cast to {dtype!r} is not supported")
    target = _CAST_TYPES[dtype]
    x = np.asarray(x)
    if np.issubdtype(target, np.integer) and np.issubdtype(x.dtype, np.floating):
        x = np.trunc(x)
    return x.astype(target)


def _reduce(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def reduce(x: np.ndarray, axes: Any = None, keep_dims: Any = False) -> np.ndarray:
        ax = None if axes is None else tuple(_ints(axes))
        return fn(x, axis=ax, keepdims=bool(keep_dims))

    return reduce


for _name, _fn in {
    "reduce_sum": np.sum,
    "reduce_mean": np.mean,
    "reduce_max": np.max,
    "reduce_min": np.min,
    "reduce_prod": np.prod,
}.items():
    op(_name)(_reduce(_fn))


@op("reduce_argmax")
def _reduce_argmax(x: np.ndarray, axis: Any = -1, keep_dims: Any = False) -> np.ndarray:
    return np.argmax(x, axis=int(axis), keepdims=bool(keep_dims)).astype(np.int32)


@op("fill")
def _fill(shape: Any, value: Any = 0.0) -> np.ndarray:
    return np.full(_ints(shape), value)


@op("range_1d")
def _range_1d(start: Any, end: Any, step: Any) -> np.ndarray:
    return np.arange(start, end, step)


@op("shape")
def _shape(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.shape(x), dtype=np.int32)


# --- state ------------------------------------------------------------------------------------


class _StateSlot:
    """One state buffer: `value` holds the current contents (float16 states as float16-exact float32)."""

    __slots__ = ("spec", "value")

    def __init__(self, spec: TensorSpec) -> None:
        self.spec = spec
        self.value = np.zeros(spec.shape, dtype=_storage_dtype(spec.dtype))


@op("read_state", moves=True)
def _read_state(input: _StateSlot) -> np.ndarray:
    return input.value  # ops never write into their inputs, so no copy is needed


@op("coreml_update_state", moves=True)
def _update_state(state: _StateSlot, value: np.ndarray) -> np.ndarray:
    state.value = np.asarray(value, dtype=state.value.dtype)  # ops never write into arrays, so sharing is safe
    return value


# --- compressed weights (decompressed at load) ------------------------------------------------------


@op("constexpr_affine_dequantize", load_time=True)
def _affine_dequantize(quantized_data: np.ndarray, zero_point: Any, scale: Any, axis: Any) -> np.ndarray:
    data = np.asarray(quantized_data).astype(np.float32)
    shape = [1] * data.ndim
    zp, sc = np.asarray(zero_point).astype(np.float32), np.asarray(scale).astype(np.float32)
    if sc.ndim:
        shape[int(axis)] = -1
    return (data - zp.reshape(shape if zp.ndim else ())) * sc.reshape(shape if sc.ndim else ())


@op("constexpr_blockwise_shift_scale", load_time=True)
def _blockwise_shift_scale(data: np.ndarray, scale: np.ndarray, offset: Any = None) -> np.ndarray:
    out = np.asarray(data).astype(np.float32)
    scale = np.asarray(scale).astype(np.float32)
    blocks = [d // s for d, s in zip(out.shape, scale.shape, strict=True)]

    def expand(a: np.ndarray) -> np.ndarray:
        for axis, block in enumerate(blocks):
            if block > 1:
                a = np.repeat(a, block, axis)
        return a

    if offset is not None:
        out = out - expand(np.asarray(offset).astype(np.float32))
    return out * expand(scale)


@op("constexpr_lut_to_dense", load_time=True)
def _lut_to_dense(indices: np.ndarray, lut: np.ndarray, shape: Any = None, vector_axis: Any = None) -> np.ndarray:
    lut = np.asarray(lut)
    if shape is not None:  # iOS 16: one LUT, indices packed LSB first into bytes
        n = int(np.prod(_ints(shape)))
        nbits = round(math.log2(lut.size))
        bits = np.unpackbits(np.asarray(indices, dtype=np.uint8), bitorder="little")[: n * nbits]
        values = (bits.reshape(n, nbits).astype(np.int64) << np.arange(nbits)).sum(axis=1)
        return lut[values].reshape(_ints(shape))
    # iOS 18: lut (*blocks, n_palette, vector_size), one LUT per block of the indices
    idx = np.asarray(indices).astype(np.int64)
    if lut.shape[-1] != 1:
        raise ValueError("vector palettization (vector_size > 1) is not supported")
    grids = np.ogrid[tuple(slice(0, d) for d in idx.shape)]
    block_index = [g // (d // b) for g, d, b in zip(grids, idx.shape, lut.shape[: idx.ndim], strict=True)]
    return lut[(*block_index, idx, 0)]


@op("constexpr_cast", load_time=True)
def _constexpr_cast(source_val: np.ndarray, output_dtype: str) -> np.ndarray:
    return _cast(source_val, output_dtype)


# The ops our converter emits (every precision, target and compression; `const` aside). Each has
# an op-level test against PyTorch in tests/test_mil.py, and tests/test_coreml_convert.py checks
# that real conversions emit nothing else.
CONVERTER_OPS = frozenset(
    {
        "add",
        "cast",
        "concat",
        "constexpr_affine_dequantize",
        "constexpr_blockwise_shift_scale",
        "constexpr_lut_to_dense",
        "conv",
        "coreml_update_state",
        "expand_dims",
        "gather",
        "gelu",
        "greater",
        "greater_equal",
        "layer_norm",
        "linear",
        "matmul",
        "mul",
        "read_state",
        "reshape",
        "select",
        "slice_by_index",
        "slice_update",
        "softmax",
        "stack",
        "transpose",
    }
)


# --- programs ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """A declared input, output or state: name, static shape and numpy dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize


def _storage_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype == np.float16 else dtype


_F16_MIN_NORMAL = np.float32(2.0**-14)
_F16_SUBNORMAL_SHIFT = np.float32(0.75)  # x + 0.75 has an ulp of 2**-24: float16's subnormal spacing


def _round16(x: Any) -> np.ndarray:
    """Round to float16 (to nearest, ties to even), kept as float32.

    numpy converts float16 subnormals slowly, so when there are many (softmax outputs are full
    of them) values below float16's smallest normal are rounded in float32 arithmetic instead:
    adding 0.75 rounds them to a multiple of 2**-24, exactly as the conversion would. An array
    the op made for itself is rounded in place.
    """
    own = isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.owndata and x.flags.writeable and x.ndim
    x = np.asarray(x, dtype=np.float32)
    tiny = np.abs(x) < _F16_MIN_NORMAL
    if np.count_nonzero(tiny) <= x.size // 64:  # a few subnormals: the plain conversion is still fast
        rounded = x.astype(np.float16)
        if own:
            x[...] = rounded
            return x
        return rounded.astype(np.float32)
    subnormal = (x + _F16_SUBNORMAL_SHIFT) - _F16_SUBNORMAL_SHIFT
    rounded = np.where(tiny, np.float32(0), x).astype(np.float16)
    out = x if own else np.empty_like(x)
    out[...] = rounded
    np.copyto(out, subnormal, where=tiny)
    return out


def _to_storage(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A caller's array as the executor stores it (float16 as float16-exact float32); always a private copy."""
    if dtype == np.float16:
        if value.dtype == np.float16:
            return value.astype(np.float32)
        return _round16(np.array(value, dtype=np.float32))  # a fresh array: rounded in place
    return np.array(value, dtype=_storage_dtype(dtype))


def _coercer(dtype: np.dtype | None) -> Callable[[Any], Any]:
    """How an op's result becomes its declared type: float16 rounds, everything else casts."""
    if dtype is None:
        return lambda x: x
    if dtype == np.float16:
        return _round16
    return lambda x: np.asarray(x, dtype=dtype)


def _np_dtype(var: Any) -> np.dtype | None:
    from coremltools.converters.mil.mil import types

    t = var.sym_type
    if types.is_state(t):
        t = t.wrapped_type()
    if types.is_tensor(t) or types.is_scalar(t):
        dtype = types.nptype_from_builtin(t.get_primitive() if types.is_tensor(t) else t)
        return np.dtype(dtype)
    return None


def _spec(var: Any) -> TensorSpec:
    from coremltools.converters.mil.mil import types

    t = var.sym_type.wrapped_type() if types.is_state(var.sym_type) else var.sym_type
    shape = tuple(int(d) for d in t.get_shape()) if types.is_tensor(t) else ()
    dtype = _np_dtype(var)
    assert dtype is not None
    return TensorSpec(var.name, shape, dtype)


@dataclass
class _Step:
    fn: Callable[..., Any]
    args: tuple[tuple[str, Any], ...]  # (input name, slot or tuple of slots)
    extra: dict[str, Any]
    outs: tuple[int, ...]
    coerce: tuple[Callable[[Any], Any], ...]
    free: tuple[int, ...]
    op_type: str
    name: str
    moves: bool = False


class MilState:
    """The state buffers of one stateful program, like Core ML's `MLState`; zeros when made."""

    def __init__(self, specs: Mapping[str, TensorSpec]) -> None:
        self.slots = {name: _StateSlot(spec) for name, spec in specs.items()}

    def read_state(self, name: str) -> np.ndarray:
        slot = self._slot(name)
        return slot.value.astype(slot.spec.dtype)

    def write_state(self, name: str, value: np.ndarray) -> None:
        slot = self._slot(name)
        value = np.asarray(value)
        if value.shape != slot.spec.shape:
            raise ValueError(f"state '{name}' has shape {slot.spec.shape}, not {value.shape}")
        slot.value = _to_storage(value, slot.spec.dtype)

    def _slot(self, name: str) -> _StateSlot:
        if name not in self.slots:
            raise KeyError(f"no state named '{name}' (the program has {', '.join(self.slots)})")
        return self.slots[name]


def _load_program(path: Path) -> Any:
    """The MIL program of a saved `.mlpackage`, read with coremltools' milproto loader."""
    try:
        import_coremltools()
        from coremltools.converters.mil.frontend.milproto.load import load as load_milproto
        from coremltools.models.utils import load_spec
    except ImportError as e:
        raise ModelError(f"{path}: reading Core ML models needs coremltools (pip install coremltools): {e}") from e
    if not (path / "Manifest.json").is_file():
        raise ModelError(f"{path}: not an .mlpackage (no Manifest.json)")
    try:
        spec = load_spec(str(path))
    except Exception as e:
        raise ModelError(
            f"{path}: unreadable Core ML model ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from e
    if spec.WhichOneof("Type") != "mlProgram":
        raise ModelError(f"{path}: not an ML program (found a {spec.WhichOneof('Type')} model)")
    weights = path / "Data" / "com.apple.CoreML" / "weights"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_milproto(spec, spec.specificationVersion, str(weights))
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"{path}: the ML program could not be loaded ({reason})") from e


def blas_threads(threads: int | None) -> Any:
    """A context limiting numpy's BLAS to `threads` (needs threadpoolctl; a no-op without it or for None).

    One token's matmuls are tiny: waking a second BLAS thread for each costs more than it saves,
    and on a busy machine far more (a time slice per wake-up).
    """
    if threads is None:
        return contextlib.nullcontext()
    controller = _threadpool_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=threads, user_api="blas")


@functools.cache
def _threadpool_controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


class MilProgram:
    """One function of a Core ML ML program, executable with `predict`.

    `blas_threads` caps numpy's BLAS threads while `predict` runs (None: numpy's default).
    """

    def __init__(
        self, program: Any, source: str = "<program>", function: str = "main", blas_threads: int | None = None
    ) -> None:
        self.source = source
        self.blas_threads = blas_threads
        if function not in program.functions:
            raise ModelError(f"{source}: no function '{function}' (has {', '.join(program.functions)})")
        func = program.functions[function]
        from coremltools.converters.mil.mil import types

        self.op_types: Counter[str] = Counter(o.op_type for o in func.operations)
        self.inputs: dict[str, TensorSpec] = {}
        self.states: dict[str, TensorSpec] = {}
        for name, var in func.inputs.items():
            (self.states if types.is_state(var.sym_type) else self.inputs)[name] = _spec(var)
        self.outputs: dict[str, TensorSpec] = {v.name: _spec(v) for v in func.outputs}
        self._read_only_inputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # converted once, reused
        self._compile(func)

    @classmethod
    def load(cls, path: str | Path, blas_threads: int | None = None, function: str = "main") -> MilProgram:
        """Load a saved `.mlpackage` (its `function`, for a multifunction package)."""
        path = Path(path)
        return cls(_load_program(path), str(path), function=function, blas_threads=blas_threads)

    def _compile(self, func: Any) -> None:
        unknown = sorted({o.op_type for o in func.operations if o.op_type != "const" and o.op_type not in OPS})
        if unknown:
            raise UnsupportedOpError(
                f"{self.source}: the reference executor does not implement the MIL op(s) {', '.join(unknown)}"
            )
        slots: dict[str, int] = {}
        base: list[Any] = []

        def slot(name: str) -> int:
            if name not in slots:
                slots[name] = len(base)
                base.append(None)
            return slots[name]

        for name in func.inputs:
            slot(name)
        empty_slot = slot("#empty")  # always None
        transposed: dict[int, int] = {}  # slot of a constant linear weight -> slot of its transpose
        steps: list[_Step] = []
        last_use: dict[int, int] = {}
        for o in func.operations:
            if any(o.blocks):
                raise UnsupportedOpError(f"{self.source}: control flow ({o.op_type}) is not supported")
            if o.op_type == "const":
                value = o.outputs[0].val
                dtype = _np_dtype(o.outputs[0])
                if isinstance(value, np.ndarray | np.generic) and dtype is not None:
                    value = np.asarray(value, dtype=_storage_dtype(dtype))
                base[slot(o.outputs[0].name)] = value
                continue
            impl = OPS[o.op_type]
            args: list[tuple[str, Any]] = []
            for key, var in o.inputs.items():
                if isinstance(var, list | tuple):
                    args.append((key, tuple(slot(v.name) for v in var)))
                else:
                    args.append((key, slot(var.name)))
            extra: dict[str, Any] = {}
            if o.op_type == "linear" and base[slot(o.inputs["weight"].name)] is not None:
                weight_slot = slot(o.inputs["weight"].name)
                if weight_slot not in transposed:
                    transposed[weight_slot] = slot(f"{o.inputs['weight'].name}#T")
                    base[transposed[weight_slot]] = np.ascontiguousarray(np.asarray(base[weight_slot]).T)
                args = [(k, transposed[weight_slot] if k == "weight" else s) for k, s in args]
                args = [("weight_t" if k == "weight" else k, s) for k, s in args]
                args.append(("weight", empty_slot))
            if impl.out_shape:
                shape = o.outputs[0].shape
                if all(isinstance(d, int | np.integer) for d in shape):
                    extra["out_shape"] = tuple(int(d) for d in shape)
            step = _Step(
                impl.fn,
                tuple(args),
                extra,
                tuple(slot(v.name) for v in o.outputs),
                tuple(_coercer(None if impl.moves else _np_dtype(v)) for v in o.outputs),
                (),
                o.op_type,
                o.name,
                impl.moves,
            )
            if impl.load_time:  # decompress once, now; the result becomes a const
                self._run_step(step, base)
                continue
            for _, s in args:
                for i in s if isinstance(s, tuple) else (s,):
                    last_use[i] = len(steps)
            steps.append(step)
        used = {i for step in steps for _, s in step.args for i in (s if isinstance(s, tuple) else (s,))}
        self._output_slots = {name: slots[name] for name in self.outputs}
        for i in range(len(base)):  # weights only the load-time ops or the transposes read
            if i not in used and i not in self._output_slots.values():
                base[i] = None
        keep = set(self._output_slots.values())
        consts = {i for i, v in enumerate(base) if v is not None}
        frees: dict[int, list[int]] = {}
        for i, at in last_use.items():
            if i not in keep and i not in consts and i not in (slots[n] for n in self.states):
                frees.setdefault(at, []).append(i)
        for at, freed in frees.items():
            steps[at].free = tuple(freed)
        self._slots = slots
        self._base = base
        self._steps = steps

    def _run_step(self, step: _Step, env: list[Any]) -> None:
        kwargs = {key: [env[i] for i in s] if isinstance(s, tuple) else env[s] for key, s in step.args}
        try:
            result = step.fn(**kwargs, **step.extra)
        except Exception as e:
            raise ModelError(f"{self.source}: op '{step.name}' ({step.op_type}) failed: {e}") from e
        if not step.moves and any(result is v for v in kwargs.values()):  # rounding in place must not touch inputs
            result = np.array(result, copy=True)
        if len(step.outs) == 1:
            env[step.outs[0]] = step.coerce[0](result)
        else:
            for i, c, r in zip(step.outs, step.coerce, result, strict=True):
                env[i] = c(r)

    def make_state(self) -> MilState:
        """Fresh (zeroed) state buffers for this program."""
        return MilState(self.states)

    def predict(self, inputs: Mapping[str, Any], state: MilState | None = None) -> dict[str, np.ndarray]:
        """Run the program; outputs come back in their declared dtypes."""
        env = list(self._base)
        for name, spec in self.inputs.items():
            if name not in inputs:
                raise ValueError(f"{self.source}: missing input '{name}'")
            value = np.asarray(inputs[name])
            if value.shape != spec.shape:
                raise ValueError(f"{self.source}: input '{name}' must have shape {spec.shape}, not {value.shape}")
            cached = self._read_only_inputs.get(name)
            if cached is not None and cached[0] is value:  # e.g. a window's cross keys, fed on every token
                env[self._slots[name]] = cached[1]
                continue
            stored = _to_storage(value, spec.dtype)
            if not value.flags.writeable:
                self._read_only_inputs[name] = (value, stored)
            env[self._slots[name]] = stored
        if self.states:
            if state is None:
                raise ValueError(f"{self.source}: a stateful program needs a state (make_state())")
            for name in self.states:
                env[self._slots[name]] = state.slots[name]
        with (
            np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"),
            blas_threads(self.blas_threads),
        ):
            for step in self._steps:
                self._run_step(step, env)
                for i in step.free:
                    env[i] = None
        return {name: np.asarray(env[i]).astype(self.outputs[name].dtype) for name, i in self._output_slots.items()}


def load_program(path: str | Path, blas_threads: int | None = None) -> MilProgram:
    """`MilProgram.load`: a saved `.mlpackage`, ready to run."""
    return MilProgram.load(path, blas_threads)

"""int8 linear layers on PyTorch's own quantized CPU kernels (fbgemm and oneDNN), for `--compute-type int8`.

Weights are quantized once, per output channel (symmetric: scale = max |w| / 127), and
activations per call (dynamic quantization), so no calibration data is needed and every layer
keeps float32 inputs and outputs: layer norms, softmax and the attention products around them
stay float32. A decoding step is memory-bound (tiny.en reads ~130 MB per token in float32, 80 MB
of it the vocabulary projection), and int8 weights are a quarter of that traffic.

Two kernel libraries, because they win at different shapes here (Xeon with AVX-512 VNNI and AMX,
2 threads): fbgemm at the decoder's few rows (0.4-0.6x float32's time per layer, oneDNN 0.7-1.0x),
oneDNN at the encoder's 1500 rows (0.25-0.3x, fbgemm 0.5-0.7x), where it reaches AMX.

PyTorch marks quantized tensors deprecated (torch 2.10+) in favour of torchao; the kernels are
the same ones `torch.ao.quantization.quantize_dynamic` uses. The warnings are silenced where the
weights are packed, and a PyTorch without the kernels is a one-line error (`int8_available`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

# Rows at which a layer counts as "many": the encoder's 1500 frames, the cross-attention keys and values.
FEW_ROWS, MANY_ROWS = "few", "many"


def int8_available() -> bool:
    """Whether this PyTorch has a dynamic int8 linear kernel for this CPU."""
    return bool(set(torch.backends.quantized.supported_engines) & {"x86", "fbgemm", "onednn", "qnnpack"})


def kernel_library(rows: str) -> str:
    """The quantized engine for layers that see `rows` (FEW_ROWS or MANY_ROWS) at a time; see the module doc."""
    supported = torch.backends.quantized.supported_engines
    order = ("onednn", "x86", "fbgemm", "qnnpack") if rows == MANY_ROWS else ("x86", "fbgemm", "onednn", "qnnpack")
    return next(engine for engine in order if engine in supported)


def cpu_has(feature: str) -> bool:
    """`torch.cpu`'s probe for an x86 feature (vnni, avx512_bf16, amx_tile); False where this torch has none."""
    probe = getattr(torch.cpu, f"_is_{feature}_supported", None)
    return bool(probe and probe())


@contextlib.contextmanager
def _packing_with(engine: str) -> Iterator[None]:
    """Pack with `engine`'s kernels (PyTorch reads a global), quietly (see the module doc)."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.backends.quantized.engine = previous


class Int8Linear(nn.Module):
    """`nn.Linear` with int8 weights: float32 in, float32 out, the product in int8.

    Activations are quantized to 8 bits unless the CPU lacks VNNI, where fbgemm's 8-bit
    products can saturate and PyTorch's own default of 7 bits (`reduce_range`) is safer.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, engine: str) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        # Block by block: a float32 copy of a whole vocabulary projection would be the largest
        # thing in memory while loading.
        scales, rows = [], []
        for block in weight.detach().split(4096):
            block = block.float()
            scale = (block.abs().amax(dim=1) / 127).clamp(min=1e-12)
            rows.append((block / scale[:, None]).round_().to(torch.int8))
            scales.append(scale)
        scale = torch.cat(scales).double()
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with _packing_with(engine):
            q = torch._make_per_channel_quantized_tensor(torch.cat(rows), scale, zero, 0)
            self.packed = torch.ops.quantized.linear_prepack(q, None if bias is None else bias.detach().float())
        self.reduce_range = engine not in ("onednn", "qnnpack") and not cpu_has("vnni")

    @classmethod
    def of(cls, linear: nn.Linear, engine: str) -> Int8Linear:
        return cls(linear.weight, linear.bias, engine)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.quantized.linear_dynamic(x, self.packed, self.reduce_range)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def quantize_linears(module: nn.Module, rows: str, many_rows: tuple[str, ...] = ()) -> None:
    """Replace every `nn.Linear` under `module` with an `Int8Linear`, in place.

    Layers see `rows` rows at a time, except those whose qualified names end with one of
    `many_rows`, which see many (the decoder's cross-attention keys and values: 1500 frames).
    """
    few, many = kernel_library(rows), kernel_library(MANY_ROWS)
    for name, child in list(module.named_modules()):
        for attribute, layer in list(child.named_children()):
            if isinstance(layer, nn.Linear):
                qualified = f"{name}.{attribute}" if name else attribute
                engine = many if qualified.endswith(many_rows) else few
                setattr(child, attribute, Int8Linear.of(layer, engine))

"""Engines run the network; everything around them is shared (see `base.Engine`).

`torch` runs the original weights; `coreml` (macOS) and `mil` (the numpy reference executor,
any OS) run the programs of a converted bundle. `auto` is Core ML on macOS when a bundle
exists (api.load_model converts a catalog model there first: coreml/first_use.py), PyTorch
otherwise.

The protocol lives in `base` (numpy); this module imports only the standard library, so the
commands that pick an engine without running one (a finished re-run) stay light.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..errors import ModelError

if TYPE_CHECKING:
    from ..coreml.bundle import Bundle
    from ..weights import Weights
    from .base import Engine

ENGINES = ("auto", "torch", "coreml", "mil")
# --compute-type: what the torch engine computes in (engines/precision.py says what each means where)
COMPUTE_TYPES = ("auto", "float32", "int8", "bfloat16", "int8_bfloat16", "float16")


def resolve_engine_name(name: str, have_bundle: bool) -> str:
    """What `auto` means here; any other name must be a known engine."""
    if name not in ENGINES:
        raise ModelError(f"unknown engine '{name}': choose one of {', '.join(ENGINES)}")
    if name == "auto":
        return "coreml" if sys.platform == "darwin" and have_bundle else "torch"
    return name


def check_compute_type(engine: str, device: str | None, compute_type: str | None) -> None:
    """Refuse, before any work, a compute type the chosen engine and device cannot run (a one-line ModelError).

    A converted bundle runs in the precision it was converted with: coreml and mil take none.
    `auto` (and None) always resolve, so only an explicit type is checked against the device.
    """
    if compute_type in (None, "auto"):
        return
    if engine in ("coreml", "mil"):
        raise ModelError(
            f"--compute-type {compute_type}: the {engine} engine runs a converted bundle in the precision it was "
            "converted with (whisper-coreml convert --precision, --quantize); use --engine torch"
        )
    from .precision import resolve_precision
    from .pytorch import pick_device

    resolve_precision(compute_type, pick_device(device))


def create_torch_engine(weights: Weights, device: str | None = None, compute_type: str | None = None) -> Engine:
    """The PyTorch engine over the original weights, in `compute_type` (None: float32 on CPU, float16 on GPUs)."""
    from .pytorch import TorchEngine

    return TorchEngine(weights, device, compute_type)


def create_bundle_engine(bundle: Bundle, name: str = "auto") -> Engine:
    """An engine over a converted bundle: Core ML (`auto` on macOS) or the reference executor."""
    if name == "auto":
        name = "coreml" if sys.platform == "darwin" else "mil"
    if name == "coreml":
        from .coreml import CoreMLEngine

        return CoreMLEngine(bundle)
    if name == "mil":
        from .mil import MilEngine

        return MilEngine(bundle)
    raise ModelError(f"engine '{name}' cannot run a converted bundle: choose coreml, mil or auto")


__all__ = [
    "COMPUTE_TYPES",
    "ENGINES",
    "check_compute_type",
    "create_bundle_engine",
    "create_torch_engine",
    "resolve_engine_name",
]

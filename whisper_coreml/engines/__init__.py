"""Engines run the network; everything around them is shared (see `base.Engine`).

`torch` runs the original weights; `coreml` (macOS) and `mil` (the numpy reference executor,
any OS) run the programs of a converted bundle. `auto` is Core ML on macOS when a bundle
exists (api.load_model converts a catalog model there first: coreml/first_use.py), PyTorch
otherwise.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..errors import ModelError
from .base import DecoderSession, Engine

if TYPE_CHECKING:
    from ..coreml.bundle import Bundle
    from ..weights import Weights

ENGINES = ("auto", "torch", "coreml", "mil")


def resolve_engine_name(name: str, have_bundle: bool) -> str:
    """What `auto` means here; any other name must be a known engine."""
    if name not in ENGINES:
        raise ModelError(f"unknown engine '{name}': choose one of {', '.join(ENGINES)}")
    if name == "auto":
        return "coreml" if sys.platform == "darwin" and have_bundle else "torch"
    return name


def create_torch_engine(weights: Weights, device: str | None = None) -> Engine:
    """The PyTorch engine over the original weights."""
    from .pytorch import TorchEngine

    return TorchEngine(weights, device)


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


__all__ = ["ENGINES", "DecoderSession", "Engine", "create_bundle_engine", "create_torch_engine", "resolve_engine_name"]

"""Engines run the network; everything around them is shared (see `base.Engine`)."""

from __future__ import annotations

from ..errors import ModelError
from ..weights import Weights
from .base import DecoderSession, Engine

ENGINES = ("torch",)


def create_engine(name: str, weights: Weights, device: str | None = None) -> Engine:
    """The engine called `name`, loaded with `weights`."""
    if name == "torch":
        from .pytorch import TorchEngine

        return TorchEngine(weights, device)
    raise ModelError(f"unknown engine '{name}': choose one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "DecoderSession", "Engine", "create_engine"]

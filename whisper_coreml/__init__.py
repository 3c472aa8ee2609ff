"""whisper-coreml: speech to subtitles with OpenAI's Whisper, on Core ML and PyTorch.

import whisper_coreml
model = whisper_coreml.load_model("tiny.en", engine="torch")
result = model.transcribe("interview.wav")
print(result.text)

The public names load on first use (PEP 562): importing the package costs nothing, so
`transcribe --help`, `whisper-coreml models` and a re-run over a finished folder never pay the
second or more that torch takes to import.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import openmp

openmp.configure()  # before anything loads torch (see openmp.py); every submodule import runs this first

if TYPE_CHECKING:
    from .api import WhisperModel, load_model, transcribe
    from .options import TranscriptionOptions
    from .result import Segment, TranscriptionResult, Word

__version__ = "0.1.0"

_LAZY = {
    "WhisperModel": "api",
    "load_model": "api",
    "transcribe": "api",
    "Segment": "result",
    "TranscriptionResult": "result",
    "Word": "result",
    "TranscriptionOptions": "options",
}

__all__ = [
    "Segment",
    "TranscriptionOptions",
    "TranscriptionResult",
    "WhisperModel",
    "Word",
    "load_model",
    "transcribe",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used, and keep the name."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(ModuleType):
    """The package's `transcribe` is the function, as it was when the package imported it eagerly.

    The submodule of the same name loads lazily now, and on loading, the import system binds it
    to the package's attribute `transcribe`; that binding alone is dropped (the module stays in
    `sys.modules`, where `from whisper_coreml.transcribe import ...` finds it).
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name == "transcribe" and isinstance(value, ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

"""whisper-coreml: speech to subtitles with OpenAI's Whisper, on Core ML and PyTorch.

import whisper_coreml
model = whisper_coreml.load_model("tiny.en", engine="torch")
result = model.transcribe("interview.wav")
print(result.text)
"""

from __future__ import annotations

from . import openmp

openmp.configure()  # before anything loads torch (see openmp.py)

from .api import WhisperModel, load_model, transcribe  # noqa: E402 - after openmp.configure
from .result import Segment, TranscriptionResult, Word  # noqa: E402
from .transcribe import TranscriptionOptions  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Segment",
    "TranscriptionOptions",
    "TranscriptionResult",
    "WhisperModel",
    "Word",
    "load_model",
    "transcribe",
]

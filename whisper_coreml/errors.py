"""Errors the user sees: each carries one line that names the file and the problem."""

from __future__ import annotations

from pathlib import Path


class WhisperCoreMLError(Exception):
    """Base class: `str(error)` is the complete one-line message the CLI prints."""


class AudioError(WhisperCoreMLError):
    """An input could not be decoded into audio samples."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ModelError(WhisperCoreMLError):
    """A model could not be found, read or understood."""


class NoAudioTrack(AudioError):
    """A video without sound: nothing to transcribe, which a batch skips rather than fails."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, "no audio track")


def os_problem(error: OSError) -> str:
    """What went wrong with a file operation, as the rest of a one-line message: "read-only file system"."""
    text = (error.strerror or str(error)).rstrip(".")
    return text[:1].lower() + text[1:]

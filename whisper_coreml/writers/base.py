"""The writer interface and the timestamp/text rules every subtitle format shares."""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from whisper_coreml.footage import VideoFormat, frame_size
from whisper_coreml.result import TranscriptionResult
from whisper_coreml.subtitles import Cue, CueRules
from whisper_coreml.writers.atomic import atomic_write_text

CUE_MODES = ("rules", "raw")
FCPXML_VERSIONS = ("1.8", "1.9", "1.10", "1.11", "1.12", "1.13")
FCPXML_STYLES = ("captions", "titles")


@dataclass(frozen=True)
class WriteOptions:
    """How to turn one result into files: the cue rules every subtitle format shares (their
    `fps` is also the frame grid of FCPXML and iTT), plus the few choices that belong to one
    format (FCPXML version, style and picture format, VTT word highlighting).

    `video` is the input's own picture format (`writers.fcpxml.fcpxml_options_for` probes it):
    the FCPXML project takes its size, pixel aspect, field order and colour space. Without one
    (audio inputs) the project is `format_size` (1920x1080 unless given) and progressive. A
    given `format_size` also replaces a video's size. The frame rate is always `rules.fps`."""

    cues: str = "rules"  # "rules" (CueRules) or "raw" (one cue per Whisper segment)
    rules: CueRules = field(default_factory=CueRules)
    fcpxml_version: str = "1.8"
    fcpxml_style: str = "captions"  # "captions" or "titles" (Basic Title clips, FCP < 10.4.1)
    media: Path | None = None  # a video to reference as the project's asset clip
    video: VideoFormat | None = None  # the input's picture format, when it is a video
    format_size: str | None = None  # "WIDTHxHEIGHT" of the FCPXML project, e.g. "3840x2160", "1080x1920"
    highlight_words: bool = False

    def __post_init__(self) -> None:
        # The CLI passes user values straight in: refuse them before any audio is decoded.
        if self.cues not in CUE_MODES:
            raise ValueError(f"unknown cue mode {self.cues!r}; choose rules or raw")
        if self.fcpxml_version not in FCPXML_VERSIONS:
            known = ", ".join(FCPXML_VERSIONS)
            raise ValueError(f"unsupported FCPXML version {self.fcpxml_version!r}; choose from {known}")
        if self.fcpxml_style not in FCPXML_STYLES:
            raise ValueError(f"unknown FCPXML style {self.fcpxml_style!r}; choose captions or titles")
        if self.format_size is not None:
            frame_size(self.format_size)


class Writer(ABC):
    """One output format: a pure `render` (easy to test) plus an atomic `write`."""

    extension: str

    @abstractmethod
    def render(self, result: TranscriptionResult, cues: Sequence[Cue], options: WriteOptions) -> str:
        """The complete file contents for `result`, whose subtitle cues are `cues`."""

    def write(
        self, result: TranscriptionResult, cues: Sequence[Cue], options: WriteOptions, path: str | os.PathLike[str]
    ) -> Path:
        """Render first, then replace `path` atomically: a failure at either step keeps any
        existing file intact."""
        return atomic_write_text(path, self.render(result, cues, options))


def to_milliseconds(seconds: float) -> int:
    """Whole milliseconds, rounding half up on the decimal value (1.0005 s -> 1001 ms).

    Going through the float's shortest decimal repr avoids binary artefacts (0.0015 * 1000 is
    1.4999...) and Python's round-half-even, so every format agrees on the same millisecond.
    Negative and non-finite times become 0: subtitle formats cannot express them.
    """
    if not math.isfinite(seconds) or seconds <= 0:
        return 0
    return int((Decimal(repr(seconds)) * 1000).to_integral_value(ROUND_HALF_UP))


def format_timestamp(milliseconds: int, decimal_marker: str) -> str:
    """`HH:MM:SS<marker>mmm`; hours simply grow past two digits for very long inputs."""
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{decimal_marker}{millis:03d}"


def cue_span(cue: Cue) -> tuple[int, int]:
    """The cue's (start, end) in ms, with an inverted end clamped to the start rather than
    producing a cue players reject."""
    start = to_milliseconds(cue.start)
    return start, max(start, to_milliseconds(cue.end))


def cue_text(text: str) -> str:
    """Stripped text with blank lines removed: a blank line ends a cue in SRT and WebVTT, so
    one inside the text would corrupt the rest of the file."""
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())

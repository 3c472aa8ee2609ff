"""Subtitle cues: what every subtitle format writes, built once from the transcription.

Whisper's segments are not subtitles (they run 10-25 s and ignore reading speed), so the
writers never see segments directly: they see `Cue`s, built either under `CueRules` (the
default) or one per segment (`raw_cues`, for users who want Whisper's own segmentation).
"""

from __future__ import annotations

from dataclasses import dataclass

from whisper_coreml.result import TranscriptionResult, Word
from whisper_coreml.timecode import DEFAULT_FRAME_RATE, FrameRate


@dataclass(frozen=True)
class Cue:
    """One subtitle on screen: its span in seconds, its lines as displayed, and the words
    (with their own times) it was built from, when word timestamps were computed."""

    start: float
    end: float
    lines: tuple[str, ...]
    words: tuple[Word, ...] = ()

    @property
    def text(self) -> str:
        """The lines joined by newlines."""
        return "\n".join(self.lines)


@dataclass(frozen=True)
class CueRules:
    """Subtitle style rules; defaults follow professional style guides (Netflix, BBC)."""

    max_line_width: int = 42
    max_lines: int = 2
    max_cps: float = 20.0
    min_duration: float = 5 / 6
    max_duration: float = 7.0
    min_gap_frames: int = 2
    fps: FrameRate = DEFAULT_FRAME_RATE  # the frame grid cue gaps are counted on


def raw_cues(result: TranscriptionResult) -> tuple[Cue, ...]:
    """One cue per segment with visible text, lines as Whisper wrote them (`--cues raw`)."""
    cues = []
    for segment in result.segments:
        lines = tuple(line.strip() for line in segment.text.splitlines() if line.strip())
        if lines:
            cues.append(Cue(segment.start, max(segment.start, segment.end), lines, tuple(segment.words or ())))
    return tuple(cues)

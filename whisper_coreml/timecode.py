"""Video frame rates and frame-exact times: what Final Cut Pro and broadcast subtitles count in.

Editors deliver on a frame grid. Every time we hand to a frame-based format is snapped to it
here, once, so that the cue builder and every writer agree on the same frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class FrameRate:
    """A project frame rate, kept as the exact frame duration Final Cut Pro writes
    (`1001/24000s` for 23.976), never as a rounded float."""

    name: str
    frame_duration: Fraction

    @property
    def fps(self) -> Fraction:
        """Frames per second, exactly (24000/1001 for 23.976)."""
        return 1 / self.frame_duration

    @property
    def timebase(self) -> int:
        """The whole-number frame count per second that timecode uses (24 for 23.976)."""
        return math.ceil(self.fps)

    @property
    def ntsc(self) -> bool:
        """True for the 1000/1001 rates (23.976, 29.97, 59.94)."""
        return self.frame_duration.numerator == 1001

    def to_frames(self, seconds: float) -> int:
        """The nearest frame boundary to `seconds` (never negative)."""
        if not math.isfinite(seconds) or seconds <= 0:
            return 0
        return round(Fraction(seconds) / self.frame_duration)

    def to_seconds(self, frames: int) -> Fraction:
        """The exact time of frame boundary `frames`."""
        return frames * self.frame_duration


FRAME_RATES: dict[str, FrameRate] = {
    name: FrameRate(name, duration)
    for name, duration in (
        ("23.976", Fraction(1001, 24000)),
        ("24", Fraction(100, 2400)),
        ("25", Fraction(100, 2500)),
        ("29.97", Fraction(1001, 30000)),
        ("30", Fraction(100, 3000)),
        ("50", Fraction(100, 5000)),
        ("59.94", Fraction(1001, 60000)),
        ("60", Fraction(100, 6000)),
    )
}
DEFAULT_FRAME_RATE = FRAME_RATES["25"]  # PAL/EBU; the README says so
_ALIASES = {"23.98": "23.976", "24.0": "24", "25.0": "25", "30.0": "30", "50.0": "50", "60.0": "60", "59.94i": "59.94"}


def frame_rate(name: str | FrameRate) -> FrameRate:
    """The frame rate called `name` ("23.976", "25", ...), or a ValueError listing the choices."""
    if isinstance(name, FrameRate):
        return name
    key = _ALIASES.get(name.strip(), name.strip())
    try:
        return FRAME_RATES[key]
    except KeyError:
        raise ValueError(f"unknown frame rate {name!r}; choose from {', '.join(FRAME_RATES)}") from None

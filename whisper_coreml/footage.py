"""What a video input says about the timeline its captions belong on: frame rate, picture size,
pixel aspect, field order and colour space, read with PyAV.

An editor imports captions into a project made for the footage. A 29.97 fps clip captioned
on a 25 fps grid drifts off its frames, and a 1080p project around 4K or vertical phone video
crops or letterboxes it; so by default the footage decides the project's format.

Rates are snapped to the eight Final Cut Pro project rates (23.976 ... 60) when within 2%:
containers round (`2997/100`), and phone video is variable-rate, its average a little off
the nominal rate. Anything else is kept as measured (`VideoFormat.rate` is then not in
`FRAME_RATES`); `project_rate` says what a project for it should run at.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from whisper_coreml.errors import AudioError
from whisper_coreml.timecode import FRAME_RATES, FrameRate

if TYPE_CHECKING:
    import av

RATE_TOLERANCE = Fraction(2, 100)  # relative; the closest two project rates (24, 25) are 4% apart
MAX_FRAME_SIZE = 16384

# FFmpeg's AVFieldOrder -> FCPXML's fieldOrder. TT/BT display the top field first, BB/TB the bottom.
_FIELD_ORDERS = {1: "progressive", 2: "upper first", 5: "upper first", 3: "lower first", 4: "lower first"}
# ISO/IEC 23001-8 (FFmpeg's own numbering) primaries and transfer -> Final Cut Pro's colour space
# names, written as Final Cut Pro writes them (its exports show "5-1-6 (Rec. 601 (PAL))").
_REC2020 = {16: "9-16-9 (Rec. 2020 PQ)", 18: "9-18-9 (Rec. 2020 HLG)"}
_COLOR_SPACES = {1: "1-1-1 (Rec. 709)", 5: "5-1-6 (Rec. 601 (PAL))", 6: "6-1-6 (Rec. 601 (NTSC))"}


@dataclass(frozen=True)
class VideoFormat:
    """A picture format as FCPXML's `format` element describes it. `width`/`height` are the
    picture as displayed: a phone clip stored 1920x1080 with a 90 degree rotation is 1080x1920."""

    rate: FrameRate
    width: int
    height: int
    field_order: str = "progressive"  # or "upper first" / "lower first", FCPXML's words
    pixel_aspect: Fraction = Fraction(1)
    color_space: str | None = None  # Final Cut Pro's name ("1-1-1 (Rec. 709)"), None if untagged

    @property
    def interlaced(self) -> bool:
        """True for interlaced video; its `rate` counts frames (25 for 1080i50), not fields."""
        return self.field_order != "progressive"


def standard_rate(fps: Fraction) -> FrameRate | None:
    """The Final Cut Pro project rate within 2% of `fps` (the nearest), or None."""
    nearest = min(FRAME_RATES.values(), key=lambda rate: abs(rate.fps - fps))
    return nearest if abs(nearest.fps - fps) <= RATE_TOLERANCE * nearest.fps else None


def project_rate(rate: FrameRate) -> FrameRate | None:
    """The project rate for video at `rate`: itself when it is one; for high-frame-rate video
    a project rate it is a whole multiple of, exactly if one is (119.88 -> 59.94, not 60), the
    highest of those (120 -> 60, 100 -> 50, 90 -> 30): every frame of the project is then a
    frame of the clip. None for anything else (15 fps, 37 fps)."""
    if rate in FRAME_RATES.values():
        return rate
    fits = []
    for candidate in FRAME_RATES.values():
        multiple = rate.fps / candidate.fps
        error = abs(multiple - round(multiple)) / multiple
        if round(multiple) >= 2 and error <= RATE_TOLERANCE:
            fits.append((error, -candidate.fps, candidate))  # the exact multiple, then the highest rate
    return min(fits, key=lambda fit: fit[:2])[2] if fits else None


def frame_size(text: str) -> tuple[int, int]:
    """`"1920x1080"` as (width, height); a ValueError saying what is wanted otherwise."""
    width, _, height = text.strip().lower().partition("x")
    size = (int(width), int(height)) if width.isdigit() and height.isdigit() else (0, 0)
    if not all(0 < side <= MAX_FRAME_SIZE for side in size):
        raise ValueError(f"bad frame size {text!r}; give WIDTHxHEIGHT in pixels, e.g. 1920x1080 or 1080x1920")
    return size


def probe_video(path: Path) -> VideoFormat | None:
    """The picture format of `path`'s first video stream, or None when it has none (cover art
    in an audio file is not video). Decodes one frame: rotation lives in frame side data."""
    import av

    try:
        with av.open(str(path)) as container:
            streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
            if not streams:
                return None
            stream = streams[0]
            context = stream.codec_context
            fps = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not fps:
                raise AudioError(path, "its video stream has no frame rate")
            first = _first_frame(container, stream)
            field_order = _FIELD_ORDERS.get(context.field_order)
            if field_order is None:  # unknown to the container: the decoded frame says whether it is interlaced
                field_order = "upper first" if first is not None and first.interlaced_frame else "progressive"
            width, height = context.width, context.height
            if first is not None and first.rotation % 180:  # stored sideways, shown upright
                width, height = height, width
            aspect = stream.sample_aspect_ratio or context.sample_aspect_ratio
            return VideoFormat(
                rate=_frame_rate(Fraction(fps)),
                width=width,
                height=height,
                field_order=field_order,
                pixel_aspect=Fraction(aspect) if aspect else Fraction(1),
                color_space=_color_space(context.color_primaries, context.color_trc),
            )
    except (OSError, av.error.FFmpegError) as e:
        raise AudioError(path, f"cannot read its video format ({e})") from None


def _frame_rate(fps: Fraction) -> FrameRate:
    """A project rate when `fps` is within tolerance of one, else the measured rate itself."""
    return standard_rate(fps) or FrameRate(f"{float(fps):.3f}".rstrip("0").rstrip("."), 1 / fps)


def _first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> av.VideoFrame | None:
    """The first decoded frame, or None when FFmpeg cannot decode this codec: the audio may
    still be transcribed, and the stream's own parameters still give the format."""
    import av

    try:
        return next(container.decode(stream), None)
    except av.error.FFmpegError:
        return None


def _color_space(primaries: int, transfer: int) -> str | None:
    if primaries == 9:
        return _REC2020.get(transfer, "9-1-9 (Rec. 2020)")
    return _COLOR_SPACES.get(primaries)

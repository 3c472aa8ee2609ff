"""Final Cut Pro XML: captions (or Basic Title clips) on a project timeline, frame-exact.

What Final Cut Pro imports without complaint, learnt from the files it exports itself
(`../shared/fcpxml/samples`) and checked against Apple's DTDs for every version we write:

- every time is a whole number of frames, written as FCP writes it: `Ns` for whole seconds,
  else a multiple of the frame duration over its conventional denominator (`36036/24000s`,
  `300/2500s`), never a float;
- cue edges are rounded to frames as absolute times and a duration is end - start, so no two
  captions overlap and none is zero frames long (which breaks import);
- the project's `format` is the footage's own (`fcpxml_options_for` probes it): frame rate,
  size, pixel aspect, field order, colour space, named as Final Cut Pro names it
  (`FFVideoFormat1080p2398`, `FFVideoFormat1080i50`) when it has a name, else spelt out with
  no name, as Final Cut Pro exports custom sizes; audio inputs get `--fps` at 1920x1080 (or
  `format_size`);
- captions are connected clips on lane 1 of a gap (or of the source video's asset clip with
  `--fcpxml-with-media`) in the project's spine, with role `iTT?captionFormat=ITT.<lang>`
  and one `text-style-def` per caption, ids unique in the document.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

from whisper_coreml.errors import AudioError
from whisper_coreml.footage import VideoFormat, frame_size, probe_video, project_rate
from whisper_coreml.result import TranscriptionResult
from whisper_coreml.subtitles import Cue
from whisper_coreml.timecode import FRAME_RATES, FrameRate
from whisper_coreml.writers.base import WriteOptions, Writer

BASIC_TITLE = ".../Titles.localized/Bumper:Opener.localized/Basic Title.localized/Basic Title.moti"
CAPTION_STYLE = {
    "font": ".AppleSystemUIFont",
    "fontSize": "13",
    "fontFace": "Regular",
    "fontColor": "1 1 1 1",
    "backgroundColor": "0 0 0 1",
}
TITLE_STYLE = {"font": "Helvetica", "fontSize": "60", "fontColor": "1 1 1 1", "alignment": "center"}
TITLE_POSITION_KEY = "9999/999166631/999166633/1/100/101"  # Basic Title's Position parameter


def fcp_time(frames: int, rate: FrameRate) -> str:
    """`frames` frames as an FCPXML time: `Ns` when whole seconds, else over the frame
    duration's conventional denominator (1001/24000s for 23.976, 100/2500s for 25)."""
    seconds = frames * rate.frame_duration
    if seconds.denominator == 1:
        return f"{seconds.numerator}s"
    numerator, denominator = _frame_fraction(rate)
    return f"{frames * numerator}/{denominator}s"


def _frame_fraction(rate: FrameRate) -> tuple[int, int]:
    """One frame of a project rate as Final Cut Pro spells it: 1001/30000 for 29.97, 100/2500 for 25."""
    return (1001, rate.timebase * 1000) if rate.ntsc else (100, rate.timebase * 100)


def frame_spans(cues: Sequence[Cue], rate: FrameRate) -> list[tuple[int, int]]:
    """(start, end) frames of every cue: edges rounded to the nearest frame as absolute times,
    then pushed so that no cue starts before the previous one ends and none is empty."""
    spans: list[tuple[int, int]] = []
    previous_end = 0
    for cue in cues:
        start = max(rate.to_frames(cue.start), previous_end)
        end = max(rate.to_frames(cue.end), start + 1)
        spans.append((start, end))
        previous_end = end
    return spans


_EVERY_RATE = frozenset(FRAME_RATES)
_FILM_AND_VIDEO = frozenset({"23.976", "24", "25", "29.97", "30"})
_INTERLACED = frozenset({"25", "29.97"})  # 1080i50 and 1080i59.94: frames of two fields
# The picture sizes Final Cut Pro has a format name for: (width, height) -> (name part,
# progressive rates, interlaced rates, pixel aspect). Others it writes with no name, only
# width/height/frameDuration (its own 1920x960 export in ../shared/fcpxml/samples does).
# SD sizes are left out: their names split on DV/non-DV and 4:3/16:9 pixel shapes.
_NAMED_SIZES: dict[tuple[int, int], tuple[str, frozenset[str], frozenset[str], Fraction]] = {
    (1920, 1080): ("1080", _EVERY_RATE, _INTERLACED, Fraction(1)),
    (1280, 720): ("720", _EVERY_RATE, frozenset(), Fraction(1)),
    (1440, 1080): ("1440x1080", _EVERY_RATE, _INTERLACED, Fraction(4, 3)),  # HDV
    (1280, 1080): ("1280x1080", _EVERY_RATE, _INTERLACED, Fraction(3, 2)),  # DVCPRO HD
    (960, 540): ("960x540", _FILM_AND_VIDEO, frozenset(), Fraction(1)),
    (640, 480): ("640x480", _FILM_AND_VIDEO, frozenset(), Fraction(1)),
    (640, 360): ("640x360", frozenset({"29.97"}), frozenset(), Fraction(1)),
    **{
        size: (f"{size[0]}x{size[1]}", _EVERY_RATE, frozenset(), Fraction(1))
        for size in (
            (2048, 1024), (2048, 1080), (2048, 1152), (2048, 1536), (2048, 1556), (3840, 2160), (4096, 2048),
            (4096, 2160), (4096, 2304), (4096, 3112), (5120, 2160), (5120, 2560), (5120, 2700),
        )
    },
}  # fmt: skip
_CONFORM_RATES = frozenset({"23.98", "24", "25", "29.97", "30", "60", "47.95", "48", "50", "59.94"})
_CONFORM_RATES_1_13 = _CONFORM_RATES | {"90", "100", "119.88", "120"}


def _rate_text(fps: Fraction) -> str:
    """23.976 -> "23.98", 25 -> "25": a rate as Final Cut Pro writes it (`FFVideoFormat1080p2398`
    without the point, `conform-rate srcFrameRate="23.98"`)."""
    return f"{float(fps):.2f}".rstrip("0").rstrip(".")


def format_name(video: VideoFormat) -> str | None:
    """Final Cut Pro's name for `video` (FFVideoFormat1080p2398, FFVideoFormat3840x2160p5994,
    FFVideoFormat1080i50), or None when it has none and the format must be spelt out."""
    known = _NAMED_SIZES.get((video.width, video.height))
    if known is None or video.pixel_aspect != known[3]:
        return None
    size, progressive, interlaced, _ = known
    # interlaced formats are named after the field rate: 25 frames a second of two fields is i50
    scan, fps, rates = ("i", 2 * video.rate.fps, interlaced) if video.interlaced else ("p", video.rate.fps, progressive)
    if video.rate.name not in rates:
        return None
    return f"FFVideoFormat{size}{scan}{_rate_text(fps).replace('.', '')}"


def project_format(options: WriteOptions) -> VideoFormat:
    """The project's picture format: at `rules.fps` (the captions' frame grid), the video's
    picture when there is one, `format_size` (default 1920x1080) progressive otherwise."""
    rate = options.rules.fps
    size = frame_size(options.format_size) if options.format_size is not None else None
    video = options.video
    if video is None:
        return VideoFormat(rate, *(size or (1920, 1080)))
    same_size = size is None or size == (video.width, video.height)
    return VideoFormat(
        rate,
        *(size or (video.width, video.height)),
        field_order=video.field_order if rate == video.rate else "progressive",  # fields of another rate mean nothing
        pixel_aspect=video.pixel_aspect if same_size else Fraction(1),
        color_space=video.color_space,
    )


def fcpxml_options_for(source: Path, options: WriteOptions, fps_explicit: bool) -> tuple[WriteOptions, tuple[str, ...]]:
    """The options to write `source`'s outputs with, and warnings for the user.

    For a video, its format becomes the project's, and its frame rate the grid every cue is
    built on (`rules.fps`, so SRT/VTT/iTT cue edges land on the video's frames too) unless
    the user gave --fps (`fps_explicit`), which then wins with a warning when it differs.
    A rate with no project rate of its own follows its multiple (120 -> 60) or, failing
    that, --fps, with a warning. Audio inputs come back unchanged. Raises AudioError when
    `source` cannot be read."""
    video = probe_video(source)
    if video is None:
        return options, ()
    warnings = []
    rate = options.rules.fps
    if fps_explicit:
        if rate != video.rate:
            warnings.append(
                f"{source}: --fps {rate.name} differs from the video's {video.rate.name} fps; captions follow --fps"
            )
    elif (standard := project_rate(video.rate)) is None:
        warnings.append(
            f"{source}: the video's {video.rate.name} fps is no Final Cut Pro project rate; "
            f"captions follow --fps {rate.name}"
        )
    else:
        if standard != video.rate:
            warnings.append(
                f"{source}: the video's {video.rate.name} fps is above Final Cut Pro's project rates; "
                f"the project runs at {standard.name} fps"
            )
        rate = standard
    if options.format_size is not None and frame_size(options.format_size) != (video.width, video.height):
        warnings.append(
            f"{source}: --format-size {options.format_size} differs from the video's {video.width}x{video.height}; "
            "the project uses --format-size"
        )
    return replace(options, rules=replace(options.rules, fps=rate), video=video), tuple(warnings)


@dataclass(frozen=True)
class Media:
    """What the project needs to know of the source file to reference it as an asset clip."""

    path: Path
    duration: float
    video: VideoFormat | None
    has_audio: bool
    audio_rate: int = 48000
    audio_channels: int = 2

    @classmethod
    def probe(cls, path: Path) -> Media:
        """Duration, picture format and audio layout of `path`, read with PyAV."""
        import av

        video = probe_video(path)
        try:
            with av.open(str(path)) as container:
                audio = next(iter(container.streams.audio), None)
                return cls(
                    path=path,
                    duration=container.duration / 1_000_000 if container.duration else 0.0,
                    video=video,
                    has_audio=audio is not None,
                    audio_rate=audio.codec_context.sample_rate if audio is not None else 48000,
                    audio_channels=audio.codec_context.channels if audio is not None else 2,
                )
        except (OSError, av.error.FFmpegError) as e:
            raise AudioError(path, f"cannot read it to reference in the FCPXML project ({e})") from None


def _format_element(resources: ET.Element, format_id: str, video: VideoFormat) -> None:
    """A `format` resource as Final Cut Pro writes one: its name when it has one, always the
    explicit frame duration and size, the rest only when they differ from the defaults."""
    element = ET.SubElement(resources, "format", id=format_id)
    name = format_name(video)
    if name is not None:
        element.set("name", name)
    if video.rate in FRAME_RATES.values():  # as FCP spells them; interlaced over the field rate (200/5000s)
        numerator, denominator = _frame_fraction(video.rate)
        if video.interlaced:
            numerator, denominator = 2 * numerator, 2 * denominator
    else:
        numerator, denominator = video.rate.frame_duration.as_integer_ratio()
    element.set("frameDuration", f"{numerator}/{denominator}s")
    if video.interlaced:
        element.set("fieldOrder", video.field_order)
    element.set("width", str(video.width))
    element.set("height", str(video.height))
    if video.pixel_aspect != 1:
        element.set("paspH", str(video.pixel_aspect.numerator))
        element.set("paspV", str(video.pixel_aspect.denominator))
    if video.color_space is not None:
        element.set("colorSpace", video.color_space)


class FCPXMLWriter(Writer):
    """An FCPXML document holding one project whose timeline carries the cues."""

    extension = ".fcpxml"

    def render(self, result: TranscriptionResult, cues: Sequence[Cue], options: WriteOptions) -> str:
        rate = options.rules.fps
        media = Media.probe(options.media) if options.media is not None else None
        spans = frame_spans(cues, rate)
        media_frames = math.ceil(Fraction(media.duration if media else result.duration) / rate.frame_duration)
        total = max([media_frames, 1] + [end for _, end in spans])

        root = ET.Element("fcpxml", version=options.fcpxml_version)
        resources = ET.SubElement(root, "resources")
        project_video = project_format(options)
        _format_element(resources, "r1", project_video)
        title = options.fcpxml_style == "titles"
        if title:
            ET.SubElement(resources, "effect", id="r2", name="Basic Title", uid=BASIC_TITLE)
        name = Path(result.source).stem if result.source else "Transcript"
        library = ET.SubElement(root, "library")
        event = ET.SubElement(library, "event", name="whisper-coreml")
        project = ET.SubElement(event, "project", name=name)
        sequence = ET.SubElement(
            project,
            "sequence",
            format="r1",
            duration=fcp_time(total, rate),
            tcStart="0s",
            tcFormat="NDF",
            audioLayout="stereo",
            audioRate="48k",
        )
        spine = ET.SubElement(sequence, "spine")
        if media is None:
            parent = ET.SubElement(spine, "gap", name="Gap", offset="0s", duration=fcp_time(total, rate), start="0s")
        else:
            parent = self._asset_clip(resources, spine, media, total, project_video, options.fcpxml_version)

        role = f"iTT?captionFormat=ITT.{result.language or 'en'}"
        for number, (cue, (start, end)) in enumerate(zip(cues, spans, strict=True), start=1):
            timing = {"offset": fcp_time(start, rate), "duration": fcp_time(end - start, rate)}
            label = " ".join(cue.lines)
            if title:
                clip = ET.SubElement(parent, "title", ref="r2", lane="1", name=label, **timing)
                ET.SubElement(clip, "param", name="Position", key=TITLE_POSITION_KEY, value="0 -440")
                text = ET.SubElement(clip, "text")
                style = TITLE_STYLE
            else:
                clip = ET.SubElement(parent, "caption", lane="1", name=label, role=role, **timing)
                text = ET.SubElement(clip, "text", placement="bottom")
                style = CAPTION_STYLE
            ET.SubElement(text, "text-style", ref=f"ts{number}").text = cue.text
            ET.SubElement(ET.SubElement(clip, "text-style-def", id=f"ts{number}"), "text-style", **style)

        ET.indent(root, space="    ")
        body = ET.tostring(root, encoding="unicode")
        return f'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE fcpxml>\n\n{body}\n'

    @staticmethod
    def _asset_clip(
        resources: ET.Element, spine: ET.Element, media: Media, total: int, project: VideoFormat, version: str
    ) -> ET.Element:
        """The source file as an asset (1.8: `src`; later: a `media-rep`) and its clip in the
        spine. The asset shares the project's format when they agree; else it gets its own, and
        a clip of another rate plays at its own speed (`conform-rate`, as Final Cut Pro writes)."""
        rate = project.rate
        url = media.path.resolve().as_uri()
        asset = ET.Element("asset", id="r3", name=media.path.stem, start="0s", duration=fcp_time(total, rate))
        own_format = media.video is not None and media.video != project
        if media.video is not None:
            if own_format:
                _format_element(resources, "r4", media.video)
            asset.set("hasVideo", "1")
            asset.set("format", "r4" if own_format else "r1")
        if media.has_audio:
            asset.set("hasAudio", "1")
            asset.set("audioSources", "1")
            asset.set("audioChannels", str(media.audio_channels))
            asset.set("audioRate", str(media.audio_rate))
        if version == "1.8":
            asset.set("src", url)
        else:
            ET.SubElement(asset, "media-rep", kind="original-media", src=url)
        resources.append(asset)
        clip = ET.SubElement(
            spine, "asset-clip", ref="r3", offset="0s", name=media.path.stem, duration=fcp_time(total, rate)
        )
        if own_format:
            clip.set("format", "r4")
        clip.set("tcFormat", "NDF")
        if media.has_audio:
            clip.set("audioRole", "dialogue")
        if media.video is not None and media.video.rate != rate:
            source_rate = _rate_text(media.video.rate.fps)
            if source_rate in (_CONFORM_RATES_1_13 if version == "1.13" else _CONFORM_RATES):
                ET.SubElement(clip, "conform-rate", scaleEnabled="0", srcFrameRate=source_rate)
        return clip

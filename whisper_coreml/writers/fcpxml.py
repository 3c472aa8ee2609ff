"""Final Cut Pro XML: captions (or Basic Title clips) on a project timeline, frame-exact.

What Final Cut Pro imports without complaint, learnt from the files it exports itself
(`../shared/fcpxml/samples`) and checked against Apple's DTDs for every version we write:

- every time is a whole number of frames, written as FCP writes it: `Ns` for whole seconds,
  else a multiple of the frame duration over its conventional denominator (`36036/24000s`,
  `300/2500s`), never a float;
- cue edges are rounded to frames as absolute times and a duration is end - start, so no two
  captions overlap and none is zero frames long (which breaks import);
- captions are connected clips on lane 1 of a gap (or of the source video's asset clip with
  `--fcpxml-with-media`) in the project's spine, with role `iTT?captionFormat=ITT.<lang>`
  and one `text-style-def` per caption, ids unique in the document.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from whisper_coreml.errors import AudioError
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
    numerator, denominator = (1001, rate.timebase * 1000) if rate.ntsc else (100, rate.timebase * 100)
    return f"{frames * numerator}/{denominator}s"


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


def format_name(rate: FrameRate, width: int = 1920, height: int = 1080) -> str:
    """Final Cut Pro's name for a progressive format, e.g. FFVideoFormat1080p2997."""
    digits = f"{float(rate.fps):.2f}".rstrip("0").rstrip(".").replace(".", "")
    size = f"{height}p" if (width, height) in ((1920, 1080), (1280, 720)) else f"{width}x{height}p"
    return f"FFVideoFormat{size}{digits}"


@dataclass(frozen=True)
class Media:
    """What the project needs to know of the source file to reference it as an asset clip."""

    path: Path
    duration: float
    has_video: bool
    has_audio: bool
    width: int = 1920
    height: int = 1080
    rate: FrameRate | None = None
    audio_rate: int = 48000
    audio_channels: int = 2

    @classmethod
    def probe(cls, path: Path) -> Media:
        """Duration, picture size, frame rate and audio layout of `path`, read with PyAV."""
        import av

        try:
            with av.open(str(path)) as container:
                video = next(iter(container.streams.video), None)
                audio = next(iter(container.streams.audio), None)
                duration = container.duration / 1_000_000 if container.duration else 0.0
                rate = None
                if video is not None and video.average_rate:
                    frame_duration = Fraction(1) / Fraction(video.average_rate)
                    known = [r for r in FRAME_RATES.values() if r.frame_duration == frame_duration]
                    rate = known[0] if known else FrameRate(f"{float(video.average_rate):g}", frame_duration)
                return cls(
                    path=path,
                    duration=duration,
                    has_video=video is not None,
                    has_audio=audio is not None,
                    width=video.codec_context.width if video is not None else 1920,
                    height=video.codec_context.height if video is not None else 1080,
                    rate=rate,
                    audio_rate=audio.codec_context.sample_rate if audio is not None else 48000,
                    audio_channels=audio.codec_context.channels if audio is not None else 2,
                )
        except (OSError, av.error.FFmpegError) as e:
            raise AudioError(path, f"cannot read it to reference in the FCPXML project ({e})") from None


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
        ET.SubElement(
            resources,
            "format",
            id="r1",
            name=format_name(rate),
            frameDuration=fcp_time(1, rate),
            width="1920",
            height="1080",
        )
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
            parent = self._asset_clip(resources, spine, media, total, rate, options.fcpxml_version)

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
        resources: ET.Element, spine: ET.Element, media: Media, total: int, rate: FrameRate, version: str
    ) -> ET.Element:
        """The source file as an asset (1.8: `src`; later: a `media-rep`) and its clip in the spine."""
        url = media.path.resolve().as_uri()
        asset = ET.Element("asset", id="r3", name=media.path.stem, start="0s", duration=fcp_time(total, rate))
        if media.has_video:
            media_rate = media.rate or rate
            ET.SubElement(
                resources,
                "format",
                id="r4",
                name=format_name(media_rate, media.width, media.height),
                frameDuration=f"{media_rate.frame_duration.numerator}/{media_rate.frame_duration.denominator}s",
                width=str(media.width),
                height=str(media.height),
            )
            asset.set("hasVideo", "1")
            asset.set("format", "r4")
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
        clip.set("tcFormat", "NDF")
        if media.has_audio:
            clip.set("audioRole", "dialogue")
        return clip

"""FCPXML and iTT: every version and frame rate validates against Apple's DTDs, every time sits
on the frame grid with no overlaps or empty captions, and text survives escaping."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from whisper_coreml.footage import VideoFormat, standard_rate
from whisper_coreml.result import Segment, TranscriptionResult
from whisper_coreml.subtitles import Cue, CueRules
from whisper_coreml.timecode import FRAME_RATES, FrameRate, frame_rate
from whisper_coreml.writers import WRITERS, WriteOptions, cues_for
from whisper_coreml.writers.base import FCPXML_VERSIONS as VERSIONS
from whisper_coreml.writers.fcpxml import fcp_time, format_name, frame_spans
from whisper_coreml.writers.itt import TT, TTP

etree = pytest.importorskip("lxml.etree")
TRICKY = "Tom & Jerry <i>say</i> \"hi\" 'ok' 😀"
KOREAN = "안녕하세요, 세계"


def result_of(*spans: tuple[float, float, str], duration: float = 12.0, language: str = "en") -> TranscriptionResult:
    segments = tuple(
        Segment(i, 0, start, end, text, (), 0.0, -0.2, 1.2, 0.01) for i, (start, end, text) in enumerate(spans)
    )
    return TranscriptionResult(segments, language, duration, "tiny.en", source="/footage/Interview 1.mov")


RESULT = result_of(
    (0.0, 2.5, " Hello there, and welcome to the show."),
    (2.5, 2.51, " Oh."),  # shorter than a frame
    (2.51, 6.1234, f" {TRICKY}"),
    (6.2, 9.0, f" {KOREAN}"),
)


def render(fmt: str, result: TranscriptionResult, **options: object) -> str:
    opts = WriteOptions(**options)  # type: ignore[arg-type]
    return WRITERS[fmt].render(result, cues_for(result, opts), opts)


@pytest.fixture(scope="module")
def dtds(shared: Path) -> dict[str, object]:
    folder = shared / "fcpxml" / "dtd"
    return {v: etree.DTD(str(folder / f"FCPXMLv{v.replace('.', '_')}.dtd")) for v in VERSIONS}


def parse_time(value: str) -> Fraction:
    assert value.endswith("s"), value
    return Fraction(value[:-1])


def check_timing(document: str, rate: FrameRate) -> list[tuple[Fraction, Fraction]]:
    """Every time a whole number of frames; captions in order, never overlapping or empty."""
    root = ET.fromstring(document.encode())
    for element in root.iter():
        for attribute in ("offset", "duration", "start"):
            if attribute in element.attrib and element.tag != "asset":
                frames = parse_time(element.attrib[attribute]) / rate.frame_duration
                assert frames.denominator == 1, (element.tag, attribute, element.attrib[attribute])
    spans = []
    for clip in root.iter():
        if clip.tag in ("caption", "title"):
            start, duration = parse_time(clip.attrib["offset"]), parse_time(clip.attrib["duration"])
            assert duration > 0
            spans.append((start, start + duration))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start
    return spans


@pytest.mark.parametrize("fps", list(FRAME_RATES))
@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_and_rate_validates(dtds: dict, version: str, fps: str) -> None:
    rate = frame_rate(fps)
    for style in ("captions", "titles"):
        for cues in ("rules", "raw"):
            text = render(
                "fcpxml", RESULT, rules=CueRules(fps=rate), fcpxml_version=version, fcpxml_style=style, cues=cues
            )
            document = etree.fromstring(text.encode())
            assert dtds[version].validate(document), dtds[version].error_log.filter_from_errors()
            assert document.get("version") == version
            spans = check_timing(text, rate)
            assert len(spans) == len(cues_for(RESULT, WriteOptions(cues=cues)))


def test_frame_durations_as_final_cut_pro_writes_them() -> None:
    expected = {
        "23.976": "1001/24000s",
        "24": "100/2400s",
        "25": "100/2500s",
        "29.97": "1001/30000s",
        "30": "100/3000s",
        "50": "100/5000s",
        "59.94": "1001/60000s",
        "60": "100/6000s",
    }
    assert {name: fcp_time(1, r) for name, r in FRAME_RATES.items()} == expected
    assert fcp_time(75, frame_rate("25")) == "3s" and fcp_time(76, frame_rate("25")) == "7600/2500s"
    assert fcp_time(36, frame_rate("23.976")) == "36036/24000s"


def test_caption_structure_and_escaping(dtds: dict) -> None:
    text = render("fcpxml", RESULT, cues="raw")
    root = ET.fromstring(text.encode())
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE fcpxml>')
    gap = root.find("library/event/project/sequence/spine/gap")
    assert gap is not None
    captions = gap.findall("caption")
    assert [c.get("lane") for c in captions] == ["1"] * 4
    assert {c.get("role") for c in captions} == {"iTT?captionFormat=ITT.en"}
    refs = [c.find("text/text-style").get("ref") for c in captions]
    ids = [c.find("text-style-def").get("id") for c in captions]
    assert refs == ids and len(set(ids)) == 4
    assert captions[2].find("text/text-style").text == TRICKY
    assert captions[3].find("text/text-style").text == KOREAN
    # the one-hundredth-of-a-second cue still lasts a frame, and its neighbours were not overlapped
    assert parse_time(captions[1].get("duration")) == Fraction(1, 25)
    assert root.find("library/event/project").get("name") == "Interview 1"


def test_frame_spans_never_overlap_or_vanish() -> None:
    rate = frame_rate("25")
    cues = [Cue(0.0, 0.01, ("a",)), Cue(0.005, 0.03, ("b",)), Cue(0.03, 0.02, ("c",)), Cue(1.0, 2.0, ("d",))]
    spans = frame_spans(cues, rate)
    assert spans == [(0, 1), (1, 2), (2, 3), (25, 50)]


def test_empty_transcript_gives_valid_empty_documents(dtds: dict) -> None:
    empty = result_of(duration=30.0)
    for version in VERSIONS:
        document = etree.fromstring(render("fcpxml", empty, fcpxml_version=version).encode())
        assert dtds[version].validate(document), dtds[version].error_log.filter_from_errors()
        assert not document.findall(".//caption")
    itt = ET.fromstring(render("itt", empty).encode())
    assert itt.findall(f".//{{{TT}}}p") == []


def read_itt(text: str) -> tuple[FrameRate, list[tuple[int, int, tuple[str, ...]]]]:
    """Captions of an iTT document (ours or Final Cut Pro's) as frames on its own time base."""
    root = ET.fromstring(text.encode())
    timebase = int(root.get(f"{{{TTP}}}frameRate", "30"))
    ntsc = root.get(f"{{{TTP}}}frameRateMultiplier", "1 1").split() == ["1000", "1001"]
    rate = next(r for r in FRAME_RATES.values() if r.timebase == timebase and r.ntsc == ntsc)

    def frames(code: str) -> int:
        hours, minutes, seconds, frame = (int(part) for part in code.split(":"))
        return ((hours * 60 + minutes) * 60 + seconds) * timebase + frame

    captions = []
    for p in root.iter(f"{{{TT}}}p"):
        lines = [p.text or ""] + [br.tail or "" for br in p.findall(f"{{{TT}}}br")]
        captions.append((frames(p.get("begin", "")), frames(p.get("end", "")), tuple(filter(None, lines))))
    return rate, captions


@pytest.mark.parametrize("fps", list(FRAME_RATES))
def test_itt_round_trips_to_the_same_cues(fps: str) -> None:
    rate = frame_rate(fps)
    long = result_of((3590.0, 3601.3, " One hour in, and still talking about the weather today, again."), duration=3700)
    for result in (RESULT, long):
        options = WriteOptions(rules=CueRules(fps=rate))
        cues = cues_for(result, options)
        text = WRITERS["itt"].render(result, cues, options)
        root = ET.fromstring(text.encode())
        assert root.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
        assert root.get(f"{{{TTP}}}timeBase") == "smpte"
        read_rate, captions = read_itt(text)
        assert read_rate == rate
        assert [(s, e) for s, e, _ in captions] == frame_spans(cues, rate)
        assert [lines for _, _, lines in captions] == [cue.lines for cue in cues]


def test_reads_final_cut_pros_own_itt(shared: Path) -> None:
    rate, captions = read_itt((shared / "fcpxml/samples/fcp_ac/caption_korean.itt").read_text(encoding="utf-8"))
    assert rate == frame_rate("59.94")
    assert captions == [(0, 180, ("안녕하세요",))]


def test_fcpxml_with_media_references_the_video(tmp_path: Path, dtds: dict) -> None:
    video = tmp_path / "clip with spaces é.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(50):
            frame = av.VideoFrame.from_ndarray(np.full((240, 320, 3), i * 4, dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    for version in VERSIONS:
        text = render("fcpxml", RESULT, media=video, fcpxml_version=version)
        document = etree.fromstring(text.encode())
        assert dtds[version].validate(document), dtds[version].error_log.filter_from_errors()
        clip = document.find("library/event/project/sequence/spine/asset-clip")
        assert clip is not None and len(clip.findall("caption")) == len(cues_for(RESULT, WriteOptions()))
        source = document.find("resources/asset").get("src") or document.find("resources/asset/media-rep").get("src")
        assert source == video.resolve().as_uri() and "%20" in source
        check_timing(text, frame_rate("25"))
        # the project is 1080p (no video format given); the clip keeps its own, nameless, size
        assert document.find("resources/format[@id='r1']").get("name") == "FFVideoFormat1080p25"
        own = document.find("resources/format[@id='r4']").attrib
        assert own == {"id": "r4", "frameDuration": "100/2500s", "width": "320", "height": "240"}
        assert clip.get("format") == "r4" and clip.find("conform-rate") is None


def test_format_names_match_final_cut_pros_own_exports(shared: Path) -> None:
    """Every named format in Final Cut Pro's exports gets the same name from us, from its
    attributes alone; the SD DV format we spell out instead (its name depends on the codec)."""
    seen = set()
    for sample in sorted((shared / "fcpxml" / "samples").rglob("*.fcpxml")):
        for element in ET.parse(sample).getroot().iter("format"):
            if element.get("frameDuration") is None:  # FFVideoFormatRateUndefined: no picture
                continue
            video = VideoFormat(
                standard_rate(1 / parse_time(element.get("frameDuration"))),
                int(element.get("width")),
                int(element.get("height")),
                element.get("fieldOrder", "progressive"),
                Fraction(int(element.get("paspH", 1)), int(element.get("paspV", 1))),
            )
            expected = element.get("name")
            if expected is not None and expected.startswith("FFVideoFormatDV"):
                expected = None
            assert format_name(video) == expected, (sample.name, element.attrib)
            seen.add(expected)
    assert {"FFVideoFormat1080p2398", "FFVideoFormat3840x2160p5994", "FFVideoFormat640x480p25", None} <= seen


def test_interlaced_and_anamorphic_projects(dtds: dict) -> None:
    rate = frame_rate("29.97")
    for video, name, duration in (
        (VideoFormat(rate, 1920, 1080, "upper first"), "FFVideoFormat1080i5994", "2002/60000s"),
        (
            VideoFormat(frame_rate("25"), 1440, 1080, "lower first", Fraction(4, 3)),
            "FFVideoFormat1440x1080i50",
            "200/5000s",
        ),
        (VideoFormat(frame_rate("25"), 720, 576, "lower first", Fraction(59, 54)), None, "200/5000s"),
    ):
        options = WriteOptions(rules=CueRules(fps=video.rate), video=video, fcpxml_version="1.11")
        text = WRITERS["fcpxml"].render(RESULT, cues_for(RESULT, options), options)
        document = etree.fromstring(text.encode())
        assert dtds["1.11"].validate(document), dtds["1.11"].error_log.filter_from_errors()
        project = document.find("resources/format")
        assert (project.get("name"), project.get("frameDuration"), project.get("fieldOrder")) == (
            name,
            duration,
            video.field_order,
        )
        aspect = video.pixel_aspect
        assert (project.get("paspH"), project.get("paspV")) == (
            (None, None) if aspect == 1 else (str(aspect.numerator), str(aspect.denominator))
        )
        check_timing(text, video.rate)
    # a project at another rate than its video's cannot keep the video's fields
    options = WriteOptions(
        rules=CueRules(fps=frame_rate("50")), video=VideoFormat(frame_rate("25"), 1920, 1080, "upper first")
    )
    project = ET.fromstring(WRITERS["fcpxml"].render(RESULT, (), options)).find("resources/format")
    assert (project.get("name"), project.get("fieldOrder")) == ("FFVideoFormat1080p50", None)

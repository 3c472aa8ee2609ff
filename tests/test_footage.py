"""Footage decides the FCPXML project: videos made with PyAV at the rates, sizes and field orders
editors shoot are probed, and the project written around real cues (tiny.en on real speech) has
the video's format in every FCPXML version, validates against Apple's DTDs and sits on the
video's own frame grid. Audio inputs keep --fps and a 1080p (or --format-size) project."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from whisper_coreml.errors import AudioError
from whisper_coreml.footage import VideoFormat, frame_size, probe_video, project_rate, standard_rate
from whisper_coreml.result import TranscriptionResult
from whisper_coreml.timecode import FRAME_RATES, FrameRate, frame_rate
from whisper_coreml.writers import WRITERS, WriteOptions, cues_for
from whisper_coreml.writers.base import FCPXML_VERSIONS as VERSIONS
from whisper_coreml.writers.fcpxml import fcpxml_options_for
from whisper_coreml.writers.itt import TTP

etree = pytest.importorskip("lxml.etree")
CLIPS = ("en/arctic_a0010.wav", "en/arctic_a0024.wav", "en/arctic_aew_a0001.wav")
SAMPLE_RATE = 16000


def make_video(
    path: Path,
    fps: Fraction | int,
    width: int,
    height: int,
    seconds: float,
    speech: np.ndarray | None = None,
    *,
    rotation: int | None = None,
    field_order: int | None = None,
    pixel_aspect: Fraction | None = None,
    color: tuple[int, int, int] | None = None,
    frame_ticks: Callable[[int], int] | None = None,
) -> Path:
    """An H.264 video (with `speech` as AAC when given) written by PyAV's bundled encoders.
    `field_order` is FFmpeg's AVFieldOrder (2: top first), `color` (primaries, transfer, matrix)
    tags, `frame_ticks(i)` the length of frame i in 1/90000 s for variable-rate video."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        context = stream.codec_context
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if field_order is not None:
            context.flags |= av.codec.context.Flags.interlaced_dct | av.codec.context.Flags.interlaced_me
            context.field_order = field_order
        if pixel_aspect is not None:
            context.sample_aspect_ratio = pixel_aspect
        if color is not None:
            context.color_primaries, context.color_trc, context.colorspace = color
        if frame_ticks is not None:
            stream.time_base = context.time_base = Fraction(1, 90000)
        audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono") if speech is not None else None
        picture = np.full((height, width, 3), 90, np.uint8)
        pts = 0
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            if frame_ticks is not None:
                frame.pts, frame.time_base = pts, Fraction(1, 90000)
                pts += frame_ticks(i)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if audio is not None:
            samples = av.AudioFrame.from_ndarray(speech[None], format="flt", layout="mono")
            samples.sample_rate = SAMPLE_RATE
            container.mux(audio.encode(samples))
            container.mux(audio.encode(None))
    return path


@pytest.fixture(scope="module")
def speech_track(audio: Callable[[str], np.ndarray]) -> np.ndarray:
    """Three shared English sentences with half a second between them: several cues."""
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    return np.concatenate([part for clip in CLIPS for part in (audio(clip), gap)]).astype(np.float32)


# name -> (rate, stored width, height, make_video keywords, expected VideoFormat fields, FCP's name or None)
FOOTAGE = {
    "interview.mov": (Fraction(30000, 1001), 640, 360, {}, {"rate": "29.97"}, "FFVideoFormat640x360p2997"),
    "feature.mp4": (Fraction(24000, 1001), 1920, 1080, {}, {"rate": "23.976"}, "FFVideoFormat1080p2398"),
    "vertical.mp4": (25, 1080, 1920, {}, {"rate": "25"}, None),
    "phone.mov": (25, 1920, 1080, {"rotation": 90}, {"rate": "25", "width": 1080, "height": 1920}, None),
    "sport.mp4": (Fraction(60000, 1001), 1280, 720, {}, {"rate": "59.94"}, "FFVideoFormat720p5994"),
    "broadcast.mov": (
        25,
        1920,
        1080,
        {"field_order": 2, "color": (1, 1, 1)},
        {"rate": "25", "field_order": "upper first", "color_space": "1-1-1 (Rec. 709)"},
        "FFVideoFormat1080i50",
    ),
    "hdr.mp4": (
        30,
        3840,
        2160,
        {"color": (9, 18, 9)},
        {"rate": "30", "color_space": "9-18-9 (Rec. 2020 HLG)"},
        "FFVideoFormat3840x2160p30",
    ),
    # a phone's variable rate: frames of 3011..3019/90000 s, on average 29.85 fps
    "variable.mp4": (
        30,
        640,
        480,
        {"frame_ticks": lambda i: 3011 + 2 * (i % 5)},
        {"rate": "29.97"},
        "FFVideoFormat640x480p2997",
    ),
    "anamorphic.mov": (
        25,
        720,
        576,
        {"pixel_aspect": Fraction(64, 45)},
        {"rate": "25", "pixel_aspect": Fraction(64, 45)},
        None,
    ),
}
SECONDS = {"interview.mov": None, "hdr.mp4": 1.0}  # None: as long as the speech


@pytest.fixture(scope="module")
def footage(tmp_path_factory: pytest.TempPathFactory, speech_track: np.ndarray) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("footage")
    seconds = len(speech_track) / SAMPLE_RATE
    made = {}
    for name, (fps, width, height, keywords, _, _) in FOOTAGE.items():
        length = SECONDS.get(name, 2.0) or seconds
        made[name] = make_video(folder / name, fps, width, height, length, speech_track, **keywords)
    return made


@pytest.fixture(scope="module")
def spoken(footage: dict[str, Path], tiny_model: object) -> TranscriptionResult:
    """tiny.en's transcription of the speech in the 29.97 fps interview, words timed."""
    return tiny_model.transcribe(footage["interview.mov"], word_timestamps=True, words_at_pauses=True)


@pytest.fixture(scope="module")
def dtds(shared: Path) -> dict[str, object]:
    folder = shared / "fcpxml" / "dtd"
    return {v: etree.DTD(str(folder / f"FCPXMLv{v.replace('.', '_')}.dtd")) for v in VERSIONS}


def seconds_of(value: str) -> Fraction:
    assert value.endswith("s"), value
    return Fraction(value[:-1])


def project_format_of(document: ET.Element) -> ET.Element:
    sequence = document.find("library/event/project/sequence")
    return next(f for f in document.iter("format") if f.get("id") == sequence.get("format"))


def assert_on_grid(document: ET.Element, frame: Fraction) -> None:
    """Every time in the project (not the asset's own media duration) is whole frames."""
    for element in document.iter():
        if element.tag in ("asset", "format"):
            continue
        for attribute in ("offset", "duration", "start"):
            if attribute in element.attrib:
                frames = seconds_of(element.get(attribute)) / frame
                assert frames.denominator == 1, (element.tag, attribute, element.get(attribute))


def test_probing_reads_each_videos_format(footage: dict[str, Path]) -> None:
    for name, (_, width, height, _, expected, _) in FOOTAGE.items():
        fields = {"width": width, "height": height, "field_order": "progressive", "pixel_aspect": Fraction(1)}
        fields |= {"color_space": None} | expected
        fields["rate"] = frame_rate(fields["rate"])
        assert probe_video(footage[name]) == VideoFormat(**fields), name


@pytest.mark.parametrize("name", list(FOOTAGE))
def test_project_takes_the_videos_format(
    name: str, footage: dict[str, Path], spoken: TranscriptionResult, dtds: dict[str, object]
) -> None:
    video = probe_video(footage[name])
    frame = video.rate.frame_duration
    result = replace(spoken, source=str(footage[name]))
    for version in VERSIONS:
        options, warnings = fcpxml_options_for(footage[name], WriteOptions(fcpxml_version=version), fps_explicit=False)
        assert warnings == () and options.rules.fps == video.rate and options.video == video
        cues = cues_for(result, options)
        assert len(cues) >= 3
        for cue in cues:  # the cue builder itself worked on the video's grid
            for edge in (cue.start, cue.end):
                assert abs(edge / frame - round(edge / frame)) < 1e-6
        for media in (None, footage[name]):
            text = WRITERS["fcpxml"].render(result, cues, replace(options, media=media))
            document = etree.fromstring(text.encode())
            assert dtds[version].validate(document), (name, version, dtds[version].error_log.filter_from_errors())
            project = project_format_of(document)
            assert seconds_of(project.get("frameDuration")) == frame
            assert (int(project.get("width")), int(project.get("height"))) == (video.width, video.height)
            assert project.get("fieldOrder", "progressive") == video.field_order
            assert project.get("name") == FOOTAGE[name][5]
            assert Fraction(int(project.get("paspH", 1)), int(project.get("paspV", 1))) == video.pixel_aspect
            assert project.get("colorSpace") == video.color_space
            assert_on_grid(document, frame)
            captions = document.findall(".//caption")
            assert [c.find("text/text-style").text for c in captions] == [cue.text for cue in cues]
            if media is not None:  # the clip shares the project's format and plays at its own rate
                assert document.find("resources/asset").get("format") == project.get("id")
                assert len(document.findall("resources/format")) == 1
                assert document.find(".//conform-rate") is None
    itt = ET.fromstring(WRITERS["itt"].render(result, cues, options).encode())
    assert int(itt.get(f"{{{TTP}}}frameRate")) == video.rate.timebase
    assert (itt.get(f"{{{TTP}}}frameRateMultiplier") == "1000 1001") == video.rate.ntsc


def test_an_explicit_fps_wins_with_a_warning(
    footage: dict[str, Path], spoken: TranscriptionResult, dtds: dict[str, object]
) -> None:
    clip = footage["interview.mov"]
    options = WriteOptions(rules=replace(WriteOptions().rules, fps=frame_rate("25")), media=clip)
    chosen, warnings = fcpxml_options_for(clip, options, fps_explicit=True)
    assert warnings == (f"{clip}: --fps 25 differs from the video's 29.97 fps; captions follow --fps",)
    assert chosen.rules.fps == frame_rate("25")
    same = replace(options, rules=replace(options.rules, fps=frame_rate("29.97")))
    assert fcpxml_options_for(clip, same, fps_explicit=True)[1] == ()
    for version in VERSIONS:
        text = WRITERS["fcpxml"].render(spoken, cues_for(spoken, chosen), replace(chosen, fcpxml_version=version))
        document = etree.fromstring(text.encode())
        assert dtds[version].validate(document), dtds[version].error_log.filter_from_errors()
        project = project_format_of(document)
        assert (project.get("frameDuration"), project.get("width"), project.get("height")) == (
            "100/2500s",
            "640",
            "360",
        )
        assert project.get("name") is None  # Final Cut Pro has no 640x360p25
        own = document.find("resources/format[@id='r4']")
        assert (own.get("name"), own.get("frameDuration")) == ("FFVideoFormat640x360p2997", "1001/30000s")
        clip_element = document.find(".//asset-clip")
        assert clip_element.get("format") == "r4"
        assert clip_element.find("conform-rate").attrib == {"scaleEnabled": "0", "srcFrameRate": "29.97"}
        assert_on_grid(document, Fraction(1, 25))


def test_rates_final_cut_pro_has_no_project_for(
    tmp_path: Path, spoken: TranscriptionResult, dtds: dict[str, object]
) -> None:
    fast = make_video(tmp_path / "slowmo.mp4", 120, 320, 240, 0.5)
    options, warnings = fcpxml_options_for(fast, WriteOptions(media=fast), fps_explicit=False)
    assert warnings == (
        f"{fast}: the video's 120 fps is above Final Cut Pro's project rates; the project runs at 60 fps",
    )
    assert options.rules.fps == frame_rate("60") and options.video.rate.frame_duration == Fraction(1, 120)
    for version in ("1.8", "1.13"):  # srcFrameRate="120" exists from 1.13 on
        text = WRITERS["fcpxml"].render(spoken, cues_for(spoken, options), replace(options, fcpxml_version=version))
        document = etree.fromstring(text.encode())
        assert dtds[version].validate(document), dtds[version].error_log.filter_from_errors()
        assert project_format_of(document).get("frameDuration") == "100/6000s"
        assert document.find("resources/format[@id='r4']").get("frameDuration") == "1/120s"
        assert (document.find(".//conform-rate") is not None) == (version == "1.13")
    slow = make_video(tmp_path / "screen.mp4", 15, 320, 240, 0.5)
    options, warnings = fcpxml_options_for(slow, WriteOptions(), fps_explicit=False)
    assert warnings == (f"{slow}: the video's 15 fps is no Final Cut Pro project rate; captions follow --fps 25",)
    assert options.rules.fps == frame_rate("25")


def test_audio_inputs_keep_fps_and_1080p_or_the_format_size(
    speech: Callable[[str], Path], spoken: TranscriptionResult, dtds: dict[str, object]
) -> None:
    wav = speech(CLIPS[0])
    rules = replace(WriteOptions().rules, fps=frame_rate("29.97"))
    options = WriteOptions(rules=rules, media=wav)
    assert fcpxml_options_for(wav, options, fps_explicit=True) == (options, ())
    for size, name in (
        (None, "FFVideoFormat1080p2997"),
        ("3840x2160", "FFVideoFormat3840x2160p2997"),
        ("1080x1920", None),
        (" 1280X720 ", "FFVideoFormat720p2997"),
    ):
        sized = replace(options, format_size=size)
        document = etree.fromstring(WRITERS["fcpxml"].render(spoken, cues_for(spoken, sized), sized).encode())
        assert dtds["1.8"].validate(document), dtds["1.8"].error_log.filter_from_errors()
        project = project_format_of(document)
        width, height = frame_size(size or "1920x1080")
        assert (project.get("width"), project.get("height"), project.get("name")) == (str(width), str(height), name)
        assert project.get("frameDuration") == "1001/30000s" and project.get("fieldOrder") is None
        assert document.find("resources/asset").get("hasVideo") is None
        assert_on_grid(document, Fraction(1001, 30000))
    for bad in ("1920", "0x1080", "axb", "1920x", "99999x1080", "-1920x1080", "1920x1080x3"):
        with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
            WriteOptions(format_size=bad)


def test_format_size_replaces_a_videos_size_with_a_warning(footage: dict[str, Path]) -> None:
    clip = footage["feature.mp4"]
    options, warnings = fcpxml_options_for(clip, WriteOptions(format_size="1080x1920"), fps_explicit=False)
    assert warnings == (
        f"{clip}: --format-size 1080x1920 differs from the video's 1920x1080; the project uses --format-size",
    )
    document = ET.fromstring(WRITERS["fcpxml"].render(TranscriptionResult((), "en", 3.0, "tiny.en"), (), options))
    project = project_format_of(document)
    assert (project.get("width"), project.get("height"), project.get("frameDuration")) == (
        "1080",
        "1920",
        "1001/24000s",
    )
    assert fcpxml_options_for(clip, WriteOptions(format_size="1920x1080"), fps_explicit=False)[1] == ()


def test_audio_files_and_cover_art_are_not_video(tmp_path: Path, speech: Callable[[str], Path]) -> None:
    assert probe_video(speech(CLIPS[0])) is None
    art = tmp_path / "song.mp4"
    with av.open(str(art), "w") as container:
        cover = container.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 64, 64, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        sound = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        container.mux(cover.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")))
        container.mux(cover.encode(None))
        samples = av.AudioFrame.from_ndarray(np.zeros((1, SAMPLE_RATE), np.float32), format="flt", layout="mono")
        samples.sample_rate = SAMPLE_RATE
        container.mux(sound.encode(samples))
        container.mux(sound.encode(None))
    assert probe_video(art) is None
    broken = tmp_path / "broken.mov"
    broken.write_bytes(b"not a movie at all" * 10)
    with pytest.raises(AudioError, match=r"broken\.mov: cannot read its video format"):
        probe_video(broken)


def test_rate_snapping() -> None:
    assert standard_rate(Fraction(2997, 100)) == frame_rate("29.97")
    assert standard_rate(Fraction(29)) is None  # 3.2% off: not a phone's wobble
    assert (
        standard_rate(Fraction(2398, 100)) == frame_rate("23.976") and standard_rate(Fraction(24)) == FRAME_RATES["24"]
    )
    measured = {fps: FrameRate(str(fps), 1 / Fraction(fps)) for fps in ("100", "119.88", "240", "90", "48", "15", "37")}
    assert {fps: (r.name if (r := project_rate(rate)) else None) for fps, rate in measured.items()} == {
        "100": "50",
        "119.88": "59.94",
        "240": "60",
        "90": "30",
        "48": "24",
        "15": None,
        "37": None,
    }

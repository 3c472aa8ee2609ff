"""The command line as a user meets it: real files in, subtitle files (or one clear error) out."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import srt

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "espeak_welcome.opus"


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed-style entry point in a fresh interpreter, as a user's shell would."""
    code = "from whisper_coreml.cli import transcribe_main; transcribe_main()"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray((samples * 32767).astype(np.int16)[None], format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def test_sample_to_srt_vtt_and_json(tmp_path: Path) -> None:
    result = run(SAMPLE, "--format", "srt,vtt,json", "--output-dir", tmp_path, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    cues = list(srt.parse((tmp_path / "espeak_welcome.srt").read_text()))
    text = " ".join(c.content for c in cues).lower()
    assert "welcome" in text and "network connection" in text
    assert cues[0].start.total_seconds() < 1.0 and 8.0 < cues[-1].end.total_seconds() < 10.5
    assert (tmp_path / "espeak_welcome.vtt").read_text().startswith("WEBVTT")
    assert '"language": "en"' in (tmp_path / "espeak_welcome.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "espeak_welcome.json",
        "espeak_welcome.srt",
        "espeak_welcome.vtt",
    ]


def bad_inputs(folder: Path, shared: Path | None) -> dict[str, str]:
    """Broken inputs an editor's card dump really contains, and the problem each must report."""
    (folder / "empty.wav").touch()
    (folder / "notes.wav").write_text("These are meeting notes, not a recording.\n" * 20)
    video = folder / "silent_video.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    cases = {
        "empty.wav": "empty file",
        "notes.wav": "not an audio or video file",
        "missing.wav": "file not found",
    }
    mp3 = shared / "speech" / "long" / "librivox_shakespeare_sonnet001.mp3" if shared else None
    if mp3 is not None and mp3.is_file():
        (folder / "cut.mp3").write_bytes(mp3.read_bytes()[: mp3.stat().st_size // 2])
        cases["cut.mp3"] = "truncated"
    return cases


@pytest.fixture(scope="module")
def shared_or_none() -> Path | None:
    import os

    path = Path(os.environ.get("WHISPER_COREML_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    return path if path.is_dir() else None


def test_each_bad_input_gets_one_line_and_no_output(tmp_path: Path, shared_or_none: Path | None) -> None:
    for name, problem in bad_inputs(tmp_path, shared_or_none).items():
        before = set(tmp_path.iterdir())
        result = run(tmp_path / name, "--format", "all", "--quiet")
        assert result.returncode == 1, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and problem in lines[0], (name, result.stderr)
        assert set(tmp_path.iterdir()) == before, f"{name}: output or temp file left behind"
    skipped = run(tmp_path / "silent_video.mp4", "--format", "all")  # nothing to transcribe: not a failure
    assert skipped.returncode == 0 and skipped.stderr.strip().endswith("silent_video.mp4: no audio track")
    assert not list(tmp_path.glob("silent_video.*.*")) and not (tmp_path / "silent_video.srt").exists()


def test_a_bad_file_does_not_stop_the_others(tmp_path: Path) -> None:
    (tmp_path / "empty.wav").touch()
    result = run(tmp_path / "empty.wav", SAMPLE, "--output-dir", tmp_path, "--quiet")
    assert result.returncode == 1
    assert "empty.wav: empty file" in result.stderr
    assert (tmp_path / "espeak_welcome.srt").is_file() and not (tmp_path / "empty.srt").exists()


def test_silence_and_noise_give_no_subtitles(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_wav(tmp_path / "silence.wav", np.zeros(60 * 16000))
    write_wav(tmp_path / "noise.wav", np.clip(rng.standard_normal(60 * 16000) * 0.1, -1, 1))
    result = run(tmp_path / "silence.wav", tmp_path / "noise.wav", "--format", "srt", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "silence.srt").read_text() == ""
    assert (tmp_path / "noise.srt").read_text() == ""


def test_usage_errors(tmp_path: Path) -> None:
    unknown_model = run(SAMPLE, "--model", "tiny.nope")
    assert unknown_model.returncode != 0
    assert "unknown model 'tiny.nope'" in unknown_model.stderr and "tiny.en" in unknown_model.stderr
    assert "large-v3" in unknown_model.stderr
    unknown_format = run(SAMPLE, "--format", "docx")
    assert unknown_format.returncode == 2 and "srt, vtt" in unknown_format.stderr
    english_only = run(SAMPLE, "--language", "de")
    assert english_only.returncode == 2 and "English-only" in english_only.stderr
    assert not list(tmp_path.iterdir())


# --- subtitle cues and editor formats ------------------------------------------------------------------


def make_video_with_speech(path: Path, audio_from: Path) -> Path:
    """An mp4 with a small picture track and `audio_from`'s sound, as a camera file would have."""
    with av.open(str(audio_from)) as source:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in source.decode(audio=0)]).astype(np.float32)
        rate = source.streams.audio[0].rate
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 160, 90, "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="mono")
        for i in range(int(len(samples) / rate * 25)):
            frame = av.VideoFrame.from_ndarray(np.full((90, 160, 3), i % 255, np.uint8), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        frame = av.AudioFrame.from_ndarray(samples[None], format="flt", layout="mono")
        frame.sample_rate = rate
        container.mux(audio.encode(frame))
        container.mux(audio.encode(None))
    return path


def test_fcpxml_and_itt_for_final_cut_pro(tmp_path: Path, shared: Path) -> None:
    etree = pytest.importorskip("lxml.etree")
    video = make_video_with_speech(tmp_path / "Interview take 1.mp4", SAMPLE)
    out = tmp_path / "out"
    args = ["--format", "fcpxml,itt,srt", "--fps", "29.97", "--fcpxml-version", "1.11", "--fcpxml-with-media"]
    result = run(video, *args, "--output-dir", out, "--quiet")
    assert result.returncode == 0, result.stderr
    document = etree.parse(str(out / "Interview take 1.fcpxml"))
    dtd = etree.DTD(str(shared / "fcpxml" / "dtd" / "FCPXMLv1_11.dtd"))
    assert dtd.validate(document), dtd.error_log.filter_from_errors()
    assert document.find("resources/format").get("frameDuration") == "1001/30000s"
    assert document.find("resources/asset/media-rep").get("src") == video.resolve().as_uri()
    captions = document.findall(".//asset-clip/caption")
    subtitles = list(srt.parse((out / "Interview take 1.srt").read_text()))
    assert len(captions) == len(subtitles) >= 2  # every format shows the same cues
    texts = [c.findtext("text/text-style") for c in captions]
    assert texts == [s.content for s in subtitles]
    for caption in captions:
        offset, duration = (Fraction(caption.get(a)[:-1]) / Fraction(1001, 30000) for a in ("offset", "duration"))
        assert offset.denominator == duration.denominator == 1 and duration > 0
    itt = (out / "Interview take 1.itt").read_text()
    assert 'ttp:frameRate="30"' in itt and 'ttp:frameRateMultiplier="1000 1001"' in itt
    assert itt.count("<p ") == len(subtitles)


def test_cue_rules_and_raw_segments(tmp_path: Path) -> None:
    assert run(SAMPLE, "--format", "srt,json", "--cues", "raw", "--output-dir", tmp_path, "-q").returncode == 0
    segments = json.loads((tmp_path / "espeak_welcome.json").read_text())["segments"]
    raw = list(srt.parse((tmp_path / "espeak_welcome.srt").read_text()))
    assert [c.content for c in raw] == [s["text"].strip() for s in segments if s["text"].strip()]
    assert all(s["words"] is None for s in segments)  # raw cues need no word timing
    narrow = tmp_path / "narrow"
    assert run(SAMPLE, "--max-line-width", "20", "--max-lines", "1", "--output-dir", narrow, "-q").returncode == 0
    cues = list(srt.parse((narrow / "espeak_welcome.srt").read_text()))
    assert len(cues) > len(raw) and all(len(c.content) <= 20 and "\n" not in c.content for c in cues)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--fps", "12", "unknown frame rate '12'"),
        ("--fcpxml-version", "1.5", "unsupported FCPXML version '1.5'"),
        ("--fcpxml-style", "lower-thirds", "unknown FCPXML style"),
        ("--cues", "segments", "unknown cue mode"),
        ("--max-lines", "0", "--max-lines 0: must be at least 1"),
        ("--min-duration", "9", "--min-duration 9.0 is longer than --max-duration 7.0"),
    ],
)
def test_bad_subtitle_options_are_usage_errors(tmp_path: Path, option: str, value: str, message: str) -> None:
    result = run(SAMPLE, option, value, "--output-dir", tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []

"""The command line as a user meets it: real files in, subtitle files (or one clear error) out."""

from __future__ import annotations

import subprocess
import sys
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
    assert sorted(p.name for p in tmp_path.iterdir()) == [
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
        "silent_video.mp4": "no audio track",
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

"""Batches as an editor runs them: a card dump of good and broken media, re-runs that do
nothing, Ctrl-C in the middle, and two runs that must not trample each other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NoReturn

import av
import numpy as np
import pytest
import srt

from whisper_coreml import batch
from whisper_coreml.batch import discover, plan, run_batch
from whisper_coreml.locks import Claim, try_claim
from whisper_coreml.settings import Choices, build_settings

GOOD_CLIPS = [
    "arctic_a0010.wav",
    "arctic_a0024.wav",
    "arctic_aew_a0001.wav",
    "arctic_aew_a0002.wav",
    "arctic_aew_a0003.wav",
    "arctic_axb_a0004.wav",
    "arctic_axb_a0005.wav",
    "arctic_axb_a0006.wav",
    "ljspeech_LJ001-0002.wav",
    "ljspeech_LJ001-0008.wav",
    "jfk_inaugural_excerpt.flac",
]


def cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    code = "from whisper_coreml.cli import transcribe_main; transcribe_main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        # Ctrl-C as in a terminal: a process that starts with SIGINT ignored (pytest-xdist's
        # workers pass that on, as shells do to background jobs) keeps ignoring it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    process = cli(*args, env=env)
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def as_video(source: Path, target: Path) -> Path:
    """`source`'s speech in a video container (mp4/mov) with a small picture track, made with PyAV."""
    with av.open(str(source)) as container:
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
        rate = container.streams.audio[0].rate
        if samples.dtype == np.int16:
            samples = samples / 32768
    with av.open(str(target), "w") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("aac", rate=rate, layout="mono")
        for i in range(int(len(samples) / rate * 10)):
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i % 250, np.uint8), format="rgb24")))
        out.mux(video.encode(None))
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None], format="flt", layout="mono")
        frame.sample_rate = rate
        out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return target


@pytest.fixture
def card_dump(tmp_path: Path, shared: Path) -> tuple[Path, set[str], dict[str, str]]:
    """20 inputs: 14 good (10 clips, one of them again as mp4 and mov video, one with spaces
    and accents in its name, one in a subfolder), a video without sound, and 5 broken ones with
    the problem each must report (as root, the unreadable file is readable: then 15 and 4)."""
    folder = tmp_path / "card"
    (folder / "B-roll").mkdir(parents=True)
    en = shared / "speech" / "en"
    good = set()
    for name in GOOD_CLIPS[:10]:
        (folder / name).write_bytes((en / name).read_bytes())
        good.add(name)
    as_video(en / "arctic_a0010.wav", folder / "interview.mp4")
    as_video(en / "arctic_a0010.wav", folder / "interview.mov")
    (folder / "Entrevista café 1.wav").write_bytes((en / "ljspeech_LJ001-0002.wav").read_bytes())
    (folder / "B-roll" / "room tone.wav").write_bytes((en / "arctic_axb_a0005.wav").read_bytes())
    good |= {"interview.mp4", "interview.mov", "Entrevista café 1.wav", "B-roll/room tone.wav"}
    skipped = {"no sound.mov"}  # a video without sound: nothing to transcribe, not a failure
    with av.open(str(folder / "no sound.mov"), "w") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i, np.uint8), format="rgb24")))
        out.mux(video.encode(None))
    bad = add_broken_inputs(folder, shared)
    if os.geteuid() == 0:  # root reads locked.wav anyway: it is a good input then
        bad.pop("locked.wav")
        good.add("locked.wav")
    assert len(good) + len(bad) + len(skipped) == 20
    return folder, good, bad


def add_broken_inputs(folder: Path, shared: Path) -> dict[str, str]:
    """The 5 broken inputs of a card dump, written into `folder`: {name: the problem each must
    report} (test_cluster.py reuses them)."""
    (folder / "empty.wav").touch()
    (folder / "notes.mp3").write_text("meeting notes, not audio\n" * 50)
    mp3 = shared / "speech" / "long" / "librivox_shakespeare_sonnet001.mp3"
    (folder / "cut.mp3").write_bytes(mp3.read_bytes()[: mp3.stat().st_size // 2])
    (folder / "damaged.flac").write_bytes(b"fLaC" + os.urandom(3000))
    locked = folder / "locked.wav"
    locked.write_bytes((shared / "speech" / "en" / "arctic_a0024.wav").read_bytes())
    locked.chmod(0)
    return {
        "empty.wav": "empty file",
        "notes.mp3": "not an audio or video file",
        "cut.mp3": "truncated",
        "damaged.flac": "",
        "locked.wav": "permission denied",
    }


def outputs_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def visible(folder: Path, pattern: str) -> list[Path]:
    """`folder.glob(pattern)` without hidden files (pathlib's glob matches them)."""
    return [p for p in folder.glob(pattern) if not p.name.startswith(".")]


def visible_outputs(root: Path) -> set[str]:
    """Outputs without the hidden records and journals kept beside them."""
    return {name for name in outputs_under(root) if not Path(name).name.startswith(".")}


def test_card_dump_batch_then_rerun(card_dump: tuple[Path, set[str], dict[str, str]], tmp_path: Path) -> None:
    folder, good, bad = card_dump
    out, report = tmp_path / "subs", tmp_path / "batch.json"
    args = [folder, "--recursive", "--format", "srt,json", "--output-dir", out, "--report", report]
    first = run(*args)
    assert first.returncode == 1, first.stderr
    # interview.mp4 and interview.mov keep their extension: they would both write interview.srt
    stem = lambda name: name if name.startswith("interview.") else str(Path(name).with_suffix(""))  # noqa: E731
    expected = {stem(name) + ext for name in good for ext in (".srt", ".json")}
    assert visible_outputs(out) == expected  # exactly the good ones, mirrored, nothing else
    errors = [line for line in first.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad)
    for name, problem in bad.items():
        assert any(name in line and problem in line for line in errors), (name, errors)
    assert "skipped: " in first.stderr and "no sound.mov: no audio track" in first.stderr
    data = json.loads(report.read_text())
    counts = {"done": len(good), "up to date": 0, "locked": 0, "kept": 0, "skipped": 1, "failed": len(bad)}
    assert data["counts"] == counts
    assert f"{len(good)} done" in first.stderr and f"{len(bad)} failed" in first.stderr
    for name in expected:
        if name.endswith(".srt"):
            cues = list(srt.parse((out / name).read_text()))
            assert cues and all(c.content for c in cues)

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    started = time.perf_counter()
    second = run(*args)
    elapsed = time.perf_counter() - started
    assert second.returncode == 1  # the broken inputs are tried again, and fail again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps  # nothing re-transcribed
    assert json.loads(report.read_text())["counts"]["up to date"] == len(good)
    assert " s of audio in " not in second.stderr
    print(f"re-run of the 20-input folder: {elapsed:.1f} s")


def test_finished_folder_rerun_does_no_model_work(tmp_path: Path, shared: Path) -> None:
    clip = tmp_path / "clip.wav"
    clip.write_bytes((shared / "speech" / "en" / "arctic_a0010.wav").read_bytes())
    assert run(clip, "--format", "srt,vtt").returncode == 0
    # The engine is no setting of the output (engines agree), and loading this one would fail:
    # tiny.en has no converted bundle under this models folder.
    empty = {"WHISPER_COREML_MODELS": str(tmp_path / "no-bundles")}
    again = run(clip, "--format", "srt,vtt", "--engine", "mil", env=empty)
    assert again.returncode == 0, again.stderr
    assert "up to date: nothing to do" in again.stderr
    forced = run(clip, "--format", "srt", "--overwrite", "--engine", "mil", env=empty)
    assert forced.returncode == 1 and "no converted Core ML bundle" in forced.stderr


def test_sigint_mid_batch_keeps_finished_outputs_and_resumes(tmp_path: Path, shared: Path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in GOOD_CLIPS[:8]:
        (folder / name).write_bytes((shared / "speech" / "en" / name).read_bytes())
    process = cli(folder, "--format", "srt,json,fcpxml", "--quiet")
    deadline = time.monotonic() + 300
    while not visible(folder, "*.json") and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "run the same command again" in stderr
    leftovers = [p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".lock"))]
    assert leftovers == [], leftovers  # no temp files, no locks (records and journals stay)
    finished = {p.stem for p in visible(folder, "*.json")}
    assert 1 <= len(finished) < 8
    for stem in finished:  # whatever exists is complete
        json.loads((folder / f"{stem}.json").read_text())
        assert list(srt.parse((folder / f"{stem}.srt").read_text()))
    resumed = run(folder, "--format", "srt,json,fcpxml", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert {p.stem for p in folder.glob("*.fcpxml")} == {Path(n).stem for n in GOOD_CLIPS[:8]}


def test_discover_filters_and_mirrors(tmp_path: Path) -> None:
    for name in ("a.wav", "b.MOV", "notes.txt", ".hidden.wav", "sub/c.mp3", "sub/deeper/d.flac", ".cache/e.wav"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    names = lambda found: sorted(p.relative_to(tmp_path).as_posix() for p, _ in found.inputs)  # noqa: E731
    assert names(discover([tmp_path])) == ["a.wav", "b.MOV"]
    assert names(discover([tmp_path], recursive=True)) == ["a.wav", "b.MOV", "sub/c.mp3", "sub/deeper/d.flac"]
    assert names(discover([tmp_path], True, exclude=["sub/deeper/*"])) == ["a.wav", "b.MOV", "sub/c.mp3"]
    assert names(discover([tmp_path], True, include=["*.txt"])) == ["notes.txt"]
    explicit = discover([tmp_path / "notes.txt", tmp_path / "a.wav", tmp_path / "a.wav"])  # as given, once each
    assert explicit.inputs == [(tmp_path / "notes.txt", None), (tmp_path / "a.wav", None)]
    assert discover([tmp_path]).skipped_folders == 1  # sub/ (hidden .cache/ is not counted)
    jobs = plan(discover([tmp_path], recursive=True).inputs, ["srt"], tmp_path / "out")
    assert [t for job in jobs for _, t in job.targets][-1] == tmp_path / "out" / "sub" / "deeper" / "d.srt"
    assert plan([(tmp_path / "a.wav", None)], ["srt"], None)[0].targets[0][1] == tmp_path / "a.srt"


def test_claims_exclude_live_runs_and_free_themselves_when_a_run_dies(tmp_path: Path) -> None:
    lock = tmp_path / ".clip.wav.whisper-coreml.lock"
    with try_claim(lock) as claim:
        assert claim is not None and str(os.getpid()) in lock.read_text()
        assert try_claim(lock) is None  # held (flock is per open file, so even by this process)
    assert not lock.exists()
    hold = f"from pathlib import Path; from whisper_coreml.locks import try_claim; c = try_claim(Path({str(lock)!r}))"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold + "; print(c is not None, flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "True"
    assert try_claim(lock) is None
    holder.kill()  # kill -9: the kernel drops its lock; the file it left is taken over
    holder.wait()
    assert lock.exists()
    claim = try_claim(lock)
    assert claim is not None
    claim.release()


def test_ctrl_c_while_a_file_is_being_claimed_leaves_no_lock_file(
    tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that lands just as the next file's claim is taken (as the test above can time
    it, right after a file's outputs are written) stops the run with the claim released."""
    clip = tmp_path / GOOD_CLIPS[0]
    clip.write_bytes((shared / "speech" / "en" / GOOD_CLIPS[0]).read_bytes())
    real_try_claim = batch.try_claim

    def claimed_then_interrupted(path: Path) -> Claim | None:
        claim = real_try_claim(path)
        os.kill(os.getpid(), signal.SIGINT)  # handled at the next bytecode, in the caller
        return claim

    def never_load() -> NoReturn:
        raise AssertionError("interrupted before any transcription")

    monkeypatch.setattr(batch, "try_claim", claimed_then_interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C as in a terminal
    try:
        jobs = plan(discover([tmp_path]).inputs, ["srt"], None)
        report = run_batch(jobs, never_load, build_settings("tiny.en", Choices()))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert report.interrupted and not report.outcomes
    assert sorted(p.name for p in tmp_path.iterdir()) == [clip.name]  # no lock file, no outputs

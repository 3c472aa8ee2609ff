"""Start-up: how long the commands that need no model take, each in a fresh process.

An editor types `transcribe --help`, lists the models, or re-runs a finished folder to check
that nothing is left to do; none of these needs torch, and each should feel instant. Measured:
wall time and CPU time (user + system; what a busy shared machine does not inflate as much) of
the console scripts' entry points (what `transcribe`/`whisper-coreml` run) in a fresh
interpreter, median of `--repeat` processes, and whether torch was imported at all. The
folder is a copy of `--clips` files of `../shared/speech/en` (or the bundled sample), transcribed
once untimed; its re-run must find every output up to date. The first transcription of one short
clip is shown beside them for scale (it loads the model, so it pays for torch).

    python benchmarks/startup.py [--repeat 5] [--clips 36]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WHISPER_COREML_SHARED", ROOT.parent / "shared"))
SAMPLE = ROOT / "samples" / "espeak_welcome.opus"
# The console scripts' own code, plus one line on stderr at exit saying whether torch was loaded.
ENTRY = """
import atexit, sys
atexit.register(lambda: print("torch loaded:", "torch" in sys.modules, file=sys.stderr))
from whisper_coreml.cli import {main}
sys.exit({main}())
"""


@dataclass(frozen=True)
class Run:
    """One fresh process: its wall and CPU seconds, whether it imported torch, its stderr."""

    wall: float
    cpu: float
    torch: bool
    stderr: str


def run(main: str, *args: str | Path) -> Run:
    """`main` (transcribe_main or main) with `args` in a fresh interpreter of this checkout."""
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", ENTRY.format(main=main), *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{main} {' '.join(map(str, args))} failed ({done.returncode}): {done.stderr.strip()}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Run(wall, cpu, "torch loaded: True" in done.stderr, done.stderr)


def row(name: str, runs: list[Run]) -> tuple[str, float, float, bool]:
    """(name, median wall s, median CPU s, whether any run imported torch)."""
    wall = statistics.median(r.wall for r in runs)
    return name, wall, statistics.median(r.cpu for r in runs), any(r.torch for r in runs)


def clips(count: int) -> list[Path]:
    """The first `count` clips of the shared English set, or the bundled sample without it."""
    folder = SHARED / "speech" / "en"
    found = sorted(p for p in folder.glob("*") if p.suffix in (".wav", ".flac", ".mp3")) if folder.is_dir() else []
    return found[:count] or [SAMPLE]


def cpu_model() -> str:
    if sys.platform == "darwin":
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
        return out.stdout.strip() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per command (median)")
    parser.add_argument("--clips", type=int, default=36, help="files in the finished folder")
    args = parser.parse_args()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{cpu_model()}, {os.cpu_count()} CPUs; load average {load}; Python {platform.python_version()}")
    rows = [
        row("transcribe --help", [run("transcribe_main", "--help") for _ in range(args.repeat)]),
        row("whisper-coreml models", [run("main", "models") for _ in range(args.repeat)]),
    ]
    with tempfile.TemporaryDirectory(prefix="whisper-coreml-startup-") as scratch:
        folder = Path(scratch) / "card"
        folder.mkdir()
        chosen = clips(args.clips)
        for clip in chosen:
            shutil.copyfile(clip, folder / clip.name)
        run("transcribe_main", folder, "--quiet")  # the first run does the work, untimed
        reruns = [run("transcribe_main", folder) for _ in range(args.repeat)]
        if not all("up to date" in r.stderr for r in reruns):
            raise SystemExit(f"the re-run found work to do: {reruns[0].stderr.strip()}")
        rows.append(row(f"finished folder re-run ({len(chosen)} files)", reruns))
        short = Path(scratch) / "short"
        # a new output folder each time: always a first transcription
        firsts = [run("transcribe_main", chosen[0], "-o", short / str(i), "--quiet") for i in range(args.repeat)]
        rows.append(row(f"first transcription of {chosen[0].name}", firsts))
    print(f"{'command':<44} {'wall s':>7} {'cpu s':>6} {'torch':>6}")
    for name, wall, cpu, torch in rows:
        print(f"{name:<44} {wall:7.2f} {cpu:6.2f} {'yes' if torch else 'no':>6}")
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()

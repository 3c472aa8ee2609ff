"""Cluster batches (issue 13): throughput of `transcribe --cluster local:N` against N, and the
local batch as the baseline, on one folder of real speech.

    python benchmarks/cluster.py [--folder en] [--workers 1,2] [--model tiny.en] [--json out.json]

Each configuration is the real command line in a fresh process over `<shared>/speech/<folder>`,
writing into a temp folder (inputs are read in place): wall time, audio hours per wall hour,
the start-up time (Ray, workers, model load: the wall time less the workers' busy time) and the
steady throughput after it, and for the local batch the CPU time of the command (Ray's workers
are not the command's own children, so a cluster row shows none). The load average is printed
with each row: this machine is shared, and wall times move with its neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402 - the sibling benchmark: data folder and machine info


def run(folder: Path, model: str, cluster: str | None) -> dict:
    """One `transcribe` over `folder`; its timings from the --report it writes."""
    with tempfile.TemporaryDirectory() as out:
        report = Path(out) / "report.json"
        command = [sys.executable, "-c", "from whisper_coreml.cli import transcribe_main; transcribe_main()"]
        command += [str(folder), "--model", model, "--output-dir", f"{out}/subs", "--report", str(report), "--quiet"]
        command += ["--cluster", cluster] if cluster else []
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        load = os.getloadavg()[0]
        started = time.perf_counter()
        subprocess.run(command, check=False)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        outcomes = [o for o in json.loads(report.read_text())["outcomes"] if o["status"] == "done"]
    audio = sum(o["duration"] for o in outcomes)
    busy = sum(o["seconds"] for o in outcomes)
    workers = max(1, len({o["worker"] for o in outcomes}))
    first = wall - busy / workers  # ~ the time before workers were transcribing (start, load)
    return {
        "config": cluster or "local batch",
        "files": len(outcomes),
        "audio_s": audio,
        "wall_s": wall,
        "audio_h_per_h": audio / wall,
        "start_s": first,
        "steady_audio_h_per_h": audio / max(wall - first, 1e-9),
        # Ray's workers are not this command's waited-for children: their CPU is not counted
        "cpu_s": None if cluster else (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default="en", help="folder of <shared>/speech")
    parser.add_argument("--workers", default="1,2", help="local:N for each N")
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    folder = bench.shared_dir() / "speech" / args.folder
    if not folder.is_dir():
        print(f"benchmark skipped: no speech data at {folder} (set WHISPER_COREML_SHARED to the shared/ folder)")
        return
    info = bench.machine_info(threads=os.cpu_count() or 1)
    print(f"CPU: {info['cpu']} ({info['cores']} cores), load average {info['loadavg'][0]:.2f}, commit {info['commit']}")
    rows = [run(folder, args.model, None)]
    rows += [run(folder, args.model, f"local:{n}") for n in map(int, args.workers.split(","))]
    header = "config        files  audio min  wall s  audio h/h  start s  steady h/h  cpu s  load before/after"
    print(header)
    for r in rows:
        cpu = "-" if r["cpu_s"] is None else f"{r['cpu_s']:.0f}"
        print(
            f"{r['config']:<13} {r['files']:>5} {r['audio_s'] / 60:>10.1f} {r['wall_s']:>7.1f}"
            f" {r['audio_h_per_h']:>10.1f} {r['start_s']:>8.1f} {r['steady_audio_h_per_h']:>11.1f} {cpu:>6}"
            f"  {r['load_before']:.1f}/{r['load_after']:.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

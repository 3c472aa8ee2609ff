"""The Python API against the CLI on one clip, on a quiet machine and beside a busy process.

Both run in fresh processes, three of each (medians); the API's time is the first
`model.transcribe(path)` after `load_model`, the CLI's the file's time in its --report (audio
decoding included, model loading not). The busy neighbour is one Python process spinning on
a core. Before openmp.py the API took up to ~15x longer than the CLI beside busy processes
(both now run one thread while another process holds a core, see openmp.py).

    python benchmarks/api_cli.py [--clip ../shared/speech/en/jfk_inaugural_excerpt.flac]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API = """
import sys, time, whisper_coreml as wc
model = wc.load_model("tiny.en", engine="torch")
started = time.perf_counter()
model.transcribe(sys.argv[1])
print(time.perf_counter() - started)
"""


def api_seconds(clip: Path) -> float:
    """The first transcription of a fresh process, as the CLI's is: median of three processes."""
    times = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", API, str(clip)], capture_output=True, text=True, check=True)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def cli_seconds(clip: Path) -> float:
    times = []
    for _ in range(3):
        with tempfile.TemporaryDirectory() as folder:
            report = Path(folder) / "report.json"
            command = ["-c", "from whisper_coreml.cli import transcribe_main; transcribe_main()", str(clip)]
            command += ["--compute-type", "float32"]  # the API's default: the same arithmetic on both sides
            subprocess.run(
                [sys.executable, *command, "-o", folder, "-f", "txt", "--cues", "raw", "--report", str(report), "-q"],
                check=True,
            )
            times.append(json.loads(report.read_text())["outcomes"][0]["seconds"])
    return statistics.median(times)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, default=ROOT.parent / "shared/speech/en/jfk_inaugural_excerpt.flac")
    clip = parser.parse_args().clip
    print(f"{cpu_model()}; clip {clip.name}")
    print(f"{'neighbour':<10} {'api s':>7} {'cli s':>7} {'api/cli':>8}")
    for busy in (False, True):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            api, cli = api_seconds(clip), cli_seconds(clip)
        finally:
            if spinner is not None:
                spinner.kill()
        print(f"{'busy' if busy else 'idle':<10} {api:7.2f} {cli:7.2f} {api / cli:8.2f}")


if __name__ == "__main__":
    main()

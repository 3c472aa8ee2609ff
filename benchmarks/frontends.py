"""Every front end on the same files, in one run: the Python API, the CLI (one at a time and in a
batch) and the server, each in a fresh process, with the same model and the CLI's decoding.

    python benchmarks/frontends.py [--model tiny.en] [--batch-size 8] [--files en|long]

They share the pipeline below them, so their times should match the API's; a front end that is
slower is doing something of its own (its threads, its I/O). Two such were found this way: the
CLI's folder batches decoded the next file's features on a helper thread (a second OpenMP team:
1.4-1.7x slower), and the server transcribed on another thread than the one that loaded the
model (2.1x). Times are the transcriptions only: the API's after loading and one warm-up file,
the CLI's wall time less its start-up and loading (measured on one file), the server's the wall
time of its requests, one file after another, once it is up and has done one.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402 - the sibling benchmark: data folder, machine info

API = """
import json, sys, time
import whisper_coreml as wc
model = wc.load_model(sys.argv[1], engine="torch", compute_type="auto")
paths = json.loads(sys.argv[2])
model.transcribe(paths[0], beam_size=5, vad=True, word_timestamps=True)  # warm-up, as the others get
started = time.perf_counter()
for p in paths:
    model.transcribe(p, beam_size=5, vad=True, word_timestamps=True, words_at_pauses=True)
print(time.perf_counter() - started)
"""


def api_seconds(model: str, files: list[Path]) -> float:
    out = subprocess.run([sys.executable, "-c", API, model, json.dumps([str(f) for f in files])],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def cli_run(model: str, files: list[Path], batch_size: int) -> tuple[float, dict]:
    """The CLI's wall time over `files` and its --report."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        command = [sys.executable, "-c", "from whisper_coreml.cli import transcribe_main; transcribe_main()",
                   *map(str, files), "-m", model, "-o", folder, "-f", "srt", "--batch-size", str(batch_size),
                   "--report", str(report), "-q"]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, check=True)
        return time.perf_counter() - started, json.loads(report.read_text())


def cli_seconds(model: str, files: list[Path], batch_size: int) -> float:
    """The CLI's wall time less what it spends before the first file (start-up, loading the
    model): that, measured on the first file alone, is its wall time less the file's seconds."""
    wall, report = cli_run(model, files[:1], 1)
    overhead = wall - report["outcomes"][0]["seconds"]
    return cli_run(model, files, batch_size)[0] - overhead


def server_seconds(model: str, files: list[Path]) -> float:
    import openai

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "WHISPER_COREML_API_KEY": ""}
        command = [sys.executable, "-m", "whisper_coreml.server", "--port", str(port), "--data-dir", data]
        command += ["--model", model]
        server = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.2)
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=3600)

            def request(path: Path) -> None:
                with path.open("rb") as f:
                    client.audio.transcriptions.create(file=f, model="whisper-1", response_format="srt")

            request(files[0])  # warm-up
            started = time.perf_counter()
            for path in files:
                request(path)
            return time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--files", default="en", help="a folder of <shared>/speech")
    args = parser.parse_args()
    folder = bench.shared_dir() / "speech" / args.files
    if not folder.is_dir():
        print(f"no shared data at {folder}: nothing to measure")
        return
    files = bench.list_set(folder)
    print(json.dumps(bench.machine_info(2)))
    print(f"{len(files)} files of {folder}, model {args.model}, the CLI's decoding (beam 5, VAD, word times)")
    api = api_seconds(args.model, files)
    runs = {
        "api": api,
        "cli": cli_seconds(args.model, files, 1),
        f"cli --batch-size {args.batch_size}": cli_seconds(args.model, files, args.batch_size),
        "server": server_seconds(args.model, files),
    }
    for name, seconds in runs.items():
        print(f"  {name:20s} {seconds:7.1f} s  t/api {seconds / api:.2f}")


if __name__ == "__main__":
    main()

"""Peak memory of a two-hour input against a two-minute one: it must be bounded by the window.

    python benchmarks/memory.py [--model tiny.en] [--hours 2] [--engine torch] [--keep]

Builds both inputs from real speech in `<shared>/speech` (every en/ and long/ recording, joined
with half-second pauses and repeated until long enough), writes them as 16 kHz mono WAV files
in a temporary folder, and transcribes each with the `whisper-coreml transcribe` command in a
fresh process (writing SRT and JSON, as a user would), reporting that process's peak RSS, wall
time and real-time factor. The target (issue 5): the two-hour peak within 10% of the two-minute
one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000
TOLERANCE = 0.10

# Runs the CLI as a child and reports its peak RSS (the largest of this wrapper's children).
WRAPPER = r"""
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"returncode": done.returncode, "stderr": done.stderr[-2000:],
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def shared_speech() -> Path | None:
    root = Path(os.environ.get("WHISPER_COREML_SHARED", REPO.parent / "shared")) / "speech"
    return root if root.is_dir() else None


def speech_loop(speech: Path) -> np.ndarray:
    """Every English recording once, each followed by half a second of silence, as int16."""
    from whisper_coreml.audio import decode_audio

    pause = np.zeros(SAMPLE_RATE // 2, dtype=np.float32)
    parts = []
    for folder in ("en", "long"):
        for path in sorted((speech / folder).iterdir()):
            if path.suffix.lower() in {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a"}:
                parts += [decode_audio(path), pause]
    return (np.clip(np.concatenate(parts), -1, 1) * 32767).astype(np.int16)


def write_wav(path: Path, loop: np.ndarray, seconds: float) -> Path:
    """`seconds` of `loop` repeated, written in chunks (never the whole file in memory)."""
    total = int(seconds * SAMPLE_RATE)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        written = 0
        while written < total:
            chunk = loop[: total - written]
            out.writeframes(chunk.tobytes())
            written += len(chunk)
    return path


def measure(path: Path, model: str, engine: str) -> dict:
    """Transcribe `path` with the CLI in a fresh process; its peak RSS and wall time."""
    command = [sys.executable, "-m", "whisper_coreml.cli", "transcribe", str(path), "--format", "srt,json"]
    command += ["--model", model, "--engine", engine, "--output-dir", str(path.parent), "--quiet"]
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WRAPPER, *command], capture_output=True, text=True, check=True)
    row = json.loads(out.stdout)
    if row["returncode"] != 0:
        raise SystemExit(f"transcribing {path.name} failed:\n{row['stderr']}")
    result = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    return {
        "peak_rss_mb": row["peak_rss_mb"],
        "wall_s": time.perf_counter() - started,
        "duration_s": result["duration"],
        "segments": len(result["segments"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--engine", default="torch")
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--short-minutes", type=float, default=2.0)
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--keep", action="store_true", help="keep the generated WAV files")
    args = parser.parse_args(argv)
    speech = shared_speech()
    if speech is None:
        print("no shared speech folder (../shared/speech or $WHISPER_COREML_SHARED); nothing to measure")
        return 0
    loop = speech_loop(speech)
    folder = Path(tempfile.mkdtemp(prefix="whisper-coreml-memory-"))
    rows = {}
    try:
        for label, seconds in (("short", args.short_minutes * 60), ("long", args.hours * 3600)):
            path = write_wav(folder / f"{label}.wav", loop, seconds)
            r = rows[label] = measure(path, args.model, args.engine)
            print(
                f"{label:>5}: {r['duration_s'] / 60:7.1f} min of audio, peak RSS {r['peak_rss_mb']:6.0f} MB, "
                f"{r['wall_s']:.0f} s in all (RTF {r['wall_s'] / r['duration_s']:.3f}), {r['segments']} segments",
                flush=True,
            )
    finally:
        if not args.keep:
            shutil.rmtree(folder)
    ratio = rows["long"]["peak_rss_mb"] / rows["short"]["peak_rss_mb"]
    met = ratio <= 1 + TOLERANCE
    print(
        f"peak RSS {args.hours:g} h / {args.short_minutes:g} min: {ratio:.3f} "
        f"(target <= {1 + TOLERANCE:.2f}): {'MET' if met else 'NOT MET'}"
    )
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "engine": args.engine, "runs": rows, "ratio": ratio}))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

"""Batched decoding (issue 11): our batches against our own sequential runs and faster-whisper's
`BatchedInferencePipeline`, on the same weights, in one run.

    python benchmarks/batched.py [--model tiny.en] [--batch-size 8] [--compute-type auto]
                                 [--faster-compute-type int8] [--threads 2] [--parts folder,long] [--json out.json]

Two measurements, each system in a fresh process of its own, one after another:

- folder: every file of `<shared>/speech/en` transcribed one at a time (`transcribe`) and as
  one batch (`transcribe_batch(batch_size=N)`), with the CLI's decoding (beam 5, VAD, word
  timing); the texts must be identical, the time ratio is the point.
- long files: the long-form recordings of `longform.py` (built if missing) and
  `<shared>/speech/long`, ours sequential (beam 5 + VAD, word timing), ours with `batch_size=N`
  (stretches side by side), and faster-whisper's `BatchedInferencePipeline` (batch N, beam 5,
  word timestamps as ours, its default VAD chunks); WER against the references and wall time.

Ours runs in `--compute-type` (default `auto`, the CLI's: int8, its encoder in bfloat16 where
the CPU has it), CTranslate2 in `--faster-compute-type` (default int8).

Times are the transcription calls only (model loaded and warmed up first); `cpu s` is the
process's own CPU time over them, steadier than wall time on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402 - the sibling benchmark: data folder, CTranslate2 directory, WER, machine info
import longform  # noqa: E402

OPTIONS = {"beam_size": 5, "vad": True, "word_timestamps": True}


def child(spec: dict) -> dict:
    """Run one system over its files in this process; returns texts and times."""
    files, system, size = spec["files"], spec["system"], spec["batch_size"]
    if system.startswith("faster"):
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        directory, _ = bench.faster_model_dir(spec["model"])
        model = BatchedInferencePipeline(WhisperModel(directory, device="cpu", compute_type=spec["faster_compute_type"],
                                                      cpu_threads=spec["threads"]))  # fmt: skip

        def run(path: str) -> str:
            segments, _ = model.transcribe(path, batch_size=size, beam_size=5, word_timestamps=True)
            return " ".join(s.text.strip() for s in segments)

        runs = lambda paths: [run(p) for p in paths]  # noqa: E731
    else:
        import whisper_coreml as wc  # noqa: I001 - before torch, as the CLI loads it (see bench._Ours)
        import torch

        torch.set_num_threads(spec["threads"])
        model = wc.load_model(spec["model"], engine="torch", compute_type=spec["compute_type"])
        if system == "ours-folder-batch":
            runs = lambda paths: [r.text for r in model.transcribe_batch(paths, batch_size=size, **OPTIONS)]  # noqa: E731
        else:
            b = size if system == "ours-batch" else 1
            runs = lambda paths: [model.transcribe(p, batch_size=b, **OPTIONS).text for p in paths]  # noqa: E731
    runs([spec["warmup"]])
    cpu, wall = time.process_time(), time.perf_counter()
    texts = runs(files)
    return {"texts": texts, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def measure(system: str, files: list[Path], args: argparse.Namespace, warmup: Path) -> dict:
    spec = {"files": [str(f) for f in files], "system": system, "batch_size": args.batch_size,
            "model": args.model, "threads": args.threads, "warmup": str(warmup),
            "compute_type": args.compute_type, "faster_compute_type": args.faster_compute_type}  # fmt: skip
    # Each system runs alone, so OpenMP waits as each runtime (and our CLI) sets it; longform.py's
    # short spinning, for peers sharing the machine, made our one-window-at-a-time run 1.6-2x slower.
    env = {k: v for k, v in longform.child_env(args.threads).items() if k not in longform.OPENMP or k in os.environ}
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{system} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--compute-type", default="auto", help="ours: auto, float32, int8, int8_bfloat16, ...")
    ap.add_argument("--faster-compute-type", default="int8", help="CTranslate2's: float32, int8, int8_bfloat16, ...")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", default="folder,long", help="folder, long or both")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    shared = bench.shared_dir() / "speech"
    if not shared.is_dir():
        print(f"no shared data at {shared}: nothing to measure")
        return 0
    print(json.dumps(bench.machine_info(args.threads)))
    en = bench.list_set(shared / "en")
    warmup = min(en, key=lambda p: p.stat().st_size)
    results: dict = {}
    parts = set(args.parts.split(","))
    if "folder" in parts:
        results["folder"] = measure_folder(en, args, warmup, shared)
    if "long" in parts:
        results["long"] = measure_long(shared, args, warmup)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def measure_folder(en: list[Path], args: argparse.Namespace, warmup: Path, shared: Path) -> dict:
    """Every file of en/ one at a time and as one batch: times and whether the texts are the same."""
    folder = {s: measure(s, en, args, warmup) for s in ("ours", "ours-folder-batch")}
    same = sum(a == b for a, b in zip(folder["ours"]["texts"], folder["ours-folder-batch"]["texts"], strict=True))
    refs = [p.with_suffix(".txt").read_text(encoding="utf-8") for p in en]
    print(f"\nfolder {shared / 'en'}: {len(en)} files, batch {args.batch_size}, model {args.model} {args.compute_type}")
    for name, run in folder.items():
        wer = bench.corpus_wer(refs, run["texts"])
        print(f"  {name:18s} wall {run['wall_s']:7.1f} s  cpu {run['cpu_s']:7.1f} s  WER {wer:5.2f}%  "
              f"t/sequential {run['wall_s'] / folder['ours']['wall_s']:.2f}")  # fmt: skip
    print(f"  texts identical to sequential: {same}/{len(en)}")
    return {"runs": folder, "same_text": same}


def measure_long(shared: Path, args: argparse.Namespace, warmup: Path) -> dict:
    """The long files sequential, batched, and through faster-whisper's batched pipeline."""
    folder_lf = longform.DEFAULT_FOLDER
    recordings = sorted((folder_lf / "seed-10").glob("longform_*.wav"))
    if not recordings:
        subprocess.run([sys.executable, str(HERE / "longform.py"), "--build-only", "--seeds", "10"], check=True)
        recordings = sorted((folder_lf / "seed-10").glob("longform_*.wav"))
    long = [*recordings, *bench.list_set(shared / "long")]

    def reference(path: Path) -> str:
        meta = path.with_suffix(".json")
        if meta.is_file() and path.parent.name.startswith("seed-"):
            return " ".join(r["text"] for r in json.loads(meta.read_text())["regions"])
        return path.with_suffix(".txt").read_text(encoding="utf-8")

    refs = [reference(p) for p in long]
    runs = {s: measure(s, long, args, warmup) for s in ("ours", "ours-batch", "faster-batched")}
    print(f"\nlong files: {len(long)} ({len(recordings)} long-form recordings + long/), batch {args.batch_size}, "
          f"ours {args.compute_type}, faster-whisper {args.faster_compute_type}")  # fmt: skip
    for name, run in runs.items():
        wer = bench.corpus_wer(refs, run["texts"])
        run["wer"] = wer
        print(f"  {name:18s} wall {run['wall_s']:7.1f} s  cpu {run['cpu_s']:7.1f} s  WER {wer:5.2f}%  "
              f"t/faster-batched {run['wall_s'] / runs['faster-batched']['wall_s']:.2f}")  # fmt: skip
    return runs


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())

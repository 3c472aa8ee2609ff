"""Speed, memory and accuracy of whisper-coreml against openai-whisper and faster-whisper.

    python benchmarks/bench.py [--model tiny.en] [--threads 2] [--sets en,long] [--beam-size 1]
                               [--systems ours,openai,faster] [--json out.json]
    python benchmarks/bench.py --systems ours,ours@int8_bfloat16,faster,faster@int8 --beam-size 5

Every system runs in its own subprocess (one per set), so the peak RSS reported is that
system's own, and every system gets the same thread count. All three run the SAME weights (the
model's CTranslate2 package) with the same decoding: greedy (or `--beam-size N` beams) at
temperature 0, fallback through (0.2 ... 1.0) with best_of=5, conditioned on the previous text,
no VAD. `ours` and `faster` run in float32 on the CPU; `ours@TYPE` and `faster@TYPE` in a compute
type of their own (our --compute-type, CTranslate2's compute_type), side by side with the rest.
Each file is timed from its path to the finished segments, as a user experiences it.

The processes stay alive for a whole set and take turns file by file (round robin), so a burst
of load from other programs on the machine slows every system alike instead of whichever one
happened to be running; the CPU other programs took meanwhile is measured and reported.

See benchmarks/README.md for what is measured and the latest numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".opus", ".ogg", ".m4a", ".webm", ".mp4"}
SYSTEMS = ("ours", "openai", "faster")  # ours and faster also as ours@TYPE, faster@TYPE
TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
CT2_CACHE = Path(tempfile.gettempdir()) / "whisper-coreml-bench"

# A file's timing counts as undisturbed when other processes took less than this share of the machine.
UNDISTURBED_PCT = 5.0

# Targets, checked for every set: WER within 0.3 points of openai-whisper's, and at most 0.7x its time.
WER_TOLERANCE_POINTS = 0.3
TIME_RATIO_TARGET = 0.7
# Issue 11, against faster-whisper in the same mode (float32 with float32, int8 with int8): at most
# 0.8x its time and 1.1x its peak RSS; a quantized type's WER within 0.3 points of our float32's.
FASTER_TIME_TARGET = 0.8
FASTER_RSS_TARGET = 1.1


# --------------------------------------------------------------------------------------------
# Child side: one system in a fresh process, serving transcription requests from the parent.
# --------------------------------------------------------------------------------------------


def _rss_mb(field: str) -> float | None:
    """VmRSS / VmHWM of this process in MB, from /proc (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (openai-whisper's ffmpeg calls)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def split_system(label: str) -> tuple[str, str | None]:
    """`ours@int8` -> ("ours", "int8"); `faster` -> ("faster", None): the implementation's default (float32)."""
    system, _, compute_type = label.partition("@")
    return system, compute_type or None


class _Ours:
    def __init__(self, spec: dict) -> None:
        # whisper_coreml first, as the CLI loads it: it configures OpenMP before torch loads
        # (whisper_coreml/openmp.py), which torch first would skip.
        import whisper_coreml as wc  # noqa: I001
        import torch

        torch.set_num_threads(spec["threads"])

        self.model = wc.load_model(spec["model"], engine="torch", compute_type=spec["compute_type"])
        self.version = wc.__version__
        self.beam_size = spec["beam_size"] if spec["beam_size"] > 1 else None
        engine = self.model.engine
        self.info = {"device": str(engine.device), "compute_type": engine.compute_type}

    def transcribe(self, path: str) -> tuple[str, list[list]]:
        result = self.model.transcribe(path, beam_size=self.beam_size)
        return result.text, [[s.start, s.end, s.text] for s in result.segments]


class _OpenAI:
    def __init__(self, spec: dict) -> None:
        import torch

        torch.set_num_threads(spec["threads"])
        import whisper
        from whisper.model import ModelDimensions, Whisper

        from whisper_coreml.catalog import resolve_weights

        w = resolve_weights(spec["model"])
        model = Whisper(ModelDimensions(**dataclasses.asdict(w.dims)))
        model.load_state_dict({k: v.float() for k, v in w.state_dict.items()})
        del w
        self.model = model.eval()
        self.torch = torch
        self.whisper = whisper
        self.version = whisper.__version__
        self.use_array = spec["openai_input"] == "array"
        self.beam_size = spec["beam_size"] if spec["beam_size"] > 1 else None
        self.info = {"device": "cpu", "compute_type": "float32"}

    def transcribe(self, path: str) -> tuple[str, list[list]]:
        self.torch.manual_seed(0)  # fallback temperatures sample: make every run of a file the same
        audio: str | object = path
        if self.use_array:  # no ffmpeg binary: decode with our PyAV decoder, still inside the timing
            from whisper_coreml.audio import decode_audio

            audio = decode_audio(path)
        result = self.whisper.transcribe(
            self.model,
            audio,
            verbose=None,
            fp16=False,
            temperature=TEMPERATURES,
            best_of=5,
            beam_size=self.beam_size,
            condition_on_previous_text=True,
        )
        return result["text"], [[s["start"], s["end"], s["text"]] for s in result["segments"]]


class _Faster:
    def __init__(self, spec: dict) -> None:
        import ctranslate2
        import faster_whisper

        self.ctranslate2 = ctranslate2
        compute_type = spec["compute_type"] or "float32"
        self.model = faster_whisper.WhisperModel(
            spec["ct2_dir"], device="cpu", compute_type=compute_type, cpu_threads=spec["threads"], num_workers=1
        )
        self.version = faster_whisper.__version__
        self.beam_size = spec["beam_size"]
        self.info = {"device": "cpu", "compute_type": self.model.model.compute_type}

    def transcribe(self, path: str) -> tuple[str, list[list]]:
        self.ctranslate2.set_random_seed(0)  # as for openai-whisper: repeatable sampling at fallback temperatures
        segments, _info = self.model.transcribe(
            path,
            beam_size=self.beam_size,
            best_of=5,
            temperature=list(TEMPERATURES),
            condition_on_previous_text=True,
            vad_filter=False,
        )
        segs = [[s.start, s.end, s.text] for s in segments]  # a generator: decoding happens here
        return "".join(s[2] for s in segs), segs


def child_main(spec_file: str) -> int:
    """Load, warm up, say so, then answer one JSON request per stdin line until 'finish'.

    Replies go to a private copy of stdout; the libraries' own prints are sent to stderr.
    """
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    spec = json.loads(Path(spec_file).read_text())
    t0 = time.perf_counter()
    system, spec["compute_type"] = split_system(spec["system"])
    runner = {"ours": _Ours, "openai": _OpenAI, "faster": _Faster}[system](spec)
    load_s = time.perf_counter() - t0
    rss_after_load = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    runner.transcribe(spec["warmup"])
    warmup_s = time.perf_counter() - t0
    ready = {"version": runner.version, "load_s": load_s, "warmup_s": warmup_s, "rss_after_load_mb": rss_after_load}
    ready |= runner.info  # the device and the compute type it ran in, `auto` resolved
    reply.write(json.dumps(ready) + "\n")

    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "finish":
            break
        if profiler is not None:
            profiler.enable()
        c0, t0 = _cpu_seconds(), time.perf_counter()
        text, segments = runner.transcribe(request["path"])
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        if profiler is not None:
            profiler.disable()
        reply.write(json.dumps({"wall_s": wall, "cpu_s": cpu, "text": text, "segments": segments}) + "\n")
    if profiler is not None:
        profiler.dump_stats(spec["profile"])
    peak = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KB on Linux
        "vmhwm_mb": _rss_mb("VmHWM"),
    }
    reply.write(json.dumps(peak) + "\n")
    return 0


# --------------------------------------------------------------------------------------------
# Parent side: find the data, run the children, score and report.
# --------------------------------------------------------------------------------------------


def shared_dir() -> Path:
    return Path(os.environ.get("WHISPER_COREML_SHARED") or Path(__file__).resolve().parents[2] / "shared")


def list_set(folder: Path) -> list[Path]:
    """Audio files of a set that have a reference transcript (`.txt`) beside them."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.with_suffix(".txt").is_file())


def faster_model_dir(model: str) -> tuple[str | None, str]:
    """A CTranslate2 directory with one model.bin for `model`, or (None, why not).

    Split packages (base: model.bin.part1 + part2) are joined once into a cached directory in
    /tmp, with symlinks to the small files; it is rebuilt only when the parts change size.
    """
    from whisper_coreml.catalog import catalog, installed_package

    path = Path(model).expanduser()
    if path.is_dir() and (path / "model.bin").is_file():
        return str(path), ""
    entry = catalog().get(model)
    found = installed_package(entry) if entry else None
    if found is None:
        return None, f"no CTranslate2 package installed for '{model}' (faster-whisper needs one)"
    directory, parts = found
    if len(parts) == 1 and parts[0].name == "model.bin":
        return str(directory), ""
    target = CT2_CACHE / f"{model}-ct2"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json", "preprocessor_config.json"):
        src, link = directory / name, target / name
        if src.is_file() and not link.exists():
            link.symlink_to(src)
    joined = target / "model.bin"
    size = sum(p.stat().st_size for p in parts)
    if not joined.is_file() or joined.stat().st_size != size:
        tmp = joined.with_suffix(".tmp")
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        tmp.replace(joined)
    return str(target), ""


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, summed over cores, from /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / tick, sum(fields[:8]) / tick


def wait_idle(limit_s: float, busy_below: float = 0.15) -> float:
    """Wait up to `limit_s` until the machine is idle (< 15% busy over 2 s); return the last busy fraction."""
    deadline = time.monotonic() + limit_s
    while True:
        b0, t0 = _machine_cpu()
        time.sleep(2.0)
        b1, t1 = _machine_cpu()
        busy = (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
        if busy < busy_below or time.monotonic() >= deadline:
            return busy
        print(f"  waiting for other processes: machine {100 * busy:.0f}% busy", flush=True)
        time.sleep(8.0)


class Child:
    """One system's process: started, loaded and warmed up; then one file per request."""

    def __init__(self, spec: dict, threads: int, tmp: Path) -> None:
        self.system = spec["system"]
        env = dict(os.environ)
        env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        spec_file = tmp / f"{self.system}.json"
        spec_file.write_text(json.dumps(spec))
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(spec_file)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.wait()
            raise RuntimeError(f"{self.system} process failed (exit code {self.proc.returncode}); see its stderr")
        return json.loads(line)

    def _send(self, request: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def transcribe(self, path: str) -> dict:
        """Transcribe one file; also measure the CPU that other processes took meanwhile."""
        busy0, total0 = _machine_cpu()
        self._send({"cmd": "file", "path": path})
        out = self._read()
        busy1, total1 = _machine_cpu()
        out["machine_s"] = total1 - total0  # core-seconds that passed on the whole machine
        out["others_s"] = max(0.0, (busy1 - busy0) - out["cpu_s"])  # of which others kept busy
        return out

    def finish(self) -> dict:
        self._send({"cmd": "finish"})
        out = self._read()
        self.proc.wait()
        return out


def run_set(name: str, files: list[Path], systems: list[str], base_spec: dict, args: argparse.Namespace) -> dict:
    """Start every system's process, then let them take turns on each file (`--repeat` rounds)."""
    runs: dict[str, dict] = {}
    children: dict[str, Child] = {}
    with tempfile.TemporaryDirectory(prefix="wc-bench-") as tmp:
        try:
            for system in systems:  # one at a time, so loading is not slowed by the others
                spec = {**base_spec, "system": system}
                if args.profile and split_system(system)[0] == "ours":
                    spec["profile"] = str(args.profile.with_name(f"{args.profile.name}.{name}.prof"))
                children[system] = Child(spec, args.threads, Path(tmp))
                runs[system] = {"system": system, **children[system].ready, "files": []}
            progress = sys.stdout.isatty()
            for i, path in enumerate(files):
                if progress:
                    print(f"  [{name}] {i + 1}/{len(files)} {path.name:<60}", end="\r", flush=True)
                results: dict[str, list[dict]] = {s: [] for s in systems}
                for r in range(max(1, args.repeat)):
                    k = (i + r) % len(systems)  # rotate who goes first: nobody always follows the same system
                    for system in systems[k:] + systems[:k]:
                        results[system].append(children[system].transcribe(str(path)))
                for system, tries in results.items():  # keep the fastest try: noise only ever adds time
                    best = min(tries, key=lambda t: t["wall_s"])
                    runs[system]["files"].append({"path": str(path), **best, "walls_s": [t["wall_s"] for t in tries]})
            if progress:
                print(" " * 100, end="\r")
            for system, child in children.items():
                runs[system].update(child.finish())
        finally:
            for child in children.values():
                if child.proc.poll() is None:
                    child.proc.kill()
                    child.proc.wait()
    return runs


def corpus_wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus-level WER in percent: all errors over all reference words, after normalising."""
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    pairs = [(norm(r), norm(h)) for r, h in zip(refs, hyps, strict=True)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    return 100 * jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs]).wer


def parity(run: dict, reference: dict) -> dict:
    """Files whose text equals openai-whisper's, and the largest timing gap among those."""
    same = seg_mismatch = 0
    max_start = max_end = 0.0
    for mine, theirs in zip(run["files"], reference["files"], strict=True):
        if mine["text"] != theirs["text"]:
            continue
        same += 1
        if len(mine["segments"]) != len(theirs["segments"]):
            seg_mismatch += 1
            continue
        for a, b in zip(mine["segments"], theirs["segments"], strict=True):
            max_start = max(max_start, abs(a[0] - b[0]))
            max_end = max(max_end, abs(a[1] - b[1]))
    return {"same_text": same, "seg_count_differs": seg_mismatch, "max_dstart": max_start, "max_dend": max_end}


def undisturbed(runs: dict[str, dict]) -> list[int]:
    """Indices of the files during which other processes took < UNDISTURBED_PCT of the machine, for every system."""
    n = len(next(iter(runs.values()))["files"])
    return [
        i
        for i in range(n)
        if all(r["files"][i]["others_s"] <= UNDISTURBED_PCT / 100 * r["files"][i]["machine_s"] for r in runs.values())
    ]


def summarise(runs: dict[str, dict], refs: list[str], audio_s: float) -> dict[str, dict]:
    rows = {}
    quiet = undisturbed(runs)
    for system, run in runs.items():
        files = run["files"]
        wall = sum(f["wall_s"] for f in files)
        machine = sum(f["machine_s"] for f in files)
        rows[system] = {
            "files": len(files),
            "audio_s": audio_s,
            "load_s": run["load_s"],
            "wall_s": wall,
            "cpu_s": sum(f["cpu_s"] for f in files),
            "rtf": wall / audio_s if audio_s else float("nan"),
            "peak_rss_mb": run["peak_rss_mb"],
            "wer": corpus_wer(refs, [f["text"] for f in files]),
            "others_pct": 100 * sum(f["others_s"] for f in files) / machine if machine else 0.0,
            "undisturbed_files": len(quiet),
            "undisturbed_wall_s": sum(files[i]["wall_s"] for i in quiet),
            "compute_type": run.get("compute_type"),
        }
        if "openai" in runs:
            rows[system]["parity"] = parity(run, runs["openai"])
    return rows


def reference_row(rows: dict[str, dict]) -> dict | None:
    """The row ratios are taken to: `ours` (float32), else the first of ours' rows."""
    return rows.get("ours") or next((r for s, r in rows.items() if split_system(s)[0] == "ours"), None)


def print_table(title: str, rows: dict[str, dict]) -> None:
    ours = reference_row(rows)
    width = max(8, *map(len, rows))
    head = (
        f"{'system':<{width}} {'files':>5} {'audio s':>8} {'load s':>7} {'wall s':>8} {'cpu s':>8} {'RTF':>6} "
        f"{'RSS MB':>7} {'WER %':>6} {'t/ours':>6} {'RSS/ours':>8} {'other%':>6}  "
        "same text as openai, max |Δstart|/|Δend|"
    )
    print(f"\n== {title}\n{head}\n{'-' * len(head)}")
    for system, r in rows.items():
        t_ratio = f"{r['wall_s'] / ours['wall_s']:.2f}" if ours else "-"
        m_ratio = f"{r['peak_rss_mb'] / ours['peak_rss_mb']:.2f}" if ours else "-"
        p = r.get("parity")
        par = ""
        if p and system != "openai":
            par = f"{p['same_text']}/{r['files']}, {p['max_dstart']:.2f}/{p['max_dend']:.2f} s"
            if p["seg_count_differs"]:
                par += f" ({p['seg_count_differs']} with other segmentation)"
        print(
            f"{system:<{width}} {r['files']:>5} {r['audio_s']:>8.1f} {r['load_s']:>7.2f} {r['wall_s']:>8.2f} "
            f"{r['cpu_s']:>8.2f} {r['rtf']:>6.3f} {r['peak_rss_mb']:>7.0f} {r['wer']:>6.2f} {t_ratio:>6} "
            f"{m_ratio:>8} {r['others_pct']:>6.0f}  {par}"
        )
    busy = [s for s, r in rows.items() if r["others_pct"] > 10]
    if busy:
        print(f"warning: other processes took >10% of the machine while {', '.join(busy)} ran: times are inflated")
    first = next(iter(rows.values()))
    if first["undisturbed_files"] < first["files"]:
        walls = ", ".join(
            f"{s} {r['undisturbed_wall_s']:.2f} s"
            + (
                f" ({r['undisturbed_wall_s'] / ours['undisturbed_wall_s']:.2f}x)"
                if ours and ours["undisturbed_wall_s"]
                else ""
            )
            for s, r in rows.items()
        )
        print(
            f"undisturbed files (others < {UNDISTURBED_PCT:.0f}% of the machine for every system): "
            f"{first['undisturbed_files']}/{first['files']}; their wall time: {walls}"
        )


def family(compute_type: str | None) -> str:
    """The mode a compute type is compared in: int8 with int8 (with or without bfloat16 around it), else itself."""
    return "int8" if compute_type and compute_type.startswith("int8") else compute_type or "float32"


def check_targets(title: str, rows: dict[str, dict]) -> list[bool]:
    verdicts: list[bool] = []
    for label, ours in rows.items():
        if split_system(label)[0] == "ours":
            if "openai" in rows:
                verdicts += _openai_targets(title, label, ours, rows["openai"])
            verdicts += _faster_targets(title, label, ours, rows)
    return verdicts


def _time_ratio(ours: dict, other: dict) -> tuple[float, str]:
    """ours / other wall time; on a busy machine over the files nobody was disturbed on, if they are at least half."""
    disturbed = max(ours["others_pct"], other["others_pct"]) > 10
    if disturbed and 2 * ours["undisturbed_files"] >= ours["files"] and other["undisturbed_wall_s"]:
        basis = f"{ours['undisturbed_files']} undisturbed files"
        return ours["undisturbed_wall_s"] / other["undisturbed_wall_s"], basis
    return ours["wall_s"] / other["wall_s"], "all files"


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def _openai_targets(title: str, label: str, ours: dict, oa: dict) -> list[bool]:
    dwer = ours["wer"] - oa["wer"]
    ratio, basis = _time_ratio(ours, oa)
    wer_ok = abs(dwer) <= WER_TOLERANCE_POINTS
    time_ok = ratio <= TIME_RATIO_TARGET
    print(
        f"targets [{title}] {label}: WER {ours['wer']:.2f} vs openai {oa['wer']:.2f} (Δ {dwer:+.2f}, need |Δ| <= "
        f"{WER_TOLERANCE_POINTS}): {_verdict(wer_ok)}; time {ratio:.2f}x openai on {basis} "
        f"(need <= {TIME_RATIO_TARGET}x): {_verdict(time_ok)}"
    )
    return [wer_ok, time_ok]


def _faster_targets(title: str, label: str, ours: dict, rows: dict[str, dict]) -> list[bool]:
    """Issue 11's: against every faster-whisper row in the same mode; a quantized type's WER against our float32."""
    verdicts = []
    mode = family(ours["compute_type"])
    for other, fw in rows.items():
        if split_system(other)[0] != "faster" or family(fw["compute_type"]) != mode:
            continue
        ratio, basis = _time_ratio(ours, fw)
        rss = ours["peak_rss_mb"] / fw["peak_rss_mb"]
        time_ok, rss_ok = ratio <= FASTER_TIME_TARGET, rss <= FASTER_RSS_TARGET
        print(
            f"targets [{title}] {label} vs {other}: time {ratio:.2f}x on {basis} (need <= {FASTER_TIME_TARGET}x): "
            f"{_verdict(time_ok)}; peak RSS {rss:.2f}x (need <= {FASTER_RSS_TARGET}x): {_verdict(rss_ok)}"
        )
        verdicts += [time_ok, rss_ok]
    fp32 = rows.get("ours") or rows.get("ours@float32")
    if fp32 is not None and fp32 is not ours and mode != "float32":
        dwer = ours["wer"] - fp32["wer"]
        wer_ok = dwer <= WER_TOLERANCE_POINTS
        print(
            f"targets [{title}] {label}: WER {ours['wer']:.2f} vs our float32 {fp32['wer']:.2f} (Δ {dwer:+.2f}, need "
            f"<= +{WER_TOLERANCE_POINTS}): {_verdict(wer_ok)}"
        )
        verdicts.append(wer_ok)
    return verdicts


# The CPU features that decide which kernels int8 and bfloat16 get.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16")


def machine_info(threads: int) -> dict:
    cpu = platform.processor()
    flags: list[str] = []
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        present = next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags"))
        flags = [f for f in CPU_FLAGS if f in present]
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit,
        "loadavg": os.getloadavg(),
    }


def _fmt_load(load: tuple[float, ...]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", default="en,long", help="comma-separated folders of <shared>/speech")
    ap.add_argument(
        "--systems",
        default="ours,openai,faster",
        help=f"comma-separated, of {', '.join(SYSTEMS)}; ours@TYPE and faster@TYPE run in compute type TYPE",
    )
    ap.add_argument("--beam-size", type=int, default=1, help="beams for every system (1: greedy)")
    ap.add_argument("--json", type=Path, help="write per-file results (text, segments, times) here")
    ap.add_argument("--limit", type=int, default=0, help="only the first N files of each set (quick runs)")
    ap.add_argument("--repeat", type=int, default=1, help="transcribe each file N times, report the fastest")
    ap.add_argument("--profile", type=Path, help="cProfile our runs (times inflated) into PROFILE.<set>.prof")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="S",
        help="before each set, wait up to S seconds for other processes to go quiet",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args.child)

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if unknown := {s for s in systems if split_system(s)[0] not in SYSTEMS or s.startswith("openai@")}:
        ap.error(f"unknown system(s): {', '.join(sorted(unknown))} (openai-whisper runs in float32 only)")
    if len(set(systems)) < len(systems):
        ap.error("a system is named twice")
    if args.beam_size < 1:
        ap.error("--beam-size must be at least 1")
    speech = shared_dir() / "speech"
    if not speech.is_dir():
        print(f"benchmark skipped: no speech data at {speech} (set WHISPER_COREML_SHARED to the shared/ folder)")
        return 0
    sets = {}
    for name in (s.strip() for s in args.sets.split(",") if s.strip()):
        files = list_set(speech / name) if (speech / name).is_dir() else []
        if not files:
            print(f"set '{name}' skipped: no audio with .txt references in {speech / name}")
            continue
        sets[name] = files[: args.limit] if args.limit else files
    if not sets:
        print("benchmark skipped: no sets to run")
        return 0

    sys.path.insert(0, str(REPO))
    from whisper_coreml.audio import decode_audio

    info = machine_info(args.threads)
    print(
        f"whisper-coreml benchmark  {info['date']}  model={args.model}  threads={args.threads}  "
        f"beam_size={args.beam_size}  cpu={info['cpu']} ({info['cores']} cores; {' '.join(info['cpu_flags'])})  "
        f"commit={info['commit']}  loadavg={_fmt_load(info['loadavg'])}"
    )
    openai_input = "file"
    if "openai" in systems and shutil.which("ffmpeg") is None:
        openai_input = "array"
        print(
            "note: no ffmpeg binary on PATH; openai-whisper gets the array from whisper_coreml.audio.decode_audio "
            "(decoded inside its timed region)"
        )
    ct2_dir = None
    if any(split_system(s)[0] == "faster" for s in systems):
        ct2_dir, why = faster_model_dir(args.model)
        if ct2_dir is None:
            print(f"faster-whisper skipped: {why}")
            systems = [s for s in systems if split_system(s)[0] != "faster"]
    if not systems:
        print("benchmark skipped: no systems to run")
        return 0

    durations = {str(p): len(decode_audio(p)) / 16000 for files in sets.values() for p in files}
    # Warm up on the shortest clip of en/ (even when that set is not run), else of the sets run.
    pool = list_set(speech / "en") if (speech / "en").is_dir() else []
    for p in pool:
        durations.setdefault(str(p), len(decode_audio(p)) / 16000)
    warmup = min(pool or [p for files in sets.values() for p in files], key=lambda p: durations[str(p)])
    print(f"warm-up clip: {warmup.name} ({durations[str(warmup)]:.1f} s)")

    base_spec = {
        "model": args.model,
        "threads": args.threads,
        "warmup": str(warmup),
        "openai_input": openai_input,
        "ct2_dir": ct2_dir,
        "beam_size": args.beam_size,
    }
    report: dict = {"machine": info, "model": args.model, "openai_input": openai_input, "sets": {}}
    report.update(warmup=str(warmup), repeat=args.repeat, beam_size=args.beam_size)
    totals: dict[str, dict] = {s: {"load_s": 0.0, "peak_rss_mb": 0.0, "files": []} for s in systems}
    all_refs: list[str] = []
    verdicts: list[bool] = []
    for name, files in sets.items():
        if args.wait_idle:
            wait_idle(args.wait_idle)
        load_before = os.getloadavg()
        print(f"[{name}] {len(files)} files, systems in turn: {', '.join(systems)}", flush=True)
        runs = run_set(name, files, systems, base_spec, args)
        ran = ", ".join(f"{s} {r['compute_type']} on {r['device']}" for s, r in runs.items())
        print(f"[{name}] compute types and devices: {ran}")
        load_after = os.getloadavg()
        refs = [p.with_suffix(".txt").read_text(encoding="utf-8") for p in files]
        for system, run in runs.items():
            for f in run["files"]:
                f["duration_s"] = durations[f["path"]]
            t = totals[system]
            t["files"] += run["files"]
            t["load_s"] = max(t["load_s"], run["load_s"])
            t["peak_rss_mb"] = max(t["peak_rss_mb"], run["peak_rss_mb"])
            t["compute_type"] = run["compute_type"]
        audio_s = sum(durations[str(p)] for p in files)
        rows = summarise(runs, refs, audio_s)
        print_table(
            f"set '{name}': {len(files)} files, {audio_s:.1f} s of audio, model {args.model}, "
            f"loadavg {_fmt_load(load_before)} -> {_fmt_load(load_after)}",
            rows,
        )
        verdicts += check_targets(name, rows)
        report["sets"][name] = {"summary": rows, "loadavg": [load_before, load_after], "runs": runs}
        all_refs += refs

    if len(sets) > 1:
        total = sum(durations[str(p)] for files in sets.values() for p in files)
        rows = summarise(totals, all_refs, total)
        print_table(f"all sets: {len(all_refs)} files, {total:.1f} s of audio (load s and RSS: max over sets)", rows)
        verdicts += check_targets("all", rows)
        report["all"] = rows
    if args.profile:
        import pstats

        for name in sets:
            prof = args.profile.with_name(f"{args.profile.name}.{name}.prof")
            if prof.is_file():
                print(f"\n== cProfile of ours on set '{name}' (times inflated by profiling): top 20 by own time")
                pstats.Stats(str(prof)).sort_stats("tottime").print_stats(20)
    print(f"\nloadavg at end: {_fmt_load(os.getloadavg())}")
    if verdicts:
        print(f"targets: {'all met' if all(verdicts) else 'NOT all met'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float))
        print(f"per-file results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

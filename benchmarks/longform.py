"""Long recordings where speech is the exception: do cues stay on the speech, and is the text right?

    python benchmarks/longform.py [--model tiny.en] [--folder /tmp/whisper-coreml-longform]
                                  [--seeds 10,11] [--recordings 5] [--systems ours,ours-raw,...]
                                  [--json results.json] [--ours NAME=ARGS ...] [--ours-args ARGS]

Issue 10. Builds, deterministically from each seed, long 16 kHz recordings out of the real English
utterances of `<shared>/speech/en` (all of them, spread over the recordings), separated by 15-35 s
of one of four backgrounds: digital silence, room tone (filtered noise at about -50 dBFS), music
synthesised from sines with envelopes and a drum kit of noise bursts (at speech level), and
speech-shaped noise (noise with the utterances' long-term spectrum, modulated like syllables, at
speech level). Beside each WAV a JSON gives every utterance's region, trimmed by energy so that it
starts and ends on the speech, and its reference text. Nothing is committed but this script.

Every system then transcribes every recording on the same weights: our CLI (`whisper-coreml
transcribe` with its defaults and with `--cues raw`, plus any `--ours NAME=ARGS` variants) and
openai-whisper and faster-whisper in the configurations below. Scores per system:

- WER over whole recordings (openai-whisper's EnglishTextNormalizer on both sides, corpus-level);
- cues over no speech: cues (our SRT; the peers' segments, which is what their SRT writers make)
  that overlap no utterance region, with the words in them;
- early cues: the share of the cues overlapping speech whose start lies more than 0.5 s before the
  start of the first region they overlap;
- wall time of the transcription calls, peak RSS of each system's own process, and ratios of WER,
  time and memory to faster-whisper with vad_filter=True and beam 5.

The targets (issue 10) for our CLI defaults: no cue over no speech, at most 5% early cues, and WER
at most faster-whisper's (vad_filter=True, beam 5). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402 - the sibling benchmark: data folder, CTranslate2 directory, WER, machine info

SAMPLE_RATE = 16000
TEMPERATURES = bench.TEMPERATURES
KINDS = ("silence", "room tone", "music", "speech-shaped noise")
EARLY_S = 0.5  # a cue starting more than this before its speech starts too early
REFERENCE = "faster-b5-vad"  # the system every ratio is taken against
SHOW_SILENT = 4  # cues over no speech printed per system; --json has them all
DEFAULT_FOLDER = Path(tempfile.gettempdir()) / "whisper-coreml-longform"

# Every peer configuration: openai-whisper and faster-whisper with their own transcribe() defaults
# (temperature fallback 0 -> 1, best_of=5, conditioned on previous text) except for what is named.
PEERS: dict[str, dict] = {
    "openai-greedy": {"kind": "openai", "beam": None},
    "openai-greedy-hst": {"kind": "openai", "beam": None, "hst": 2.0},
    "openai-b5": {"kind": "openai", "beam": 5},
    "openai-b5-hst": {"kind": "openai", "beam": 5, "hst": 2.0},
    "faster-b1": {"kind": "faster", "beam": 1, "vad": False},
    "faster-b1-vad": {"kind": "faster", "beam": 1, "vad": True},
    "faster-b5": {"kind": "faster", "beam": 5, "vad": False},
    "faster-b5-vad": {"kind": "faster", "beam": 5, "vad": True},
}
OURS = {"ours": "", "ours-raw": "--cues raw"}

# Short OpenMP spinning for every process (our CLI instead runs one thread while other processes
# hold the cores, see whisper_coreml/openmp.py): on a shared 2-core machine a spinning runtime
# makes any 2-thread program many times slower, and these runs share the machine.
OPENMP = {"GOMP_SPINCOUNT": "1000", "KMP_BLOCKTIME": "1"}


# --------------------------------------------------------------------------------------------
# Building the recordings
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One clip of `<shared>/speech/en`, its samples and where in it the speech is."""

    name: str
    text: str
    audio: np.ndarray
    start: float  # seconds into the clip where the speech starts (energy-trimmed)
    end: float


def speech_bounds(audio: np.ndarray) -> tuple[float, float]:
    """(start, end) seconds of the speech in a clip: the first and last 20-ms frame whose energy is
    within 40 dB of the loudest frame and 10 dB above the clip's own floor (its 5th percentile)."""
    window, hop = SAMPLE_RATE // 50, SAMPLE_RATE // 100
    frames = np.lib.stride_tricks.sliding_window_view(audio, window)[::hop]
    db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = np.nonzero(db > max(db.max() - 40, np.percentile(db, 5) + 10))[0]
    return loud[0] * hop / SAMPLE_RATE, (loud[-1] * hop + window) / SAMPLE_RATE


def load_utterances(folder: Path) -> list[Utterance]:
    from whisper_coreml.audio import decode_audio

    out = []
    for path in bench.list_set(folder):
        audio = decode_audio(path)
        start, end = speech_bounds(audio)
        text = " ".join(path.with_suffix(".txt").read_text(encoding="utf-8").split())
        out.append(Utterance(path.name, text, audio, start, end))
    return out


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


def _shaped_noise(n: int, rng: np.random.Generator, gain: np.ndarray) -> np.ndarray:
    """White noise of `n` samples through the magnitude response `gain(f)`, given on 0..8 kHz."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.linspace(0, SAMPLE_RATE / 2, len(gain))
    spectrum *= np.interp(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), freqs, gain)
    return np.fft.irfft(spectrum, n)


def room_tone(n: int, rng: np.random.Generator) -> np.ndarray:
    """Air handling and a faint mains hum: noise falling off as 1/f above 100 Hz and above 4 kHz
    faster still, at -50 dBFS RMS."""
    f = np.linspace(0, SAMPLE_RATE / 2, 512)
    gain = 1 / np.sqrt(1 + (f / 100) ** 2) / (1 + (f / 4000) ** 4)
    x = _shaped_noise(n, rng, gain)
    t = np.arange(n) / SAMPLE_RATE
    x = x / _rms(x) + 0.3 * np.sin(2 * np.pi * 50 * t) + 0.1 * np.sin(2 * np.pi * 150 * t)
    return x / _rms(x) * 10 ** (-50 / 20)


def speech_spectrum(utterances: list[Utterance]) -> np.ndarray:
    """The long-term magnitude spectrum of all the speech (512 bins over 0..8 kHz)."""
    power = np.zeros(512)
    for u in utterances:
        x = u.audio[int(u.start * SAMPLE_RATE) : int(u.end * SAMPLE_RATE)]
        frames = np.lib.stride_tricks.sliding_window_view(x, 1022)[::511] * np.hanning(1022)
        power += np.sum(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0)
    return np.sqrt(power / power.max())


def speech_shaped_noise(n: int, rng: np.random.Generator, spectrum: np.ndarray, level: float) -> np.ndarray:
    """Noise with speech's spectrum, its loudness swinging at syllable rate (2-7 Hz) with pauses,
    so that it looks like speech to an energy detector but holds no words."""
    x = _shaped_noise(n, rng, spectrum)
    slow = _shaped_noise(n, rng, np.where(np.linspace(0, SAMPLE_RATE / 2, 4096) < 6, 1.0, 0.0))
    x *= np.maximum(0.0, slow / (np.std(slow) + 1e-12) + 0.3)  # bursts, and pauses where it dips below zero
    x = x / _rms(x) * level
    return 0.5 * np.tanh(x / 0.5)  # a soft limit: the bursts' peaks stay below full scale, as in a recording


def _note(freq: float, n: int, decay_s: float, harmonics: int = 4) -> np.ndarray:
    """A plucked tone: a few harmonics, 10-ms attack, exponential decay."""
    t = np.arange(n) / SAMPLE_RATE
    tone = sum(np.sin(2 * np.pi * freq * k * t) / k**1.5 for k in range(1, harmonics + 1))
    envelope = np.minimum(1.0, t / 0.01) * np.exp(-t / decay_s)
    return tone * envelope


def music(n: int, rng: np.random.Generator, level: float) -> np.ndarray:
    """A pop loop: I-V-vi-IV chords, a melody on the chord tones, kick, snare and hi-hat."""
    bpm = rng.uniform(88, 128)
    beat = int(SAMPLE_RATE * 60 / bpm)
    root = int(rng.integers(55, 67))  # MIDI note of the key
    progression = [(0, 4, 7), (7, 11, 14), (9, 12, 16), (5, 9, 12)]

    def hz(midi: float) -> float:
        return 440.0 * 2 ** ((midi - 69) / 12)

    out = np.zeros(n + 8 * beat)
    kick_t = np.arange(int(0.25 * SAMPLE_RATE)) / SAMPLE_RATE
    kick = np.sin(2 * np.pi * (50 * kick_t + 70 * 0.04 * (1 - np.exp(-kick_t / 0.04)))) * np.exp(-kick_t / 0.12)
    noise = np.diff(rng.standard_normal(int(0.2 * SAMPLE_RATE) + 1))
    snare = noise * np.exp(-np.arange(len(noise)) / (0.07 * SAMPLE_RATE))
    hat = noise[: int(0.05 * SAMPLE_RATE)] * np.exp(-np.arange(int(0.05 * SAMPLE_RATE)) / (0.012 * SAMPLE_RATE))
    for bar, start in enumerate(range(0, n, 4 * beat)):
        chord = progression[bar % len(progression)]
        for interval in chord:
            out[start : start + 4 * beat] += 0.25 * _note(hz(root + interval), 4 * beat, 1.2)
        out[start : start + 4 * beat] += 0.4 * _note(hz(root + chord[0] - 24), 4 * beat, 0.8, harmonics=3)
        for b in range(4):
            at = start + b * beat
            if b % 2 == 0:
                out[at : at + len(kick)] += 0.8 * kick
            else:
                out[at : at + len(snare)] += 0.3 * snare
            for half in (0, beat // 2):
                out[at + half : at + half + len(hat)] += 0.08 * hat
            for half in (0, beat // 2) if rng.random() < 0.5 else (0,):
                pitch = root + 12 + chord[int(rng.integers(0, 3))]
                out[at + half : at + half + beat] += 0.35 * _note(hz(pitch), beat, 0.3)
    x = out[:n]
    return x / _rms(x) * level


def _fade(x: np.ndarray, seconds: float = 0.02) -> np.ndarray:
    k = min(len(x) // 2, int(seconds * SAMPLE_RATE))
    ramp = np.linspace(0.0, 1.0, k)
    x = x.copy()
    x[:k] *= ramp
    x[len(x) - k :] *= ramp[::-1]
    return x


def background(kind: str, n: int, rng: np.random.Generator, spectrum: np.ndarray, level: float) -> np.ndarray:
    if kind == "silence":
        return np.zeros(n)
    if kind == "room tone":
        return _fade(room_tone(n, rng))
    if kind == "music":
        return _fade(music(n, rng, level))
    return _fade(speech_shaped_noise(n, rng, spectrum, level))


def write_wav(path: Path, audio: np.ndarray) -> None:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).round().astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())


def build_recordings(
    utterances: list[Utterance], folder: Path, count: int, seed: int, gaps: tuple[float, float]
) -> list[Path]:
    """`count` recordings holding every utterance once (shuffled by `seed`), each beginning and
    ending with a gap and with a gap between utterances; every recording has every kind of gap.
    Writes `longform_NN.wav` and `longform_NN.json` (regions, references, gaps) into `folder`."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(utterances))
    groups = [[utterances[i] for i in order[k::count]] for k in range(count)]
    spectrum = speech_spectrum(utterances)
    level = float(np.median([_rms(u.audio[int(u.start * SAMPLE_RATE) : int(u.end * SAMPLE_RATE)]) for u in utterances]))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("longform_*.wav"), *folder.glob("longform_*.json")]:
        stale.unlink()
    paths = []
    for k, group in enumerate(groups):
        n_gaps = len(group) + 1
        kinds = [KINDS[i % len(KINDS)] for i in rng.permutation(max(n_gaps, len(KINDS)))][:n_gaps]
        parts, regions, gap_list, at = [], [], [], 0
        for i in range(n_gaps):
            n = int(rng.uniform(*gaps) * SAMPLE_RATE)
            parts.append(background(kinds[i], n, rng, spectrum, level))
            gap_list.append({"start": at / SAMPLE_RATE, "end": (at + n) / SAMPLE_RATE, "kind": kinds[i]})
            at += n
            if i < len(group):
                u = group[i]
                parts.append(u.audio.astype(np.float64))
                regions.append(
                    {
                        "start": at / SAMPLE_RATE + u.start,
                        "end": at / SAMPLE_RATE + u.end,
                        "text": u.text,
                        "source": u.name,
                    }
                )
                at += len(u.audio)
        path = folder / f"longform_{k + 1:02d}.wav"
        write_wav(path, np.concatenate(parts))
        meta = {"audio": path.name, "duration": at / SAMPLE_RATE, "seed": seed, "regions": regions, "gaps": gap_list}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------
# Peers: one fresh process per configuration, serving one recording per request
# --------------------------------------------------------------------------------------------


class _OpenAI:
    """openai-whisper's transcribe() on our weights (with the checkpoint's alignment heads, which
    word_timestamps and so hallucination_silence_threshold use)."""

    def __init__(self, spec: dict) -> None:
        import torch

        torch.set_num_threads(spec["threads"])
        import whisper
        from whisper.model import ModelDimensions, Whisper

        from whisper_coreml.catalog import resolve_weights

        w = resolve_weights(spec["model"])
        model = Whisper(ModelDimensions(**dataclasses.asdict(w.dims)))
        model.load_state_dict({k: v.float() for k, v in w.state_dict.items()})
        if w.alignment_heads:
            heads = torch.zeros(w.dims.n_text_layer, w.dims.n_text_head, dtype=torch.bool)
            for layer, head in w.alignment_heads:
                heads[layer, head] = True
            model.register_buffer("alignment_heads", heads.to_sparse(), persistent=False)
        self.model, self.torch, self.whisper = model.eval(), torch, whisper
        self.version = whisper.__version__
        self.options = {"beam_size": spec["beam"], "best_of": 5}
        if spec.get("hst") is not None:
            self.options.update(word_timestamps=True, hallucination_silence_threshold=spec["hst"])
        self.use_array = spec["openai_input"] == "array"

    def transcribe(self, path: str) -> tuple[str, list[list]]:
        self.torch.manual_seed(0)  # the fallback temperatures sample: make every run the same
        audio: str | object = path
        if self.use_array:  # no ffmpeg binary: decode with our PyAV decoder, inside the timing
            from whisper_coreml.audio import decode_audio

            audio = decode_audio(path)
        result = self.whisper.transcribe(
            self.model, audio, verbose=None, fp16=False, temperature=TEMPERATURES, **self.options
        )
        return result["text"], [[s["start"], s["end"], s["text"]] for s in result["segments"]]


class _Faster:
    def __init__(self, spec: dict) -> None:
        import ctranslate2
        import faster_whisper

        self.ctranslate2 = ctranslate2
        self.model = faster_whisper.WhisperModel(
            spec["ct2_dir"], device="cpu", compute_type="float32", cpu_threads=spec["threads"], num_workers=1
        )
        self.version = faster_whisper.__version__
        self.options = {"beam_size": spec["beam"], "best_of": 5, "vad_filter": spec["vad"]}

    def transcribe(self, path: str) -> tuple[str, list[list]]:
        self.ctranslate2.set_random_seed(0)
        segments, _info = self.model.transcribe(path, temperature=list(TEMPERATURES), **self.options)
        segs = [[s.start, s.end, s.text] for s in segments]  # a generator: decoding happens here
        return "".join(s[2] for s in segs), segs


def child_main(spec_file: str) -> int:
    """Load, warm up, say so, then answer one JSON request per stdin line until 'finish'; the
    libraries' own prints go to stderr."""
    import resource

    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    spec = json.loads(Path(spec_file).read_text())
    t0 = time.perf_counter()
    runner = {"openai": _OpenAI, "faster": _Faster}[spec["kind"]](spec)
    load_s = time.perf_counter() - t0
    runner.transcribe(spec["warmup"])
    reply.write(json.dumps({"version": runner.version, "load_s": load_s}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "finish":
            break
        c0, t0 = bench._cpu_seconds(), time.perf_counter()
        text, segments = runner.transcribe(request["path"])
        wall, cpu = time.perf_counter() - t0, bench._cpu_seconds() - c0
        reply.write(json.dumps({"wall_s": wall, "cpu_s": cpu, "text": text, "cues": segments}) + "\n")
    reply.write(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}) + "\n")
    return 0


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    env.update({k: v for k, v in OPENMP.items() if k not in os.environ})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class Peer:
    """A peer configuration's process, loaded and warmed up."""

    def __init__(self, name: str, spec: dict, threads: int, tmp: Path) -> None:
        self.name = name
        spec_file = tmp / f"{name}.json"
        spec_file.write_text(json.dumps(spec))
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(spec_file)],
            env=child_env(threads),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.proc.wait()
            raise SystemExit(f"{self.name}: its process failed (exit code {self.proc.returncode}); see its stderr")
        return json.loads(line)

    def _send(self, request: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()

    def transcribe(self, path: Path) -> dict:
        busy0, total0 = bench._machine_cpu()
        self._send({"cmd": "file", "path": str(path)})
        out = self._read()
        busy1, total1 = bench._machine_cpu()
        out.update(machine_s=total1 - total0, others_s=max(0.0, busy1 - busy0 - out["cpu_s"]))
        return out

    def finish(self) -> dict:
        self._send({"cmd": "finish"})
        out = self._read()
        self.proc.wait()
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------------------------
# Ours: the CLI, one fresh process per recording
# --------------------------------------------------------------------------------------------

# Runs the CLI as its only child and reports that child's peak RSS and CPU time.
WRAPPER = r"""
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"returncode": done.returncode, "stderr": done.stderr[-3000:],
                  "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}))
"""

SRT_TIME = re.compile(r"(\d+):(\d\d):(\d\d)[,.](\d{3})\s*-->\s*(\d+):(\d\d):(\d\d)[,.](\d{3})")


def read_srt(path: Path) -> list[list]:
    """[[start, end, text], ...] of an SRT file."""
    cues = []
    for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8-sig").strip()):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if m := SRT_TIME.search(line):
                v = [int(g) for g in m.groups()]
                start = v[0] * 3600 + v[1] * 60 + v[2] + v[3] / 1000
                end = v[4] * 3600 + v[5] * 60 + v[6] + v[7] / 1000
                cues.append([start, end, " ".join(lines[i + 1 :])])
                break
    return cues


class Ours:
    """Our CLI as a user runs it, one process per recording: `transcribe WARMUP RECORDING` (the
    short warm-up clip first, as the peers warm up, and not scored) with the variant's arguments,
    writing SRT (scored as cues) and JSON (its text scored for WER). The transcription time is the
    recording's `seconds` in the CLI's --report: decoding, model work and writing, not start-up."""

    def __init__(self, name: str, args: list[str], model: str, threads: int, warmup: Path, tmp: Path) -> None:
        self.name, self.args, self.model, self.threads, self.warmup = name, args, model, threads, warmup
        self.tmp = tmp / name
        self.peak_rss_mb = 0.0
        self.load_s: float | None = None
        self.calls = 0

    def transcribe(self, path: Path) -> dict:
        out = self.tmp / f"{path.stem}-{self.calls}"
        self.calls += 1
        out.mkdir(parents=True)
        report = out / "report.json"
        command = [sys.executable, "-m", "whisper_coreml.cli", "transcribe", str(self.warmup), str(path)]
        command += ["--model", self.model, "--format", "srt,json", "--output-dir", str(out), "--quiet"]
        command += ["--report", str(report), *self.args]
        busy0, total0 = bench._machine_cpu()
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", WRAPPER, *command], env=child_env(self.threads), capture_output=True, text=True
        )
        process_s = time.perf_counter() - started
        busy1, total1 = bench._machine_cpu()
        row = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else None
        if row is None or row["returncode"] not in (0, 1) or not report.is_file():
            why = row["stderr"] if row else done.stderr
            raise SystemExit(f"{self.name}: the CLI failed on {path.name}:\n{why.strip()}")
        outcomes = {Path(o["source"]).name: o for o in json.loads(report.read_text())["outcomes"]}
        mine = outcomes.get(path.name)
        if mine is None or mine["status"] != "done":
            raise SystemExit(f"{self.name}: the CLI did not transcribe {path.name}: {mine}")
        self.peak_rss_mb = max(self.peak_rss_mb, row["peak_rss_mb"])
        warm = outcomes.get(self.warmup.name, {})
        overhead = process_s - mine["seconds"] - warm.get("seconds", 0.0)  # start-up and model loading
        self.load_s = overhead if self.load_s is None else min(self.load_s, overhead)
        result = json.loads((out / f"{path.stem}.json").read_text(encoding="utf-8"))
        return {
            "wall_s": mine["seconds"],
            "process_s": process_s,
            "cpu_s": row["cpu_s"],
            "text": result["text"],
            "cues": read_srt(out / f"{path.stem}.srt"),
            "machine_s": total1 - total0,
            "others_s": max(0.0, busy1 - busy0 - row["cpu_s"]),
        }


def ours_version(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "import whisper_coreml; print(whisper_coreml.__version__)"],
        env=env,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


# --------------------------------------------------------------------------------------------
# Scoring and report
# --------------------------------------------------------------------------------------------


@functools.cache
def _normalizer() -> Callable[[str], str]:
    from whisper.normalizers import EnglishTextNormalizer

    return EnglishTextNormalizer()


def _words(text: str) -> list[str]:
    return _normalizer()(text).split()


def _mostly_within(words: list[str], reference: list[str]) -> bool:
    """At least half of `words` (and at least one) are words of `reference`."""
    vocabulary = set(reference)
    return bool(words) and 2 * sum(w in vocabulary for w in words) >= len(words)


def score_cues(cues: list[list], meta: dict) -> dict:
    """Cues over no speech (and their words), and cues starting > EARLY_S before their speech.

    A cue with no text shows nothing and is not counted. A cue over no speech is either invented
    text or real words timed off their speech: it notes the background it lies on, how far the
    speech before and after it is, and which of those two utterances, if any, holds most of its words."""
    regions = meta["regions"]
    silent, early, shown, on_speech = [], [], 0, 0
    for start, end, text in cues:
        if not text.strip():
            continue
        shown += 1
        overlapped = [r for r in regions if start < r["end"] and end > r["start"]]
        if not overlapped:
            before = [r for r in regions if r["end"] <= start][-1:]
            after = [r for r in regions if r["start"] >= end][:1]
            gap = max(meta["gaps"], key=lambda g: min(end, g["end"]) - max(start, g["start"]))
            words = _words(text)
            owner = next((r for r in before + after if _mostly_within(words, _words(r["text"]))), None)
            silent.append(
                {
                    "recording": f"seed-{meta['seed']}/{meta['audio']}",
                    "start": start,
                    "end": end,
                    "text": text.strip(),
                    "words": len(words),
                    "background": gap["kind"],
                    "speech_before_s": round(start - before[0]["end"], 3) if before else None,
                    "speech_after_s": round(after[0]["start"] - end, 3) if after else None,
                    "misplaced_from": None if owner is None else owner["source"],
                }
            )
            continue
        on_speech += 1
        first = min(overlapped, key=lambda r: r["start"])
        if start < first["start"] - EARLY_S:
            early.append({"start": start, "end": end, "speech_start": first["start"], "text": text.strip()})
    return {"cues": shown, "on_speech": on_speech, "silent": silent, "early": early}


def summarise(name: str, files: list[dict], metas: list[dict], peak_rss_mb: float, load_s: float | None) -> dict:
    refs = [" ".join(r["text"] for r in m["regions"]) for m in metas]
    scores = [score_cues(f["cues"], m) for f, m in zip(files, metas, strict=True)]
    on_speech = sum(s["on_speech"] for s in scores)
    silent = [c for s in scores for c in s["silent"]]
    early = sum(len(s["early"]) for s in scores)
    machine = sum(f["machine_s"] for f in files)
    audio_s = sum(m["duration"] for m in metas)
    wall = sum(f["wall_s"] for f in files)
    return {
        "system": name,
        "wer": bench.corpus_wer(refs, [f["text"] for f in files]),
        "cues": sum(s["cues"] for s in scores),
        "silent_cues": len(silent),
        "silent_words": sum(c["words"] for c in silent),
        "silent_by_background": {k: sum(c["background"] == k for c in silent) for k in KINDS},
        "silent_misplaced": sum(c["misplaced_from"] is not None for c in silent),
        "early_cues": early,
        "early_pct": 100 * early / on_speech if on_speech else 0.0,
        "wall_s": wall,
        "rtf": wall / audio_s,
        "load_s": load_s,
        "peak_rss_mb": peak_rss_mb,
        "others_pct": 100 * sum(f["others_s"] for f in files) / machine if machine else 0.0,
        "silent": silent,
        "early": [c for s in scores for c in s["early"]],
    }


def print_table(rows: dict[str, dict]) -> None:
    ref = rows.get(REFERENCE)

    def ratio(key: str, row: dict) -> str:
        return f"{row[key] / ref[key]:.2f}" if ref and ref[key] else "-"

    head = (
        f"{'system':<20} {'WER %':>6} {'cues':>5} {'over no speech (words)':>22} {'early %':>8} "
        f"{'wall s':>8} {'RTF':>6} {'RSS MB':>7} {'WER/ref':>7} {'t/ref':>6} {'RSS/ref':>7} {'other%':>6}"
    )
    print(f"\n{head}\n{'-' * len(head)}")
    for name, r in rows.items():
        silent = f"{r['silent_cues']} ({r['silent_words']})"
        print(
            f"{name:<20} {r['wer']:>6.2f} {r['cues']:>5} {silent:>22} {r['early_pct']:>8.1f} "
            f"{r['wall_s']:>8.1f} {r['rtf']:>6.3f} {r['peak_rss_mb']:>7.0f} {ratio('wer', r):>7} "
            f"{ratio('wall_s', r):>6} {ratio('peak_rss_mb', r):>7} {r['others_pct']:>6.0f}"
        )
    if ref:
        print(f"ratios (/ref) are to {REFERENCE}: faster-whisper, vad_filter=True, beam 5")
    busy = [n for n, r in rows.items() if r["others_pct"] > 10]
    if busy:
        print(f"warning: other processes took >10% of the machine while {', '.join(busy)} ran: times are inflated")


def check_targets(rows: dict[str, dict]) -> None:
    ref = rows.get(REFERENCE)
    for name, r in rows.items():
        if not name.startswith("ours"):
            continue
        checks = [f"no cue over no speech ({r['silent_cues']}): {'MET' if r['silent_cues'] == 0 else 'NOT MET'}"]
        checks.append(f"early <= 5% ({r['early_pct']:.1f}%): {'MET' if r['early_pct'] <= 5 else 'NOT MET'}")
        if ref:
            met = r["wer"] <= ref["wer"]
            checks.append(f"WER <= {REFERENCE} ({r['wer']:.2f} vs {ref['wer']:.2f}): {'MET' if met else 'NOT MET'}")
        print(f"targets [{name}]: " + "; ".join(checks))


def parse_ours(specs: list[str], common: str) -> dict[str, list[str]]:
    variants = dict(OURS)
    for spec in specs:
        name, sep, args = spec.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--ours {spec!r}: expected NAME=ARGS, e.g. --ours 'ours-b5=--beam-size 5'")
        variants[name.strip()] = args
    return {name: shlex.split(args) + shlex.split(common) for name, args in variants.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="scratch folder for recordings and outputs")
    ap.add_argument("--recordings", type=int, default=5, help="how many recordings the 36 utterances are spread over")
    ap.add_argument("--limit", type=int, default=0, help="score only the first N recordings of each seed")
    ap.add_argument("--gap", default="15,35", help="MIN,MAX seconds of background between utterances")
    ap.add_argument("--seeds", default="10,11", help="one set of recordings per seed, all scored together")
    ap.add_argument("--systems", help="comma-separated systems to run (default: every ours variant and peer)")
    ap.add_argument("--ours", action="append", default=[], metavar="NAME=ARGS", help="another variant of our CLI")
    ap.add_argument("--ours-args", default="", metavar="ARGS", help="arguments added to every ours variant")
    ap.add_argument("--json", type=Path, help="write the results (summaries and every cue) here")
    ap.add_argument("--build-only", action="store_true", help="write the recordings and stop")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args.child)

    ours = parse_ours(args.ours, args.ours_args)
    known = [*ours, *PEERS]
    systems = [s.strip() for s in args.systems.split(",")] if args.systems else [*ours, *PEERS]
    if unknown := [s for s in systems if s not in known]:
        ap.error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(known)}")
    try:
        low, high = (float(x) for x in args.gap.split(","))
    except ValueError:
        ap.error(f"--gap {args.gap!r}: expected MIN,MAX seconds")
    try:
        seeds = [int(x) for x in args.seeds.split(",")]
    except ValueError:
        ap.error(f"--seeds {args.seeds!r}: expected integers separated by commas")
    speech = bench.shared_dir() / "speech" / "en"
    if not speech.is_dir():
        print(f"benchmark skipped: no speech at {speech} (set WHISPER_COREML_SHARED to the shared/ folder)")
        return 0

    sys.path.insert(0, str(REPO))
    utterances = load_utterances(speech)
    recordings: list[Path] = []
    for seed in seeds:
        built = build_recordings(utterances, args.folder / f"seed-{seed}", args.recordings, seed, (low, high))
        recordings += built[: args.limit] if args.limit else built
    metas = [json.loads(p.with_suffix(".json").read_text()) for p in recordings]
    total = sum(m["duration"] for m in metas)
    speech_s = sum(r["end"] - r["start"] for m in metas for r in m["regions"])
    print(
        f"{len(recordings)} recordings in {args.folder}: {total / 60:.1f} min, of which {speech_s / 60:.1f} min "
        f"speech ({len(utterances)} utterances for each of the seeds {', '.join(map(str, seeds))})"
    )
    if args.build_only:
        return 0

    info = bench.machine_info(args.threads)
    print(
        f"model={args.model}  threads={args.threads}  cpu={info['cpu']} ({info['cores']} cores)  "
        f"commit={info['commit']}  loadavg={' '.join(f'{x:.2f}' for x in info['loadavg'])}"
    )
    ct2_dir = None
    if any(PEERS.get(s, {}).get("kind") == "faster" for s in systems):
        ct2_dir, why = bench.faster_model_dir(args.model)
        if ct2_dir is None:
            print(f"faster-whisper skipped: {why}")
            systems = [s for s in systems if PEERS.get(s, {}).get("kind") != "faster"]
    openai_input = "file" if shutil.which("ffmpeg") else "array"
    if openai_input == "array" and any(s.startswith("openai") for s in systems):
        print("note: no ffmpeg on PATH; openai-whisper gets our decoder's array, decoded inside its timing")
    warmup = min(utterances, key=lambda u: len(u.audio))
    warmup_path = speech / warmup.name

    scratch = args.folder / "runs"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    runners: dict[str, Peer | Ours] = {}
    files: dict[str, list[dict]] = {s: [] for s in systems}
    try:
        for name in systems:  # one at a time, so loading is not slowed by the others
            if name in ours:
                runners[name] = Ours(name, ours[name], args.model, args.threads, warmup_path, scratch)
            else:
                spec = {**PEERS[name], "model": args.model, "threads": args.threads, "warmup": str(warmup_path)}
                spec.update(ct2_dir=ct2_dir, openai_input=openai_input)
                runners[name] = Peer(name, spec, args.threads, scratch)
        for i, path in enumerate(recordings):  # systems take turns, rotating who goes first
            k = i % len(systems)
            for name in systems[k:] + systems[:k]:
                print(f"  {path.parent.name}/{path.name}: {name} ...", end="", flush=True)
                files[name].append(runners[name].transcribe(path))
                print(f" {files[name][-1]['wall_s']:.1f} s", flush=True)
        rows, versions, per_seed = {}, {}, {}
        for name in systems:
            runner = runners[name]
            if isinstance(runner, Peer):
                peak, load_s = runner.finish()["peak_rss_mb"], runner.ready["load_s"]
                versions[name] = runner.ready["version"]
            else:
                peak, load_s = runner.peak_rss_mb, runner.load_s
                versions[name] = ours_version(child_env(args.threads))
            rows[name] = summarise(name, files[name], metas, peak, load_s)
            pairs = list(zip(files[name], metas, strict=True))
            per_seed[name] = {
                seed: summarise(name, [f for f, m in pairs if m["seed"] == seed], picked, peak, load_s)
                for seed in seeds
                if (picked := [m for _, m in pairs if m["seed"] == seed])
            }
    finally:
        for runner in runners.values():
            if isinstance(runner, Peer):
                runner.kill()

    audio_s = sum(m["duration"] for m in metas)
    print(f"\n{len(metas)} recordings, {audio_s / 60:.1f} min; model {args.model}; {info['cpu']}; {info['date']}")
    print_table(rows)
    check_targets(rows)
    if len(seeds) > 1:
        print("\nper seed: WER %, cues over no speech, early %")
        for name, by_seed in per_seed.items():
            cells = "   ".join(
                f"{seed}: {r['wer']:5.2f} {r['silent_cues']:3d} {r['early_pct']:5.1f}" for seed, r in by_seed.items()
            )
            print(f"{name:<20} {cells}")
    print("\ncues over no speech, by background; 'misplaced': mostly words of the utterance before or after")
    for name, r in rows.items():
        if not r["silent"]:
            continue
        kinds = ", ".join(f"{k} {n}" for k, n in r["silent_by_background"].items() if n)
        print(f"{name}: {kinds}; misplaced {r['silent_misplaced']} of {r['silent_cues']}")
        for c in r["silent"][:SHOW_SILENT]:
            owner = f"words of {c['misplaced_from']}" if c["misplaced_from"] else "not the neighbours' words"
            print(
                f"  {c['recording']} {c['start']:.2f}-{c['end']:.2f} s on {c['background']}: "
                f"{c['text'][:60]!r} ({owner})"
            )
        if len(r["silent"]) > SHOW_SILENT:
            print(f"  ... {len(r['silent']) - SHOW_SILENT} more (all in --json)")
    if args.json:
        report = {
            "machine": info,
            "model": args.model,
            "seeds": seeds,
            "gap_s": [low, high],
            "recordings": [str(p) for p in recordings],
            "ours_args": {n: a for n, a in ours.items() if n in systems},
            "versions": versions,
            "openai_input": openai_input,
            "summary": rows,
            "per_seed": per_seed,
            "files": files,
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

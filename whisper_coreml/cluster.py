"""Cluster batches: the local batch's files, scheduled on a pool of Ray actors.

An archive of thousands of hours is too much for one machine, so `transcribe PATH... --cluster`
hands the files of the very batch that `batch.py` would run to a pool of Ray actors, each with
one loaded model (one per GPU, else `--workers` of them), longest file first so that no replica
is left with a long file at the end while the others idle.

Everything that makes a batch safe stays batch.py's: the driver decides from records alone which
files need work (`assess`, so a finished folder costs no Ray at all), and each worker runs
`run_batch` on one file at a time, so it claims the file (locks.py), resumes its journal and
writes its outputs and record atomically exactly as a local run does. A local run and a cluster
run over one folder therefore split it, each file transcribed once. Audio never travels through
Ray: workers read the input from the shared path and write beside it (or under --output-dir),
which must be mounted at the same path on every machine.

A worker that dies (killed, out of memory, its machine lost) costs its current file only: the
kernel has dropped its claim, the driver removes the temp files it left, gives the file to
another worker (it resumes from the journal) at most `RETRIES` more times, and starts a
replacement. Ctrl-C on the driver asks every worker to stop at its next window, so what stays
on disk is finished outputs, journals and nothing else.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .audio import probe_duration
from .batch import Event, Job, Outcome, Report, Settings, assess, interrupt_on_sigterm, run_batch
from .errors import WhisperCoreMLError
from .locks import try_claim
from .openmp import ModelThread

if TYPE_CHECKING:
    from .api import WhisperModel

RETRIES = 2  # more workers a file is given after the one transcribing it died
STOP_WAIT = 30.0  # seconds Ctrl-C waits for workers to reach the end of a window
POLL = 0.5  # seconds between looks at the workers' progress


class ClusterUnavailable(ValueError):
    """The cluster asked for cannot be used (no Ray, none running, a bad --cluster): a usage
    error, exit 2, before any file is touched."""


@dataclass(frozen=True)
class ClusterSpec:
    """Where to run: `local` (a Ray instance started here), `auto` (the running cluster) or a
    Ray address, and how many model replicas (None: one per GPU, else one per machine)."""

    where: str
    workers: int | None = None

    @classmethod
    def parse(cls, text: str, workers: int | None = None) -> ClusterSpec:
        """`--cluster` and `--workers` as given: `local:2` is `local` with two workers."""
        if workers is not None and workers < 1:
            raise ClusterUnavailable(f"--workers {workers}: must be at least 1")
        where, _, count = text.partition(":") if text.startswith("local") else (text, "", "")
        if where == "local" and count:
            if not count.isdigit() or int(count) < 1:
                raise ClusterUnavailable(f"--cluster {text}: local:N needs a number of workers N of at least 1")
            if workers is not None and workers != int(count):
                raise ClusterUnavailable(f"--cluster {text} and --workers {workers} disagree: give one of them")
            workers = int(count)
        if where not in ("local", "auto") and not re.fullmatch(r"(ray://)?[\w.\-\[\]:]+:\d+", where):
            raise ClusterUnavailable(f"--cluster {text}: use auto, local, local:N or ray://HOST:PORT")
        if importlib.util.find_spec("ray") is None:
            raise ClusterUnavailable(
                "--cluster needs Ray, which is not installed: pip install 'whisper-coreml[cluster]'"
            )
        return cls(where, workers)


@dataclass(frozen=True)
class ModelSpec:
    """The model as the command line named it; every worker loads its own replica."""

    model: str | None
    engine: str = "auto"
    device: str | None = None
    compute_type: str | None = "auto"

    def load(self, settings: Settings) -> WhisperModel:
        from .api import load_model

        whisper = load_model(
            self.model, self.engine, self.device, progress=lambda line: None, compute_type=self.compute_type
        )
        whisper.options(settings.transcription)  # refuses, e.g., German for an English-only model
        return whisper


@dataclass(frozen=True)
class WorkerPlan:
    """What each actor asks Ray for, and the torch threads it runs with."""

    count: int
    cpus: float
    gpus: int
    threads: int


def plan_workers(spec: ClusterSpec, resources: dict[str, float], nodes: int) -> WorkerPlan:
    """One replica per GPU when the cluster has GPUs; else `spec.workers` (default one per
    machine), sharing the CPUs evenly (Ray takes fractions below one CPU, whole numbers above)."""
    gpus = int(resources.get("GPU", 0))
    cpus = resources.get("CPU", 1.0)
    if gpus:
        count = min(spec.workers or gpus, gpus)
        return WorkerPlan(count, 1.0 if cpus >= 2 * count else 0.0, 1, max(1, int(cpus // count) - 1))
    count = spec.workers or max(1, nodes)
    share = cpus / count
    asked = float(math.floor(share)) if share >= 1 else math.floor(share * 100) / 100
    return WorkerPlan(count, asked, 0, max(1, int(share)))


def _runtime_env() -> dict[str, Any]:
    """Workers import the driver's whisper_coreml: a source checkout goes on their PYTHONPATH
    (an installed package is found without it), and our settings (models folder) go along."""
    env = {k: v for k, v in os.environ.items() if k.startswith("WHISPER_COREML_")}
    root = Path(__file__).resolve().parents[1]
    if root.name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    return {"env_vars": env}


def connect(spec: ClusterSpec) -> bool:
    """Start or join the Ray cluster (quietly); True when this call started Ray and so must stop it."""
    import ray

    common = {"runtime_env": _runtime_env(), "log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if spec.where == "local":
            cpus = max(os.cpu_count() or 1, spec.workers or 1)
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, object_store_memory=128 << 20, **common)
        else:
            ray.init(address=spec.where, **common)
    except Exception as e:  # Ray's own errors (refused, timed out, authentication): one line, not a traceback
        address = os.environ.get("RAY_ADDRESS") if spec.where == "auto" else spec.where
        if spec.where == "auto" and not address and isinstance(e, ConnectionError):
            raise ClusterUnavailable(
                "--cluster auto: no Ray cluster is running here (start one with `ray start --head`, or set RAY_ADDRESS)"
            ) from e
        where = "start Ray here" if spec.where == "local" else f"connect to {address or 'Ray'}"
        raise ClusterUnavailable(f"--cluster {spec.where}: cannot {where} ({_first_line(e)})") from e
    return spec.where == "local"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Worker:
    """One Ray actor: a loaded model and `run_batch` over one file at a time.

    Threaded (two calls at once), so that `status` and `stop` answer while `transcribe` runs.
    Ray may run each call on another of its threads: the model's work goes to one thread of
    its own (openmp.ModelThread), which loads it and runs every file.
    """

    def __init__(
        self, name: str, model: ModelSpec, settings: Settings, overwrite: bool, batch_size: int, cwd: str
    ) -> None:
        self.name = name
        self.cwd = cwd
        self.spec = model
        self.settings = settings
        self.overwrite = overwrite
        self.batch_size = batch_size
        self.whisper: WhisperModel | None = None
        self.model_thread = ModelThread("whisper-model")
        self.stopping = threading.Event()
        self.current: tuple[str, float, float] | None = None  # (source, seconds done, of total)

    def ready(self, threads: int) -> dict[str, Any]:
        """Load the model; who and where this worker is, or the one-line error that stopped it
        (`usage`: the settings are wrong for the model, as the local batch's exit 2)."""
        with contextlib.suppress(
            OSError
        ):  # relative inputs mean what they meant to the driver, where its folder is shared
            os.chdir(self.cwd)
        info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
        try:
            self.whisper = self.model_thread.call(self._load, threads)
        except ValueError as e:
            info["usage"] = str(e)
        except (WhisperCoreMLError, OSError) as e:
            info["error"] = str(e)
        return info

    def transcribe(self, job: Job) -> Outcome | None:
        """`job` done as the local batch does it (claim, journal, atomic outputs and record);
        None when `stop` ended it first (its claim released, its journal kept)."""
        self.stopping.clear()
        try:
            report = self.model_thread.call(
                run_batch, [job], self._model, self.settings, self.overwrite, self._event, self.batch_size
            )
        except Exception as e:  # noqa: BLE001 - the driver reports it as this file's failure, in one line
            return Outcome(str(job.source), "failed", error=f"{job.source}: {_first_line(e)}", worker=self.name)
        finally:
            self.current = None
        if report.interrupted or not report.outcomes:
            return None
        return replace(report.outcomes[-1], worker=self.name)

    def status(self) -> tuple[str, float, float] | None:
        return self.current

    def stop(self) -> None:
        """End the current file at its next window (the batch drops it as on Ctrl-C)."""
        self.stopping.set()

    def _load(self, threads: int) -> WhisperModel:
        import torch

        torch.set_num_threads(threads)
        return self.spec.load(self.settings)

    def _model(self) -> WhisperModel:
        assert self.whisper is not None, "ready() loads the model"
        return self.whisper

    def _event(self, kind: str, info: dict[str, Any]) -> None:
        if kind == "start":
            self.current = (str(info["source"]), 0.0, 0.0)
        elif kind == "progress":
            self.current = (str(info["source"]), info["done"], info["total"])
        if kind in ("start", "progress") and self.stopping.is_set():
            raise KeyboardInterrupt


@dataclass
class _Slot:
    """A worker as the driver tracks it: its actor, the call in flight and the file it has."""

    name: str
    actor: Any
    call: Any  # the ObjectRef of `ready` or `transcribe`
    info: dict[str, Any] = field(default_factory=dict)
    job: Job | None = None
    attempt: int = 0
    final: bool = False  # the file's last try after another run held it


class _Driver:
    """One cluster run over `jobs`; see `run_cluster`."""

    def __init__(
        self, spec: ClusterSpec, model: ModelSpec, settings: Settings, overwrite: bool, emit: Event, batch_size: int
    ) -> None:
        import ray

        self.ray = ray
        self.spec = spec
        self.model = model
        self.settings = settings
        self.overwrite = overwrite
        self.emit = emit
        self.batch_size = batch_size
        self.report = Report()
        self.slots: list[_Slot] = []
        self.started = 0  # workers started so far, for names
        self.deaths = 0
        self.queue: deque[tuple[Job, int, bool]] = deque()  # (job, attempt, final)
        self.deferred: list[Job] = []  # held by another run when we tried
        self.lost: dict[str, list[str]] = {}  # source -> workers that died holding it
        self.plan = WorkerPlan(1, 1.0, 0, 1)
        self.actor_class: Any = None

    def finish(self, outcome: Outcome) -> None:
        self.report.outcomes.append(outcome)
        self.emit("outcome", {"outcome": outcome})

    def run(self, queued: Sequence[Job]) -> Report:
        nodes = sum(1 for n in self.ray.nodes() if n.get("Alive"))
        self.plan = plan_workers(self.spec, self.ray.cluster_resources(), nodes)
        options = {"num_cpus": self.plan.cpus, "num_gpus": self.plan.gpus, "max_concurrency": 2, "max_restarts": 0}
        self.actor_class = self.ray.remote(**options)(Worker)
        self.queue.extend((job, 0, False) for job in queued)
        self.emit("loading", {"workers": self.plan.count})
        for _ in range(self.plan.count):
            self.start_worker()
        try:
            self.loop()
        except KeyboardInterrupt:
            self.report.interrupted = True
            self.stop_all()
        finally:
            for slot in self.slots:
                self.ray.kill(slot.actor, no_restart=True)
        return self.report

    def start_worker(self) -> None:
        self.started += 1
        name = f"w{self.started}"
        actor = self.actor_class.remote(name, self.model, self.settings, self.overwrite, self.batch_size, os.getcwd())
        self.slots.append(_Slot(name, actor, actor.ready.remote(self.plan.threads)))

    def loop(self) -> None:
        last_look = 0.0
        while True:
            self.dispatch()
            calls = [slot.call for slot in self.slots if slot.call is not None]
            if not calls:
                if not self.deferred:
                    return
                self.queue.extend((job, 0, True) for job in self.deferred)  # what other runs held may be free now
                self.deferred = []
                if not self.slots:
                    self.start_worker()
                continue
            done, _ = self.ray.wait(calls, num_returns=1, timeout=POLL)
            for slot in [s for s in self.slots if s.call in done]:
                self.collect(slot)
            if time.monotonic() - last_look >= 1.0:
                self.look()
                last_look = time.monotonic()

    def dispatch(self) -> None:
        """Give every idle, loaded worker the next file (the queue is longest first)."""
        for slot in self.slots:
            if slot.call is None and slot.info and self.queue:
                slot.job, slot.attempt, slot.final = self.queue.popleft()
                slot.call = slot.actor.transcribe.remote(slot.job)
                self.emit("start", {"source": slot.job.source, "worker": slot.name})

    def collect(self, slot: _Slot) -> None:
        """The answer of `slot`'s call: a loaded model, a file's outcome, or the worker's death."""
        call, slot.call = slot.call, None
        try:
            answer = self.ray.get(call)
        except self.ray.exceptions.RayError as e:
            self.died(slot, e)
            return
        if slot.job is None:  # `ready`
            if "usage" in answer or "error" in answer:
                for other in self.slots:
                    self.ray.kill(other.actor, no_restart=True)
                self.slots = []
                if "usage" in answer:
                    raise ValueError(answer["usage"])
                raise WhisperCoreMLError(answer["error"])
            slot.info = answer
            self.emit("worker", {"worker": slot.name, **answer})
            return
        job, slot.job = slot.job, None
        if answer is None:  # stopped by `stop`: only during Ctrl-C
            return
        if answer.status == "locked" and not slot.final:
            self.deferred.append(job)
            return
        if self.lost.get(str(job.source)):
            died = ", ".join(self.lost[str(job.source)])
            answer = replace(answer, notes=(*answer.notes, f"retried: {died} died while transcribing it"))
        self.finish(answer)

    def died(self, slot: _Slot, error: BaseException) -> None:
        """`slot`'s worker is gone: clean up after it, retry its file elsewhere, replace it."""
        self.slots.remove(slot)
        self.ray.kill(slot.actor, no_restart=True)
        self.deaths += 1
        if slot.job is None:  # died loading the model
            if self.deaths > 2 * self.plan.count:
                raise WhisperCoreMLError(
                    f"the workers died before they were ready ({_first_line(error)}); see the cluster's Ray logs"
                )
            self.start_worker()
            return
        job = slot.job
        leave_no_trace(job, slot.info.get("pid"))
        source = str(job.source)
        self.lost.setdefault(source, []).append(slot.name)
        retry = slot.attempt < RETRIES
        self.emit("lost", {"worker": slot.name, "source": job.source, "retry": retry})
        if retry:
            self.queue.appendleft((job, slot.attempt + 1, slot.final))
        else:
            died = ", ".join(self.lost[source])
            self.finish(Outcome(source, "failed", error=f"{source}: every worker that took it died ({died})"))
        if self.queue or any(s.job is not None for s in self.slots):
            self.start_worker()

    def look(self) -> None:
        """Progress within the files being transcribed, for the driver's bars."""
        calls = [slot.actor.status.remote() for slot in self.slots if slot.job is not None]
        done, _ = self.ray.wait(calls, num_returns=len(calls), timeout=POLL) if calls else ([], [])
        for call in done:
            with contextlib.suppress(self.ray.exceptions.RayError):
                if (status := self.ray.get(call)) is not None:
                    self.emit("progress", {"source": status[0], "done": status[1], "total": status[2]})

    def stop_all(self) -> None:
        """Ctrl-C: every worker ends its file at the next window, finished files are kept, and
        workers that do not answer in time are killed and cleaned up after."""
        busy = [slot for slot in self.slots if slot.job is not None and slot.call is not None]
        for slot in busy:
            slot.actor.stop.remote()
        try:
            self.ray.wait([slot.call for slot in busy], num_returns=len(busy), timeout=STOP_WAIT) if busy else None
            for slot in busy:
                with contextlib.suppress(self.ray.exceptions.GetTimeoutError, self.ray.exceptions.RayError):
                    answer = self.ray.get(slot.call, timeout=0)
                    if answer is not None:
                        self.finish(answer)
                    slot.job = None
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            pass
        for slot in busy:
            self.ray.kill(slot.actor, no_restart=True)
            if slot.job is not None:
                leave_no_trace(slot.job, slot.info.get("pid"))


def leave_no_trace(job: Job, pid: int | None) -> None:
    """Remove what a killed worker left of `job`: its temp files (named with its pid, see
    writers/atomic.py) and the lock file whose lock the kernel already dropped. The journal
    stays: the next run resumes from it."""
    if pid is not None:
        for path in (*(target for _, target in job.targets), job.record.path):
            for leftover in path.parent.glob(f".{glob_escape(path.name)}.{pid}.*.tmp"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
    with contextlib.suppress(OSError):
        claim = try_claim(job.claim_path)  # free, or someone else's now: then it is theirs to remove
        if claim is not None:
            claim.release()


def glob_escape(name: str) -> str:
    """`name` matched literally by Path.glob."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def run_cluster(
    jobs: Sequence[Job],
    spec: ClusterSpec,
    model: ModelSpec,
    settings: Settings,
    overwrite: bool = False,
    on_event: Event | None = None,
    batch_size: int = 1,
) -> Report:
    """`run_batch` on a Ray cluster: the same outcomes, outputs and report, each outcome naming
    its worker. Files that need no work are settled here, before Ray is even started; the rest
    go to the workers longest first.

    Events are run_batch's, plus "worker" (a worker is up: worker, host, pid) and "lost" (a
    worker died holding source; retry says whether it goes to another); "start" and "loading"
    also name the worker(s).
    """
    emit = on_event or (lambda kind, info: None)
    report = Report()
    queued: list[tuple[float, Job]] = []
    for job in jobs:
        _, outcome = assess(job, settings, overwrite)
        if outcome is not None:
            report.outcomes.append(outcome)
            emit("outcome", {"outcome": outcome})
        else:
            queued.append((probe_duration(job.source) or 0.0, job))
    if not queued:
        return report
    queued.sort(key=lambda item: -item[0])  # stable: equal lengths keep the batch's order
    emit("plan", {"total": len(queued), "seconds": sum(seconds for seconds, _ in queued)})
    started_here = False
    try:
        started_here = connect(spec)
        # after ray.init, which puts its own SIGTERM handler (a C++ stack dump, then exit) over ours
        with interrupt_on_sigterm():
            driver = _Driver(spec, model, settings, overwrite, emit, batch_size)
            driver.report = report
            return driver.run([job for _, job in queued])
    except KeyboardInterrupt:  # while Ray started: no worker had a file yet
        report.interrupted = True
        return report
    finally:
        if started_here:
            import ray

            ray.shutdown()

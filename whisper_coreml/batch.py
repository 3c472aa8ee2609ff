"""Batches: many inputs, one model, outputs that are either complete or absent.

An editor points the tool at a card dump and goes home. So: find the media in folders, skip
inputs whose outputs are already newer than them (a re-run does no model work at all), keep
going past a bad file, lock every output so two runs never write the same file, decode the
next file's audio while the current one transcribes, and stop at once on Ctrl-C or SIGTERM
with every finished output intact and nothing half-written (writes are atomic).

Pure logic lives here and is testable without the CLI; cli.py parses and presents.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .audio import MelSource
from .errors import WhisperCoreMLError
from .writers import WriteOptions, cues_for, output_path_for, write_result
from .writers.atomic import atomic_write_text

if TYPE_CHECKING:
    from .api import WhisperModel
    from .transcribe import TranscriptionOptions

MEDIA_EXTENSIONS = frozenset(".wav .flac .mp3 .m4a .aac .ogg .opus .mp4 .mov .m4v .mkv .mxf .webm .aif .aiff".split())


@dataclass(frozen=True)
class Job:
    """One input and the files it should produce."""

    source: Path
    targets: tuple[tuple[str, Path], ...]  # (format, output path)

    def up_to_date(self) -> bool:
        """Every output exists and is newer than the input (so re-running changes nothing)."""
        try:
            modified = self.source.stat().st_mtime
            return all(path.stat().st_mtime >= modified for _, path in self.targets)
        except OSError:
            return False


@dataclass(frozen=True)
class Outcome:
    """What happened to one input: done, skipped (up to date or locked), or failed."""

    source: str
    status: str  # "done", "up to date", "locked", "failed"
    duration: float | None = None
    seconds: float = 0.0
    outputs: tuple[str, ...] = ()
    error: str = ""


@dataclass
class Report:
    """The whole run, in the order inputs were taken."""

    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 1 when any input failed (130 after an interruption)."""
        return 130 if self.interrupted else (1 if self.count("failed") else 0)

    def write(self, path: Path) -> None:
        data = {
            "outcomes": [asdict(o) for o in self.outcomes],
            "counts": {s: self.count(s) for s in ("done", "up to date", "locked", "failed")},
            "interrupted": self.interrupted,
        }
        atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def discover(
    paths: Sequence[Path], recursive: bool = False, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[tuple[Path, Path | None]]:
    """(input, folder it was found under) for every path: files as given, folders searched for
    media (`recursive` descends; `include`/`exclude` are globs on the file name or the path
    relative to the folder). Hidden files and our own temp files are never inputs."""
    found: list[tuple[Path, Path | None]] = []
    seen: set[Path] = set()

    def matches(path: Path, root: Path, patterns: Sequence[str]) -> bool:
        relative = path.relative_to(root).as_posix()
        return any(fnmatch.fnmatch(path.name, p) or fnmatch.fnmatch(relative, p) for p in patterns)

    def wanted(path: Path, root: Path) -> bool:
        chosen = matches(path, root, include) if include else path.suffix.lower() in MEDIA_EXTENSIONS
        return chosen and not matches(path, root, exclude)

    for path in paths:
        if path.is_dir():
            pattern = path.rglob("*") if recursive else path.glob("*")
            for candidate in sorted(pattern):
                hidden = any(part.startswith(".") for part in candidate.relative_to(path).parts)
                if candidate.is_file() and not hidden and wanted(candidate, path) and candidate not in seen:
                    seen.add(candidate)
                    found.append((candidate, path))
        elif path not in seen:  # a file (or a missing path: reported when it is decoded)
            seen.add(path)
            found.append((path, None))
    return found


def plan(inputs: Sequence[tuple[Path, Path | None]], formats: Sequence[str], output_dir: Path | None) -> list[Job]:
    """Where each input's outputs go: next to it, or under `output_dir` mirroring the folder
    tree it was found in."""
    jobs = []
    for source, root in inputs:
        directory = output_dir
        if output_dir is not None and root is not None:
            directory = output_dir / source.parent.relative_to(root)
        jobs.append(Job(source, tuple((fmt, output_path_for(source, fmt, directory)) for fmt in formats)))
    return jobs


@contextlib.contextmanager
def output_locks(job: Job) -> Iterator[bool]:
    """Hold a lock file beside every output of `job` (yields False if another live run holds
    one). A lock left by a process that no longer exists is taken over."""
    taken: list[Path] = []
    try:
        for _, target in job.targets:
            lock = target.with_name(f".{target.name}.lock")
            lock.parent.mkdir(parents=True, exist_ok=True)
            if not _acquire(lock):
                yield False
                return
            taken.append(lock)
        yield True
    finally:
        for lock in taken:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()


def _acquire(lock: Path) -> bool:
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                return False
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # stale: its run died without cleaning up
            continue
        with os.fdopen(fd, "w") as file:
            file.write(str(os.getpid()))
        return True
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the run the way Ctrl-C does (KeyboardInterrupt): temp files go, finished
    outputs stay."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


Event = Callable[[str, dict[str, Any]], None]


def run_batch(
    jobs: Sequence[Job],
    load: Callable[[], tuple[WhisperModel, TranscriptionOptions]],
    write_options: WriteOptions,
    media_for_fcpxml: bool = False,
    overwrite: bool = False,
    on_event: Event | None = None,
) -> Report:
    """Transcribe every job that needs it, loading the model (`load`) only if one does.

    `on_event(kind, info)` reports progress: "start" (index, total, source), "progress" (done,
    total seconds of the current file), "outcome" (the Outcome). The next file's first audio
    pass runs in a background thread while the current file is transcribed.
    """
    emit = on_event or (lambda kind, info: None)
    report = Report()
    pending = []
    for job in jobs:
        if not overwrite and job.up_to_date():
            outcome = Outcome(str(job.source), "up to date", outputs=tuple(str(p) for _, p in job.targets))
            report.outcomes.append(outcome)
            emit("outcome", {"outcome": outcome})
        else:
            pending.append(job)
    if not pending:
        return report
    model, options = load()
    prefetch = ThreadPoolExecutor(1, thread_name_prefix="whisper-prefetch")
    opened: dict[int, Future[MelSource]] = {}

    def open_ahead(index: int) -> None:
        if index < len(pending):
            opened[index] = prefetch.submit(MelSource.from_file, pending[index].source, model.engine.dims.n_mels)

    try:
        with interrupt_on_sigterm():
            open_ahead(0)
            for index, job in enumerate(pending):
                current = opened.pop(index)
                open_ahead(index + 1)  # decoded while this one is transcribed
                emit("start", {"index": index, "total": len(pending), "source": job.source})
                outcome = _run_one(job, current, model, options, write_options, media_for_fcpxml, emit)
                report.outcomes.append(outcome)
                emit("outcome", {"outcome": outcome})
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        for future in opened.values():
            if not future.cancel():
                with contextlib.suppress(Exception):
                    future.result().close()
        prefetch.shutdown(wait=True, cancel_futures=True)
    return report


def _run_one(
    job: Job,
    source_future: Future[MelSource],
    model: WhisperModel,
    options: TranscriptionOptions,
    write_options: WriteOptions,
    media_for_fcpxml: bool,
    emit: Event,
) -> Outcome:
    started = time.perf_counter()
    if any(path.resolve() == job.source.resolve() for _, path in job.targets):
        return Outcome(
            str(job.source), "failed", error=f"{job.source}: output would overwrite the input; use --output-dir"
        )
    with output_locks(job) as locked:
        if not locked:
            return Outcome(str(job.source), "locked", error=f"{job.source}: another run is writing its outputs")
        try:
            with source_future.result() as source:
                result = model.transcribe(
                    source,
                    options=options,
                    progress=lambda done, total: emit("progress", {"done": done, "total": total}),
                )
            result = replace(result, source=str(job.source))
            opts = replace(write_options, media=job.source) if media_for_fcpxml else write_options
            cues = cues_for(result, opts)
            for fmt, target in job.targets:
                write_result(result, fmt, target, opts, cues)
        except (WhisperCoreMLError, OSError) as e:
            return Outcome(str(job.source), "failed", seconds=time.perf_counter() - started, error=str(e))
    return Outcome(
        str(job.source),
        "done",
        duration=result.duration,
        seconds=time.perf_counter() - started,
        outputs=tuple(str(p) for _, p in job.targets),
    )

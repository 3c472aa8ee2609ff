"""Batches: many inputs, one model, and nothing lost or overwritten without a word.

An editor points the tool at a card dump and goes home. So: find the media in folders, give
every input outputs of its own, skip the inputs whose outputs were made from the same input
with the same settings (records.py; a re-run of a finished folder does no model work at all),
keep going past a bad input or an unwritable folder, claim each input before decoding it so
that concurrent runs split a folder instead of repeating it (locks.py), journal every window
so that a long file interrupted in the middle resumes there (journal.py), and stop at once
on Ctrl-C or SIGTERM with every finished output intact and nothing half-written (writes are
atomic).

A file's audio is opened when it joins the batch, not ahead on a thread of its own: opening
computes log-mel features in PyTorch, and a second thread doing so gives the process a second
OpenMP team; with more OpenMP threads than cores libgomp stops spinning between parallel
regions, and every decoder step then waits for sleeping threads to wake. On the 2-core Xeon of
benchmarks/README.md that made `en/` (36 clips, tiny.en) take 32 s instead of 19 s in sequence
and 21.5 s instead of 15.3 s in a batch of 8; with that thread held to one PyTorch thread it
was no faster than opening in turn (0.6 s to open a 280-s file beside minutes of decoding).

Pure logic lives here and is testable without the CLI; cli.py parses and presents.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import NoAudioTrack, WhisperCoreMLError, os_problem
from .locks import Claim, try_claim
from .records import Record, State, input_identity, settings_key
from .subtitles import report_cues
from .writers import SUBTITLE_FORMATS, WriteOptions, cues_for, get_writer, output_settings, write_result
from .writers.atomic import atomic_write_text
from .writers.fcpxml import fcpxml_options_for

if TYPE_CHECKING:
    from .api import WhisperModel
    from .audio import MelSource
    from .journal import FileJournal
    from .options import TranscriptionOptions
    from .result import TranscriptionResult
    from .transcribe import Batcher

MEDIA_EXTENSIONS = frozenset(".wav .flac .mp3 .m4a .aac .ogg .opus .mp4 .mov .m4v .mkv .mxf .webm .aif .aiff".split())
STATUSES = ("done", "up to date", "locked", "kept", "skipped", "failed")
# An English-only model is unsure of what it writes over another language: on ../shared/speech its
# mean token log-probability was -0.61 at worst on 40 English files, below -0.8 on 11 of the 12
# other-language clips that gave text at all.
UNLIKE_ENGLISH_LOGPROB = -0.75


@dataclass(frozen=True)
class Job:
    """One input, the folder its outputs (and their record, journal and claim) live in, and
    the files it should produce."""

    source: Path
    directory: Path
    targets: tuple[tuple[str, Path], ...]  # (format, output path)

    @property
    def record(self) -> Record:
        return Record.for_input(self.source, self.directory)

    @property
    def claim_path(self) -> Path:
        return self.directory / f".{self.source.name}.whisper-coreml.lock"

    def journal(self, key: str) -> FileJournal:
        from .journal import FileJournal  # numpy: only for a file that is not up to date

        return FileJournal(self.directory / f".{self.source.name}.whisper-coreml.journal", key)


@dataclass(frozen=True)
class Settings:
    """Everything that makes an output what it is (the engine aside: engines agree), hashed
    into the keys that records and journals are checked against.

    `write` is what the user asked for; each input's own write options follow from it and the
    input (`write_for`: a video's frame rate and picture format unless `fps_explicit`, the
    input as the FCPXML's clip `with_media`), so the keys need no probing of the input.
    `compute_type` is part of the transcription: int8 or bfloat16 arithmetic can change words.
    It is the choice as given (`auto` stays `auto`, like the device), so that deciding whether
    a file is up to date never needs the model loaded.
    """

    model: str
    transcription: TranscriptionOptions
    write: WriteOptions
    fps_explicit: bool = True
    with_media: bool = False
    compute_type: str = "auto"

    @property
    def compute_type_to_load(self) -> str | None:
        """What the engine is asked for. `auto` with openai-whisper's own decoding (greedy, no VAD:
        the parity mode) is None, openai-whisper's float32 on a CPU, so that the parity flags
        alone still give its text word for word; elsewhere `auto` is the engine's pick (on a CPU
        int8, its encoder in bfloat16 where the CPU has it: engines/precision.py)."""
        parity = self.transcription.beam_size is None and self.transcription.vad is None
        return None if self.compute_type == "auto" and parity else self.compute_type

    def transcription_key(self) -> str:
        return settings_key(
            {"model": self.model, "options": asdict(self.transcription), "compute_type": self.compute_type}
        )

    def output_key(self, fmt: str) -> str:
        choices = {"fps_explicit": self.fps_explicit, "with_media": self.with_media}
        return settings_key(
            {"transcription": self.transcription_key(), fmt: output_settings(fmt, self.write), **choices}
        )

    def write_for(self, source: Path) -> tuple[WriteOptions, tuple[str, ...]]:
        """The write options for `source`, and warnings for the editor (see fcpxml_options_for).
        An input that cannot be probed keeps the asked-for options: decoding it will say what is
        wrong with it, in the words used for every input."""
        write = replace(self.write, media=source) if self.with_media else self.write
        try:
            return fcpxml_options_for(source, write, self.fps_explicit)
        except WhisperCoreMLError:
            return write, ()


@dataclass(frozen=True)
class Outcome:
    """What happened to one input."""

    source: str
    status: str  # one of STATUSES
    duration: float | None = None
    seconds: float = 0.0
    outputs: tuple[str, ...] = ()
    error: str = ""
    notes: tuple[str, ...] = ()  # things the editor should know: "no speech found", warnings
    resumed_at: float | None = None  # seconds of the file a journal already held
    windows: int = 0  # 30-s windows this run decoded
    cues: dict[str, Any] | None = None  # rule exceptions in the subtitle cues
    worker: str | None = None  # the cluster worker that did it (cluster.py); None in a local run


@dataclass
class Report:
    """The whole run, in the order inputs were finished."""

    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        """0 when every asked-for output exists, 1 when an input failed or an output was kept
        rather than overwritten, 130 after an interruption."""
        return 130 if self.interrupted else (1 if self.count("failed") or self.count("kept") else 0)

    def write(self, path: Path) -> None:
        data = {
            "outcomes": [asdict(o) for o in self.outcomes],
            "counts": {s: self.count(s) for s in STATUSES},
            "interrupted": self.interrupted,
        }
        atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@dataclass(frozen=True)
class Found:
    """What `discover` found: inputs with the folder each came from, and what it passed over."""

    inputs: list[tuple[Path, Path | None]]
    skipped_folders: int = 0  # subfolders not searched for want of --recursive


def discover(
    paths: Sequence[Path], recursive: bool = False, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> Found:
    """(input, folder it was found under) for every path: files as given, folders searched for
    media (`recursive` descends; `include`/`exclude` are globs on the file name or the path
    relative to the folder). Hidden files and our own temp files are never inputs."""
    found: list[tuple[Path, Path | None]] = []
    seen: set[Path] = set()
    skipped = 0

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
                if hidden:
                    continue
                if candidate.is_dir() and not recursive:
                    skipped += 1
                elif candidate.is_file() and wanted(candidate, path) and candidate not in seen:
                    seen.add(candidate)
                    found.append((candidate, path))
        elif path not in seen:  # a file (or a missing path: reported when it is decoded)
            seen.add(path)
            found.append((path, None))
    return Found(found, skipped)


def plan(inputs: Sequence[tuple[Path, Path | None]], formats: Sequence[str], output_dir: Path | None) -> list[Job]:
    """Where each input's outputs go: next to it, or under `output_dir` mirroring the folder
    tree it was found in; `clip.srt` for `clip.mov`.

    Two inputs that would write the same file (`take1.mov` and `take1.wav` in one folder) both
    keep their extension instead, `take1.mov.srt` and `take1.wav.srt`, so neither overwrites
    the other; names are compared as a case-insensitive file system (macOS, exFAT cards) would.
    Inputs whose full names still meet (two folders mirrored into one --output-dir) are a
    ValueError naming both, before any work.
    """
    placed = []
    for source, root in inputs:
        directory = source.parent if output_dir is None else output_dir
        if output_dir is not None and root is not None:
            directory = output_dir / source.parent.relative_to(root)
        placed.append((source, directory))
    stems: dict[tuple[Path, str], int] = {}
    for source, directory in placed:
        key = (directory, source.stem.casefold())
        stems[key] = stems.get(key, 0) + 1
    jobs, owners = [], {}
    for source, directory in placed:
        name = source.stem if stems[(directory, source.stem.casefold())] == 1 else source.name
        owner = owners.setdefault((directory, source.name), source)
        if owner != source:
            raise ValueError(
                f"{owner} and {source} would write the same outputs in {directory}; "
                "give each folder its own --output-dir"
            )
        targets = tuple((fmt, directory / (name + get_writer(fmt).extension)) for fmt in formats)
        jobs.append(Job(source, directory, targets))
    return jobs


def _takes_signals() -> bool:
    """Python runs signal handlers in the main thread only, and sets them only from there: a
    cluster worker runs its batch in an actor thread, and its driver stops it by a flag instead
    (cluster.py)."""
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the run the way Ctrl-C does (KeyboardInterrupt): temp files go, finished
    outputs stay."""
    if not _takes_signals():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_STOPS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait for the end of the block, then stop the run as usual.

    An input's outputs and the record saying we wrote them must land together: outputs without
    their record look like someone else's files to the next run, which then keeps them (`kept:`)
    instead of finishing the input. Writing them takes milliseconds.
    """
    if not _takes_signals():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in _STOPS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            raise KeyboardInterrupt


def describe_os_error(error: OSError, fallback: Path) -> str:
    """`path: problem` for a failed file operation, in words an editor can act on."""
    return f"{error.filename or fallback}: {os_problem(error)}"


def assess(job: Job, settings: Settings, overwrite: bool) -> tuple[tuple[tuple[str, Path], ...], Outcome | None]:
    """(targets to write, or the outcome when there is nothing to do): reads only records
    and file metadata, so it is cheap and safe without a claim (a cluster's driver decides
    with it which files its workers get)."""
    source = str(job.source)
    try:
        identity = input_identity(job.source)
    except OSError:
        identity = {}  # a missing or unreadable input: decoding it reports the problem
    if any(path.resolve() == job.source.resolve() for _, path in job.targets):
        return (), Outcome(source, "failed", error=f"{source}: output would overwrite the input")
    todo, kept = [], []
    for fmt, target in job.targets:
        key = settings.output_key(fmt)
        state = job.record.state(target, key, identity) if identity else State.MISSING
        if state is State.FOLDER:
            error = f"{target}: a folder stands where the {fmt} output should be written"
            return (), Outcome(source, "failed", error=error)
        if state is State.CURRENT and not overwrite:
            continue
        if state in (State.EDITED, State.FOREIGN) and not overwrite:
            why = "was edited since it was written" if state is State.EDITED else "was not written by whisper-coreml"
            kept.append(f"{target} {why}")
            continue
        todo.append((fmt, target))
    outputs = tuple(str(p) for _, p in job.targets)
    if kept:
        error = "; ".join(kept) + "; kept it (--overwrite replaces it)"
        return (), Outcome(source, "kept", error=error, outputs=outputs)
    if not todo:
        return (), Outcome(source, "up to date", outputs=outputs)
    return tuple(todo), None


Event = Callable[[str, dict[str, Any]], None]


@dataclass
class _Work:
    """A claimed job: what to write, the transcript when a journal already holds it, and (once
    started) its audio, journal and start time."""

    job: Job
    claim: Claim
    write: WriteOptions
    todo: tuple[tuple[str, Path], ...]
    identity: dict[str, int]
    notes: tuple[str, ...]
    transcript: TranscriptionResult | None
    audio: MelSource | None = None
    journal: FileJournal | None = None
    started: float = 0.0


class _Batch:
    """One run over `jobs`; see `run_batch`."""

    def __init__(
        self,
        load: Callable[[], WhisperModel],
        settings: Settings,
        overwrite: bool,
        emit: Event,
        batch_size: int = 1,
    ) -> None:
        self.load = load
        self.settings = settings
        self.overwrite = overwrite
        self.emit = emit
        self.batch_size = batch_size
        self.model: WhisperModel | None = None
        self.batcher: Batcher | None = None
        self.warned_language = False
        self.report = Report()
        self.transcribed: list[tuple[_Work, TranscriptionResult | BaseException]] = []

    def finish(self, outcome: Outcome) -> None:
        self.report.outcomes.append(outcome)
        self.emit("outcome", {"outcome": outcome})

    def assess(self, job: Job) -> tuple[tuple[tuple[str, Path], ...], Outcome | None]:
        return assess(job, self.settings, self.overwrite)

    def claim(self, job: Job) -> _Work | Outcome | None:
        """Claim `job` and look again under the claim (another run may have just finished it);
        None when another live run holds it."""
        try:
            claim = try_claim(job.claim_path)
        except OSError as e:
            return Outcome(str(job.source), "failed", error=describe_os_error(e, job.directory))
        if claim is None:
            return None
        try:
            return self.under_claim(job, claim)
        except BaseException:  # Ctrl-C while the input is probed, say: no claim may outlive the run
            claim.release()
            raise

    def under_claim(self, job: Job, claim: Claim) -> _Work | Outcome:
        """What `claim` finds once it holds the job's claim (released here when there is nothing to do)."""
        todo, outcome = self.assess(job)
        if outcome is not None:
            claim.release()
            return outcome
        try:
            identity = input_identity(job.source)
            write, warnings = self.settings.write_for(job.source)
        except OSError:
            identity, write, warnings = {}, self.settings.write, ()
        transcript = None
        if identity:
            journal = job.journal(self.journal_key(identity))
            if self.overwrite:  # forced: transcribe again from the start
                journal.remove()
            else:
                transcript = journal.completed(self.settings.model, self.settings.transcription.task)
        return _Work(job, claim, write, todo, identity, warnings, transcript)

    def journal_key(self, identity: dict[str, int]) -> str:
        return settings_key({"transcription": self.settings.transcription_key(), "input": identity})

    def run(self, jobs: Sequence[Job]) -> Report:
        queue: deque[Job] = deque()
        for job in jobs:
            _, outcome = self.assess(job)
            if outcome is not None:
                self.finish(outcome)
            else:
                queue.append(job)
        if not queue:
            return self.report
        from .audio import probe_duration  # PyAV and numpy: only when there is work

        self.emit("plan", {"total": len(queue), "seconds": sum(probe_duration(j.source) or 0.0 for j in queue)})
        deferred: list[Job] = []
        running: list[_Work] = []
        starting: _Work | None = None  # claimed, not yet running: Ctrl-C while its audio opens must free it
        try:
            with interrupt_on_sigterm():
                while True:
                    while len(running) < self.batch_size:  # start files until the batch is full
                        # Ctrl-C waits until a claim taken is held in `starting`, which the end releases:
                        # a signal between the lock file's creation and that would leave the file behind
                        with interrupts_deferred():
                            starting = self.next_work(queue, deferred)
                            if starting is None and deferred and not running:  # what other runs held may be free
                                queue.extend(deferred)
                                deferred = []
                                starting = self.next_work(queue, deferred, final=True)
                        if starting is None:
                            break
                        if starting.transcript is not None:
                            self.finish(self.write(starting, starting.transcript))
                        elif self.start(starting):
                            running.append(starting)
                        starting = None
                    if self.batcher is not None and self.batcher.waiting:
                        self.batcher.step()
                    finished, self.transcribed = self.transcribed, []
                    for work, result in finished:
                        outcome = self.write(work, result)  # releases the claim, Ctrl-C or not
                        running.remove(work)  # (not before: a Ctrl-C between would leave the claim held)
                        self.finish(outcome)
                    if not (running or queue or deferred):
                        break
        except KeyboardInterrupt:
            self.report.interrupted = True
        finally:
            for work in {id(w): w for w in (*running, starting) if w is not None}.values():
                self.drop(work)  # (a claim released twice is released once)
        return self.report

    def next_work(self, queue: deque[Job], deferred: list[Job], final: bool = False) -> _Work | None:
        """The next job this run can claim; jobs another run holds wait in `deferred` (or, on
        the `final` pass, are reported as being done elsewhere)."""
        while queue:
            job = queue.popleft()
            claimed = self.claim(job)
            if isinstance(claimed, _Work):
                return claimed
            if isinstance(claimed, Outcome):
                self.finish(claimed)
            elif final:
                self.finish(Outcome(str(job.source), "locked", error=f"{job.source}: another run is transcribing it"))
            else:
                deferred.append(job)
        return None

    def drop(self, work: _Work) -> None:
        if work.audio is not None:
            work.audio.close()
        if work.journal is not None:
            work.journal.close()
        work.claim.release()

    def unlike_english(self, result: TranscriptionResult) -> bool:
        """True the first time an English-only model writes text it is this unsure of."""
        if self.warned_language or self.model is None or self.model.is_multilingual:
            return False
        logprob = result.avg_logprob
        self.warned_language = logprob is not None and logprob < UNLIKE_ENGLISH_LOGPROB
        return self.warned_language

    def start(self, work: _Work) -> bool:
        """Put `work`'s transcription in the batch (loading the model first if need be); False
        when it ended at once (its audio could not be opened), its outcome reported."""
        if self.model is None:
            from .transcribe import Batcher

            self.emit("loading", {})
            self.model = self.load()
            self.batcher = Batcher(self.model.engine, self.batch_size)
        assert self.batcher is not None
        from .audio import MelSource

        source = work.job.source
        work.started = time.perf_counter()
        work.journal = work.job.journal(self.journal_key(work.identity)) if work.identity else None
        self.emit("start", {"source": source})
        try:
            work.audio = MelSource.from_file(source, self.model.engine.dims.n_mels, self.settings.transcription.vad)
        except (WhisperCoreMLError, OSError) as error:
            self.finish(self.write(work, error))
            return False
        loop = self.model.seek_loop(
            work.audio,
            options=self.settings.transcription,
            progress=lambda done, total: self.emit("progress", {"source": source, "done": done, "total": total}),
            journal=work.journal,
        )
        self.batcher.add(loop, lambda result: self.transcribed.append((work, result)))
        return True

    def write(self, work: _Work, result: TranscriptionResult | BaseException) -> Outcome:
        """Write `work`'s outputs from its transcript (or report what ended it); always releases
        the claim and closes the audio and the journal."""
        job = work.job
        source = str(job.source)
        journal = work.journal
        started = work.started or time.perf_counter()
        try:
            if isinstance(result, BaseException):
                raise result
            if journal is not None and result is not work.transcript:
                journal.finish(result)
            result = replace(result, source=source)
            cues = cues_for(result, work.write)
            report = None
            if work.write.cues == "rules" and any(fmt in SUBTITLE_FORMATS for fmt, _ in work.todo):
                report = report_cues(cues, work.write.rules, result.duration)
            written = {}
            with interrupts_deferred():
                for fmt, target in work.todo:
                    write_result(result, fmt, target, work.write, cues)
                    written[target] = self.settings.output_key(fmt)
                if work.identity:
                    job.record.update(work.identity, written)
        except NoAudioTrack as e:
            return Outcome(source, "skipped", error=str(e), seconds=time.perf_counter() - started)
        except WhisperCoreMLError as e:
            return Outcome(source, "failed", seconds=time.perf_counter() - started, error=str(e))
        except OSError as e:
            error = describe_os_error(e, job.directory)
            return Outcome(source, "failed", seconds=time.perf_counter() - started, error=error)
        finally:
            if work.audio is not None:
                work.audio.close()
            if journal is not None:
                journal.close()
            work.claim.release()
        notes = work.notes + (() if result.text.strip() else ("no speech found",))
        if report is not None and report.exceptions:
            notes += (f"cue rules not kept: {report.summary()}",)
        if self.unlike_english(result):
            notes += (
                f"warning: this does not sound like English, and {self.settings.model} is an English-only model; "
                "for other languages use a multilingual one, e.g. --model base",
            )
        if work.transcript is not None:
            notes += ("written from the transcript saved by an earlier run (no model work)",)
        return Outcome(
            source,
            "done",
            duration=result.duration,
            seconds=time.perf_counter() - started,
            outputs=tuple(str(p) for _, p in job.targets),
            notes=notes,
            resumed_at=journal.resumed_at if journal is not None else None,
            cues=report.to_dict() if report is not None else None,
            windows=journal.windows if journal is not None else 0,
        )


def run_batch(
    jobs: Sequence[Job],
    load: Callable[[], WhisperModel],
    settings: Settings,
    overwrite: bool = False,
    on_event: Event | None = None,
    batch_size: int = 1,
) -> Report:
    """Write every job's outputs that are not up to date, loading the model (`load`) only if a
    transcription is needed. With `batch_size` > 1 that many files transcribe together, their
    windows batched through the engine (each file's result is what it would be alone).

    `on_event(kind, info)` reports progress: "plan" (total inputs and seconds of audio to do),
    "loading" (the model), "start" (source), "progress" (source, done, total seconds of
    that file), "outcome" (the Outcome).
    """
    return _Batch(load, settings, overwrite, on_event or (lambda kind, info: None), batch_size).run(jobs)

"""The job store and its worker: accepted work survives restarts, kill -9 included.

A job is a row in SQLite (stdlib sqlite3, WAL, synchronous=FULL) plus its upload, a file of
our own in `<data>/uploads`. The row is committed only after the upload is on disk, fsynced
and checked, so an accepted job always has its audio; its result, the TranscriptionResult as
JSON, is committed in the same transaction that marks it done, and only then are the upload
and the window journal deleted, so a finished result is never lost and is never computed
twice (a job submitted with `keep_media`, as the studio page does, keeps its upload as
`<data>/media/<id>` for the page's player instead). One worker thread runs jobs in the order
they were accepted; every finished 30-s window is journaled (`<data>/journals/<id>.journal`,
journal.FileJournal), so a job killed in the middle of a long file resumes at its last window
when the server starts again, and its result equals an uninterrupted run's. Every step is
also an `events` row (accepted, started, resumed, done, ...), which is how the tests count that nothing ran twice.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import math
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AudioError, WhisperCoreMLError
from ..footage import VideoFormat
from ..journal import FileJournal
from ..records import settings_key
from ..result import TranscriptionResult
from ..settings import Choices, build_settings
from ..timecode import FrameRate
from ..writers.fcpxml import fcpxml_options_for
from .render import result_from_dict, result_to_dict
from .uploads import Upload

if TYPE_CHECKING:
    from concurrent.futures import Future

    from ..api import WhisperModel
    from ..openmp import ModelThread

log = logging.getLogger("whisper_coreml.server")

FINISHED = ("done", "failed", "cancelled")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    state TEXT NOT NULL,            -- queued, running, done, failed, cancelled
    filename TEXT NOT NULL,         -- the client's name for the file: text, never a path
    upload TEXT,                    -- our file in uploads/, NULL once the job is finished
    request TEXT NOT NULL,          -- JSON: choices, response_format, granularities
    sync INTEGER NOT NULL,          -- 1 for the OpenAI endpoints' jobs
    duration REAL NOT NULL,         -- seconds of audio, measured when the upload was checked
    done REAL NOT NULL DEFAULT 0,   -- seconds transcribed so far
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    resumed_at REAL,
    cancel INTEGER NOT NULL DEFAULT 0,
    result TEXT,                    -- the TranscriptionResult, JSON
    footage TEXT,                   -- a video upload's picture format and cue grid, JSON
    notes TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    error_status INTEGER
);
CREATE TABLE IF NOT EXISTS events (job TEXT NOT NULL, at REAL NOT NULL, event TEXT NOT NULL, detail TEXT);
-- cues edited in the studio page, one row per job: its own table, so stores from before it need no migration
CREATE TABLE IF NOT EXISTS edits (
    job TEXT PRIMARY KEY,
    cues TEXT NOT NULL,             -- JSON: [{"start": s, "end": s, "text": "line\\nline"}, ...]
    revision INTEGER NOT NULL,      -- 1, 2, ...: a save based on an older revision is refused
    saved REAL NOT NULL
);
"""


def form_field(field: str) -> str:
    """Options are named in error messages as a form spells them: `max_line_width`."""
    return field


@dataclass(frozen=True)
class JobRequest:
    """What a job was asked for: the CLI's choices plus the response it answers with."""

    choices: Choices
    response_format: str = "json"
    granularities: tuple[str, ...] = ()
    keep_media: bool = False  # keep the upload once done, for the studio's player (media/<id>)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobRequest:
        data = json.loads(text)
        choices = Choices(**{**data["choices"], "formats": tuple(data["choices"]["formats"])})
        return cls(choices, data["response_format"], tuple(data["granularities"]), data.get("keep_media", False))


@dataclass(frozen=True)
class Job:
    id: str
    state: str
    filename: str
    upload: str | None
    request: JobRequest
    sync: bool
    duration: float
    done: float
    created: float
    started: float | None
    finished: float | None
    attempts: int
    resumed_at: float | None
    notes: tuple[str, ...]
    error: str | None
    error_status: int | None
    footage: dict[str, Any] | None

    def status(self) -> dict[str, Any]:
        """The job as the status endpoint shows it."""
        return {
            "id": self.id,
            "object": "transcription.job",
            "status": self.state,
            "filename": self.filename,
            "task": self.request.choices.task,
            "response_format": self.request.response_format,
            "progress": {
                "seconds_done": round(self.done, 3),
                "seconds_total": round(self.duration, 3),
                "fraction": round(min(1.0, self.done / self.duration), 4) if self.duration > 0 else 0.0,
            },
            "created_at": self.created,
            "started_at": self.started,
            "finished_at": self.finished,
            "attempts": self.attempts,
            "resumed_at": self.resumed_at,
            "notes": list(self.notes),
            "error": self.error,
            "keep_media": self.request.keep_media,
        }


def footage_to_json(video: VideoFormat, grid: FrameRate) -> str:
    """A video upload's picture format and the frame grid its cues were put on (see
    fcpxml_options_for), kept so results render after the upload is gone."""

    def rate(r: FrameRate) -> dict[str, str]:
        return {"name": r.name, "frame_duration": str(r.frame_duration)}

    data = {**asdict(video), "rate": rate(video.rate), "pixel_aspect": str(video.pixel_aspect)}
    return json.dumps({"video": data, "grid": rate(grid)})


def footage_from_json(text: str) -> dict[str, Any]:
    data = json.loads(text)

    def rate(r: dict[str, str]) -> FrameRate:
        return FrameRate(r["name"], Fraction(r["frame_duration"]))

    video = {
        **data["video"],
        "rate": rate(data["video"]["rate"]),
        "pixel_aspect": Fraction(data["video"]["pixel_aspect"]),
    }
    return {"video": VideoFormat(**video), "grid": rate(data["grid"])}


class JobStore:
    """Jobs in `<data_dir>/jobs.sqlite3`, uploads in `uploads/`, window journals in `journals/`,
    the media a finished `keep_media` job keeps in `media/<id>`.

    Thread-safe: one connection behind a lock (every statement is short)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.uploads = data_dir / "uploads"
        self.journals = data_dir / "journals"
        self.media = data_dir / "media"
        for folder in (self.uploads, self.journals, self.media):
            folder.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(data_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._finished: dict[str, threading.Event] = {}
        self.wakeup = threading.Event()  # set when a job is queued
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _event(self, db: sqlite3.Connection, job: str, event: str, detail: str | None = None) -> None:
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (job, time.time(), event, detail))

    def recover(self) -> int:
        """After a restart (or kill -9): jobs that were running queue again at their place
        (their journals resume them), a cancel asked for before the crash takes effect, and
        files no unfinished job owns are removed. Returns how many jobs were requeued."""
        with self._tx() as db:
            for row in db.execute("SELECT id FROM jobs WHERE state = 'running' AND cancel = 1").fetchall():
                self._close(db, row["id"], "cancelled")  # its files go with the sweep below
            rows = db.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall()
            for row in rows:
                self._event(db, row["id"], "requeued", "the server stopped while it ran")
            db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'")
            owned = {r["upload"] for r in db.execute("SELECT upload FROM jobs WHERE state = 'queued'")}
            ids = {r["id"] for r in db.execute("SELECT id FROM jobs WHERE state = 'queued'")}
            done = {r["id"] for r in db.execute("SELECT id FROM jobs WHERE state = 'done'")}
        for path in self.uploads.iterdir():
            if path.name not in owned:  # a half-received upload, or one whose job finished
                path.unlink(missing_ok=True)
        for path in self.journals.iterdir():
            if path.stem not in ids:
                path.unlink(missing_ok=True)
        for path in self.media.iterdir():
            if path.name not in done:  # half-moved before a crash, or its job is gone
                path.unlink(missing_ok=True)
        if ids:
            self.wakeup.set()
        return len(rows)

    def add(self, upload: Upload, request: JobRequest, duration: float, sync: bool) -> Job:
        """Accept a checked upload as a queued job (the upload file becomes the job's)."""
        job_id = "job_" + secrets.token_hex(12)
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, state, filename, upload, request, sync, duration, created)"
                " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                (job_id, upload.filename, upload.path.name, request.to_json(), int(sync), duration, time.time()),
            )
            self._event(db, job_id, "accepted")
        self.wakeup.set()
        job = self.get(job_id)
        assert job is not None
        return job

    def _job(self, row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"],
            state=row["state"],
            filename=row["filename"],
            upload=row["upload"],
            request=JobRequest.from_json(row["request"]),
            sync=bool(row["sync"]),
            duration=row["duration"],
            done=row["done"],
            created=row["created"],
            started=row["started"],
            finished=row["finished"],
            attempts=row["attempts"],
            resumed_at=row["resumed_at"],
            notes=tuple(json.loads(row["notes"])),
            error=row["error"],
            error_status=row["error_status"],
            footage=footage_from_json(row["footage"]) if row["footage"] else None,
        )

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row is not None else None

    def list(self, limit: int = 100) -> list[Job]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [self._job(r) for r in rows]

    def result(self, job_id: str) -> TranscriptionResult | None:
        with self._lock:
            row = self._db.execute("SELECT result FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return result_from_dict(json.loads(row["result"])) if row is not None and row["result"] else None

    def unfinished(self) -> int:
        """How many jobs are queued or running."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()[0]

    def events(self, job_id: str) -> list[tuple[str, str | None]]:
        with self._lock:
            rows = self._db.execute("SELECT event, detail FROM events WHERE job = ? ORDER BY rowid", (job_id,))
            return [(r["event"], r["detail"]) for r in rows.fetchall()]

    def start_next(self) -> Job | None:
        """Mark the oldest queued job running and return it (None when there is none)."""
        with self._tx() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1 WHERE id = ?",
                (time.time(), row["id"]),
            )
            self._event(db, row["id"], "started")
        return self.get(row["id"])

    def progress(self, job_id: str, done: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET done = ? WHERE id = ?", (done, job_id))

    def resumed(self, job_id: str, at: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET resumed_at = ? WHERE id = ?", (at, job_id))
            self._event(db, job_id, "resumed", f"{at:.1f}")

    def finish(
        self,
        job_id: str,
        result: TranscriptionResult,
        footage: str | None,
        notes: tuple[str, ...],
        keep_media: bool = False,
    ) -> None:
        """Keep the result and mark the job done in one transaction, then drop its files (the
        upload becomes `media_path` instead with `keep_media`)."""
        with self._tx() as db:
            db.execute(
                "UPDATE jobs SET result = ?, footage = ?, notes = ?, done = duration WHERE id = ?",
                (json.dumps(result_to_dict(result), ensure_ascii=False), footage, json.dumps(notes), job_id),
            )
            upload = self._close(db, job_id, "done")
        if upload is not None and keep_media:
            # after the commit, as every file step here: a crash in between loses the media
            # (recover sweeps the upload, the page says it is gone), never the result
            (self.uploads / upload).replace(self.media_path(job_id))
            upload = None
        self._finish_files(job_id, upload)

    def fail(self, job_id: str, error: str, status: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET error = ?, error_status = ? WHERE id = ?", (error, status, job_id))
            upload = self._close(db, job_id, "failed", error)
        self._finish_files(job_id, upload)

    def requeue(self, job_id: str) -> None:
        """Put a running job back at its place (the server is stopping; its journal resumes it)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = 'queued' WHERE id = ? AND state = 'running'", (job_id,))
            self._event(db, job_id, "requeued", "the server stopped")

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once, ask a running one to stop after its window; the job's
        state afterwards (None for an unknown job)."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            upload = None
            if row["state"] == "queued":
                upload = self._close(db, job_id, "cancelled")
            elif row["state"] == "running":
                db.execute("UPDATE jobs SET cancel = 1 WHERE id = ?", (job_id,))
                self._event(db, job_id, "cancel requested")
            state = "cancelled" if row["state"] == "queued" else row["state"]
        if row["state"] == "queued":
            self._finish_files(job_id, upload)
        return state

    def cancel_requested(self, job_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT cancel FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row["cancel"])

    def cancelled(self, job_id: str) -> None:
        with self._tx() as db:
            upload = self._close(db, job_id, "cancelled")
        self._finish_files(job_id, upload)

    def _close(self, db: sqlite3.Connection, job_id: str, state: str, detail: str | None = None) -> str | None:
        """Move an unfinished job to a finished `state` (a finished one never moves again);
        returns its upload's name, for `_finish_files` once the transaction is committed."""
        row = db.execute(
            "SELECT upload FROM jobs WHERE id = ? AND state IN ('queued', 'running')", (job_id,)
        ).fetchone()
        if row is None:
            return None
        db.execute("UPDATE jobs SET state = ?, finished = ?, upload = NULL WHERE id = ?", (state, time.time(), job_id))
        self._event(db, job_id, state, detail)
        return row["upload"]

    def _finish_files(self, job_id: str, upload: str | None) -> None:
        """Remove a finished job's upload and journal (after the commit that made them unneeded)
        and wake whoever waits for it."""
        if upload is not None:
            (self.uploads / upload).unlink(missing_ok=True)
        self.journal_path(job_id).unlink(missing_ok=True)
        self.finished_event(job_id).set()

    def upload_path(self, job: Job) -> Path:
        assert job.upload is not None, "an unfinished job owns its upload"
        return self.uploads / job.upload

    def media_path(self, job_id: str) -> Path:
        """Where a done `keep_media` job's upload is kept (absent when it was not kept)."""
        return self.media / job_id

    def edits(self, job_id: str) -> tuple[list[dict[str, Any]], int] | None:
        """The job's saved cues and their revision, or None when it has none."""
        with self._lock:
            row = self._db.execute("SELECT cues, revision FROM edits WHERE job = ?", (job_id,)).fetchone()
        return None if row is None else (json.loads(row["cues"]), row["revision"])

    def save_edits(self, job_id: str, cues: list[dict[str, Any]], based_on: int) -> int | None:
        """Store `cues` as the job's edit if `based_on` is its current revision (0: none saved
        yet); the new revision, or None when another save came first."""
        with self._tx() as db:
            row = db.execute("SELECT revision FROM edits WHERE job = ?", (job_id,)).fetchone()
            if (row["revision"] if row else 0) != based_on:
                return None
            db.execute(
                "INSERT OR REPLACE INTO edits VALUES (?, ?, ?, ?)",
                (job_id, json.dumps(cues, ensure_ascii=False), based_on + 1, time.time()),
            )
            self._event(db, job_id, "edited", str(based_on + 1))
        return based_on + 1

    def drop_edits(self, job_id: str) -> None:
        """Forget the job's edit: its cues are the built ones again."""
        with self._tx() as db:
            if db.execute("DELETE FROM edits WHERE job = ?", (job_id,)).rowcount:
                self._event(db, job_id, "edits dropped")

    def journal_path(self, job_id: str) -> Path:
        return self.journals / f"{job_id}.journal"

    def finished_event(self, job_id: str) -> threading.Event:
        """An Event set once the job is done, failed or cancelled."""
        with self._lock:
            event = self._finished.setdefault(job_id, threading.Event())
            row = self._db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is not None and row["state"] in FINISHED:
            event.set()
        return event

    def forget_event(self, job_id: str) -> None:
        with self._lock:
            self._finished.pop(job_id, None)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Stop(Exception):
    """Raised from the progress callback to stop a transcription between two windows."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # "shutdown", "cancel" or "timeout"


def _report_crash(running: Future[None]) -> None:
    """Log what ended the job loop, if anything did (it only returns when told to stop)."""
    error = running.exception()
    if error is not None:
        log.error("the job worker stopped", exc_info=error)


class Worker:
    """Runs jobs, oldest first, with the one loaded model, on the thread that loaded it (one
    OpenMP team: see openmp.ModelThread)."""

    def __init__(self, store: JobStore, model: WhisperModel, thread: ModelThread, timeout: float | None) -> None:
        self.store = store
        self.model = model
        self.thread = thread
        self.timeout = timeout
        self.seconds_per_second = 1.0  # processing time per second of audio, from the last job
        self.current: Job | None = None
        self._stopping = threading.Event()
        self._running: Future[None] | None = None

    def start(self) -> None:
        self._running = self.thread.submit(self._run)
        self._running.add_done_callback(_report_crash)

    def stop(self, wait: float = 30.0) -> None:
        """Stop after the current window; the job in progress goes back to the queue."""
        self._stopping.set()
        self.store.wakeup.set()
        if self._running is not None:
            concurrent.futures.wait([self._running], wait)

    def retry_after(self) -> int:
        """Seconds until a queue slot is likely to free: what the running job has left."""
        job = self.current
        left = (job.duration - job.done) if job is not None else 0.0
        return max(1, min(3600, math.ceil(left * self.seconds_per_second)))

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.store.wakeup.clear()
            job = self.store.start_next()
            if job is None:
                self.store.wakeup.wait(1.0)
                continue
            self.current = job
            try:
                self._execute(job)
            finally:
                self.current = None

    def _execute(self, job: Job) -> None:
        started = time.monotonic()
        settings = build_settings(self.model.name, job.request.choices, option=form_field)
        upload = self.store.upload_path(job)
        journal_key = settings_key({"transcription": settings.transcription_key(), "job": job.id})
        journal = FileJournal(self.store.journal_path(job.id), journal_key)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout

        def progress(done: float, total: float) -> None:
            self.current = replace(job, done=done)
            self.store.progress(job.id, done)
            if self._stopping.is_set():
                raise _Stop("shutdown")
            if self.store.cancel_requested(job.id):
                raise _Stop("cancel")
            if deadline is not None and time.monotonic() > deadline:
                raise _Stop("timeout")

        try:
            write, warnings = fcpxml_options_for(upload, settings.write, settings.fps_explicit)
            footage = footage_to_json(write.video, write.rules.fps) if write.video is not None else None
            result = self.model.transcribe(upload, options=settings.transcription, progress=progress, journal=journal)
            if journal.resumed_at:
                self.store.resumed(job.id, journal.resumed_at)
            result = replace(result, source=job.filename)
            notes = tuple(w.replace(str(upload), job.filename) for w in warnings)
            notes += () if result.text.strip() else ("no speech found",)
            self.store.finish(job.id, result, footage, notes, job.request.keep_media)
            if job.duration > 0:
                self.seconds_per_second = (time.monotonic() - started) / job.duration
        except _Stop as stop:
            if stop.reason == "shutdown":
                self.store.requeue(job.id)
            elif stop.reason == "cancel":
                self.store.cancelled(job.id)
            else:
                self.store.fail(job.id, f"{job.filename}: timed out after {self.timeout:g} s (the job timeout)", 504)
        except AudioError as e:  # checked at upload, so rare: e.g. the disk under the upload failed
            self.store.fail(job.id, str(AudioError(job.filename, e.problem)), 400)
        except (WhisperCoreMLError, ValueError) as e:
            self.store.fail(job.id, str(e).replace(str(upload), job.filename), 400)
        except Exception as e:
            log.exception("job %s failed", job.id)
            self.store.fail(job.id, f"{job.filename}: internal error ({type(e).__name__}: {e})", 500)
        finally:
            journal.close()

"""The HTTP API: OpenAI's audio endpoints and a job API beneath them, on FastAPI.

- `POST /v1/audio/transcriptions`, `POST /v1/audio/translations`: OpenAI's multipart
  requests (`file`, `model`, `language`, `prompt`, `temperature`, `response_format`,
  `timestamp_granularities[]`), so the official `openai` client works unchanged with
  `base_url`; plus our `fcpxml` and `itt` formats and the CLI's cue and frame-rate choices as
  extra fields (`fps`, `max_line_width`, ...). They wait for their job and answer with it.
- `POST /v1/jobs` (the same fields, plus `task` and `keep_media`), `GET /v1/jobs`, `GET /v1/jobs/{id}`
  (status and progress), `GET /v1/jobs/{id}/result?format=srt` (any format, rendered from the
  stored transcript; cue-rule fields re-render it without model work), `DELETE
  /v1/jobs/{id}` (cancel).

Both kinds go through one bounded queue and one worker (jobs.py): a full queue answers 429
with Retry-After before reading the body; an upload over the limit 413 while it streams; a
bad file 400 with the CLI's one-line message. The studio page and its endpoints (cues, edits,
export, media, events) are in studio.py. Errors use OpenAI's shape, `{"error":
{"message": ..., "type": ...}}`, so the client raises them with our message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import AudioError
from ..settings import Choices, build_settings
from .jobs import FINISHED, Job, JobRequest, JobStore, Worker, form_field
from .render import CLI_FORMAT, GRANULARITIES, RESPONSE_FORMATS, render, write_options
from .studio import add_studio
from .uploads import Upload, UploadError, check_media, receive_upload

if TYPE_CHECKING:
    from ..api import WhisperModel
    from ..openmp import ModelThread

SHUTDOWN_GRACE = 5.0  # seconds uvicorn lets requests run after SIGTERM/SIGINT before cancelling them
WAIT_IN_SHUTDOWN = 3.0  # of which a request waiting for its job may use this much
OPENAI_MODEL = "whisper-1"  # what OpenAI's clients ask for: here, the model this server runs
# The CLI's choices a form may set, by their Choices names; OpenAI's own fields are read apart.
CHOICE_FIELDS = (
    "beam_size",
    "patience",
    "length_penalty",
    "vad",
    "hallucination_silence_threshold",
    "word_timestamps",
    "cues",
    "max_line_width",
    "max_lines",
    "max_cps",
    "min_duration",
    "max_duration",
    "fps",
    "fcpxml_version",
    "fcpxml_style",
    "format_size",
    "highlight_words",
)
WRITE_FIELDS = frozenset(CHOICE_FIELDS) - {
    "beam_size",
    "patience",
    "length_penalty",
    "vad",
    "hallucination_silence_threshold",
    "word_timestamps",
}  # what a stored result re-renders under
OPENAI_FIELDS = frozenset(
    {"file", "model", "language", "prompt", "temperature", "response_format", "stream", "timestamp_granularities"}
)
# Refused before the body was read: close the connection rather than take in the rest of it.
UNREAD_BODY = {"Connection": "close"}
_TYPES = {f.name: f.type for f in fields(Choices)}


@dataclass(frozen=True)
class ServerConfig:
    """How one server runs: where it keeps jobs, how much it accepts, who may call it."""

    data_dir: Path
    max_queue: int = 8  # jobs queued or running, the synchronous endpoints' included
    max_upload_bytes: int = 2 * 2**30
    job_timeout: float | None = 4 * 3600  # seconds of processing per job; None: no limit
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error" if status < 500 else "server_error"
    )
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


class Admission:
    """The bounded queue's door: a slot is taken before an upload is read (so a full queue
    costs a client nothing but a 429) and becomes a job's, or is given back."""

    def __init__(self, store: JobStore, limit: int) -> None:
        self.store = store
        self.limit = limit
        self.receiving = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.store.unfinished() + self.receiving >= self.limit:
                return False
            self.receiving += 1
            return True

    def give_back(self) -> None:
        with self._lock:
            self.receiving -= 1


def _value(name: str, text: str) -> Any:
    """A form field's text as its Choices field's type, or an ApiError naming it."""
    kind = _TYPES[name].replace(" | None", "")
    try:
        if kind == "bool":
            if text.strip().lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.strip().lower() in ("true", "1")
        return {"int": int, "float": float, "str": str}[kind](text)
    except ValueError:
        raise ApiError(400, f"{name} {text!r}: expected {'true or false' if kind == 'bool' else 'a number'}") from None


def _one(form: Mapping[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, f"{name} given {len(values)} times")
    return values[0]


def parse_request(form: Mapping[str, list[str]], task: str | None, served: str) -> JobRequest:
    """A form's fields as a JobRequest (`task` None: the form says, as on /v1/jobs)."""
    known = OPENAI_FIELDS | set(CHOICE_FIELDS) | ({"task", "keep_media"} if task is None else set())
    for name in form:
        if name.removesuffix("[]") not in known:
            raise ApiError(400, f"unknown field '{name}'; known: {', '.join(sorted(known - {'file'}))}")
    model = _one(form, "model")
    if model not in (None, "", OPENAI_MODEL, served):
        raise ApiError(
            400, f"model '{model}' is not served here: this server runs '{served}' (or ask for {OPENAI_MODEL})"
        )
    if (_one(form, "stream") or "false").lower() not in ("false", "0"):
        raise ApiError(400, "streamed responses are not supported: leave stream unset")
    response_format = _one(form, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(400, f"response_format '{response_format}': choose one of {', '.join(RESPONSE_FORMATS)}")
    granularities = tuple(form.get("timestamp_granularities[]", []) + form.get("timestamp_granularities", []))
    for g in granularities:
        if g not in GRANULARITIES:
            raise ApiError(400, f"timestamp_granularities '{g}': choose word or segment")
    values: dict[str, Any] = {
        name: _value(name, text) for name in CHOICE_FIELDS if (text := _one(form, name)) not in (None, "")
    }
    if "word" in granularities:
        values["word_timestamps"] = True
    temperature = _one(form, "temperature")
    if temperature not in (None, ""):
        t = _value("temperature", temperature)
        if not 0 <= t <= 1:
            raise ApiError(400, f"temperature {temperature}: between 0 and 1")
        if t > 0:  # OpenAI's 0 (the default) means: start at 0 and fall back to higher temperatures
            values["temperature"] = t
    choices = Choices(
        formats=(CLI_FORMAT[response_format],),
        language=_one(form, "language") or None,
        task=task or _one(form, "task") or "transcribe",
        initial_prompt=_one(form, "prompt") or None,
        **values,
    )
    keep_media = (_one(form, "keep_media") or "false").strip().lower()
    if keep_media not in ("true", "false", "1", "0"):
        raise ApiError(400, f"keep_media {keep_media!r}: expected true or false")
    return JobRequest(choices, response_format, tuple(dict.fromkeys(granularities)), keep_media in ("true", "1"))


class Service:
    """The model, the store, the worker and the rules every endpoint shares."""

    def __init__(self, config: ServerConfig, model: WhisperModel, thread: ModelThread) -> None:
        self.config = config
        self.model = model
        self.store = JobStore(config.data_dir)
        self.worker = Worker(self.store, model, thread, config.job_timeout)
        self.admission = Admission(self.store, config.max_queue)
        # Set by the serve command when a shutdown begins: event streams end and waiting
        # requests answer, so the process stops without cancelling (and logging) requests.
        self.closing = threading.Event()

    def check_key(self, request: Request) -> None:
        """Bearer-token authentication when the server has a key (compared in constant time)."""
        key = self.config.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(
                401, "invalid or missing API key (send Authorization: Bearer <key>)", {"WWW-Authenticate": "Bearer"}
            )

    async def accept(self, request: Request, task: str | None, sync: bool) -> Job:
        """Receive, check and queue one upload; nothing is left behind when it is refused."""
        limit = self.config.max_upload_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit + 2**20:  # the form's other fields are small
            raise ApiError(
                413,
                f"upload of {int(declared)} bytes: larger than this server's limit of {limit} bytes",
                UNREAD_BODY,
            )
        if not self.admission.take():
            raise ApiError(
                429,
                f"the queue is full ({self.config.max_queue} jobs); try again later",
                {"Retry-After": str(self.worker.retry_after()), **UNREAD_BODY},
            )
        upload: Upload | None = None
        try:
            try:
                upload = await receive_upload(
                    request.stream(), request.headers.get("content-type"), self.store.uploads, limit
                )
            except UploadError as e:  # a 413 stops reading mid-body
                raise ApiError(e.status, str(e), UNREAD_BODY if e.status == 413 else None) from None
            job_request = parse_request(upload.fields, task, self.model.name)
            try:
                settings = build_settings(self.model.name, job_request.choices, option=form_field)
                self.model.options(settings.transcription)  # e.g. German for an English-only model
                duration = await run_in_threadpool(check_media, upload)
            except (ValueError, AudioError) as e:
                raise ApiError(400, str(e)) from None
            job = self.store.add(upload, job_request, duration, sync)
            upload = None  # the job's now
            return job
        finally:
            if upload is not None:
                upload.discard()
            self.admission.give_back()

    def result(self, job: Job, response_format: str, overrides: Mapping[str, list[str]]) -> Response:
        """A finished job's result as `response_format`, under its choices with any write
        fields in `overrides` replaced."""
        if job.state != "done":
            raise ApiError(409, f"job {job.id} is {job.state}" + (f": {job.error}" if job.error else ""))
        result = self.store.result(job.id)
        assert result is not None, "a done job has its result"
        changed = {name: _value(name, text) for name in WRITE_FIELDS if (text := _one(overrides, name)) is not None}
        granularities = tuple(overrides.get("timestamp_granularities[]", ())) or job.request.granularities
        try:
            write = write_options(replace(job.request.choices, **changed), self.model.name, job.footage)
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        rendered = render(result, response_format, write, granularities)
        return Response(rendered.body, media_type=rendered.media_type, headers={"X-Job-Id": job.id})

    async def wait(self, job: Job) -> Job:
        """The job once it is finished (polled: a waiting request holds no thread).

        In a shutdown the request still waits `WAIT_IN_SHUTDOWN` seconds (inside uvicorn's
        grace, `SHUTDOWN_GRACE`), then answers 503 with the job's id: the job is kept in the
        store and finishes after the restart, where `GET /v1/jobs/{id}` finds it.
        """
        event = self.store.finished_event(job.id)
        closing_since: float | None = None
        try:
            while not event.is_set():
                if self.closing.is_set():
                    closing_since = closing_since or time.monotonic()
                    if time.monotonic() - closing_since > WAIT_IN_SHUTDOWN:
                        raise ApiError(
                            503,
                            f"the server is shutting down: job {job.id} is kept and finishes after it restarts "
                            f"(GET /v1/jobs/{job.id})",
                            {"X-Job-Id": job.id},
                        )
                await asyncio.sleep(0.05)
        finally:
            self.store.forget_event(job.id)
        finished = self.store.get(job.id)
        assert finished is not None and finished.state in FINISHED
        return finished


def create_app(config: ServerConfig, model: WhisperModel, thread: ModelThread) -> FastAPI:
    """The app for one loaded model, whose jobs run on `thread` (the one that loaded it); the
    worker starts and stops with the app's lifespan."""
    service = Service(config, model, thread)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.store.recover()
        service.worker.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.worker.stop)
            service.store.close()

    app = FastAPI(title="whisper-coreml", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["*"], allow_headers=["*"]
        )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(400, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(ClientDisconnect)
    async def disconnected(request: Request, error: ClientDisconnect) -> Response:
        return Response(status_code=400)  # nobody reads it; the upload is already removed

    authorized = [Depends(service.check_key)]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model.name, "jobs_unfinished": service.store.unfinished()}

    @app.get("/v1/models", dependencies=authorized)
    async def models() -> dict[str, Any]:
        served = [{"id": name, "object": "model", "owned_by": "whisper-coreml"} for name in (OPENAI_MODEL, model.name)]
        return {"object": "list", "data": served}

    async def openai_endpoint(request: Request, task: str) -> Response:
        job = await service.wait(await service.accept(request, task, sync=True))
        if job.state == "failed":
            raise ApiError(job.error_status or 500, job.error or "failed")
        if job.state == "cancelled":
            raise ApiError(409, f"job {job.id} was cancelled")
        return service.result(job, job.request.response_format, {})

    @app.post("/v1/audio/transcriptions", dependencies=authorized)
    async def transcriptions(request: Request) -> Response:
        return await openai_endpoint(request, "transcribe")

    @app.post("/v1/audio/translations", dependencies=authorized)
    async def translations(request: Request) -> Response:
        return await openai_endpoint(request, "translate")

    @app.post("/v1/jobs", status_code=202, dependencies=authorized)
    async def submit(request: Request) -> JSONResponse:
        job = await service.accept(request, None, sync=False)
        return JSONResponse(job.status(), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs", dependencies=authorized)
    async def list_jobs(limit: int = 100) -> dict[str, Any]:
        return {"object": "list", "data": [j.status() for j in service.store.list(max(1, min(limit, 1000)))]}

    def find(job_id: str) -> Job:
        job = service.store.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id}")
        return job

    @app.get("/v1/jobs/{job_id}", dependencies=authorized)
    async def status(job_id: str) -> dict[str, Any]:
        return find(job_id).status()

    @app.get("/v1/jobs/{job_id}/result", dependencies=authorized)
    async def result(job_id: str, request: Request) -> Response:
        job = find(job_id)
        query = {k: request.query_params.getlist(k) for k in request.query_params}
        response_format = _one(query, "format") or job.request.response_format
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(400, f"format '{response_format}': choose one of {', '.join(RESPONSE_FORMATS)}")
        unknown = set(query) - WRITE_FIELDS - {"format", "timestamp_granularities[]"}
        if unknown:
            raise ApiError(400, f"unknown parameter(s) {', '.join(sorted(unknown))}")
        return service.result(job, response_format, query)

    @app.delete("/v1/jobs/{job_id}", dependencies=authorized)
    async def cancel(job_id: str) -> dict[str, Any]:
        find(job_id)
        state = service.store.cancel(job_id)
        if state in ("done", "failed"):
            raise ApiError(409, f"job {job_id} is already {state}")
        return find(job_id).status() | {"cancel_requested": state == "running"}

    add_studio(app, service, authorized, find)
    return app

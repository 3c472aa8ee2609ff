"""The studio: a web page at `/` to queue media, follow its jobs and edit their cues.

The page is plain HTML, CSS and JavaScript in `static/` (no build step, nothing fetched from
a CDN). Everything it does goes through these endpoints, which need the API key when the
server has one (the page asks for it once and sends it as a Bearer header):

- `GET /v1/studio`: what the page offers: the served model, its languages, frame rates,
  FCPXML versions and the CLI's default cue rules.
- `GET /v1/events`: Server-Sent Events, the job list each time it changes. The page reads the
  stream with fetch (so it carries the Authorization header, never a key in a URL) and
  reconnects when a stream ends: every 25 s, and at once when the server begins to shut down,
  so an open page never holds up a shutdown.
- `GET /v1/jobs/{id}/media`: the job's upload (kept after it is done when it was submitted
  with `keep_media`), with Range requests so the player seeks. A `<video>` cannot send a
  header, so the page adds `token`, an HMAC of the job id under the API key: it opens only
  that job's media and reveals nothing about the key.
- `GET /v1/jobs/{id}/cues`: the cues the editor starts from (the saved edit, else the cues the
  CLI would write under the job's choices), with the rules and frame grid they are checked
  against and what `check_cues` finds; `PUT` saves an edit (validated, snapped to the frame
  grid, refused with 409 if another save came first); `DELETE` returns to the built cues.
- `GET /v1/jobs/{id}/export?format=fcpxml&fps=25&fcpxml_version=1.8`: the cues through the
  CLI's writers, so an edited FCPXML keeps the frame grid and DTD validity of a written one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import mimetypes
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..result import Segment, TranscriptionResult
from ..settings import Choices
from ..subtitles import Cue, CueRules, check_cues
from ..timecode import FRAME_RATES
from ..tokenizer import LANGUAGES
from ..writers import FORMATS, WriteOptions, cues_for, get_writer
from ..writers.base import FCPXML_VERSIONS, cue_text
from .render import write_options

if TYPE_CHECKING:
    from .app import Service
    from .jobs import Job

STATIC = Path(__file__).with_name("static")
MAX_CUES = 20_000
MAX_CUE_CHARS = 2_000
MAX_EDIT_BYTES = 16 * 2**20
STREAM_SECONDS = 25.0  # one event stream's life; the page reconnects at once
EXPORT_TYPES = {
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
    "json": "application/json",
    "fcpxml": "application/xml; charset=utf-8",
    "itt": "application/ttml+xml; charset=utf-8",
}
# The page's own files only: media is ours, blob: is what a download link points at.
PAGE_POLICY = (
    "default-src 'self'; media-src 'self' blob:; img-src 'self' data:; object-src 'none'; base-uri 'none';"
    " frame-ancestors 'none'"
)


class EditError(ValueError):
    """A saved edit refused: the one-line message the page shows."""


def media_token(key: str, job_id: str) -> str:
    """The token that opens one job's media: HMAC-SHA256 of its id under the API key."""
    return hmac.new(key.encode(), f"media:{job_id}".encode(), hashlib.sha256).hexdigest()


def cue_dicts(cues: tuple[Cue, ...] | list[Cue]) -> list[dict[str, Any]]:
    return [{"start": c.start, "end": c.end, "text": c.text} for c in cues]


def parse_cues(data: Any, rules: CueRules, duration: float) -> list[Cue]:
    """An edit's cues, checked and snapped to `rules.fps`' frames as every built cue is: times
    non-negative and in order (no cue before the previous one ends), at least a frame long,
    within the media, text not blank. Raises EditError naming the first bad cue, 1-based as
    the page numbers them."""
    if not isinstance(data, list):
        raise EditError("cues: expected a list of {start, end, text}")
    if len(data) > MAX_CUES:
        raise EditError(f"{len(data)} cues: at most {MAX_CUES}")
    rate = rules.fps
    media_end = rate.to_seconds(math.ceil(max(duration, 0.0) / rate.frame_duration - 1e-9))
    cues: list[Cue] = []
    for number, item in enumerate(data, 1):
        if not isinstance(item, dict) or set(item) - {"start", "end", "text"}:
            raise EditError(f"cue {number}: expected an object with start, end and text")
        start, end, text = item.get("start"), item.get("end"), item.get("text")
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise EditError(f"cue {number}: {name} must be a number of seconds")
            if value < 0:
                raise EditError(f"cue {number}: {name} {value:g} s is negative")
        if not isinstance(text, str) or not cue_text(text):
            raise EditError(f"cue {number}: its text is empty")
        if len(text) > MAX_CUE_CHARS:
            raise EditError(f"cue {number}: text longer than {MAX_CUE_CHARS} characters")
        assert isinstance(start, int | float) and isinstance(end, int | float)
        if end <= start:
            raise EditError(f"cue {number}: ends at {end:.3f} s, not after its start ({start:.3f} s)")
        if cues and start < cues[-1].end - 1e-6:
            raise EditError(
                f"cue {number}: starts at {start:.3f} s, before cue {number - 1} ends ({cues[-1].end:.3f} s)"
            )
        first, last = rate.to_frames(start), rate.to_frames(end)
        if last <= first:
            raise EditError(f"cue {number}: shorter than one frame at {rate.name} fps")
        if rate.to_seconds(last) > media_end:
            raise EditError(f"cue {number}: ends at {end:.3f} s, after the media ends ({float(media_end):.3f} s)")
        cues.append(Cue(float(rate.to_seconds(first)), float(rate.to_seconds(last)), tuple(cue_text(text).split("\n"))))
    return cues


def edited_result(result: TranscriptionResult, cues: list[Cue]) -> TranscriptionResult:
    """The transcript as edited: one segment per cue (no tokens, scores or word times, which
    the edit made stale), so TXT and JSON carry the edit as the subtitle formats do."""
    nan = float("nan")
    segments = tuple(
        Segment(k, 0, c.start, c.end, " " + " ".join(c.lines), (), 0.0, nan, nan, nan) for k, c in enumerate(cues)
    )
    return replace(result, segments=segments)


def rules_dict(rules: CueRules) -> dict[str, Any]:
    """The cue rules as the page checks them (the frame duration as an exact fraction)."""
    frame = rules.fps.frame_duration
    data = {k: v for k, v in asdict(rules).items() if k != "fps"}
    return data | {"fps": rules.fps.name, "frame_duration": [frame.numerator, frame.denominator]}


def add_studio(app: FastAPI, service: Service, authorized: list[Any], find: Callable[[str], Job]) -> None:
    """The page and its endpoints on `app` (see the module's docstring)."""
    from .app import ApiError, _one, _value

    store = service.store
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        headers = {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"}
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=headers)

    @app.get("/v1/studio", dependencies=authorized)
    async def studio() -> dict[str, Any]:
        defaults = Choices()
        multilingual = service.model.is_multilingual
        return {
            "model": service.model.name,
            "multilingual": multilingual,
            "languages": [[code, name] for code, name in LANGUAGES.items() if multilingual or code == "en"],
            "frame_rates": list(FRAME_RATES),
            "fcpxml_versions": list(FCPXML_VERSIONS),
            "formats": list(FORMATS),
            "rules": {
                name: getattr(defaults, name)
                for name in ("max_line_width", "max_lines", "max_cps", "min_duration", "max_duration")
            },
            "max_upload_bytes": service.config.max_upload_bytes,
        }

    @app.get("/v1/events", dependencies=authorized)
    async def events() -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            yield "retry: 1000\n\n"
            last, quiet, until = "", time.monotonic(), time.monotonic() + STREAM_SECONDS
            while time.monotonic() < until and not service.closing.is_set():
                jobs = await run_in_threadpool(store.list, 100)
                text = json.dumps([job.status() for job in jobs], ensure_ascii=False)
                if text != last:
                    last, quiet = text, time.monotonic()
                    yield f"event: jobs\ndata: {text}\n\n"
                elif time.monotonic() - quiet > 10:
                    quiet = time.monotonic()
                    yield ": still here\n\n"
                await asyncio.sleep(0.25)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    @app.get("/v1/jobs/{job_id}/media")
    async def media(job_id: str, request: Request, token: str = "") -> FileResponse:
        key = service.config.api_key
        if key is not None and not (token and hmac.compare_digest(token.encode(), media_token(key, job_id).encode())):
            service.check_key(request)  # a script may send the header instead
        job = find(job_id)
        path = store.media_path(job_id) if job.state == "done" else store.uploads / (job.upload or "")
        if not job.request.keep_media or not path.is_file():
            raise ApiError(404, f"job {job_id} keeps no media (submit it with keep_media=true)")
        kind = mimetypes.guess_type(job.filename)[0] or "application/octet-stream"
        return FileResponse(path, media_type=kind, headers={"Cache-Control": "private, max-age=3600"})

    def finished(job_id: str) -> tuple[Job, TranscriptionResult]:
        job = find(job_id)
        result = store.result(job_id) if job.state == "done" else None
        if result is None:
            raise ApiError(409, f"job {job_id} is {job.state}: its cues exist once it is done")
        return job, result

    def options(job: Job, query: dict[str, list[str]] | None = None) -> WriteOptions:
        changed = {name: _value(name, text) for name in ("fps", "fcpxml_version") if (text := _one(query or {}, name))}
        try:
            return write_options(replace(job.request.choices, **changed), service.model.name, job.footage)
        except ValueError as e:
            raise ApiError(400, str(e)) from None

    def current(job: Job, result: TranscriptionResult, write: WriteOptions) -> tuple[list[Cue], int]:
        """The saved edit on `write`'s frame grid and its revision, else the built cues and 0."""
        saved = store.edits(job.id)
        if saved is None:
            return list(cues_for(result, write)), 0
        try:
            return parse_cues(saved[0], write.rules, result.duration), saved[1]
        except EditError as e:  # e.g. a one-frame cue at 60 fps exported at 24
            raise ApiError(400, f"{e} (at the frame rate asked for)") from None

    def state(job: Job, result: TranscriptionResult) -> dict[str, Any]:
        write = options(job)
        cues, revision = current(job, result, write)
        key = service.config.api_key
        media_url = f"/v1/jobs/{job.id}/media" + (f"?token={media_token(key, job.id)}" if key else "")
        return {
            "id": job.id,
            "filename": job.filename,
            "duration": result.duration,
            "language": result.language,
            "revision": revision,
            "edited": revision > 0,
            "rules": rules_dict(write.rules),
            "fcpxml_version": write.fcpxml_version,
            "media": media_url if job.request.keep_media and store.media_path(job.id).is_file() else None,
            "video": job.footage is not None,
            "cues": cue_dicts(cues),
            "violations": [asdict(v) for v in check_cues(cues, write.rules, result.duration)],
        }

    @app.get("/v1/jobs/{job_id}/cues", dependencies=authorized)
    async def get_cues(job_id: str) -> dict[str, Any]:
        return state(*finished(job_id))

    @app.put("/v1/jobs/{job_id}/cues", dependencies=authorized)
    async def put_cues(job_id: str, request: Request) -> JSONResponse:
        job, result = finished(job_id)
        body = await read_json(request)
        revision = body.get("revision")
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
            raise ApiError(400, "revision: the revision the edit is based on, 0 for the built cues")
        try:
            cues = parse_cues(body.get("cues"), options(job).rules, result.duration)
        except EditError as e:
            raise ApiError(400, str(e)) from None
        if store.save_edits(job_id, cue_dicts(cues), revision) is None:
            saved = store.edits(job_id)
            raise ApiError(409, f"the cues were saved elsewhere (revision {saved[1] if saved else 0}); reload them")
        return JSONResponse(state(job, result))

    @app.delete("/v1/jobs/{job_id}/cues", dependencies=authorized)
    async def revert_cues(job_id: str) -> dict[str, Any]:
        job, result = finished(job_id)
        store.drop_edits(job_id)
        return state(job, result)

    @app.get("/v1/jobs/{job_id}/export", dependencies=authorized)
    async def export(job_id: str, request: Request) -> Response:
        job, result = finished(job_id)
        query = {k: request.query_params.getlist(k) for k in request.query_params}
        unknown = set(query) - {"format", "fps", "fcpxml_version"}
        if unknown:
            raise ApiError(400, f"unknown parameter(s) {', '.join(sorted(unknown))}")
        fmt = _one(query, "format") or "srt"
        if fmt not in FORMATS:
            raise ApiError(400, f"format '{fmt}': choose one of {', '.join(FORMATS)}")
        write = options(job, query)
        cues, revision = current(job, result, write)
        writer = get_writer(fmt)
        body = writer.render(edited_result(result, cues) if revision else result, cues, write)
        name = (Path(job.filename).stem or "subtitles") + writer.extension
        disposition = f"attachment; filename*=UTF-8''{quote(name, safe='')}"
        return Response(body, media_type=EXPORT_TYPES[fmt], headers={"Content-Disposition": disposition})

    async def read_json(request: Request) -> dict[str, Any]:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_EDIT_BYTES:
            raise ApiError(413, f"edit of {declared} bytes: larger than {MAX_EDIT_BYTES} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_EDIT_BYTES:
                raise ApiError(413, f"edit larger than {MAX_EDIT_BYTES} bytes")
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, 'expected a JSON body: {"revision": n, "cues": [...]}') from None
        if not isinstance(data, dict):
            raise ApiError(400, 'expected a JSON object: {"revision": n, "cues": [...]}')
        return data

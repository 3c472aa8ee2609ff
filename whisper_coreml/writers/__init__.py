"""Output formats: pick them by name, find where they go, write them atomically."""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path

from whisper_coreml.result import TranscriptionResult
from whisper_coreml.subtitles import Cue, build_cues, raw_cues
from whisper_coreml.writers.atomic import atomic_write_text
from whisper_coreml.writers.base import WriteOptions, Writer
from whisper_coreml.writers.fcpxml import FCPXMLWriter
from whisper_coreml.writers.formats import JSONWriter, SRTWriter, TXTWriter, VTTWriter
from whisper_coreml.writers.itt import ITTWriter

WRITERS: dict[str, Writer] = {
    "srt": SRTWriter(),
    "vtt": VTTWriter(),
    "txt": TXTWriter(),
    "json": JSONWriter(),
    "fcpxml": FCPXMLWriter(),
    "itt": ITTWriter(),
}
FORMATS: tuple[str, ...] = tuple(WRITERS)
SUBTITLE_FORMATS = frozenset({"srt", "vtt", "fcpxml", "itt"})  # the formats that show cues

__all__ = [
    "FORMATS",
    "SUBTITLE_FORMATS",
    "WRITERS",
    "WriteOptions",
    "Writer",
    "atomic_write_text",
    "cues_for",
    "get_writer",
    "output_path_for",
    "output_settings",
    "parse_formats",
    "write_result",
]


def get_writer(fmt: str) -> Writer:
    """The writer for `fmt`, or a ValueError that tells the user what would have worked."""
    try:
        return WRITERS[fmt]
    except KeyError:
        known = ", ".join(FORMATS)
        raise ValueError(f"unknown output format {fmt!r}; choose from {known} or all") from None


def parse_formats(spec: str) -> tuple[str, ...]:
    """Turn a CLI value like "srt,vtt" or "all" into format names, in the order given.

    Case and spaces are forgiven and duplicates dropped, so "SRT, srt" writes one file.
    """
    formats: list[str] = []
    for name in (part.strip().lower() for part in spec.split(",")):
        if not name:
            continue
        for fmt in FORMATS if name == "all" else (name,):
            get_writer(fmt)
            if fmt not in formats:
                formats.append(fmt)
    if not formats:
        raise ValueError(f"no output format given; choose from {', '.join(FORMATS)} or all")
    return tuple(formats)


def output_path_for(
    input_path: str | os.PathLike[str], fmt: str, output_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Where `fmt` output for `input_path` goes: its stem plus the format's extension, next to
    the input unless `output_dir` is given (editors expect `clip.srt` beside `clip.mov`)."""
    source = Path(input_path)
    directory = source.parent if output_dir is None else Path(output_dir)
    return directory / (source.stem + get_writer(fmt).extension)


def output_settings(fmt: str, options: WriteOptions) -> dict[str, object]:
    """The write options that shape `fmt`'s file: a changed fps redoes the subtitle formats
    but not the transcript's JSON, a changed FCPXML version only the FCPXML."""
    if fmt not in SUBTITLE_FORMATS:
        return {}
    shared = {"cues": options.cues, "rules": asdict(options.rules)}
    if fmt == "vtt":
        return {**shared, "highlight_words": options.highlight_words}
    if fmt == "fcpxml":
        skip = {"cues", "rules", "highlight_words"}
        return {**shared, **{f.name: getattr(options, f.name) for f in fields(options) if f.name not in skip}}
    return shared


def cues_for(result: TranscriptionResult, options: WriteOptions) -> tuple[Cue, ...]:
    """The subtitle cues every format of one result shares (built once per result): under
    `options.rules`, or one per Whisper segment when `options.cues` is "raw"."""
    return raw_cues(result) if options.cues == "raw" else build_cues(result, options.rules)


def write_result(
    result: TranscriptionResult,
    fmt: str,
    output_path: str | os.PathLike[str],
    options: WriteOptions | None = None,
    cues: tuple[Cue, ...] | None = None,
) -> Path:
    """Render `result` as `fmt` and replace `output_path` atomically; returns the path.

    Pass `cues` from `cues_for` when writing several formats, so they are built once."""
    options = options or WriteOptions()
    return get_writer(fmt).write(result, cues_for(result, options) if cues is None else cues, options, output_path)

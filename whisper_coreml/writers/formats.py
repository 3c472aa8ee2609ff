"""The four output formats: SRT, WebVTT, plain text and JSON.

Subtitle and text formats skip segments with no visible text (they would be empty cues or
blank lines); JSON keeps every segment because it is the complete record.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from datetime import timedelta

import srt

from whisper_coreml.result import TranscriptionResult
from whisper_coreml.subtitles import Cue
from whisper_coreml.writers.base import (
    WriteOptions,
    Writer,
    cue_span,
    cue_text,
    format_timestamp,
    to_milliseconds,
)


class SRTWriter(Writer):
    """SubRip, composed by the `srt` library so the output is what SRT parsers expect."""

    extension = ".srt"

    def render(self, result: TranscriptionResult, cues: Sequence[Cue], options: WriteOptions) -> str:
        subtitles = []
        for cue in cues:
            # "-->" inside the text would read as a timing line (openai-whisper does the same).
            text = cue_text(cue.text).replace("-->", "->")
            if not text:
                continue
            start, end = cue_span(cue)
            subtitles.append(
                srt.Subtitle(
                    index=len(subtitles) + 1,
                    start=timedelta(milliseconds=start),
                    end=timedelta(milliseconds=end),
                    content=text,
                )
            )
        # reindex=False keeps segment order and zero-length cues; srt's reindexing would sort
        # them and silently drop cues whose end equals their start.
        return srt.compose(subtitles, reindex=False)


class VTTWriter(Writer):
    """WebVTT with hours always present, which every editor and browser accepts.

    With `highlight_words`, each cue that carries word timestamps becomes consecutive cues
    tiling its span, showing the same lines with the word being spoken underlined (`<u>`, as
    openai-whisper does). Underline is a basic WebVTT span that browsers, VLC, mpv and
    ffmpeg all draw; karaoke timestamp tags (`<00:00:01.000>`) would keep one cue, but they
    only change the look through `::cue(:past)` CSS on a web page, so most players would show
    no highlight at all.
    """

    extension = ".vtt"

    def render(self, result: TranscriptionResult, cues: Sequence[Cue], options: WriteOptions) -> str:
        blocks = ["WEBVTT"]
        for cue in cues:
            text = cue_text(cue.text)
            if not text:
                continue
            # The WebVTT spec reserves "&", "<" and ">" in cue text; escaping them also
            # defuses any "-->".
            pieces = _highlighted(cue, text) if options.highlight_words else []
            for start, end, body in pieces or [(*cue_span(cue), _escape(text))]:
                blocks.append(f"{format_timestamp(start, '.')} --> {format_timestamp(end, '.')}\n{body}")
        return "\n\n".join(blocks) + "\n"


def _escape(text: str) -> str:
    return html.escape(text, quote=False)


def _highlighted(cue: Cue, text: str) -> list[tuple[int, int, str]]:
    """(start ms, end ms, cue text) pieces covering exactly the cue's span: plain text between
    words, each word underlined while it is spoken. Words are found in order in the cue's
    text; empty when the cue carries no words, so it is written as usual."""
    start, end = cue_span(cue)
    pieces: list[tuple[int, int, str]] = []

    def add(until: int, body: str) -> None:
        nonlocal start
        until = min(max(until, start), end)
        if until > start:
            pieces.append((start, until, body))
            start = until

    cursor = 0
    for word in cue.words:
        token = word.word.strip()
        at = text.find(token, cursor) if token else -1
        if at < 0:
            continue
        cursor = at + len(token)
        add(to_milliseconds(word.start), _escape(text))
        add(to_milliseconds(word.end), f"{_escape(text[:at])}<u>{_escape(token)}</u>{_escape(text[cursor:])}")
    if pieces:
        add(end, _escape(text))
    return pieces


class TXTWriter(Writer):
    """The transcript as plain text, one segment per line."""

    extension = ".txt"

    def render(self, result: TranscriptionResult, cues: Sequence[Cue], options: WriteOptions) -> str:
        lines = (cue_text(segment.text).replace("\n", " ") for segment in result.segments)
        return "".join(f"{line}\n" for line in lines if line)


class JSONWriter(Writer):
    """openai-whisper's result dict plus model/duration/task, rounded to readable precision."""

    extension = ".json"

    def render(self, result: TranscriptionResult, cues: Sequence[Cue], options: WriteOptions) -> str:
        data = result.to_dict()
        data["duration"] = _seconds(data["duration"])
        for segment in data["segments"]:
            segment["start"] = _seconds(segment["start"])
            segment["end"] = _seconds(segment["end"])
            for key in ("temperature", "avg_logprob", "compression_ratio", "no_speech_prob"):
                segment[key] = _score(segment[key])
            for word in segment["words"] or ():
                word["start"] = _seconds(word["start"])
                word["end"] = _seconds(word["end"])
                word["probability"] = _score(word["probability"])
        return json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False) + "\n"


def _seconds(value: float) -> float:
    """A time on the same millisecond the subtitle formats use."""
    return to_milliseconds(value) / 1000


def _score(value: float) -> float | None:
    """Four decimals are plenty for log-probs and ratios; NaN/inf become null because they
    are not valid JSON."""
    return round(float(value), 4) if math.isfinite(value) else None

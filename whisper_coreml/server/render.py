"""A stored transcription rendered as the response a client asked for.

OpenAI's formats (`json`, `text`, `srt`, `verbose_json`, `vtt`) and ours (`fcpxml`, `itt`)
all come from the saved TranscriptionResult through the CLI's writers and cue builder, so a
response is byte for byte the file the CLI writes for the same audio and choices (`text` is
the CLI's .txt, `srt` its .srt); only `json` and `verbose_json` take OpenAI's shapes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import Any

from ..result import Segment, TranscriptionResult, Word
from ..settings import Choices, build_settings
from ..tokenizer import LANGUAGES
from ..writers import WriteOptions, cues_for, get_writer
from ..writers.base import to_milliseconds

OPENAI_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
RESPONSE_FORMATS = (*OPENAI_FORMATS, "fcpxml", "itt")
GRANULARITIES = ("word", "segment")
# What each response format is among the CLI's --format names: it decides word timing as --format does.
CLI_FORMAT = {"json": "json", "verbose_json": "json", "text": "txt", "srt": "srt", "vtt": "vtt"} | {
    f: f for f in ("fcpxml", "itt")
}
MEDIA_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "text/plain; charset=utf-8",  # what OpenAI's API sends; its client reads any text
    "vtt": "text/vtt; charset=utf-8",
    "fcpxml": "application/xml; charset=utf-8",
    "itt": "application/ttml+xml; charset=utf-8",
}


def result_from_dict(data: dict[str, Any]) -> TranscriptionResult:
    """The inverse of `TranscriptionResult.to_dict` (floats round-trip exactly through JSON)."""
    segments = tuple(
        Segment(
            **{k: v for k, v in s.items() if k not in ("tokens", "words")},
            tokens=tuple(s["tokens"]),
            words=None if s.get("words") is None else tuple(Word(**w) for w in s["words"]),
        )
        for s in data["segments"]
    )
    return TranscriptionResult(
        segments, data["language"], data["duration"], model=data["model"], task=data["task"], source=data["source"]
    )


def result_to_dict(result: TranscriptionResult) -> dict[str, Any]:
    """What the job store keeps: `to_dict` plus the name the client gave its file."""
    return {**result.to_dict(), "source": result.source}


@dataclass(frozen=True)
class Rendered:
    body: str
    media_type: str


def write_options(choices: Choices, model: str, footage: dict[str, Any] | None) -> WriteOptions:
    """`choices`' write options for an upload whose footage (see Footage) was probed when it ran."""
    write = build_settings(model, choices, option=str).write
    if footage is None:
        return write
    rules = write.rules if choices.fps is not None else replace(write.rules, fps=footage["grid"])
    return replace(write, rules=rules, video=footage["video"])


def render(
    result: TranscriptionResult,
    response_format: str,
    write: WriteOptions,
    granularities: tuple[str, ...] = (),
) -> Rendered:
    """`result` as `response_format`."""
    if response_format == "json":
        return Rendered(json.dumps({"text": result.text.strip()}, ensure_ascii=False), MEDIA_TYPES["json"])
    if response_format == "verbose_json":
        return Rendered(json.dumps(verbose(result, granularities), ensure_ascii=False), MEDIA_TYPES["verbose_json"])
    writer = get_writer(CLI_FORMAT[response_format])
    return Rendered(writer.render(result, cues_for(result, write), write), MEDIA_TYPES[response_format])


def verbose(result: TranscriptionResult, granularities: tuple[str, ...]) -> dict[str, Any]:
    """OpenAI's verbose_json: segments unless only words were asked for, words when they were
    (without the leading space Whisper's tokens carry, as OpenAI's API writes them, and with
    our `probability`). Times are on the millisecond every other format uses."""
    data: dict[str, Any] = {
        "task": result.task,
        "language": "english" if result.task == "translate" else LANGUAGES.get(result.language, result.language),
        "duration": _seconds(result.duration),
        "text": result.text.strip(),
    }
    if "segment" in granularities or not granularities:
        data["segments"] = [
            {
                "id": s.id,
                "seek": s.seek,
                "start": _seconds(s.start),
                "end": _seconds(s.end),
                "text": s.text,
                "tokens": list(s.tokens),
                "temperature": s.temperature,
                "avg_logprob": _score(s.avg_logprob),
                "compression_ratio": _score(s.compression_ratio),
                "no_speech_prob": _score(s.no_speech_prob),
            }
            for s in result.segments
        ]
    if "word" in granularities:
        data["words"] = [
            {
                "word": w.word.strip(),
                "start": _seconds(w.start),
                "end": _seconds(w.end),
                "probability": _score(w.probability),
            }
            for s in result.segments
            for w in s.words or ()
        ]
    data["usage"] = {"type": "duration", "seconds": math.ceil(result.duration)}
    return data


def _seconds(value: float) -> float:
    return to_milliseconds(value) / 1000


def _score(value: float) -> float | None:
    return round(float(value), 4) if math.isfinite(value) else None

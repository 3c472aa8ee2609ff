"""Writers: exact rendered output, round-trips through real parsers, and atomic writes."""

from __future__ import annotations

import json
import os
import stat
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import srt

from whisper_coreml.result import Segment, TranscriptionResult, Word
from whisper_coreml.writers import (
    FORMATS,
    WRITERS,
    WriteOptions,
    cues_for,
    output_path_for,
    parse_formats,
    write_result,
)
from whisper_coreml.writers.atomic import atomic_write_text
from whisper_coreml.writers.base import format_timestamp, to_milliseconds

TRICKY = "Tom & Jerry <i>say</i> \"hi\" 'ok' 😀 안녕하세요"


def seg(i: int, start: float, end: float, text: str, words: tuple[Word, ...] | None = None):
    return Segment(
        id=i,
        seek=0,
        start=start,
        end=end,
        text=text,
        tokens=(50364, 1000 + i),
        temperature=0.0,
        avg_logprob=-0.2345678,
        compression_ratio=1.23456789,
        no_speech_prob=0.0123456,
        words=words,
    )


RAW = WriteOptions(cues="raw")


def render(fmt: str, result: TranscriptionResult, options: WriteOptions = RAW) -> str:
    """`fmt`'s file contents for `result`, one cue per segment unless `options` say otherwise."""
    return WRITERS[fmt].render(result, cues_for(result, options), options)


def make_result(*segments: Segment, duration: float = 10.0) -> TranscriptionResult:
    return TranscriptionResult(segments=segments, language="en", duration=duration, model="base.en", task="transcribe")


@pytest.fixture
def result() -> TranscriptionResult:
    return make_result(
        seg(0, 0.0, 2.5, " Hello there."),
        seg(1, 2.5, 61.0015, " General Kenobi!"),
        seg(2, 3661.2, 3662.0, "   "),  # blank: skipped by subtitle and text formats
        seg(3, 3662.0, 3663.25, " Last line. "),
    )


# --- timestamps -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "ms"),
    [
        (0.0, 0),
        (0.0015, 2),  # 0.0015 * 1000 is 1.4999... in binary; half up on the decimal value
        (0.0025, 3),  # round() would give 2 (half to even)
        (1.0005, 1001),
        (1.0004999, 1000),
        (-0.3, 0),
        (float("nan"), 0),
        (float("inf"), 0),
    ],
)
def test_to_milliseconds_rounds_half_up_and_never_negative(seconds: float, ms: int) -> None:
    assert to_milliseconds(seconds) == ms


def test_format_timestamp_handles_more_than_99_hours() -> None:
    assert format_timestamp(0, ",") == "00:00:00,000"
    assert format_timestamp(3_723_004, ".") == "01:02:03.004"
    assert format_timestamp(to_milliseconds(360_000.5), ".") == "100:00:00.500"


# --- SRT --------------------------------------------------------------------------------


def test_srt_round_trips_times_and_texts(result: TranscriptionResult) -> None:
    text = render("srt", result)
    subs = list(srt.parse(text))
    assert [s.index for s in subs] == [1, 2, 3]
    assert [s.content for s in subs] == ["Hello there.", "General Kenobi!", "Last line."]
    assert [(s.start, s.end) for s in subs] == [
        (timedelta(0), timedelta(seconds=2.5)),
        (timedelta(seconds=2.5), timedelta(seconds=61, milliseconds=2)),
        (timedelta(seconds=3662), timedelta(seconds=3663, milliseconds=250)),
    ]
    assert text.startswith("1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n")


def test_srt_clamps_inverted_end_and_keeps_overlaps_in_order() -> None:
    result = make_result(
        seg(0, 5.0, 4.0, "inverted"),  # end < start
        seg(1, 1.0, 6.0, "overlaps and starts earlier"),
        seg(2, -0.5, 0.5, "negative start"),
    )
    subs = list(srt.parse(render("srt", result)))
    assert [(s.index, s.content) for s in subs] == [
        (1, "inverted"),
        (2, "overlaps and starts earlier"),
        (3, "negative start"),
    ]
    assert subs[0].start == subs[0].end == timedelta(seconds=5)
    assert subs[2].start == timedelta(0)


def test_srt_keeps_cue_structure_when_text_has_blank_lines_or_arrows() -> None:
    result = make_result(seg(0, 0, 1, "one\n\n\ntwo --> three"), seg(1, 1, 2, "next"))
    subs = list(srt.parse(render("srt", result)))
    assert [s.content for s in subs] == ["one\ntwo -> three", "next"]


def test_srt_hours_beyond_99() -> None:
    text = render("srt", make_result(seg(0, 360_000.0, 360_001.25, "late")))
    assert text == "1\n100:00:00,000 --> 100:00:01,250\nlate\n\n"


# --- VTT --------------------------------------------------------------------------------


def test_vtt_exact_text(result: TranscriptionResult) -> None:
    assert render("vtt", result) == (
        "WEBVTT\n"
        "\n"
        "00:00:00.000 --> 00:00:02.500\n"
        "Hello there.\n"
        "\n"
        "00:00:02.500 --> 00:01:01.002\n"
        "General Kenobi!\n"
        "\n"
        "01:01:02.000 --> 01:01:03.250\n"
        "Last line.\n"
    )


def test_vtt_escapes_markup_characters() -> None:
    text = render("vtt", make_result(seg(0, 0, 1, " a < b && c > d --> e ")))
    assert text.splitlines()[3] == "a &lt; b &amp;&amp; c &gt; d --&gt; e"


# --- TXT --------------------------------------------------------------------------------


def test_txt_one_stripped_segment_per_line(result: TranscriptionResult) -> None:
    assert render("txt", result) == "Hello there.\nGeneral Kenobi!\nLast line.\n"


# --- JSON -------------------------------------------------------------------------------


def test_json_round_trips_with_rounded_fields() -> None:
    words = (Word(0.1234, 0.98765, " Hello", 0.912345678), Word(0.98765, 1.5, " world", 0.5))
    result = make_result(seg(0, 0.1234, 1.5, " Hello world", words), duration=12.3456789)
    data = json.loads(render("json", result))
    assert list(data) == ["text", "language", "duration", "model", "task", "segments"]
    assert data["text"] == " Hello world"
    assert (data["language"], data["model"], data["task"]) == ("en", "base.en", "transcribe")
    assert data["duration"] == 12.346
    [segment] = data["segments"]
    assert list(segment) == [
        "id",
        "seek",
        "start",
        "end",
        "text",
        "tokens",
        "temperature",
        "avg_logprob",
        "compression_ratio",
        "no_speech_prob",
        "words",
    ]
    assert segment["start"] == 0.123
    assert segment["end"] == 1.5
    assert segment["tokens"] == [50364, 1000]
    assert segment["avg_logprob"] == -0.2346
    assert segment["compression_ratio"] == 1.2346
    assert segment["no_speech_prob"] == 0.0123
    assert segment["words"] == [
        {"start": 0.123, "end": 0.988, "word": " Hello", "probability": 0.9123},
        {"start": 0.988, "end": 1.5, "word": " world", "probability": 0.5},
    ]


def test_json_is_stable_indented_and_keeps_non_ascii_and_blank_segments() -> None:
    result = make_result(seg(0, 0, 1, TRICKY), seg(1, 1, 2, "  "))
    text = render("json", result)
    assert text == render("json", result)
    assert '\n  "language": "en",\n' in text
    assert text.endswith("}\n")
    assert "안녕하세요" in text
    assert "\\u" not in text
    assert [s["text"] for s in json.loads(text)["segments"]] == [TRICKY, "  "]


def test_json_writes_non_finite_scores_as_null() -> None:
    bad = replace(seg(0, 0, 1, "x"), avg_logprob=float("-inf"))
    text = render("json", make_result(bad))
    assert json.loads(text)["segments"][0]["avg_logprob"] is None


# --- every format -----------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_special_characters_survive_every_format(fmt: str, tmp_path: Path) -> None:
    path = write_result(make_result(seg(0, 0, 1, f" {TRICKY} ")), fmt, tmp_path / f"out.{fmt}", RAW)
    text = path.read_text(encoding="utf-8")
    if fmt == "srt":
        assert [s.content for s in srt.parse(text)] == [TRICKY]
    elif fmt == "json":
        assert json.loads(text)["segments"][0]["text"] == f" {TRICKY} "
    elif fmt == "vtt":
        cue = text.splitlines()[3]
        assert cue == TRICKY.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    elif fmt == "fcpxml":
        assert ElementTree.fromstring(text.encode()).find(".//caption/text/text-style").text == TRICKY
    elif fmt == "itt":
        assert ElementTree.fromstring(text.encode()).find(".//{http://www.w3.org/ns/ttml}p").text == TRICKY
    else:
        assert text == TRICKY + "\n"


def test_empty_result_gives_valid_empty_documents() -> None:
    empty = make_result(duration=0.0)
    assert render("srt", empty) == ""
    assert render("vtt", empty) == "WEBVTT\n"
    assert render("txt", empty) == ""
    data = json.loads(render("json", empty))
    assert data["segments"] == []
    assert data["text"] == ""
    assert data["duration"] == 0.0


def test_extensions() -> None:
    assert {fmt: WRITERS[fmt].extension for fmt in FORMATS} == {
        "srt": ".srt",
        "vtt": ".vtt",
        "txt": ".txt",
        "json": ".json",
        "fcpxml": ".fcpxml",
        "itt": ".itt",
    }


# --- format selection and paths ---------------------------------------------------------


def test_parse_formats() -> None:
    assert parse_formats("srt") == ("srt",)
    assert parse_formats("vtt,srt") == ("vtt", "srt")
    assert parse_formats(" SRT , srt,json ") == ("srt", "json")
    assert parse_formats("all") == FORMATS == ("srt", "vtt", "txt", "json", "fcpxml", "itt")
    assert parse_formats("json,all") == ("json", "srt", "vtt", "txt", "fcpxml", "itt")


@pytest.mark.parametrize("spec", ["srt,docx", "tsv", "", " , "])
def test_parse_formats_rejects_unknown_or_empty(spec: str) -> None:
    with pytest.raises(ValueError, match="srt, vtt, txt, json, fcpxml, itt or all"):
        parse_formats(spec)


def test_unknown_format_errors_everywhere(result: TranscriptionResult, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown output format 'docx'.*srt, vtt, txt, json"):
        output_path_for("clip.mov", "docx")
    with pytest.raises(ValueError, match="unknown output format 'SRT'"):
        write_result(result, "SRT", tmp_path / "x.srt")
    assert list(tmp_path.iterdir()) == []


def test_output_path_for(tmp_path: Path) -> None:
    assert output_path_for("media/clip.v2.mov", "srt") == Path("media/clip.v2.srt")
    assert output_path_for(Path("clip.mp4"), "json") == Path("clip.json")
    assert output_path_for("/in/clip.wav", "vtt", tmp_path) == tmp_path / "clip.vtt"
    assert output_path_for("/in/clip.wav", "txt", str(tmp_path)) == tmp_path / "clip.txt"


# --- atomic writes ----------------------------------------------------------------------


def test_write_result_writes_and_overwrites(result: TranscriptionResult, tmp_path: Path) -> None:
    target = tmp_path / "clip.srt"
    target.write_text("old", encoding="utf-8")
    assert write_result(result, "srt", target) == target
    assert target.read_text(encoding="utf-8") == render("srt", result, WriteOptions())
    assert os.listdir(tmp_path) == ["clip.srt"]


def test_atomic_write_respects_umask_and_keeps_existing_mode(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        fresh = atomic_write_text(tmp_path / "fresh.txt", "x")
        existing = tmp_path / "existing.txt"
        existing.write_text("old", encoding="utf-8")
        existing.chmod(0o640)
        atomic_write_text(existing, "new")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
    assert stat.S_IMODE(existing.stat().st_mode) == 0o640
    assert existing.read_text(encoding="utf-8") == "new"


def test_atomic_write_keeps_existing_file_when_replace_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "clip.vtt"
    target.write_text("previous", encoding="utf-8")
    seen: list[str] = []

    def failing_replace(src: str, dst: str) -> None:
        seen.append(os.path.basename(src))
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "new contents")
    [tmp_name] = seen
    assert tmp_name.startswith(".clip.vtt.")
    assert tmp_name.endswith(".tmp")
    assert target.read_text(encoding="utf-8") == "previous"
    assert os.listdir(tmp_path) == ["clip.vtt"]


def test_atomic_write_cleans_up_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "new.txt", "text")
    assert os.listdir(tmp_path) == []


def test_failed_render_touches_nothing(
    result: TranscriptionResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "clip.json"
    target.write_text("previous", encoding="utf-8")

    def failing_render(self: object, *args: object) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr(type(WRITERS["json"]), "render", failing_render)
    with pytest.raises(RuntimeError, match="boom"):
        write_result(result, "json", target)
    assert target.read_text(encoding="utf-8") == "previous"
    assert os.listdir(tmp_path) == ["clip.json"]

"""The window journal: a long file's transcription survives Ctrl-C, kill -9 and power cuts.

Every finished 30-s window is appended to a hidden JSON-lines file beside the outputs (and
fsynced) with the seek loop's state, so a rerun restores the segments and state and decodes
only the windows that are left; the result equals an uninterrupted run's because the loop is
deterministic given that state. A torn last line (the power went mid-write) is ignored.

The first line names what the journal belongs to: the input's identity and the transcription
settings (`key`). A journal with another key is stale and is started again. Once the file is
finished a last line records its duration, and the journal is the file's transcript: outputs
in other formats or under other cue rules are then written from it without the model.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from .result import Segment, TranscriptionResult, Word
from .transcribe import FRAMES_PER_SECOND, Resumed, SeekState

VERSION = 1


def _segment_from(data: dict[str, Any]) -> Segment:
    words = data.get("words")
    return Segment(
        **{k: v for k, v in data.items() if k not in ("tokens", "words")},
        tokens=tuple(data["tokens"]),
        words=None if words is None else tuple(Word(**w) for w in words),
    )


class FileJournal:
    """One input's journal at `path`, valid for transcriptions whose settings hash to `key`."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self._file: IO[bytes] | None = None
        self.restored_windows = 0  # windows a rerun did not decode again
        self.resumed_at: float | None = None  # seconds of audio the journal already held
        self.windows = 0  # windows this run decoded (or skipped as silent)

    def _read(self) -> tuple[dict[str, Any], list[dict[str, Any]], int] | None:
        """(header, later records, bytes they fill) when the journal exists and belongs to `key`."""
        try:
            data = self.path.read_bytes()
        except OSError:
            return None
        records, intact = [], 0
        for line in data.splitlines(keepends=True):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("unterminated")
                records.append(json.loads(line))
            except ValueError:  # a torn write (JSONDecodeError is a ValueError): what precedes it is intact
                break
            intact += len(line)
        if not records or records[0].get("journal") != VERSION or records[0].get("key") != self.key:
            return None
        return records[0], records[1:], intact

    def restore(self) -> Resumed | None:
        read = self._read()
        if read is None or not read[1]:
            return None
        header, records, intact = read
        windows = [r for r in records if "state" in r]
        if not windows:
            return None
        self.restored_windows = len(windows)
        self.resumed_at = windows[-1]["state"]["seek"] / FRAMES_PER_SECOND
        segments = tuple(_segment_from(s) for r in windows for s in r["segments"])
        self._file = open(self.path, "r+b")  # kept open for the whole transcription
        self._file.truncate(intact)  # drop a torn tail so the next record starts a line
        self._file.seek(intact)
        return Resumed(header["language"], SeekState(**windows[-1]["state"]), segments)

    def begin(self, language: str) -> None:
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")  # kept open for the whole transcription
        self._append({"journal": VERSION, "key": self.key, "language": language})

    def window(self, state: SeekState, segments: Sequence[Segment]) -> None:
        self.windows += 1
        self._append({"state": asdict(state), "segments": [asdict(s) for s in segments]})

    def finish(self, result: TranscriptionResult) -> None:
        """Mark the transcription complete (its duration is what the transcript cannot tell)."""
        self._append({"done": True, "duration": result.duration})
        self.close()

    def completed(self, model: str, task: str) -> TranscriptionResult | None:
        """The finished transcription this journal holds, if it holds one."""
        read = self._read()
        if read is None or not read[1] or "done" not in read[1][-1]:
            return None
        header, records, _ = read
        segments = tuple(_segment_from(s) for r in records if "state" in r for s in r["segments"])
        return TranscriptionResult(segments, header["language"], records[-1]["duration"], model=model, task=task)

    def _append(self, record: dict[str, Any]) -> None:
        assert self._file is not None, "begin() or restore() opens the journal"
        self._file.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def remove(self) -> None:
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

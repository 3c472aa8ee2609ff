"""Output records: what each output was made from, so a rerun knows what is really up to date.

An output is up to date only when it was written from this very input (size and mtime) with
the same model, decoding settings and writer settings (cue rules, fps, format version, ...).
Each input keeps a small hidden record beside its outputs, `.<input name>.whisper-coreml.json`,
replaced atomically, listing every output written for it with the settings key, the input version and a
hash of what was written. The hash tells an editor's hand fix from our own file: an edited output is
kept when only a setting changed, and so is a file of that name that we never wrote, unless
the user says --overwrite. Nothing is overwritten without a word.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from .writers.atomic import atomic_write_text

RECORD_SUFFIX = ".whisper-coreml.json"
VERSION = 1


def settings_key(settings: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-able settings (paths and other objects by their str)."""
    text = json.dumps(settings, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def input_identity(path: Path) -> dict[str, int]:
    """What tells one version of an input from the next without reading it: size and mtime."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class State(Enum):
    """Where one output stands before a run."""

    CURRENT = "up to date"
    MISSING = "missing"
    STALE = "stale"  # ours, unedited, but from another input version or other settings
    EDITED = "edited"  # ours, changed by hand since, and now stale
    FOREIGN = "foreign"  # a file of that name we did not write
    FOLDER = "folder"  # a directory stands where the file should go


@dataclass(frozen=True)
class Record:
    """The record of one input's outputs in one folder."""

    path: Path

    @classmethod
    def for_input(cls, source: Path, directory: Path) -> Record:
        return cls(directory / f".{source.name}{RECORD_SUFFIX}")

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and data.get("version") == VERSION else {}

    def state(self, target: Path, key: str, identity: Mapping[str, int]) -> State:
        """How `target` stands against outputs written with settings `key` from input `identity`."""
        if target.is_dir():
            return State.FOLDER
        if not target.exists():
            return State.MISSING
        entry = self._load().get("outputs", {}).get(target.name)
        if entry is None:
            return State.FOREIGN
        if entry.get("settings") == key and entry.get("input") == dict(identity):
            return State.CURRENT  # hand edits included: same input, same settings, nothing to redo
        try:
            edited = _digest(target) != entry.get("sha256")
        except OSError:
            edited = True
        return State.EDITED if edited else State.STALE

    def update(self, identity: Mapping[str, int], written: Mapping[Path, str]) -> None:
        """Record `written` ({output path: settings key}) as made from input `identity`."""
        outputs = self._load().get("outputs", {})
        for target, key in written.items():
            outputs[target.name] = {"settings": key, "input": dict(identity), "sha256": _digest(target)}
        record = {"version": VERSION, "outputs": outputs}
        atomic_write_text(self.path, json.dumps(record, indent=1, sort_keys=True) + "\n")

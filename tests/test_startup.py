"""Start-up: the commands that need no model never import torch (nor numpy), and the public API still loads.

Each check runs the console scripts' entry point in a fresh interpreter and asks it, at exit,
whether torch was imported (timings are benchmarks/startup.py's job, not a test's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = (
    "import atexit, sys; atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules, "
    "'numpy loaded:', 'numpy' in sys.modules, file=sys.stderr))"
)


def fresh(code: str, *args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`code` in a new interpreter that imports this checkout's whisper_coreml."""
    path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {}), "PYTHONPATH": path},
    )


def command(main: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """The `transcribe` (transcribe_main) or `whisper-coreml` (main) console script, reporting torch."""
    return fresh(f"{REPORT}\nfrom whisper_coreml.cli import {main}\nsys.exit({main}())", *args)


def test_help_does_not_import_torch() -> None:
    result = command("transcribe_main", "--help")
    assert result.returncode == 0, result.stderr
    assert "--format" in result.stdout and "--engine" in result.stdout
    assert "torch loaded: False numpy loaded: False" in result.stderr


def test_models_does_not_import_torch() -> None:
    result = command("main", "models")
    assert result.returncode == 0, result.stderr
    assert "tiny.en (default)" in result.stdout
    assert "torch loaded: False" in result.stderr


def test_finished_folder_rerun_does_not_import_torch(tmp_path: Path, speech: Callable[[str], Path]) -> None:
    folder = tmp_path / "card"
    folder.mkdir()
    shutil.copyfile(speech("en/arctic_a0010.wav"), folder / "arctic_a0010.wav")
    first = command("transcribe_main", folder, "--format", "srt,txt")
    assert first.returncode == 0, first.stderr
    assert "torch loaded: True" in first.stderr  # it did transcribe
    again = command("transcribe_main", folder, "--format", "srt,txt")
    assert again.returncode == 0, again.stderr
    assert "all 1 input(s) up to date" in again.stderr
    assert "torch loaded: False numpy loaded: False" in again.stderr  # numpy alone was ~0.2 s of it


def test_usage_error_does_not_import_torch(tmp_path: Path) -> None:
    result = command("transcribe_main", tmp_path, "--max-lines", "0")
    assert result.returncode == 2
    assert "error: --max-lines 0: must be at least 1" in result.stderr
    assert "torch loaded: False" in result.stderr


def test_package_import_is_light_and_configures_openmp_first() -> None:
    """Where the machine's load can be read (Linux), threads spin as libgomp likes and the engine
    sets their count (openmp.ThreadGovernor); elsewhere idle threads sleep at once."""
    code = (
        "import os, sys, whisper_coreml\n"
        "print('torch' in sys.modules, os.environ.get('GOMP_SPINCOUNT', '-'), os.environ.get('KMP_BLOCKTIME', '-'))"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    readable = Path("/proc/stat").is_file()
    assert result.stdout.split() == ["False", "-", "-" if readable else "1"]


def test_public_api_loads_on_first_use() -> None:
    """Every public name still works, and `whisper_coreml.transcribe` stays the function even when
    the submodule of that name is imported first (the import system would bind the module)."""
    code = """
import warnings
warnings.filterwarnings("error", "torch was imported before whisper_coreml")  # openmp.py's warning
import whisper_coreml as wc
from whisper_coreml.transcribe import split_segments  # the submodule, first
assert callable(wc.transcribe) and wc.transcribe.__module__ == "whisper_coreml.api", wc.transcribe
from whisper_coreml import TranscriptionOptions, load_model, transcribe
assert transcribe is wc.transcribe and TranscriptionOptions().task == "transcribe"
assert set(wc.__all__) <= set(dir(wc))
for name in wc.__all__:
    getattr(wc, name)
model = load_model("tiny.en", engine="torch", device="cpu")
assert isinstance(model, wc.WhisperModel)
result = wc.transcribe(sys.argv[1], model="tiny.en", engine="torch")
assert isinstance(result, wc.TranscriptionResult) and "welcome" in result.text.lower(), result.text
try:
    wc.no_such_name
except AttributeError as e:
    assert "no_such_name" in str(e)
else:
    raise AssertionError("wc.no_such_name should not exist")
print("ok")
"""
    result = fresh("import sys\n" + code, ROOT / "samples" / "espeak_welcome.opus")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"

"""Core ML by default on a Mac: `auto` converts a catalog model once, `torch` opts out, Linux is unchanged.

Core ML cannot run here, so the Mac is simulated (`sys.platform`, `platform.mac_ver`) and the
converter and the bundle engine are stand-ins, except in the failure test, where the real
converter fails partway. What Core ML itself does is tests/test_macos.py's (macOS only).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import whisper_coreml as wc
from whisper_coreml import api
from whisper_coreml.coreml import first_use, macos
from whisper_coreml.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty models folder of this test's own."""
    folder = tmp_path / "models"
    monkeypatch.setenv("WHISPER_COREML_MODELS", str(folder))
    return folder


def pretend_mac(monkeypatch: pytest.MonkeyPatch, version: str = "15.1") -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(platform, "mac_ver", lambda *args: (version, ("", "", ""), "arm64"))


class Converter:
    """Stands in for coreml.convert.convert: records its calls and writes a manifest, or fails."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, Path, dict[str, Any]]] = []
        self.error = error

    def __call__(self, model: str, output_dir: Path, **options: Any) -> None:
        self.calls.append((model, Path(output_dir), options))
        if self.error is not None:
            raise self.error
        Path(output_dir).mkdir(parents=True)
        (Path(output_dir) / "manifest.json").write_text("{}")


@pytest.fixture
def converter(monkeypatch: pytest.MonkeyPatch) -> Converter:
    from whisper_coreml.coreml import convert

    fake = Converter()
    monkeypatch.setattr(convert, "convert", fake)
    return fake


@pytest.fixture
def bundle_engines(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, str]]:
    """Bundles opened and the engine asked for, instead of Core ML loading them."""
    opened: list[tuple[Path, str]] = []

    def load_bundle(path: Path) -> Any:
        name = path.name.removesuffix("-coreml")
        return SimpleNamespace(path=path, manifest=SimpleNamespace(name=name), tokenizer=lambda: None)

    def create_bundle_engine(bundle: Any, name: str) -> Any:
        opened.append((bundle.path, name))
        return SimpleNamespace(name=name)

    monkeypatch.setattr(api, "load_bundle", load_bundle)
    monkeypatch.setattr(api, "create_bundle_engine", create_bundle_engine)
    return opened


def test_auto_on_a_mac_converts_once_then_finds_the_bundle(
    models: Path, monkeypatch: pytest.MonkeyPatch, converter: Converter, bundle_engines: list[tuple[Path, str]]
) -> None:
    pretend_mac(monkeypatch)
    lines: list[str] = []
    model = api.load_model("tiny.en", progress=lines.append)
    assert model.engine.name == "coreml" and model.name == "tiny.en"
    bundle = models / "tiny.en-coreml"
    assert converter.calls == [("tiny.en", bundle, {"minimum_deployment_target": "macOS15"})]
    assert len(lines) == 1 and "converting tiny.en to Core ML" in lines[0] and str(bundle) in lines[0]
    assert bundle_engines == [(bundle, "coreml")]

    api.load_model("tiny.en", progress=lines.append)  # the next run: the bundle is there
    assert len(converter.calls) == 1 and len(lines) == 1
    assert bundle_engines == [(bundle, "coreml"), (bundle, "coreml")]


def test_progress_goes_to_stderr_by_default(
    models: Path,
    monkeypatch: pytest.MonkeyPatch,
    converter: Converter,
    bundle_engines: list[tuple[Path, str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    pretend_mac(monkeypatch)
    api.load_model()  # the default model, tiny.en
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "converting tiny.en to Core ML" in err


@pytest.mark.parametrize(
    ("version", "target"),
    [("26.0", "macOS15"), ("15.1", "macOS15"), ("14.6.1", "macOS14"), ("13.0", "macOS13"), ("12.7", None), ("", None)],
)
def test_the_bundle_fits_the_running_macos(monkeypatch: pytest.MonkeyPatch, version: str, target: str | None) -> None:
    """macOS 13 and 14 cannot run the stateful decoder: they get the stateless one; older, none."""
    pretend_mac(monkeypatch, version)
    assert macos.deployment_target() == target
    assert first_use.converts_on_first_use("tiny.en") is (target is not None)
    assert macos.runs("macOS15") is (target == "macOS15")
    assert macos.runs("macOS13") is (target is not None)


def test_only_catalog_models_convert(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pretend_mac(monkeypatch)
    assert first_use.converts_on_first_use("base")
    assert not first_use.converts_on_first_use(str(tmp_path / "my-finetune"))


def test_torch_opts_out_on_a_mac(models: Path, monkeypatch: pytest.MonkeyPatch, converter: Converter) -> None:
    # torch's own lazy imports would believe the pretence: the engine itself is a stand-in
    monkeypatch.setattr(
        api, "create_torch_engine", lambda weights, device=None, compute_type=None: SimpleNamespace(name="torch")
    )
    pretend_mac(monkeypatch)
    lines: list[str] = []
    model = api.load_model("tiny.en", engine="torch", device="cpu", progress=lines.append)
    assert model.engine.name == "torch"
    assert converter.calls == [] and lines == [] and not models.exists()


@pytest.mark.skipif(sys.platform == "darwin", reason="auto converts there")
def test_elsewhere_auto_is_torch_and_converts_nothing(models: Path, converter: Converter) -> None:
    assert macos.deployment_target() is None and not macos.runs("macOS13")
    lines: list[str] = []
    model = wc.load_model("tiny.en", device="cpu", progress=lines.append)
    assert model.engine.name == "torch"
    assert converter.calls == [] and lines == [] and not models.exists()


def test_a_failed_conversion_is_one_line(
    models: Path, monkeypatch: pytest.MonkeyPatch, converter: Converter, bundle_engines: list[tuple[Path, str]]
) -> None:
    pretend_mac(monkeypatch)
    converter.error = RuntimeError("MIL program failed validation\n  (a long coremltools trace)")
    with pytest.raises(ModelError) as raised:
        api.load_model("tiny.en", progress=lambda line: None)
    message = str(raised.value)
    assert "\n" not in message
    assert "converting 'tiny.en' to Core ML failed (RuntimeError: MIL program failed validation)" in message
    assert "--engine torch" in message
    assert not (models / "tiny.en-coreml").exists() and bundle_engines == []


def test_a_real_conversion_failing_partway_leaves_no_half_bundle(
    models: Path, monkeypatch: pytest.MonkeyPatch, bundle_engines: list[tuple[Path, str]]
) -> None:
    """The converter's own assembly beside the destination: after it fails, models/ holds no
    bundle and no scratch folder (only the hidden lock), and the next run tries again."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("coremltools")
    from whisper_coreml.coreml import convert

    def fail_after_the_work_folder_exists(*args: Any, **kwargs: Any) -> None:
        scratch = [p for p in models.iterdir() if p.is_dir()]
        assert len(scratch) == 1 and scratch[0].name.startswith(".tiny.en-coreml.")
        (scratch[0] / "encoder.mlpackage").mkdir()  # something half written
        raise RuntimeError("out of memory")

    monkeypatch.setattr(convert, "_load_float32", fail_after_the_work_folder_exists)
    pretend_mac(monkeypatch)
    with pytest.raises(ModelError, match=r"^converting 'tiny.en' to Core ML failed \(RuntimeError: out of memory\)"):
        api.load_model("tiny.en", progress=lambda line: None)
    assert [p.name for p in models.iterdir()] == [".tiny.en-coreml.lock"]
    assert bundle_engines == []


def test_cli_reports_a_failed_conversion_in_one_line(tmp_path: Path) -> None:
    """The whole command on a pretend Mac whose conversion fails: one `error:` line, exit 1,
    nothing written, no traceback."""
    code = """
import platform, sys, sysconfig
from whisper_coreml.coreml import convert  # torch loads as on Linux, before the pretence

sysconfig.get_config_vars()  # read once for Linux: later imports (zoneinfo) would look for macOS's

def fail(*args, **kwargs):
    raise RuntimeError("no Neural Engine compiler")

convert.convert = fail
sys.platform = "darwin"
platform.mac_ver = lambda *args: ("15.1", ("", "", ""), "arm64")
from whisper_coreml.cli import transcribe_main
sys.exit(transcribe_main())
"""
    sample = ROOT / "samples" / "espeak_welcome.opus"
    env = {**os.environ, "WHISPER_COREML_MODELS": str(tmp_path / "models"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code, str(sample), "-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: converting 'tiny.en' to Core ML failed (RuntimeError: no Neural Engine compiler); "
        "--engine torch runs the model without converting it"
    ], result.stderr
    assert "Traceback" not in result.stderr
    assert "converting tiny.en to Core ML for this Mac" in result.stderr
    assert not (tmp_path / "models" / "tiny.en-coreml").exists()
    assert list((tmp_path / "out").glob("*.srt")) == []

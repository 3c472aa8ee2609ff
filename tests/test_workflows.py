"""The CI workflows parse and say what they must (they only run once the repository is pushed)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

WORKFLOWS = Path(__file__).resolve().parents[1] / ".github" / "workflows"


def load(name: str) -> dict[str, Any]:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(workflow, dict)
    return workflow


def commands(job: dict[str, Any]) -> list[list[str]]:
    """Every shell command of a job's `run` steps, split as the shell would."""
    found = []
    for step in job["steps"]:
        for line in step.get("run", "").splitlines():
            if line.strip():
                found.append(shlex.split(line))
    return found


def test_every_workflow_is_valid_yaml() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert files
    for file in files:
        workflow = yaml.safe_load(file.read_text())
        assert {"name", "jobs"} <= set(workflow), file
        assert workflow.get("on", workflow.get(True)) is not None, f"{file}: no triggers"  # YAML 1.1 reads `on` as true
        for name, job in workflow["jobs"].items():
            assert job.get("runs-on") and job.get("steps"), f"{file}: job {name}"
            for step in job["steps"]:
                assert ("uses" in step) != ("run" in step), f"{file}: job {name}: a step is `uses` or `run`"


def test_macos_workflow_runs_the_macos_tests_on_apple_silicon() -> None:
    workflow = load("macos.yml")
    triggers = workflow.get("on", workflow.get(True))
    assert {"push", "pull_request"} <= set(triggers)
    (job,) = workflow["jobs"].values()
    assert job["runs-on"] == "${{ matrix.os }}"
    assert job["strategy"]["matrix"]["os"] == ["macos-14", "macos-15"]  # stateless and stateful decoders
    setup = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/setup-python@")]
    assert len(setup) == 1 and str(setup[0]["with"]["python-version"]) == "3.11"
    assert any(str(s.get("uses", "")).startswith("actions/checkout@") for s in job["steps"])
    run = commands(job)
    assert ["pip", "install", "torch==2.13.0", "-e", "."] in run  # the README's install
    assert ["pip", "install", "-e", ".[test]"] in run
    pytest_runs = [c for c in run if c[0] == "pytest"]
    macos = [c for c in pytest_runs if "-m" in c and c[c.index("-m") + 1] == "macos"]
    assert len(macos) == 1
    assert "tests/test_macos.py" in macos[0]


def test_the_macos_tests_exist_and_are_marked() -> None:
    """What the workflow names is there, and the tests it selects carry the marker."""
    workflow = load("macos.yml")
    (job,) = workflow["jobs"].values()
    root = WORKFLOWS.parents[1]
    for command in commands(job):
        if command[0] == "pytest":
            for argument in command[1:]:
                if argument.startswith("tests/"):
                    assert (root / argument).is_file(), argument
    source = (root / "tests" / "test_macos.py").read_text()
    assert "pytestmark = pytest.mark.macos" in source
    for name in ("test_compiles", "test_core_ml_predicts", "test_core_ml_transcribes_like_the_reference_executor"):
        assert f"def {name}" in source

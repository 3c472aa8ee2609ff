"""The thread governor: all of the user's threads while the cores are free, one while other
processes hold them (openmp.py says why, with the measurements)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from whisper_coreml import openmp


@pytest.mark.parametrize(
    ("limit", "cores", "others", "expected"),
    [
        (2, 2, 0.0, 2),  # a free machine: every thread
        (2, 2, 0.4, 2),
        (2, 2, 0.7, 1),  # a busy neighbour on one of two cores: one thread
        (2, 2, 1.9, 1),  # never fewer than one
        (8, 16, 4.0, 8),  # never more than the user's count
        (8, 8, 3.0, 5),
        (1, 8, 0.0, 1),
    ],
)
def test_threads_for_leaves_the_cores_others_use(limit: int, cores: int, others: float, expected: int) -> None:
    assert openmp.threads_for(limit, cores, others) == expected


def test_governor_follows_the_load_of_other_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fed samples of (wall, machine busy, own CPU) seconds: a neighbour taking a core drops the
    count to one, and its end brings the user's count back."""
    samples = iter(
        [
            (0.0, 100.0, 10.0),
            (1.0, 102.0, 12.0),  # we used both cores, nobody else: 2
            (2.0, 104.0, 13.2),  # the machine stayed full but we got 1.2 of it: someone took 0.8
            (3.0, 105.0, 14.2),  # one core busy, all ours: free again
        ]
    )
    monkeypatch.setattr(openmp.ThreadGovernor, "_sample", staticmethod(lambda: next(samples)))
    before = torch.get_num_threads()
    try:
        governor = openmp.ThreadGovernor(limit=2)
        governor.cores = 2
        seen = []
        for _ in range(3):
            governor.adjust()
            seen.append(torch.get_num_threads())
        assert seen == [2, 1, 2]
    finally:
        torch.set_num_threads(before)


def test_governor_ignores_what_others_did_while_we_waited(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = iter([(0.0, 100.0, 10.0), (10.0, 120.0, 10.5)])  # 10 s, others busy, we used 0.5 s
    monkeypatch.setattr(openmp.ThreadGovernor, "_sample", staticmethod(lambda: next(samples)))
    before = torch.get_num_threads()
    governor = openmp.ThreadGovernor(limit=2)
    governor.adjust()
    assert torch.get_num_threads() == before
    assert governor.last == (10.0, 120.0, 10.5)  # the next measure starts here


def test_governor_waits_for_a_measure_worth_taking(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = iter([(0.0, 100.0, 10.0), (0.1, 100.2, 10.0)])  # 0.1 s apart: too short to judge
    monkeypatch.setattr(openmp.ThreadGovernor, "_sample", staticmethod(lambda: next(samples)))
    before = torch.get_num_threads()
    governor = openmp.ThreadGovernor(limit=2)
    governor.adjust()
    assert torch.get_num_threads() == before
    assert governor.last == (0.0, 100.0, 10.0)


def test_the_torch_engine_governs_its_threads_on_the_cpu(tiny_model: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's governor is asked once a window (torch's thread count itself is global state
    that other tests in the same process may have changed since the model was loaded)."""
    engine = tiny_model.engine  # type: ignore[attr-defined]
    assert isinstance(engine.threads, openmp.ThreadGovernor) and engine.threads.limit >= 1
    calls = []
    monkeypatch.setattr(engine.threads, "adjust", lambda: calls.append(1))
    engine.encode(np.zeros((engine.dims.n_mels, 3000), dtype=np.float32))
    assert calls == [1]

"""The thread governor: all of the user's threads while the cores are free, one while other
processes hold them (openmp.py says why, with the measurements)."""

from __future__ import annotations

import contextlib

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


def _governed(monkeypatch: pytest.MonkeyPatch, spans: list[tuple[tuple[float, float, float], ...]]) -> list[int]:
    """Thread counts after each measured span, a span being its samples of (wall, machine busy,
    own CPU) seconds at its start and end."""
    samples = iter(sample for span in spans for sample in span)
    monkeypatch.setattr(openmp.ThreadGovernor, "_sample", staticmethod(lambda: next(samples)))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        governor = openmp.ThreadGovernor(limit=2)
        governor.cores = 2
        seen = []
        for _ in spans:
            with governor.measure():
                pass
            seen.append(torch.get_num_threads())
        return seen
    finally:
        torch.set_num_threads(before)


def test_governor_follows_the_load_of_other_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A neighbour taking a core while we work drops the count to one, and its end brings the
    user's count back."""
    spans = [
        ((0.0, 100.0, 10.0), (1.0, 102.0, 12.0)),  # we used both cores, nobody else: 2
        ((1.0, 102.0, 12.0), (2.0, 104.0, 13.2)),  # the machine stayed full but we got 1.2 of it: 1
        ((2.0, 104.0, 13.2), (3.0, 105.0, 14.2)),  # one core busy, all ours: free again
    ]
    assert _governed(monkeypatch, spans) == [2, 1, 2]


def test_governor_counts_only_what_others_did_while_we_worked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between our spans others kept both cores busy for 9 s (a benchmark's other systems taking
    their turns): none of it is counted, and neither span saw anyone else."""
    spans = [((0.0, 100.0, 10.0), (1.0, 102.0, 12.0)), ((10.0, 120.0, 12.0), (11.0, 122.0, 14.0))]
    assert _governed(monkeypatch, spans) == [2, 2]


def test_governor_adds_short_spans_up_before_judging(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans of 0.15 s are too coarse for /proc/stat's ticks alone: the first changes nothing, the
    first two together (a neighbour held a core in both) set one thread."""
    spans = [((0.0, 100.0, 10.0), (0.15, 100.3, 10.15)), ((5.0, 200.0, 10.15), (5.15, 200.3, 10.3))]
    assert _governed(monkeypatch, spans) == [2, 1]


def test_the_torch_engine_governs_its_threads_on_the_cpu(tiny_model: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's governor measures each window's encoder (torch's thread count itself is global
    state that other tests in the same process may have changed since the model was loaded)."""
    engine = tiny_model.engine  # type: ignore[attr-defined]
    assert isinstance(engine.threads, openmp.ThreadGovernor) and engine.threads.limit >= 1
    spans = []
    monkeypatch.setattr(engine.threads, "measure", lambda: contextlib.nullcontext(spans.append(1)))
    engine.encode(np.zeros((engine.dims.n_mels, 3000), dtype=np.float32))
    assert spans == [1]

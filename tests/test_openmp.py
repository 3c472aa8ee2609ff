"""The thread governor: all of the user's threads while the cores are free, one while other
processes hold them (openmp.py says why, with the measurements)."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import whisper_coreml as wc
from whisper_coreml import openmp
from whisper_coreml.weights import Weights


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


def test_a_model_thread_runs_its_calls_in_order_on_one_thread_and_hands_back_errors() -> None:
    thread = openmp.ModelThread("test-model")
    seen: list[tuple[int, int]] = []
    futures = [thread.submit(lambda i=i: seen.append((i, threading.get_ident()))) for i in range(5)]
    assert [f.result(10) for f in futures] == [None] * 5
    assert [i for i, _ in seen] == list(range(5)) and {t for _, t in seen} == {thread.thread.ident}
    assert thread.thread.ident != threading.get_ident() and thread.thread.daemon
    assert thread.call(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(ValueError, match="bad"):
        thread.call(lambda: (_ for _ in ()).throw(ValueError("bad")))
    assert thread.call(threading.get_ident) == thread.thread.ident  # still serving after an error


def test_a_model_used_on_another_thread_than_its_loader_is_warned_of_once(
    tiny_weights: Weights, speech: Callable[[str], Path]
) -> None:  # tiny_weights: skips when the model's package is missing
    """The server's old shape: loaded on one thread, transcribing on another (openmp.py: ~2x
    slower on a machine with no spare cores). Loaded and used on one ModelThread: no warning."""
    clip = speech("en/jfk_inaugural_excerpt.flac")
    thread = openmp.ModelThread("test-model")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the call
        model = thread.call(wc.load_model, "tiny.en", engine="torch", device="cpu")
        text = thread.call(model.transcribe, clip).text
    assert "ask not what your country can do for you" in text.lower()

    elsewhere = wc.load_model("tiny.en", engine="torch", device="cpu")  # on this thread
    with pytest.warns(RuntimeWarning, match="another thread than the one that loaded it"):
        assert thread.call(elsewhere.transcribe, clip).text == text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per model
        thread.call(elsewhere.transcribe, clip)

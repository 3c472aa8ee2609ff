"""PyTorch's CPU threads: all of them while the cores are free, one while other processes hold them.

PyTorch runs its CPU kernels on an OpenMP team, and a decoder step is hundreds of small parallel
regions. Between regions GNU libgomp (Linux wheels) lets its threads spin for a while before
they sleep. On a free machine that spinning is what makes a step fast: woken from sleep, the
threads of the 2-core Xeon VM of benchmarks/README.md took a long file from 7.1 s to 11.1 s
(int8; float32 8.0 -> 13.2 s). Beside a busy process it is the opposite: a region waits for a
thread the scheduler has parked while its partners spin through their time slices, and the same
file took 24.5 s (an 11-s clip once took 25 s instead of 1.3 s). One thread has no regions to
wait on: 9.1 s beside the busy process, better than any two-thread setting there.

So threads spin as libgomp likes, and `ThreadGovernor` measures, while a window's encoder runs,
how much of the machine other processes use (/proc/stat's busy time minus our own CPU time) and
runs all the threads the user allowed while the cores are free, one while another process holds
one. Only spans of our own work are measured: a span that took in our waiting (between a
server's jobs, or a benchmark's turns) counted what others did while we slept, and once that
had set one thread, a process idle half of the time never measured again (bench.py's round
robin ran ours on one thread for 34 of 36 clips).

All of a model's work runs on one thread (`ModelThread`, for front ends whose requests arrive
on other threads). Each thread that runs PyTorch's CPU kernels gets an OpenMP team of its own,
kept for the thread's life, and once the process holds more OpenMP threads than there are
cores libgomp stops spinning altogether: every region then waits for sleeping threads to wake.
A model loaded on one thread and used on another ran 12 `en/` clips in 8.3 s instead of 4.1-4.4 s
(tiny.en, the 2-core Xeon); a helper thread that computed the next file's features took a folder
from 19 s to 32 s.

Where that cannot be measured (no /proc/stat: macOS, whose LLVM libomp spins for 200 ms),
`configure` has idle threads sleep at once instead. The runtimes read that setting once, when
torch loads them, so `configure` runs before anything imports torch (whisper_coreml/__init__.py
calls it first); a user's own values win.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")

PROC_STAT = Path("/proc/stat")
# Without a measure of the machine's load: idle threads sleep at once (libomp's block time, ms).
SETTINGS = {} if PROC_STAT.is_file() else {"KMP_BLOCKTIME": "1"}
_late = False  # torch was loaded before we could configure its OpenMP runtime


def configure() -> None:
    """Set the OpenMP settings this platform needs for this process unless the user chose otherwise."""
    global _late
    unset = [name for name in SETTINGS if name not in os.environ]
    _late = bool(unset) and "torch" in sys.modules
    for name in unset:
        os.environ[name] = SETTINGS[name]


def warn_if_late() -> None:
    """Say once, when a CPU engine starts, that torch came first and what to do about it."""
    global _late
    if _late:
        _late = False
        settings = " ".join(f"{k}={v}" for k, v in SETTINGS.items())
        warnings.warn(
            "torch was imported before whisper_coreml, so its OpenMP threads spin while waiting and run "
            f"many times slower whenever another process is busy; import whisper_coreml first or set {settings}",
            RuntimeWarning,
            stacklevel=3,
        )


def machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has used so far (all cores), or None where unknown."""
    try:
        fields = [int(x) for x in PROC_STAT.read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def threads_for(limit: int, cores: int, others: float) -> int:
    """Threads to run when other processes keep `others` cores' worth busy: what is left of the
    `cores`, rounded, at least one and at most the user's `limit`."""
    return max(1, min(limit, int(cores - others + 0.5)))


class ThreadGovernor:
    """Sets PyTorch's thread count, at most `limit`, to the cores other processes leave free.

    Wrap a stretch of our own work in `measure` (the engine wraps each window's encoder): what
    other processes did meanwhile sets the threads for the work that follows. Stretches add up
    until they span `interval` seconds (shorter is too coarse for /proc/stat's 10-ms ticks);
    where the machine's load cannot be read, nothing changes. Work measured on another thread
    than the one the governor (its engine) was made on is warned of, once: see `ModelThread`.
    """

    def __init__(self, limit: int, interval: float = 0.2) -> None:
        self.limit = limit
        self.interval = interval
        self.cores = os.cpu_count() or 1
        self.measured = (0.0, 0.0, 0.0)  # wall, machine busy and our CPU seconds not yet judged
        self.home: int | None = threading.get_ident()  # the thread the engine was built on; None once warned

    @staticmethod
    def _sample() -> tuple[float, float | None, float]:
        return time.monotonic(), machine_busy_seconds(), time.process_time()

    @contextmanager
    def measure(self) -> Iterator[None]:
        if self.home is not None and threading.get_ident() != self.home:
            self.home = None
            warnings.warn(
                "this model is used on another thread than the one that loaded it, so PyTorch runs an OpenMP team "
                "for each and can run about 2x slower (see whisper_coreml/openmp.py); load and transcribe on one "
                "thread, e.g. whisper_coreml.openmp.ModelThread",
                RuntimeWarning,
                stacklevel=3,
            )
        start = self._sample()
        yield
        end = self._sample()
        if self.limit <= 1 or start[1] is None or end[1] is None:
            return
        wall, busy, ours = (a + (b - c) for a, b, c in zip(self.measured, end, start, strict=True))  # type: ignore[operator]
        if wall < self.interval:
            self.measured = (wall, busy, ours)
            return
        self.measured = (0.0, 0.0, 0.0)
        import torch

        threads = threads_for(self.limit, self.cores, max(0.0, busy - ours) / wall)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)


class ModelThread:
    """One daemon thread that runs every piece of a model's work handed to it, in order: its
    loading, then its transcriptions, for front ends (the server, a cluster's workers) whose
    own threads take requests. Work runs there alone, so PyTorch keeps one OpenMP team (see
    the module doc); a daemon, so a process ending mid-window is not held up by it."""

    def __init__(self, name: str) -> None:
        self._calls: SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """`fn(*args, **kwargs)` on the thread, after everything submitted before it."""
        future: Future[T] = Future()
        self._calls.put((lambda: fn(*args, **kwargs), future))
        return future

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` run on the thread: its result, or its exception raised here."""
        return self.submit(fn, *args, **kwargs).result()

    def _serve(self) -> None:
        while True:
            fn, future = self._calls.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as error:  # noqa: BLE001 - handed to the caller, Ctrl-C included
                future.set_exception(error)

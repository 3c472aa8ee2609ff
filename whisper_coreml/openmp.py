"""OpenMP's idle threads must give the CPU back, or a busy neighbour makes us 15x slower.

PyTorch runs its CPU kernels on an OpenMP team, and GNU libgomp (Linux wheels) lets a thread
that waits at a barrier spin for ~300,000 iterations before sleeping; LLVM's libomp (macOS
wheels) spins for 200 ms. A decoder step is hundreds of tiny parallel regions, so with as many
threads as cores and another process on one of them, every region waits for a thread the
scheduler has parked while its partners spin through their time slices: measured here, an
11-s clip took 25 s instead of 1.3 s. (The CLI hid this by accident: its prefetch thread's
own OpenMP team made libgomp see more threads than cores, and then it spins only 100 times.)

The runtimes read these settings once, when torch loads them, so `configure` runs before
anything imports torch (whisper_coreml/__init__.py calls it first); a user's own values win.
It has a price on an idle machine: on the 2-core Xeon VM of benchmarks/README.md a long file
took 15-20% longer than with libgomp's default spinning (its threads sleep between a decoder
step's parallel regions and must be woken), against 2.2-2.4x shorter beside one busy process.
"""

from __future__ import annotations

import os
import sys
import warnings

SETTINGS = {"GOMP_SPINCOUNT": "100", "KMP_BLOCKTIME": "1"}  # libgomp's own count when oversubscribed
_late = False  # torch was loaded before we could configure its OpenMP runtime


def configure() -> None:
    """Set short OpenMP spinning for this process unless the user chose otherwise."""
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

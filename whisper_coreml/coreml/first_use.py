"""Core ML by default on a Mac: `--engine auto` converts a catalog model the first time it runs.

On Apple silicon the converted programs run on the Neural Engine and GPU, so a Mac user should
not have to know about `convert`. With `auto` on macOS, a catalog model without a bundle is
converted once into `<models dir>/<name>-coreml` for the newest target the Mac runs (macos.py;
one progress line; compiled there, as `convert` does on a Mac), and every later load finds that
bundle and runs Core ML, after the same manifest checks as any bundle. The converter assembles
the bundle beside its destination and moves it into place last, so a failed or interrupted
conversion leaves no half bundle. Concurrent runs (README: runs over one folder split the work)
wait for one conversion instead of each doing it.

Elsewhere `auto` stays PyTorch and nothing is converted; `--engine torch` opts out on a Mac.
Only catalog names are converted: a path names weights the user manages, and two paths with
one file name would share one cached bundle.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ..catalog import catalog, models_dir
from ..errors import ModelError, os_problem
from .bundle import is_bundle
from .macos import deployment_target


def converts_on_first_use(model: str) -> bool:
    """Whether `auto` converts `model` here when it has no bundle yet."""
    return deployment_target() is not None and model in catalog()


def bundle_path(model: str) -> Path:
    """Where `auto` keeps a catalog model's converted bundle."""
    return models_dir() / f"{model}-coreml"


@contextlib.contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Hold an exclusive flock on `lock`, waiting for another process that holds it (the kernel
    frees it when that process dies, however it dies). The file stays, empty and hidden: removing
    it would let a process that opened it before the removal lock a file no one else sees."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def convert_on_first_use(model: str, progress: Callable[[str], None]) -> Path:
    """Convert catalog model `model` into its bundle for this Mac, once; return the bundle's path.

    Raises ModelError, one line, when the conversion fails (nothing is left behind).
    """
    target = deployment_target()
    if target is None:
        raise ModelError(f"converting '{model}' to Core ML needs macOS 13 or later")
    destination = bundle_path(model)
    try:
        with _exclusive(destination.with_name(f".{destination.name}.lock")):
            if is_bundle(destination):  # another process converted it while this one waited
                return destination
            progress(
                f"converting {model} to Core ML for this Mac, once (a few minutes; kept in {destination}; "
                "--engine torch skips this)"
            )
            from .convert import convert  # torch and coremltools: only when converting

            convert(model, destination, minimum_deployment_target=target)
    except ModelError:
        raise
    except OSError as e:
        raise ModelError(f"{e.filename or destination}: cannot convert '{model}' to Core ML ({os_problem(e)})") from e
    except Exception as e:  # coremltools and torch fail in their own ways; the user gets one line
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(
            f"converting '{model}' to Core ML failed ({type(e).__name__}: {reason}); "
            "--engine torch runs the model without converting it"
        ) from e
    return destination

"""Claims: an input is taken by one run at a time, and a dead run's claim frees itself.

A claim is an exclusive `flock` on a hidden lock file beside the input's outputs. The kernel
drops it when the holder exits however it exits (Ctrl-C, kill -9, a crash), so there is no
stale-lock guessing from process ids, which a reboot or another machine on shared storage
would fool; on NFS, Linux carries flock over as a POSIX lock, so runs on several machines
over one share exclude each other too. The file holds the holder's host and pid, for people.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path


class Claim:
    """A held claim; `release` (or leaving the `with` block) gives it up and removes the file."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            # Unlink while still holding the lock: a run that opens the path from now on gets a
            # new file, and one that opened the old file before cannot have locked it.
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_claim(path: Path) -> Claim | None:
    """Take the claim at `path`, or None when another live run holds it.

    Raises OSError when the lock file cannot be created (missing, read-only or full folder).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if not same_file:  # its holder released (and unlinked) it between our open and lock
            os.close(fd)
            continue
        with contextlib.suppress(OSError):  # who holds it is for people; a full disk must not stop us
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        return Claim(path, fd)

"""Atomic file replacement, so an interrupted run never leaves a truncated subtitle file.

Editors often have the previous output open in their timeline; a half-written file (crash,
Ctrl-C, full disk) would be worse than the old one. So we write a hidden temp file in the
target's own directory (os.replace is only atomic within one filesystem), fsync it, then swap
it in with a single rename.
"""

from __future__ import annotations

import os
import secrets
import stat
from contextlib import suppress
from pathlib import Path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Replace `path` with `text` (UTF-8) atomically; on any failure nothing changes on disk.

    The temp file is created with mode 0o666 filtered by the umask, like a plain `open(path,
    "w")` (mkstemp would give 0600); an existing target's permissions are kept, as an in-place
    overwrite would keep them.
    """
    target = Path(path)
    data = text.encode("utf-8")  # encoding errors surface before any file is created
    try:
        existing_mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        existing_mode = None
    # pid + random token: unique across processes and threads, and O_EXCL never clobbers.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            if existing_mode is not None:
                os.fchmod(file.fileno(), existing_mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target

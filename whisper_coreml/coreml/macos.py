"""Which Core ML deployment targets this Mac runs (none off macOS).

A program converted for a target needs that macOS or later to compile and predict: the default
stateful decoder (`macOS15`) cannot even be compiled on macOS 14. Conversion compiles only
what the Mac runs, and `auto` converts for the newest target it runs.
"""

from __future__ import annotations

import platform
import sys

# bundle.DEPLOYMENT_TARGETS by the macOS major version that first runs each.
_TARGETS = {13: "macOS13", 14: "macOS14", 15: "macOS15"}


def deployment_target() -> str | None:
    """The newest deployment target this Mac runs, or None (not macOS, or older than macOS 13)."""
    if sys.platform != "darwin":
        return None
    try:
        major = int(platform.mac_ver()[0].split(".")[0])
    except ValueError:
        return None
    return _TARGETS[min(major, max(_TARGETS))] if major >= min(_TARGETS) else None


def runs(target: str) -> bool:
    """Whether this Mac compiles and runs programs converted for `target` (e.g. "macOS15")."""
    here = deployment_target()
    return here is not None and int(here.removeprefix("macOS")) >= int(target.removeprefix("macOS"))

"""Core ML conversion, bundles and the numpy reference executor for converted programs."""

from __future__ import annotations

import logging
import warnings
from types import ModuleType


def import_coremltools() -> ModuleType:
    """coremltools, imported without the notices it logs on import (missing native runtime off
    macOS, untested torch and scikit-learn versions): they are expected here and say nothing
    a user can act on."""
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import coremltools
    finally:
        logger.setLevel(level)
    return coremltools

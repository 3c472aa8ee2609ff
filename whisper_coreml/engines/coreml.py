"""The `coreml` engine: a converted bundle on Apple's Core ML (macOS only).

It loads the compiled `.mlmodelc` models (compiling each `.mlpackage` once and caching the
result when the bundle has none), on the chosen compute units, warms them up, and drives them
with exactly the sessions the `mil` engine uses (`engines.mil`): one Core ML state per
sequence for the stateful decoder, host-side caches for the stateless one, and for a batch of
the bundle's beam size the beam decoder, all rows in one call (its cache reordered on the device).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from ..coreml import import_coremltools
from ..coreml.bundle import DECODER, ENCODER, Bundle
from ..errors import ModelError
from .mil import BundleEngine, EncodedWindow, StepSession

_COMPUTE_UNITS = {"all": "ALL", "cpu_and_ne": "CPU_AND_NE", "cpu_and_gpu": "CPU_AND_GPU", "cpu_only": "CPU_ONLY"}


def compiled_model_path(bundle: Bundle, package: str) -> Path:
    """The `.mlmodelc` for `package`: the bundle's own, else one compiled now into a cache, once."""
    beside = bundle.compiled_path(package)
    if beside.is_dir():
        return beside
    ct = import_coremltools()

    # Keyed on the package's checksums: a reconverted bundle never picks up a stale compilation.
    key = "".join(
        f"{n}:{info['sha256']};" for n, info in sorted(bundle.manifest.files.items()) if n.startswith(package)
    )
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / "Library" / "Caches")) / "whisper-coreml"
    target = cache / "compiled" / hashlib.sha256(key.encode()).hexdigest()[:24] / beside.name
    if not target.is_dir():
        scratch = target.parent / f".compiling-{os.getpid()}"  # compile_model wants a name ending in .mlmodelc
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            compiled = scratch / target.name
            ct.models.utils.compile_model(str(bundle.path / package), str(compiled))
            try:
                compiled.rename(target)
            except OSError:  # another process finished first
                pass
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


class CoreMLEngine(BundleEngine):
    """A converted bundle on Core ML, with the compute units of the manifest or the caller's choice."""

    name = "coreml"

    def __init__(
        self,
        bundle: str | Path | Bundle,
        compute_units: str | None = None,
        verify_checksums: bool = True,
        warm_up: bool = True,
    ) -> None:
        if sys.platform != "darwin":
            raise ModelError("the coreml engine needs macOS; use --engine mil to run the converted model here")
        super().__init__(bundle, verify_checksums)
        ct = import_coremltools()

        units = compute_units or self.bundle.manifest.compute_units
        if units not in _COMPUTE_UNITS:
            raise ModelError(f"--compute-units {units}: choose one of {', '.join(_COMPUTE_UNITS)}")
        self.compute_units = units
        cu = getattr(ct.ComputeUnit, _COMPUTE_UNITS[units])
        try:
            self.encoder = ct.models.CompiledMLModel(str(compiled_model_path(self.bundle, ENCODER)), cu)
            self.decoder_model = ct.models.CompiledMLModel(str(compiled_model_path(self.bundle, DECODER)), cu)
            beam = self.bundle.beam_decoder
            self.beam_model = None
            if beam is not None:
                path = str(compiled_model_path(self.bundle, beam[0].name))
                self.beam_model = ct.models.CompiledMLModel(path, cu, function_name=beam[1])
        except Exception as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelError(f"{self.bundle.path}: Core ML could not load the models ({reason})") from e
        if warm_up:  # the first prediction compiles for the Neural Engine / GPU: pay it now
            window = self.encode(np.zeros((self.dims.n_mels, 3000), dtype=np.float32))
            self.decoder(window).step(np.zeros((1, 1), dtype=np.int64))

    def encode(self, mel: np.ndarray) -> EncodedWindow:
        return self._window(self.encoder.predict(self._mel(mel)))

    def decoder(self, features: EncodedWindow, batch_size: int = 1) -> StepSession:
        return self._session(self.decoder_model, features, batch_size, self.beam_model)

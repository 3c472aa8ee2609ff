"""A converted model on disk: `encoder.mlpackage`, `decoder.mlpackage`, `manifest.json`, `tokenizer.json`.

The beam decoder (several rows per call, for beam search) is the `beam` function of the
stateful `decoder.mlpackage` (a multifunction package: both functions share one copy of the
weights), or for the stateless macOS 13/14 decoder, which cannot have functions, a package of
its own, `decoder_beam.mlpackage`.

The manifest records what the converter produced (dimensions, special tokens, alignment heads,
precision, I/O names/shapes/dtypes, states, versions, and the size and SHA-256 of every file),
so loading can check the files against it and fail with one clear line, naming the file and
the problem, instead of crashing somewhere deep in Core ML or numpy.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..model import ModelDimensions
from ..tokenizer import Tokenizer
from . import import_coremltools

FORMAT = "whisper-coreml-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENCODER = "encoder.mlpackage"
DECODER = "decoder.mlpackage"
BEAM_DECODER = "decoder_beam.mlpackage"  # the stateless beam decoder
BEAM_FUNCTION = "beam"  # the stateful beam decoder, a function of decoder.mlpackage
TOKENIZER = "tokenizer.json"

PRECISIONS = ("float16", "float32")
COMPUTE_UNITS = ("all", "cpu_and_ne", "cpu_and_gpu", "cpu_only")
DEPLOYMENT_TARGETS = ("macOS13", "macOS14", "macOS15")
QUANTIZATIONS = ("none", "int8", "palettize-6", "palettize-4")

# Core ML's multiarray data types, as the model description spells them, and their numpy names.
_SPEC_DTYPES = {65552: "float16", 65568: "float32", 65600: "float64", 131104: "int32", 131080: "int8"}
_ITEMSIZE = {"float16": 2, "float32": 4, "float64": 8, "int32": 4, "int8": 1}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n * _ITEMSIZE[self.dtype]

    def describe(self) -> str:
        return f"'{self.name}' {self.dtype}{list(self.shape)}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorInfo:
        return cls(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d["dtype"]))


@dataclass(frozen=True)
class ModelIO:
    """One model's interface: what goes in, what comes out, what it keeps as state."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    states: tuple[TensorInfo, ...] = ()
    specification_version: int = 0

    def get(self, name: str) -> TensorInfo:
        for t in (*self.inputs, *self.outputs, *self.states):
            if t.name == name:
                return t
        raise KeyError(name)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelIO:
        return cls(
            tuple(TensorInfo.from_dict(t) for t in d["inputs"]),
            tuple(TensorInfo.from_dict(t) for t in d["outputs"]),
            tuple(TensorInfo.from_dict(t) for t in d.get("states", [])),
            int(d.get("specification_version", 0)),
        )


@dataclass(frozen=True)
class Manifest:
    """Everything `manifest.json` says about a bundle."""

    name: str
    dims: ModelDimensions
    special_tokens: dict[str, int]
    alignment_heads: tuple[tuple[int, int], ...]
    precision: str
    compute_units: str
    minimum_deployment_target: str
    quantize: str
    stateful: bool
    max_tokens: int
    encoder: ModelIO
    decoder: ModelIO
    files: dict[str, dict[str, Any]]
    source: dict[str, str]
    versions: dict[str, str]
    traffic: dict[str, int] = field(default_factory=dict)
    beam_size: int = 0  # rows of decoder_beam.mlpackage; 0: the bundle has no beam decoder
    beam_decoder: ModelIO | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dims"] = asdict(self.dims)
        d["alignment_heads"] = [list(h) for h in self.alignment_heads]
        return {"format": self.format, "format_version": self.format_version, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        return cls(
            name=str(d["name"]),
            dims=ModelDimensions(**d["dims"]),
            special_tokens={str(k): int(v) for k, v in d["special_tokens"].items()},
            alignment_heads=tuple((int(a), int(b)) for a, b in d["alignment_heads"]),
            precision=str(d["precision"]),
            compute_units=str(d["compute_units"]),
            minimum_deployment_target=str(d["minimum_deployment_target"]),
            quantize=str(d["quantize"]),
            stateful=bool(d["stateful"]),
            max_tokens=int(d["max_tokens"]),
            encoder=ModelIO.from_dict(d["encoder"]),
            decoder=ModelIO.from_dict(d["decoder"]),
            files={str(k): dict(v) for k, v in d["files"].items()},
            source={str(k): str(v) for k, v in d["source"].items()},
            versions={str(k): str(v) for k, v in d["versions"].items()},
            traffic={str(k): int(v) for k, v in d.get("traffic", {}).items()},
            beam_size=int(d.get("beam_size", 0)),
            beam_decoder=ModelIO.from_dict(d["beam_decoder"]) if d.get("beam_decoder") else None,
            format=str(d["format"]),
            format_version=int(d["format_version"]),
        )


def dump_manifest(manifest: Manifest) -> str:
    """The manifest as indented JSON, with short lists of numbers (shapes, head pairs) kept on one line."""
    text = json.dumps(manifest.to_dict(), indent=2)
    return re.sub(r"\[\s*([-\d.,\s]*?)\s*\]", lambda m: "[" + re.sub(r"\s*,\s*", ", ", m.group(1)) + "]", text) + "\n"


def special_tokens(tokenizer: Tokenizer) -> dict[str, int]:
    """The special tokens decoding relies on, as the tokenizer derives them."""
    return {
        "eot": tokenizer.eot,
        "sot": tokenizer.sot,
        "translate": tokenizer.translate,
        "transcribe": tokenizer.transcribe,
        "sot_lm": tokenizer.sot_lm,
        "sot_prev": tokenizer.sot_prev,
        "no_speech": tokenizer.no_speech,
        "no_timestamps": tokenizer.no_timestamps,
        "timestamp_begin": tokenizer.timestamp_begin,
    }


def _feature(feature: Any) -> TensorInfo:
    kind = feature.type.WhichOneof("Type")
    array = feature.type.stateType.arrayType if kind == "stateType" else feature.type.multiArrayType
    dtype = _SPEC_DTYPES.get(array.dataType, f"type{array.dataType}")
    return TensorInfo(feature.name, tuple(int(d) for d in array.shape), dtype)


def describe_package(path: Path, function: str | None = None) -> ModelIO:
    """The declared interface of a saved `.mlpackage` (of `function` in a multifunction package, else its default)."""
    try:
        import_coremltools()
        from coremltools.models.utils import load_spec
    except ImportError as e:  # pragma: no cover - coremltools is what wrote the bundle
        raise ModelError(f"{path}: reading Core ML models needs coremltools (pip install coremltools)") from e
    try:
        spec = load_spec(str(path))
        desc = spec.description
        if desc.functions:
            wanted = function or desc.defaultFunctionName
            desc = next(f for f in desc.functions if f.name == wanted)
        elif function is not None:
            raise ValueError(f"no function '{function}'")
        return ModelIO(
            tuple(_feature(f) for f in desc.input),
            tuple(_feature(f) for f in desc.output),
            tuple(_feature(f) for f in desc.state),
            int(spec.specificationVersion),
        )
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelError(f"{path}: unreadable Core ML model, the package is truncated or corrupt ({reason})") from e


def package_files(root: Path, packages: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file under the named packages plus the tokenizer, keyed by relative path."""
    files: dict[str, dict[str, Any]] = {}
    paths: list[Path] = []
    for package in packages:
        paths.extend(p for p in sorted((root / package).rglob("*")) if p.is_file())
    if (root / TOKENIZER).is_file():
        paths.append(root / TOKENIZER)
    for p in paths:
        files[p.relative_to(root).as_posix()] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A checked bundle: where its parts are and what its manifest says."""

    path: Path
    manifest: Manifest

    @property
    def encoder_path(self) -> Path:
        return self.path / ENCODER

    @property
    def decoder_path(self) -> Path:
        return self.path / DECODER

    @property
    def beam_decoder(self) -> tuple[Path, str | None] | None:
        """The beam decoder's package and function (None: the package's only one), if the bundle has one."""
        if self.manifest.beam_decoder is None:
            return None
        return beam_location(self.path, self.manifest.stateful)

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER

    @property
    def dims(self) -> ModelDimensions:
        return self.manifest.dims

    def compiled_path(self, package: str) -> Path:
        """Where the compiled `.mlmodelc` of one of the bundle's `.mlpackage`s sits."""
        return self.path / package.replace(".mlpackage", ".mlmodelc")

    def tokenizer(self) -> Tokenizer:
        dims = self.manifest.dims
        return Tokenizer(self.tokenizer_path, dims.n_vocab, dims.num_languages)


def beam_location(root: Path, stateful: bool) -> tuple[Path, str | None]:
    """Where a bundle's beam decoder lives: a function of the stateful decoder, or its own stateless package."""
    return (root / DECODER, BEAM_FUNCTION) if stateful else (root / BEAM_DECODER, None)


def is_bundle(path: str | Path) -> bool:
    """Whether `path` looks like a converted bundle (a directory with a manifest.json)."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: Path) -> Manifest:
    file = path / MANIFEST
    if not path.is_dir():
        raise ModelError(f"{path}: no such bundle directory")
    if not file.is_file():
        raise ModelError(f"{path}: not a converted whisper-coreml bundle (no {MANIFEST})")
    try:
        raw = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{file}: not valid JSON ({e})") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ModelError(f"{file}: not a whisper-coreml manifest (format is not '{FORMAT}')")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{file}: bundle format version {raw.get('format_version')} is not the supported version "
            f"{FORMAT_VERSION}; convert the model again with this whisper-coreml"
        )
    try:
        return Manifest.from_dict(raw)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{file}: incomplete or malformed manifest ({type(e).__name__}: {e})") from e


def _check_io(path: Path, package: str, declared: ModelIO, found: ModelIO) -> None:
    where = path / package
    for kind in ("inputs", "outputs", "states"):
        want = {t.name: t for t in getattr(declared, kind)}
        have = {t.name: t for t in getattr(found, kind)}
        if set(want) != set(have):
            raise ModelError(
                f"{where}: {kind} are {sorted(have)} but {MANIFEST} lists {sorted(want)}; "
                "the manifest belongs to another model or conversion"
            )
        for name, t in want.items():
            if have[name] != t:
                raise ModelError(
                    f"{where}: {kind[:-1]} {have[name].describe()} but {MANIFEST} says {t.describe()}; "
                    "the manifest belongs to another model or conversion"
                )
    if declared.specification_version and declared.specification_version != found.specification_version:
        raise ModelError(
            f"{where}: Core ML specification version {found.specification_version}, but {MANIFEST} "
            f"says {declared.specification_version}; the files come from different conversions"
        )


def load_bundle(path: str | Path, verify_checksums: bool = True) -> Bundle:
    """Read `manifest.json` and check every file against it; raise ModelError (one line) on any mismatch.

    Checks: manifest present, parseable and of this format version; tokenizer present and
    matching the vocabulary; every package present (and the beam decoder if the manifest lists
    one); their declared inputs, outputs and states (names, shapes, dtypes) equal to the
    manifest's; every file present with its recorded size; and, with `verify_checksums`, its
    recorded SHA-256.
    """
    path = Path(path).expanduser()
    manifest = read_manifest(path)
    if not (path / TOKENIZER).is_file():
        raise ModelError(f"{path}: {TOKENIZER} is missing; the bundle needs the model's tokenizer beside {MANIFEST}")
    parts = [(ENCODER, None, manifest.encoder), (DECODER, None, manifest.decoder)]
    if manifest.beam_decoder is not None:
        package, function = beam_location(path, manifest.stateful)
        parts.append((package.name, function, manifest.beam_decoder))
    for package, function, declared in parts:
        if not (path / package).is_dir():
            raise ModelError(f"{path}: {package} is missing")
        _check_io(
            path,
            package if function is None else f"{package}:{function}",
            declared,
            describe_package(path / package, function),
        )
    for name, info in manifest.files.items():
        file = path / name
        if not file.is_file():
            raise ModelError(f"{file}: missing (listed in {MANIFEST}); the bundle is incomplete")
        size = file.stat().st_size
        if size != info["bytes"]:
            what = "truncated" if size < info["bytes"] else "larger than recorded"
            raise ModelError(f"{file}: {what} ({size} bytes, {MANIFEST} records {info['bytes']})")
    if verify_checksums:
        for name, info in manifest.files.items():
            if sha256_file(path / name) != info["sha256"]:
                raise ModelError(f"{path / name}: corrupt (its SHA-256 does not match {MANIFEST})")
    bundle = Bundle(path, manifest)
    tokenizer = bundle.tokenizer()
    if special_tokens(tokenizer) != manifest.special_tokens:
        raise ModelError(f"{bundle.tokenizer_path}: does not belong to this model (its special tokens differ)")
    return bundle

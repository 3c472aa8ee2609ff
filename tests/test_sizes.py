"""The larger models: truncated CTranslate2 files, large-v3's tokenizer and 128-mel frontend, and
random-weight models at the larger sizes' shapes through load -> decode -> convert -> verify.

Only tiny.en and base have weights this machine can reach, so the other sizes are proven on
their published shapes with seeded random weights (benchmarks/sizes.py builds them). Every run
takes the reduced-layer models (large-v3's widths, 128 mel bins and 100 languages with 2
layers; turbo's 4 decoder layers) through the path a user takes: the Hugging Face hub cache,
read offline by catalog name. The full sizes are `slow` (`pytest -m slow`; the benchmark
runs them all and reports their time and memory).
"""

from __future__ import annotations

import importlib.util
import json
import struct
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import whisper_coreml as wc
from whisper_coreml.audio import MelSource
from whisper_coreml.catalog import catalog, resolve_weights
from whisper_coreml.decoding import DecodingOptions, WindowDecoder
from whisper_coreml.errors import ModelError
from whisper_coreml.tokenizer import Tokenizer
from whisper_coreml.weights import Weights, read_ctranslate2, read_weights

_spec = importlib.util.spec_from_file_location("sizes", Path(__file__).resolve().parents[1] / "benchmarks" / "sizes.py")
assert _spec is not None and _spec.loader is not None
sizes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sizes)

CLIP = "en/arctic_a0010.wav"
SAMPLE_LEN = 24

# --- truncated CTranslate2 files ------------------------------------------------------------------


def variable_spans(data: bytes) -> list[tuple[str, int, int, int]]:
    """(name, header start, data start, data end) of every variable of a CTranslate2 model.bin."""
    pos = 4
    (length,) = struct.unpack_from("<H", data, pos)
    pos += 2 + length + 4
    (count,) = struct.unpack_from("<I", data, pos)
    pos += 4
    spans = []
    for _ in range(count):
        start = pos
        (length,) = struct.unpack_from("<H", data, pos)
        name = data[pos + 2 : pos + 1 + length].decode()
        pos += 2 + length
        rank = data[pos]
        pos += 1 + 4 * rank + 1
        (nbytes,) = struct.unpack_from("<I", data, pos)
        pos += 4
        spans.append((name, start, pos, pos + nbytes))
        pos += nbytes
    return spans


@pytest.fixture(scope="module")
def model_bin(tiny_weights: Weights) -> bytes:
    return (Path(tiny_weights.source) / "model.bin").read_bytes()


def truncated_error(tmp_path: Path, data: bytes) -> str:
    (tmp_path / "model.bin").write_bytes(data)
    with pytest.raises(ModelError) as info:
        read_weights(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'model.bin'}: ") and "\n" not in message
    return message


def test_truncated_inside_a_variable_names_it(model_bin: bytes, tmp_path: Path) -> None:
    spans = variable_spans(model_bin)
    assert len(spans) == 148
    name, _, begin, end = spans[122]  # the 123rd, as in the broken small packages (123 of 406)
    cut = (begin + end) // 2
    message = truncated_error(tmp_path, model_bin[:cut])
    assert "truncated CTranslate2 model" in message
    assert f"ends inside variable 123 of 148 ('{name}', {end - begin:,} bytes from byte {begin:,})" in message
    assert f"at byte {cut:,}, {end - cut:,} bytes short of its end" in message
    assert "download or install it again" in message


def test_truncated_between_variables(model_bin: bytes, tmp_path: Path) -> None:
    spans = variable_spans(model_bin)
    message = truncated_error(tmp_path, model_bin[: spans[9][3]])
    assert f"ends after variable 10 of 148, at byte {spans[9][3]:,}" in message
    message = truncated_error(tmp_path, model_bin[: spans[-1][3]])
    assert "ends after all 148 variables, before their alias table" in message


@pytest.mark.parametrize(("cut", "where"), [(0, "the header"), (9, "the header"), (2, "the header")])
def test_truncated_in_the_file_header(model_bin: bytes, tmp_path: Path, cut: int, where: str) -> None:
    assert f"ends inside {where} at byte {cut}" in truncated_error(tmp_path, model_bin[:cut])


def test_truncated_in_a_variable_header(model_bin: bytes, tmp_path: Path) -> None:
    _, start, begin, _ = variable_spans(model_bin)[40]
    message = truncated_error(tmp_path, model_bin[: start + 3])
    assert "ends inside the header of variable 41 of 148" in message
    message = truncated_error(tmp_path, model_bin[: begin - 2])
    assert "ends inside the header of variable 41 of 148 ('" in message


def test_first_part_of_a_split_model_alone(model_bin: bytes, tmp_path: Path) -> None:
    """What the two 'small' packages are: the first megabytes of a larger model.bin, in parts."""
    half = len(model_bin) // 2
    (tmp_path / "model.bin.part1").write_bytes(model_bin[: half // 2])
    (tmp_path / "model.bin.part2").write_bytes(model_bin[half // 2 : half])
    with pytest.raises(ModelError) as info:
        read_ctranslate2(tmp_path, [tmp_path / "model.bin.part1", tmp_path / "model.bin.part2"])
    message = str(info.value)
    assert f"(2 parts joined, {half:,} bytes)" in message and "ends inside variable" in message
    assert message.startswith(str(tmp_path / "model.bin.part1"))


def test_sizes_that_do_not_add_up(model_bin: bytes, tmp_path: Path) -> None:
    name, _, begin, end = variable_spans(model_bin)[4]
    assert name == "decoder/embeddings/weight"
    data = bytearray(model_bin)
    struct.pack_into("<I", data, begin - 4, end - begin - 4)
    message = truncated_error(tmp_path, bytes(data))
    assert f"variable 5 of 148 ('{name}') declares {end - begin - 4:,} bytes, but its shape" in message
    assert "not a readable CTranslate2 Whisper model" in message


def test_bytes_after_the_end(model_bin: bytes, tmp_path: Path) -> None:
    message = truncated_error(tmp_path, model_bin + b"\0" * 7)
    assert f"7 unexpected bytes after the end of the model at byte {len(model_bin):,}" in message


# --- catalog: the hub path ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["small", "small.en", "medium", "medium.en", "large-v3", "large-v3-turbo"])
def test_catalog_names_the_hub_repo(name: str) -> None:
    assert catalog()[name].hf == f"openai/whisper-{name}"


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty (or test-filled) hub cache, with the hub switched off as on a machine without internet."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.mark.parametrize("name", ["small", "large-v3", "large-v3-turbo"])
def test_not_cached_and_offline_is_one_line(offline_hub: Path, name: str) -> None:
    with pytest.raises(ModelError) as info:
        resolve_weights(name)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"model '{name}' is not installed and could not be downloaded from the Hugging Face hub")
    assert f"openai/whisper-{name}" in message and "connect to the internet once" in message


def cache_snapshot(cache: Path, repo: str, model_dir: Path) -> Path:
    """Lay `model_dir` out as the hub cache holds a downloaded snapshot of `repo`."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in model_dir.iterdir():
        (snapshot / file.name).symlink_to(file)
    return snapshot


def test_hub_snapshot_reads_one_copy_of_the_weights(tmp_path: Path) -> None:
    """A repo with float32 shards beside model.safetensors (as large-v3's): only model.safetensors is read."""
    dims = sizes.reduced(sizes.SIZES["large-v3"], 1, 1)
    directory = sizes.make_model(tmp_path / "m", dims, torch.float16)
    (directory / "model.fp32-00001-of-00001.safetensors").write_bytes(b"not read")
    weights = read_weights(directory)
    assert {t.dtype for t in weights.state_dict.values()} == {torch.float16}


# --- large-v3's tokenizer and frontend ------------------------------------------------------------


@pytest.fixture(scope="module")
def v3_tokenizer_file(tmp_path_factory: pytest.TempPathFactory, base_weights: Weights) -> Path:
    path = tmp_path_factory.mktemp("v3-tokenizer") / "tokenizer.json"
    path.write_text(json.dumps(sizes.tokenizer_for(51866)))
    return path


def test_large_v3_tokenizer_equals_openai(v3_tokenizer_file: Path) -> None:
    """The derived 51866 vocabulary against openai-whisper's own 100-language tokenizer."""
    openai_tokenizer = pytest.importorskip("whisper.tokenizer")
    theirs = openai_tokenizer.get_tokenizer(multilingual=True, num_languages=100, language="yue", task="transcribe")
    ours = Tokenizer(v3_tokenizer_file, 51866, 100, language="yue")
    assert len(ours.all_language_codes) == 100 and ours.all_language_codes[-1] == "yue"
    assert set(ours.all_language_codes) == set(theirs.all_language_codes)
    assert [ours.language_token(c) for c in ours.all_language_codes] == [
        theirs.to_language_token(c) for c in ours.all_language_codes
    ]
    assert ours.all_language_tokens == tuple(sorted(theirs.all_language_tokens))
    assert ours.language_token("yue") == theirs.to_language_token("yue") == 50358
    for name in ("eot", "sot", "translate", "transcribe", "sot_lm", "sot_prev", "no_speech", "no_timestamps"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.timestamp_begin == theirs.timestamp_begin == 50365
    assert ours.sot_sequence == tuple(theirs.sot_sequence)
    text = " Hello, world! 你好，世界。 Grüße aus Köln — 粵語廣東話"
    assert ours.encode(text) == theirs.encode(text)
    assert ours.decode(ours.encode(text)) == text
    bpe_ids = [ours.bpe.token_to_id(f"<|{code}|>") for code in ours.all_language_codes]
    assert bpe_ids == list(ours.all_language_tokens)  # the file's own ids agree with the layout


def test_large_v3_128_mel_frontend_equals_openai(audio: Callable[[str], np.ndarray]) -> None:
    openai_audio = pytest.importorskip("whisper.audio")
    samples = audio(CLIP)
    with MelSource.from_array(samples, 128) as source:
        ours = source.window(0)
    mel = openai_audio.log_mel_spectrogram(torch.from_numpy(samples), 128, padding=openai_audio.N_SAMPLES)
    content_frames = mel.shape[-1] - openai_audio.N_FRAMES  # what openai's transcribe() feeds the first window
    theirs = openai_audio.pad_or_trim(mel[:, :content_frames], openai_audio.N_FRAMES).numpy()
    assert ours.shape == theirs.shape == (128, 3000)
    assert float(np.abs(ours - theirs).max()) < 1e-4


# --- reduced-layer models at large-v3's widths, through the hub cache ----------------------------


REDUCED = {
    "large-v3": sizes.reduced(sizes.SIZES["large-v3"], 2, 2),
    "large-v3-turbo": sizes.reduced(sizes.SIZES["large-v3-turbo"], 1, 4),  # turbo's 4 decoder layers
}


@pytest.fixture(scope="module")
def reduced_dirs(tmp_path_factory: pytest.TempPathFactory, base_weights: Weights) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reduced")
    return {name: sizes.make_model(root / name, dims, sizes.hub_dtype(name), seed=1) for name, dims in REDUCED.items()}


@pytest.fixture
def hub_with(offline_hub: Path, reduced_dirs: dict[str, Path]) -> Callable[[str], Path]:
    return lambda name: cache_snapshot(offline_hub, f"openai/whisper-{name}", reduced_dirs[name])


def decode_window(model: wc.WhisperModel, mel: np.ndarray) -> tuple[tuple[int, ...], np.ndarray]:
    """A greedy decode of one window on the model's engine and the logits at every position along it."""
    features = model.engine.encode(mel)
    options = DecodingOptions(language="en", temperature=0.0, sample_len=SAMPLE_LEN)
    decoder = WindowDecoder(model.engine, model.tokenizer.with_language("en"), options)
    tokens = decoder.decode(features).tokens
    sequence = np.array([[*decoder.initial_tokens, *tokens]])
    return tokens, model.engine.decoder(features).step(sequence, list(range(sequence.shape[1])))[0]


@pytest.mark.parametrize("name", list(REDUCED))
def test_reduced_model_from_the_hub_cache_decodes_like_openai(
    hub_with: Callable[[str], Path], name: str, audio: Callable[[str], np.ndarray]
) -> None:
    """Loaded by catalog name from the (offline) hub cache; its window's logits equal openai-whisper's."""
    whisper = pytest.importorskip("whisper")
    hub_with(name)
    model = wc.load_model(name, engine="torch")
    dims = model.engine.dims
    assert asdict(dims) == asdict(REDUCED[name])
    assert model.tokenizer.num_languages == 100 and model.tokenizer.language_token("yue") == 50358
    with MelSource.from_array(audio(CLIP), dims.n_mels) as source:
        mel = source.window(0)
    tokens, logits = decode_window(model, mel)
    assert len(tokens) == SAMPLE_LEN and np.isfinite(logits).all()

    weights = resolve_weights(name)
    oracle = whisper.model.Whisper(whisper.model.ModelDimensions(**asdict(dims)))
    oracle.load_state_dict({k: v.float() for k, v in weights.state_dict.items()})
    sequence = torch.tensor([[*model.tokenizer.with_language("en").sot_sequence, *tokens]])
    with torch.no_grad():
        theirs = oracle.eval()(torch.from_numpy(mel)[None], sequence)[0].numpy()
    assert np.abs(theirs - logits[-len(theirs) :]).max() < 2e-3 * np.abs(theirs).max()
    assert (theirs.argmax(-1) == logits.argmax(-1)).all()


@pytest.mark.parametrize("name", list(REDUCED))
def test_reduced_model_converts_and_verifies(
    hub_with: Callable[[str], Path], name: str, tmp_path: Path, speech: Callable[[str], Path]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pytest.importorskip("coremltools")
    from whisper_coreml.coreml.convert import convert
    from whisper_coreml.verify import verify

    hub_with(name)
    converted = convert(name, tmp_path / f"{name}-coreml")
    manifest = json.loads((converted.bundle / "manifest.json").read_text())
    assert manifest["name"] == name and manifest["dims"]["n_mels"] == 128 and manifest["dims"]["n_vocab"] == 51866
    report = verify(converted.bundle, speech(CLIP), engine="mil", sample_len=SAMPLE_LEN, transcripts=False)
    assert report.passed, "\n".join(report.lines())
    assert report.positions == SAMPLE_LEN + 3  # after the prompt: sot, language, task
    assert report.min_encoder_psnr > 60 and report.logits_psnr > 60
    assert report.reference_text is None and "transcripts: not compared" in report.lines()
    assert report.reference_tokens == report.converted_tokens


# --- the full sizes (slow: `pytest -m slow`, or benchmarks/sizes.py for all of them with figures) --


@pytest.mark.slow
@pytest.mark.parametrize("size", ["small", "medium", "large-v3", "large-v3-turbo"])
def test_full_size_random_model(size: str, tmp_path: Path, speech: Callable[[str], Path], base_weights: Any) -> None:
    results = {}
    model_dir, bundle = tmp_path / size, tmp_path / f"{size}-coreml"
    clip = str(speech(CLIP))
    for stage, args in [
        ("make", [size, str(model_dir)]),
        ("load", [str(model_dir)]),
        ("decode", [str(model_dir), clip, str(SAMPLE_LEN)]),
        ("convert", [str(model_dir), str(bundle)]),
        ("verify", [str(bundle), clip, str(SAMPLE_LEN)]),
    ]:
        results[stage] = sizes.run_stage([stage, *args])
        assert results[stage]["ok"], results[stage]["log"]
    assert results["load"]["dims"] == asdict(sizes.SIZES[size])
    assert results["decode"]["tokens"] == SAMPLE_LEN
    assert results["verify"]["passed"], results["verify"]["log"]
    print(json.dumps({k: {"seconds": v["seconds"], "peak_rss_mib": v["peak_rss_mib"]} for k, v in results.items()}))
    assert sys.platform != "win32"

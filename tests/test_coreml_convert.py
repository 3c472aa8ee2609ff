"""Converting tiny.en to Core ML for real, then checking the bundle, its manifest and its validation.

The stateful float16 bundle is converted once per session into the session's temp root (and
reused by test_verify.py there); this module adds a stateless macOS 13 conversion and an int8
one. Conversion works on any OS; Core ML itself (compiling, predicting) only on macOS.
"""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import fresh

from whisper_coreml.audio import MelSource
from whisper_coreml.coreml import bundle as B
from whisper_coreml.coreml import macos
from whisper_coreml.coreml.convert import COMPILE_NOTE, ConvertReport, convert, weights_checksum
from whisper_coreml.coreml.mil import CONVERTER_OPS, MilProgram
from whisper_coreml.engines.mil import MilEngine
from whisper_coreml.engines.pytorch import TorchEngine
from whisper_coreml.errors import ModelError
from whisper_coreml.weights import Weights

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pytest.importorskip("coremltools")

CLIP = "en/arctic_a0010.wav"
REFERENCE = "I'm playing a single hand in what looks like a losing game."


def converted(tmp_path_factory: pytest.TempPathFactory, weights: Weights, name: str, **options: object) -> Path:
    """A bundle converted once per test session (shared across modules through the session's temp root)."""
    path = tmp_path_factory.getbasetemp() / name
    if not B.is_bundle(path):
        report = convert(weights, path, **options)  # type: ignore[arg-type]
        (path / "report.json").write_text(json.dumps({**report.__dict__, "bundle": str(report.bundle)}))
    return path


def report_of(path: Path) -> dict:
    return json.loads((path / "report.json").read_text())


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Weights) -> Path:
    return converted(tmp_path_factory, tiny_weights, "tiny.en-coreml")


@pytest.fixture(scope="module")
def stateless(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Weights) -> Path:
    return converted(tmp_path_factory, tiny_weights, "tiny.en-coreml-macos13", minimum_deployment_target="macOS13")


@pytest.fixture(scope="module")
def mel(audio: Callable[[str], np.ndarray]) -> np.ndarray:
    with MelSource.from_array(audio(CLIP), 80) as source:
        return source.window(0)


@pytest.fixture(scope="module")
def torch_engine(tiny_weights: Weights) -> TorchEngine:
    return TorchEngine(fresh(tiny_weights), device="cpu")


# --- the bundle ------------------------------------------------------------------------------------


def test_bundle_layout_and_report(bundle: Path) -> None:
    for name in ("encoder.mlpackage", "decoder.mlpackage", "manifest.json", "tokenizer.json"):
        assert (bundle / name).exists(), name
    report = report_of(bundle)
    assert report["stateful"] is True
    assert report["per_token_in_bytes"] == 8  # token + position, int32
    vocab, heads = 51864, 8
    assert report["per_token_out_bytes"] == 4 * vocab + 2 * heads * 1500  # fp32 logits + fp16 alignment weights
    assert report["per_window_bytes"] == 2 * 2 * (4 * 6 * 1500 * 64)  # fp16 cross keys and values
    assert 100e6 < report["total_bytes"] < 130e6  # fp16, except one fp32 copy of the embedding
    assert report["peak_rss_bytes"] > 0 and report["seconds"] > 0
    if sys.platform != "darwin":
        assert report["compiled"] is False
        assert list(report["notes"]) == [COMPILE_NOTE]


def test_manifest_describes_the_model(bundle: Path, tiny_weights: Weights) -> None:
    loaded = B.load_bundle(bundle)
    m = loaded.manifest
    assert m.name == "tiny.en" and m.dims == tiny_weights.dims
    assert m.precision == "float16" and m.compute_units == "all" and m.minimum_deployment_target == "macOS15"
    assert m.quantize == "none" and m.stateful and m.max_tokens == 448
    assert m.alignment_heads == tiny_weights.alignment_heads
    assert m.special_tokens["sot"] == 50257 and m.special_tokens["timestamp_begin"] == 50363
    assert m.source["sha256"] == weights_checksum(tiny_weights)
    assert {"whisper_coreml", "coremltools", "torch"} <= set(m.versions)
    assert [t.name for t in m.encoder.inputs] == ["mel"]
    assert m.encoder.get("mel").shape == (1, 80, 3000) and m.encoder.get("mel").dtype == "float16"
    assert m.encoder.get("cross_k").shape == (4, 6, 1500, 64)
    assert [t.name for t in m.decoder.inputs] == ["token", "position"]
    assert {t.name for t in m.decoder.outputs} == {"logits", "alignment"}
    assert m.decoder.get("logits").shape == (1, 1, 51864) and m.decoder.get("logits").dtype == "float32"
    assert m.decoder.get("alignment").shape == (1, 8, 1500)
    states = {t.name: t for t in m.decoder.states}
    assert set(states) == {"k_cache", "v_cache", "cross_k", "cross_v"}
    assert states["k_cache"].shape == (4, 6, 448, 64) and states["k_cache"].dtype == "float16"
    assert all(info["bytes"] > 0 and len(info["sha256"]) == 64 for info in m.files.values())
    assert loaded.tokenizer().sot == 50257


def test_converter_emits_only_implemented_ops(bundle: Path, stateless: Path) -> None:
    for path, function in (
        (bundle / "encoder.mlpackage", "main"),
        (bundle / "decoder.mlpackage", "main"),
        (bundle / "decoder.mlpackage", "beam"),
        (stateless / "decoder.mlpackage", "main"),
        (stateless / "decoder_beam.mlpackage", "main"),
    ):
        ops = set(MilProgram.load(path, function=function).op_types) - {"const"}
        assert ops <= CONVERTER_OPS, sorted(ops - CONVERTER_OPS)


def test_beam_decoder_shares_the_stateful_package(bundle: Path, stateless: Path) -> None:
    """Stateful: a `beam` function inside decoder.mlpackage (no second copy of the weights); stateless: a package."""
    m = B.load_bundle(bundle).manifest
    assert m.beam_size == 5 and m.beam_decoder is not None
    assert {t.name: t.shape for t in m.beam_decoder.inputs} == {"token": (5, 1), "position": (1,), "beam": (5,)}
    assert m.beam_decoder.get("k_cache").shape == (4, 5, 6, 448, 64)
    assert m.beam_decoder.get("cross_k").shape == (4, 6, 1500, 64)  # one copy for every beam
    assert m.beam_decoder.get("logits").shape == (5, 1, 51864)
    assert not (bundle / "decoder_beam.mlpackage").exists()
    assert report_of(bundle)["decoder_bytes"] < 100e6  # what the one-token decoder alone takes
    s = B.load_bundle(stateless).manifest
    assert s.beam_size == 5 and (stateless / "decoder_beam.mlpackage").is_dir()
    assert s.beam_decoder is not None and s.beam_decoder.get("k_cache").shape == (4, 5, 6, 448, 64)


def test_float16_decoder_computes_the_vocabulary_in_float32(bundle: Path, stateless: Path) -> None:
    """Embedding lookup, final norm and logits run in float32 over ONE float32 copy of the
    embedding matrix; everything else in the decoder is float16."""
    from whisper_coreml.coreml.mil import _load_program

    for path, function in (
        (bundle / "decoder.mlpackage", "main"),
        (bundle / "decoder.mlpackage", "beam"),
        (stateless / "decoder.mlpackage", "main"),
        (stateless / "decoder_beam.mlpackage", "main"),
    ):
        ops = list(_load_program(path).functions[function].operations)
        vocabulary = [o for o in ops if o.op_type == "const" and o.outputs[0].shape == (51864, 384)]
        assert len(vocabulary) == 1 and vocabulary[0].outputs[0].val.dtype == np.float32
        linears = [o for o in ops if o.op_type == "linear"]
        assert [o.weight.val.dtype for o in linears].count(np.float32) == 1
        assert [o.weight.val.dtype for o in linears].count(np.float16) == len(linears) - 1


# --- running it ------------------------------------------------------------------------------------------


def test_encoder_and_stateful_decoder_match_pytorch(bundle: Path, mel: np.ndarray, torch_engine: TorchEngine) -> None:
    from whisper_coreml.verify import psnr

    engine = MilEngine(bundle)
    ours, theirs = engine.encode(mel), torch_engine.encode(mel)
    assert psnr(np.stack([k[0].numpy() for k, _ in theirs]), ours.cross_k) > 35
    tokens = np.array([[50257, 50363, 314, 1101, 2712, 257, 2060]])
    positions = list(range(tokens.shape[1]))
    expected = torch_engine.decoder(theirs).step(tokens, positions)
    # the first call gets the whole prompt, later calls one token each, as decoding does
    session = engine.decoder(ours)
    got = np.concatenate([session.step(tokens[:, :3], positions[:3]), session.step(tokens[:, 3:], [0, 1, 2, 3])], 1)
    assert got.shape == expected.shape and got.dtype == np.float32
    assert psnr(expected, got) > 35
    assert (got.argmax(-1) == expected.argmax(-1)).all()
    assert session.alignment_weights.shape == (1, 8, 7, 1500)
    np.testing.assert_allclose(session.alignment_weights.sum(-1), 1.0, atol=1e-2)  # attention rows
    # a second sequence in a batch has its own state and gives the same logits
    batch = engine.decoder(ours, batch_size=2)
    both = batch.step(np.repeat(tokens, 2, 0), [-1])
    np.testing.assert_array_equal(both[0], both[1])
    np.testing.assert_allclose(both[0, 0], got[0, -1], atol=1e-6)


def test_stateless_variant_matches_stateful(stateless: Path, bundle: Path, mel: np.ndarray) -> None:
    report = report_of(stateless)
    assert report["stateful"] is False
    cache, cross = 4 * 6 * 448 * 64 * 2, 4 * 6 * 1500 * 64 * 2
    assert report["per_token_in_bytes"] == 8 + 2 * cache + 2 * cross + 448 * 2  # caches, cross K/V, mask
    assert report["per_token_out_bytes"] == 4 * 51864 + 2 * 8 * 1500 + 2 * 4 * 6 * 64 * 2  # + k_new, v_new
    m = B.load_bundle(stateless).manifest
    assert not m.stateful and not m.decoder.states
    assert {t.name for t in m.decoder.inputs} == {
        "token",
        "position",
        "k_cache",
        "v_cache",
        "cross_k",
        "cross_v",
        "mask",
    }
    a, b = MilEngine(stateless), MilEngine(bundle)
    tokens = np.array([[50257, 50363, 314, 1101, 2712]])
    la = a.decoder(a.encode(mel)).step(tokens, [0, 2, 4])
    lb = b.decoder(b.encode(mel)).step(tokens, [0, 2, 4])
    np.testing.assert_allclose(la, lb, atol=0.05)
    assert (la.argmax(-1) == lb.argmax(-1)).all()


@pytest.mark.parametrize("kind", ["stateful", "stateless"])
def test_sessions_follow_reorder_like_torch(
    kind: str, bundle: Path, stateless: Path, mel: np.ndarray, torch_engine: TorchEngine
) -> None:
    """Every session kind (beam decoder at batch 5, one-token decoder per sequence at 3) keeps the rows it is told."""
    from whisper_coreml.engines import mil

    engine = MilEngine(bundle if kind == "stateful" else stateless)
    kinds = {
        5: mil.StatefulBeamSession if kind == "stateful" else mil.StatelessBeamSession,
        3: mil.StatefulSession if kind == "stateful" else mil.StatelessSession,
    }
    ours, theirs = engine.encode(mel), torch_engine.encode(mel)
    rng = np.random.default_rng(0)
    for batch, expected_kind in kinds.items():
        a, b = engine.decoder(ours, batch), torch_engine.decoder(theirs, batch)
        assert type(a) is expected_kind
        tokens = np.tile([[50257, 50363, 314]], (batch, 1))
        for _ in range(4):
            got, expected = a.step(tokens), b.step(tokens)
            assert (got.argmax(-1) == expected.argmax(-1)).all()
            np.testing.assert_allclose(got, expected, atol=0.1)
            rows = rng.integers(0, batch, batch)
            a.reorder(rows)
            b.reorder(rows)
            tokens = rng.integers(0, 50000, (batch, 1))
        assert a.alignment_weights.shape == (batch, 8, 6, 1500)
        with pytest.raises(ValueError, match="reorder needs"):
            a.reorder([0] * (batch + 1))


def test_int8_bundle_transcribes(
    tmp_path_factory: pytest.TempPathFactory, tiny_weights: Weights, speech: Callable[[str], Path]
) -> None:
    from whisper_coreml.api import WhisperModel

    path = converted(
        tmp_path_factory, tiny_weights, "tiny.en-coreml-int8", quantize="int8", max_tokens=224, beam_size=0
    )
    report = report_of(path)
    assert report["total_bytes"] < 0.6 * report_of(tmp_path_factory.getbasetemp() / "tiny.en-coreml")["total_bytes"]
    engine = MilEngine(path)
    assert "constexpr_blockwise_shift_scale" in engine.decoder_program.op_types
    assert engine.dims.n_text_ctx == 224  # decoding sees the converted context
    model = WhisperModel(engine, engine.bundle.tokenizer(), "tiny.en")
    assert model.transcribe(speech(CLIP)).text.strip() == REFERENCE


# --- options and validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option,value",
    [
        ("precision", "float8"),
        ("compute_units", "gpu"),
        ("minimum_deployment_target", "macOS12"),
        ("quantize", "int4"),
        ("max_tokens", 449),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, tiny_weights: Weights, option: str, value: object) -> None:
    with pytest.raises(ModelError) as info:
        convert(tiny_weights, tmp_path / "x", **{option: value})  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()


def test_refuses_to_overwrite_a_foreign_directory(tmp_path: Path, tiny_weights: Weights) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("do not lose me")
    with pytest.raises(ModelError, match="not a whisper-coreml bundle"):
        convert(tiny_weights, target)
    assert (target / "thesis.tex").read_text() == "do not lose me"
    assert [p.name for p in tmp_path.iterdir()] == ["precious"], "no partial bundle is left behind"


@pytest.fixture
def copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(bundle, target)
    return target


def _one_line(path: Path, match: str) -> str:
    with pytest.raises(ModelError, match=match) as info:
        B.load_bundle(path)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_truncated_package(copy: Path) -> None:
    weights = copy / "decoder.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    assert "weight.bin" in _one_line(copy, "truncated")


def test_truncated_model_description(copy: Path) -> None:
    spec = copy / "encoder.mlpackage" / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec.write_bytes(spec.read_bytes()[:100])
    _one_line(copy, "encoder.mlpackage")


def test_corrupt_weights(copy: Path) -> None:
    weights = copy / "encoder.mlpackage" / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    _one_line(copy, "corrupt")
    B.load_bundle(copy, verify_checksums=False)  # sizes still match: only the checksum can tell


def test_manifest_of_another_model(copy: Path) -> None:
    """tiny.en's files with a manifest describing base (8 heads, 512 wide)."""
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["name"] = "base"
    manifest["dims"].update(n_audio_state=512, n_audio_head=8, n_text_state=512, n_text_head=8, n_vocab=51865)
    for part in ("encoder", "decoder"):
        for group in ("inputs", "outputs", "states"):
            for t in manifest[part].get(group, []):
                if t["name"] in ("cross_k", "cross_v", "k_cache", "v_cache"):
                    t["shape"] = [6, 8, t["shape"][2], 64]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert "another model" in _one_line(copy, "cross_k")


def test_missing_tokenizer(copy: Path) -> None:
    (copy / "tokenizer.json").unlink()
    _one_line(copy, "tokenizer.json is missing")


def test_missing_package(copy: Path) -> None:
    shutil.rmtree(copy / "decoder.mlpackage")
    _one_line(copy, "decoder.mlpackage is missing")


def test_format_version_mismatch(copy: Path) -> None:
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    _one_line(copy, "format version 99")


def test_not_a_bundle(tmp_path: Path) -> None:
    _one_line(tmp_path, "not a converted whisper-coreml bundle")
    (tmp_path / "manifest.json").write_text("{not json")
    _one_line(tmp_path, "not valid JSON")
    _one_line(tmp_path / "nowhere", "no such bundle directory")


def test_foreign_tokenizer(copy: Path, base_weights: Weights) -> None:
    assert base_weights.tokenizer_file is not None
    shutil.copyfile(base_weights.tokenizer_file, copy / "tokenizer.json")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"].pop("tokenizer.json")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    _one_line(copy, "does not belong to this model")


# --- macOS ----------------------------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "darwin", reason="the error is for other systems")
def test_coreml_engine_needs_macos(bundle: Path) -> None:
    from whisper_coreml.engines.coreml import CoreMLEngine

    with pytest.raises(ModelError, match="needs macOS; use --engine mil"):
        CoreMLEngine(bundle)


@pytest.mark.macos
def test_coreml_engine_matches_the_reference_executor(bundle: Path, mel: np.ndarray) -> None:
    from whisper_coreml.engines.coreml import CoreMLEngine

    if not macos.runs("macOS15"):
        pytest.skip("the stateful decoder needs macOS 15")
    from whisper_coreml.verify import psnr

    coreml, reference = CoreMLEngine(bundle, compute_units="cpu_only"), MilEngine(bundle)
    ours, theirs = coreml.encode(mel), reference.encode(mel)
    assert psnr(theirs.cross_k, ours.cross_k) > 35
    tokens = np.array([[50257, 50363, 314, 1101]])
    a = coreml.decoder(ours).step(tokens, [0, 1, 2, 3])
    b = reference.decoder(theirs).step(tokens, [0, 1, 2, 3])
    assert psnr(b, a) > 35 and (a.argmax(-1) == b.argmax(-1)).all()


@pytest.mark.macos
def test_compiles_on_macos(bundle: Path, stateless: Path) -> None:
    """Each bundle is compiled where the Mac runs its programs (the stateful one from macOS 15)."""
    for path, target in ((bundle, "macOS15"), (stateless, "macOS13")):
        report = report_of(path)
        assert report["compiled"] is macos.runs(target), report["notes"]
        if report["compiled"]:
            assert {p.name for p in path.glob("*.mlmodelc")} == {
                p.name.replace(".mlpackage", ".mlmodelc") for p in path.glob("*.mlpackage")
            }
        else:
            assert "newer than this Mac" in report["notes"][0]


def test_report_lines(bundle: Path) -> None:
    data = report_of(bundle)
    data["bundle"] = Path(data["bundle"])
    data["notes"] = tuple(data["notes"])
    lines = ConvertReport(**data).lines()
    assert any("per token 8 bytes in" in line for line in lines)

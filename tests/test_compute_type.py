"""--compute-type: int8, bfloat16 and their pair on real speech with tiny.en, what each means where,
the errors for what a machine cannot run, and the settings key that tells them apart."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_cli import SAMPLE, run

import whisper_coreml as wc
from whisper_coreml.engines import COMPUTE_TYPES, check_compute_type
from whisper_coreml.engines import precision as precision_module
from whisper_coreml.engines import quantize as quantize_module
from whisper_coreml.engines.precision import cpu_has_bfloat16, resolve_precision
from whisper_coreml.engines.pytorch import REFINED
from whisper_coreml.engines.quantize import (
    MIN_FEW_ROW_WEIGHTS,
    HalfWeightLinear,
    Int8Linear,
    half_weights_available,
)
from whisper_coreml.errors import ModelError
from whisper_coreml.model import LayerNorm
from whisper_coreml.settings import Choices, build_settings

CLIPS = (
    "en/arctic_a0010.wav",
    "en/arctic_a0024.wav",
    "en/jfk_inaugural_excerpt.flac",
    "en/ljspeech_LJ001-0001.wav",
)
QUANTIZED = ("int8", "bfloat16", "int8_bfloat16")
CPU = torch.device("cpu")


def needs_bfloat16(compute_type: str) -> None:
    if "bfloat16" in compute_type and not cpu_has_bfloat16():
        pytest.skip(f"{compute_type} needs a CPU with AVX512_BF16 or AMX")


@pytest.fixture(scope="module")
def model_in() -> Callable[[str], wc.WhisperModel]:
    """`model_in("int8")`: tiny.en in that compute type, loaded once per module."""
    loaded: dict[str, wc.WhisperModel] = {}

    def load(compute_type: str) -> wc.WhisperModel:
        needs_bfloat16(compute_type)
        if compute_type not in loaded:
            loaded[compute_type] = wc.load_model("tiny.en", engine="torch", device="cpu", compute_type=compute_type)
        return loaded[compute_type]

    return load


@pytest.fixture(scope="module")
def texts(model_in: Callable[[str], wc.WhisperModel], speech: Callable[[str], Path]) -> Callable[[str], list[str]]:
    """`texts("int8")`: the texts of CLIPS, greedy, in that compute type (computed once)."""
    done: dict[str, list[str]] = {}

    def of(compute_type: str) -> list[str]:
        if compute_type not in done:
            done[compute_type] = [model_in(compute_type).transcribe(speech(c)).text for c in CLIPS]
        return done[compute_type]

    return of


def wer(references: list[str], hypotheses: list[str]) -> float:
    jiwer = pytest.importorskip("jiwer")
    normalizers = pytest.importorskip("whisper.normalizers")
    norm = normalizers.EnglishTextNormalizer()
    return 100 * jiwer.wer([norm(r) for r in references], [norm(h) for h in hypotheses])


@pytest.mark.parametrize("compute_type", QUANTIZED)
def test_each_type_transcribes_real_speech_as_float32_does(
    compute_type: str, texts: Callable[[str], list[str]], speech: Callable[[str], Path]
) -> None:
    references = [speech(c).with_suffix(".txt").read_text(encoding="utf-8") for c in CLIPS]
    fp32, ours = texts("float32"), texts(compute_type)
    assert "ask not what your country can do for you" in ours[2]
    # the same words (punctuation and case aside: a quantized layer may move a comma) on 3 of 4 clips
    norm = pytest.importorskip("whisper.normalizers").EnglishTextNormalizer()
    same = sum(norm(a) == norm(b) for a, b in zip(fp32, ours, strict=True))
    assert same >= len(CLIPS) - 1, (fp32, ours)
    assert wer(references, ours) <= wer(references, fp32) + 2.0  # a word at most, on ~70 words


@pytest.mark.parametrize("compute_type", QUANTIZED)
def test_beam_search_and_word_timing_run_in_each_type(
    compute_type: str, model_in: Callable[[str], wc.WhisperModel], speech: Callable[[str], Path]
) -> None:
    """Beam search reorders the cache and word timing reads cross-attention: both through the converted layers."""
    fp32 = model_in("float32").transcribe(speech(CLIPS[0]), beam_size=5, word_timestamps=True)
    ours = model_in(compute_type).transcribe(speech(CLIPS[0]), beam_size=5, word_timestamps=True)
    assert ours.text == fp32.text
    words = [w for s in ours.segments for w in s.words]
    reference = [w for s in fp32.segments for w in s.words]
    assert [w.word for w in words] == [w.word for w in reference]
    assert max(abs(a.start - b.start) + abs(a.end - b.end) for a, b in zip(words, reference, strict=True)) <= 0.2


@pytest.mark.parametrize("compute_type", QUANTIZED)
def test_layers_are_in_the_formats_the_type_names(
    compute_type: str, model_in: Callable[[str], wc.WhisperModel]
) -> None:
    engine = model_in(compute_type).engine
    formats = {"encoder": engine.precision.encoder, "decoder": engine.precision.decoder}
    assert engine.compute_type == compute_type
    expected = {"int8": ("int8", "int8"), "bfloat16": ("bfloat16", "float32"), "int8_bfloat16": ("bfloat16", "int8")}
    assert (formats["encoder"], formats["decoder"]) == expected[compute_type]  # bfloat16 only where it pays
    if formats["decoder"] == "int8":
        assert isinstance(engine.logits.weight, Int8Linear)  # the vocabulary projection, the largest layer
    for half, fmt in formats.items():
        module = getattr(engine.model, half)
        linears = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, Int8Linear, HalfWeightLinear))]
        if fmt == "int8":
            # tiny's decoder: the vocabulary's ranking above; its layers are float16 or bfloat16 here
            assert half == "decoder" or any(isinstance(m, Int8Linear) for m in linears)
            audio_kv = ("cross_attn.key", "cross_attn.value")
            for name, m in module.named_modules():
                if isinstance(m, HalfWeightLinear):  # too small for int8 to pay: float16 weights
                    assert half == "decoder" and m.in_features * m.out_features < MIN_FEW_ROW_WEIGHTS, name
                    assert not name.endswith(audio_kv), name
                elif isinstance(m, torch.nn.Linear) and half == "decoder":
                    # keys/values of the audio frames, projected in the format they are kept in
                    assert name.endswith(audio_kv) and engine.precision.attention == "bfloat16", name
                    assert m.weight.dtype == torch.bfloat16, name
                elif isinstance(m, torch.nn.Linear):  # int8 where it pays and keeps the text: see the engine
                    assert m.weight.dtype == torch.float32, name
                    # the encoder's first block, which carries half of int8's error
                    assert name.startswith("blocks.0."), name
        else:
            assert all(m.weight.dtype == getattr(torch, fmt) for m in linears)
        norms = [p for m in module.modules() if isinstance(m, LayerNorm) for p in m.parameters()]
        assert norms and all(p.dtype == torch.float32 for p in norms)


def test_int8_keeps_the_encoder_near_float32_on_this_cpu(
    model_in: Callable[[str], wc.WhisperModel], speech: Callable[[str], Path]
) -> None:
    """Without VNNI, 8-bit products saturate in 16 bits when a whole tensor shares one scale: the
    encoder's output moved 51% of its norm on an AMD EPYC, and tiny.en skipped 23 s of a long
    file. Every int8 layer there scales each row on its own; the output stays within ~8%."""
    from whisper_coreml.audio import MelSource

    with MelSource.from_file(speech(CLIPS[2]), 80) as source:
        mel = torch.from_numpy(source.window(0))[None]
    with torch.inference_mode():
        exact = model_in("float32").engine.model.encoder(mel)
        ours = model_in("int8").engine.model.encoder(mel)
    assert (ours - exact).norm() < 0.12 * exact.norm()


def test_int8_scales_rows_on_their_own_where_products_saturate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many-row layers share one scale a call only where the CPU multiplies with VNNI; rows scaled
    on their own quantize to 8 bits everywhere (their pinned range does not saturate). Few-row
    layers are int8 from `MIN_FEW_ROW_WEIGHTS` up on every CPU: base's decoder MLP keeps float16
    weights, small's is int8."""
    layers = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    with monkeypatch.context() as patch:
        for vnni in (True, False):
            patch.setattr(quantize_module, "cpu_has", lambda feature, vnni=vnni: vnni and feature == "vnni")
            model = copy.deepcopy(layers)
            quantize_module.quantize_linears(model, quantize_module.MANY_ROWS)
            assert all(isinstance(m, Int8Linear) and m.per_row is not vnni for m in model)
            mlp = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.Linear(768, 3072))
            quantize_module.quantize_linears(mlp, quantize_module.FEW_ROWS)
            assert not isinstance(mlp[0], Int8Linear) and isinstance(mlp[1], Int8Linear)
            assert mlp[1].per_row


def test_small_few_row_layers_keep_float16_weights_and_float32_products(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder layer too small for int8 keeps its weights in float16: its output is float32's
    product over the weights rounded to float16, whatever the rows beside it, and a CPU without
    fbgemm's kernel keeps the layer float32."""
    if not half_weights_available():
        pytest.skip("this PyTorch has no float16-weight product on this CPU")
    torch.manual_seed(0)
    layer = torch.nn.Linear(384, 1536)
    model = torch.nn.Sequential(layer)
    quantize_module.quantize_linears(model, quantize_module.FEW_ROWS)
    half = model[0]
    assert isinstance(half, HalfWeightLinear) and (half.in_features, half.out_features) == (384, 1536)
    x = torch.randn(5, 1, 384)
    rounded = torch.nn.functional.linear(x, layer.weight.half().float(), layer.bias)
    with torch.inference_mode():
        out = half(x)
        assert out.dtype == torch.float32 and out.shape == (5, 1, 1536)
        torch.testing.assert_close(out, rounded, rtol=0, atol=1e-4)  # only the sums' order differs
        # the weights really are rounded: far nearer the rounded product than float32's own
        assert (out - rounded).abs().max() < 0.1 * (out - layer(x)).abs().max()
        torch.testing.assert_close(half(x[:1]), out[:1], rtol=0, atol=1e-5)
    monkeypatch.setattr(quantize_module, "half_weights_available", lambda: False)
    plain = torch.nn.Sequential(torch.nn.Linear(384, 1536))
    quantize_module.quantize_linears(plain, quantize_module.FEW_ROWS)
    assert type(plain[0]) is torch.nn.Linear and plain[0].weight.dtype == torch.float32


def test_int8_attends_to_the_audio_in_bfloat16_where_the_cpu_has_it(
    model_in: Callable[[str], wc.WhisperModel], speech: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attention over the 1500 audio frames (the encoder's own, and each step's cross-attention,
    whose keys/values it reads whole) runs in bfloat16 under int8 where the CPU computes in it;
    the encoder's output stays float32's to int8's own error, attention's result in float32."""
    with monkeypatch.context() as patch:
        patch.setattr(precision_module, "cpu_has_bfloat16", lambda: False)
        assert resolve_precision("int8", CPU).attention is None
        patch.setattr(precision_module, "cpu_has_bfloat16", lambda: True)
        assert resolve_precision("int8", CPU).attention == "bfloat16"
        assert resolve_precision("float32", CPU).attention is None
    if not cpu_has_bfloat16():
        pytest.skip("no native bfloat16 on this CPU: int8 attends in float32")
    from whisper_coreml.audio import MelSource

    engine = model_in("int8").engine
    assert all(b.attn.kv_dtype == torch.bfloat16 for b in engine.model.encoder.blocks)
    with MelSource.from_file(speech(CLIPS[2]), engine.dims.n_mels) as source:
        mel = torch.from_numpy(source.window(0))[None]
    with torch.inference_mode():
        kv = engine.encode(mel[0].numpy())
        ours = engine.model.encoder(mel)
        with monkeypatch.context() as patch:
            for block in engine.model.encoder.blocks:
                patch.setattr(block.attn, "kv_dtype", None)
            full = engine.model.encoder(mel)
        exact = model_in("float32").engine.model.encoder(mel)
    # bfloat16 attention adds little to what int8's products already move (~8% of the norm)
    assert (ours - exact).norm() < 1.2 * (full - exact).norm()
    assert all(k.dtype == v.dtype == torch.bfloat16 for k, v in kv)
    # and projected in it from the audio frames (1500 rows: AMX's bfloat16 beats int8 there, and is nearer)
    key = engine.model.decoder.blocks[0].cross_attn.key
    exact_key = model_in("float32").engine.model.decoder.blocks[0].cross_attn.key
    assert type(key) is torch.nn.Linear and key.weight.dtype == torch.bfloat16
    with torch.inference_mode():
        frames = exact[0]
        ours, full = key(frames.to(torch.bfloat16)).float(), exact_key(frames)
    assert (ours - full).norm() < 0.01 * full.norm()
    attention = engine.model.decoder.blocks[0].cross_attn
    x = torch.randn(5, 1, engine.dims.n_text_state)
    with torch.inference_mode():
        ours = attention.attend(attention.query(x), *kv[0])
        full = attention.attend(attention.query(x), kv[0][0].float(), kv[0][1].float())
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, full, rtol=0.02, atol=0.02 * full.abs().max().item())


def test_int8_vocabulary_projection_ranks_in_int8_and_scores_the_best_in_float16(
    model_in: Callable[[str], wc.WhisperModel], speech: Callable[[str], Path]
) -> None:
    """Each row's best logits are the float32 products over the float16 token table, not int8's:
    every choice decoding makes is among them (real hidden states: tiny.en on a clip's own text)."""
    from whisper_coreml.audio import MelSource

    model = model_in("int8")
    engine, tokenizer = model.engine, model.tokenizer
    tokens = [t for s in model.transcribe(speech(CLIPS[2])).segments for t in s.tokens]
    with MelSource.from_file(speech(CLIPS[2]), engine.dims.n_mels) as source:
        kv = engine.encode(source.window(0))
    with torch.inference_mode():
        hidden, _ = engine.model.decoder(torch.tensor([[*tokenizer.sot_sequence, *tokens]]), kv)
        logits = engine.logits(hidden)[0]
        h = engine.model.decoder.ln(hidden)[0].float()
        table = engine.model.decoder.token_embedding.weight
        assert table.dtype == torch.float16
        reference = h @ table.float().T
        ranked = engine.logits.weight(h)  # int8 alone
        alone = engine.logits(hidden[:, 3:4])[0]
    best = reference.topk(5, dim=-1).indices
    assert torch.equal(logits.argmax(-1), reference.argmax(-1))
    torch.testing.assert_close(logits.gather(1, best), reference.gather(1, best), rtol=0, atol=1e-4)
    # int8 alone is ~100x further off where it matters: the refinement is what makes them equal
    assert (ranked.gather(1, best) - reference.gather(1, best)).abs().max() > 0.01
    assert logits.shape[-1] == engine.dims.n_vocab and REFINED >= 5
    torch.testing.assert_close(alone, logits[3:4], rtol=0, atol=0)  # a row's logits are its own


def test_what_auto_and_the_default_mean_where(monkeypatch: pytest.MonkeyPatch) -> None:
    # the fastest type whose WER stayed near float32's (tiny.en and base, greedy and beam 5, en/
    # and long/: benchmarks/README.md); the API's default stays openai-whisper's float32
    for native, expected in ((True, "int8_bfloat16"), (False, "int8")):
        monkeypatch.setattr(precision_module, "cpu_has_bfloat16", lambda native=native: native)
        assert resolve_precision("auto", CPU).name == expected
    assert resolve_precision(None, CPU).name == "float32"  # openai-whisper's, the Python API's default
    for gpu in ("cuda", "mps"):
        assert resolve_precision("auto", torch.device(gpu)).name == "float16"
        assert resolve_precision(None, torch.device(gpu)).name == "float16"


def test_the_parity_flags_load_openai_whispers_float32() -> None:
    """`auto` is int8 on a CPU (engines/precision.py), but greedy without VAD (issue 10's parity
    mode) asks the engine for openai-whisper's own choice; an explicit type is what the user
    gets, and the key keeps the choice as given."""
    parity = build_settings("tiny.en", Choices(beam_size=1, vad=False))
    assert parity.compute_type_to_load is None and parity.compute_type == "auto"
    assert resolve_precision(parity.compute_type_to_load, CPU).name == "float32"
    assert build_settings("tiny.en", Choices()).compute_type_to_load == "auto"
    assert build_settings("tiny.en", Choices(beam_size=1)).compute_type_to_load == "auto"  # VAD on: not parity
    assert (
        build_settings("tiny.en", Choices(beam_size=1, vad=False, compute_type="int8")).compute_type_to_load == "int8"
    )


def test_what_a_machine_cannot_run_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = {
        ("float16", CPU): "not offered on the CPU",
        ("int8", torch.device("cuda")): "int8 kernels run on the CPU only",
        ("int8_bfloat16", torch.device("mps")): "int8 kernels run on the CPU only",
        ("bfloat16", torch.device("mps")): "not supported on this mps device",
        ("int4", CPU): "choose one of auto, float32, int8",
    }
    for (compute_type, device), problem in cases.items():
        with pytest.raises(ModelError, match=problem) as error:
            resolve_precision(compute_type, device)
        assert str(error.value).startswith(f"--compute-type {compute_type}: ") and "\n" not in str(error.value)
    monkeypatch.setattr(precision_module, "cpu_has_bfloat16", lambda: False)
    for compute_type in ("bfloat16", "int8_bfloat16"):
        with pytest.raises(ModelError, match="no native bfloat16 arithmetic"):
            resolve_precision(compute_type, CPU)
    monkeypatch.setattr(precision_module, "int8_available", lambda: False)
    assert resolve_precision("auto", CPU).name == "float32"  # a PyTorch without int8 kernels
    with pytest.raises(ModelError, match="the mil engine runs a converted bundle"):
        check_compute_type("mil", None, "int8")
    check_compute_type("mil", None, "auto")  # a bundle runs as converted: auto asks for nothing else
    with pytest.raises(ModelError, match="the coreml engine"):
        wc.load_model("tiny.en", engine="coreml", compute_type="float32")


def test_the_compute_type_is_part_of_the_transcription_key() -> None:
    keys = {t: build_settings("tiny.en", Choices(compute_type=t)) for t in COMPUTE_TYPES}
    assert len({s.transcription_key() for s in keys.values()}) == len(COMPUTE_TYPES)
    assert len({s.output_key("srt") for s in keys.values()}) == len(COMPUTE_TYPES)
    assert build_settings("tiny.en", Choices()).compute_type == "auto"
    with pytest.raises(ValueError, match=r"^--compute-type int4: choose one of auto, "):
        build_settings("tiny.en", Choices(compute_type="int4"))
    with pytest.raises(ValueError, match=r"^compute_type int4: "):  # as a form spells it
        build_settings("tiny.en", Choices(compute_type="int4"), option=lambda field: field)


def test_cli_flag_end_to_end(tmp_path: Path) -> None:
    """int8 transcribes; the same run again is up to date; another compute type transcribes again."""
    args = ("--format", "json", "--output-dir", tmp_path)
    first = run(SAMPLE, *args, "--compute-type", "int8")
    assert first.returncode == 0, first.stderr
    assert "welcome" in json.loads((tmp_path / "espeak_welcome.json").read_text())["text"].lower()
    again = run(SAMPLE, *args, "--compute-type", "int8")
    assert again.returncode == 0 and "up to date" in again.stderr, again.stderr
    other = run(SAMPLE, *args, "--compute-type", "float32")
    assert other.returncode == 0 and "up to date" not in other.stderr and "s of audio in" in other.stderr


def test_cli_usage_errors(tmp_path: Path) -> None:
    for args, problem in (
        (("--compute-type", "int4"), "--compute-type int4: choose one of auto, float32, int8, bfloat16"),
        (("--compute-type", "float16", "--device", "cpu"), "--compute-type float16: not offered on the CPU"),
        (("--compute-type", "int8", "--engine", "mil"), "--compute-type int8: the mil engine runs a converted"),
    ):
        result = run(SAMPLE, *args, "--output-dir", tmp_path)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("error: " + problem) and result.stderr.count("\n") == 1, result.stderr
    assert not list(tmp_path.iterdir())

"""Our compact Whisper against transformers and openai-whisper, on real weights and real speech."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from conftest import fresh

import whisper_coreml as wc
from whisper_coreml.audio import MelSource
from whisper_coreml.engines import pytorch as pytorch_engine
from whisper_coreml.engines.pytorch import RowSplitLinear, TorchEngine
from whisper_coreml.model import ModelDimensions, Whisper
from whisper_coreml.tokenizer import Tokenizer
from whisper_coreml.weights import Weights

CLIP = "en/arctic_a0010.wav"
REFERENCE = "I'm playing a single hand in what looks like a losing game."


def our_model(weights: Weights) -> Whisper:
    model = Whisper(weights.dims)
    model.load_state_dict({k: v.float() for k, v in weights.state_dict.items()}, strict=True)
    return model.eval()


@pytest.fixture(scope="module", params=["tiny.en", "base"])
def case(request: pytest.FixtureRequest, audio: Callable[[str], np.ndarray]) -> dict:
    """One model's weights, our model, a real window's log-mel and a realistic token prefix."""
    weights: Weights = request.getfixturevalue("tiny_weights" if request.param == "tiny.en" else "base_weights")
    assert weights.tokenizer_file is not None
    tokenizer = Tokenizer(weights.tokenizer_file, weights.dims.n_vocab, weights.dims.num_languages, "en")
    with MelSource.from_array(audio(CLIP), weights.dims.n_mels) as source:
        mel = torch.from_numpy(source.window(0))[None]
    text = tokenizer.encode(" " + REFERENCE)
    tokens = [*tokenizer.sot_sequence, tokenizer.timestamp_begin, *text[:12]]
    model = our_model(weights)
    captured: list[torch.Tensor] = []
    hook = model.encoder.register_forward_hook(lambda module, args, out: captured.append(out))
    with torch.no_grad():
        logits = model(mel, torch.tensor([tokens]))
    hook.remove()
    (features,) = captured
    return {
        "name": request.param,
        "weights": weights,
        "tokenizer": tokenizer,
        "mel": mel,
        "tokens": torch.tensor([tokens]),
        "model": model,
        "logits": logits,
        "features": features,
        "text": text,
    }


def test_prefix_is_realistic(case: dict) -> None:
    """Guard against vacuous comparisons: the model really reads the speech."""
    logits, tokens, tokenizer = case["logits"], case["tokens"][0], case["tokenizer"]
    assert logits.shape == (1, len(tokens), case["weights"].dims.n_vocab)
    assert torch.isfinite(logits).all()
    # after <|0.00|> and each reference word piece, the model predicts the next reference piece
    predicted = logits[0, len(tokenizer.sot_sequence) : -1].argmax(-1).tolist()
    expected = tokens[len(tokenizer.sot_sequence) + 1 :].tolist()
    agree = sum(p == e for p, e in zip(predicted, expected, strict=True))
    assert agree >= len(expected) - 2, (tokenizer.decode(predicted), tokenizer.decode(expected))


def test_logits_equal_transformers(case: dict, build_hf_model: Callable) -> None:
    hf = build_hf_model(case["weights"])
    with torch.no_grad():
        expected = hf(input_features=case["mel"], decoder_input_ids=case["tokens"]).logits
    torch.testing.assert_close(case["logits"], expected, atol=1e-4, rtol=0)


def test_encoder_and_logits_equal_openai_whisper(case: dict, request: pytest.FixtureRequest) -> None:
    openai = request.getfixturevalue("openai_tiny" if case["name"] == "tiny.en" else "openai_base")
    dims = case["weights"].dims
    with torch.no_grad():
        features = openai.encoder(case["mel"])
        logits = openai.logits(case["tokens"], features)
    assert case["features"].shape == features.shape == (1, dims.n_audio_ctx, dims.n_audio_state)
    torch.testing.assert_close(case["features"], features, atol=1e-5, rtol=0)
    torch.testing.assert_close(case["logits"], logits, atol=1e-5, rtol=0)


def test_incremental_decoding_equals_full_pass(case: dict) -> None:
    model, tokens, full = case["model"], case["tokens"], case["logits"]
    decoder = model.decoder
    with torch.no_grad():
        cross_kv = decoder.cross_kv(case["features"])
        # one token at a time: the single-query attention path
        cache = None
        steps = []
        for i in range(tokens.shape[1]):
            hidden, cache = decoder(tokens[:, i : i + 1], cross_kv, cache)
            steps.append(decoder.logits(hidden))
        assert cache is not None and cache[0].length == tokens.shape[1]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=0)
        # uneven chunks: multi-token prompts after a cache exercise the causal mask's offset
        cache = None
        chunks = []
        for a, b in [(0, 3), (3, 4), (4, 9), (9, tokens.shape[1])]:
            hidden, cache = decoder(tokens[:, a:b], cross_kv, cache)
            chunks.append(decoder.logits(hidden))
        torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-4, rtol=0)


def test_cache_length_matters(case: dict) -> None:
    """The cache is really used: the same token after a different history gives other logits."""
    model, tokens = case["model"], case["tokens"]
    decoder = model.decoder
    with torch.no_grad():
        cross_kv = decoder.cross_kv(case["features"])
        _, cache = decoder(tokens[:, :-1], cross_kv)
        with_history, _ = decoder(tokens[:, -1:], cross_kv, cache)
        without, _ = decoder(tokens[:, -1:], cross_kv)
    assert (decoder.logits(with_history) - decoder.logits(without)).abs().max() > 1.0


def test_engine_session_equals_full_pass(case: dict, request: pytest.FixtureRequest) -> None:
    wmodel = request.getfixturevalue("tiny_model" if case["name"] == "tiny.en" else "base_model")
    engine = wmodel.engine
    tokens = case["tokens"].numpy()
    full = case["logits"][0].numpy()
    features = engine.encode(case["mel"][0].numpy())
    prefix = 4
    session = engine.decoder(features)
    out = session.step(tokens[:, :prefix], positions=(0, -1))
    assert out.shape == (1, 2, full.shape[-1]) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], full[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(out[0, 1], full[prefix - 1], atol=1e-4, rtol=0)
    for i in range(prefix, tokens.shape[1]):
        step = session.step(tokens[:, i : i + 1])
        assert step.shape == (1, 1, full.shape[-1])
        np.testing.assert_allclose(step[0, 0], full[i], atol=1e-4, rtol=0)
    # every position of a fresh session in one call; a batch of two gives two identical rows
    batched = engine.decoder(features, batch_size=2).step(
        np.repeat(tokens, 2, axis=0), positions=tuple(range(tokens.shape[1]))
    )
    assert batched.shape == (2, tokens.shape[1], full.shape[-1])
    np.testing.assert_allclose(batched[0], full, atol=1e-4, rtol=0)
    np.testing.assert_allclose(batched[1], full, atol=1e-4, rtol=0)


def test_beams_sharing_the_prompt_decode_as_rows_alone(case: dict, request: pytest.FixtureRequest) -> None:
    """A window's rows run its prompt once and attend to one shared copy (`LayerCache.prefix`):
    each row's logits, through steps and reorders, equal that row decoded in a session of its own;
    several rows at once also take the packed vocabulary projection, one row the blocked one."""
    engine = request.getfixturevalue("tiny_model" if case["name"] == "tiny.en" else "base_model").engine
    tokens = case["tokens"].numpy()
    features = engine.encode(case["mel"][0].numpy())
    prompt, rest = tokens[:, :6], tokens[0, 6:12]
    beams = engine.decoder(features, batch_size=3)
    beams.step(np.repeat(prompt, 3, axis=0))
    assert beams.cache is not None and beams.cache[0].prefix[0].shape[0] == 1  # one copy for three rows
    alone = [engine.decoder(features) for _ in range(3)]
    for session in alone:
        session.step(prompt)
    for i, token in enumerate(rest):
        order = [2, 0, 1] if i % 2 else [0, 1, 2]  # rows trade places as beams do
        beams.reorder(order)
        alone = [alone[r] for r in order]
        chosen = np.array([[token], [token + 1 + i], [token + 7]])
        together = beams.step(chosen)
        for r, session in enumerate(alone):
            np.testing.assert_allclose(together[r], session.step(chosen[r : r + 1])[0], atol=2e-4, rtol=0)


def test_packed_projection_equals_the_column_blocks(tiny_model: wc.WhisperModel) -> None:
    """Several rows take oneDNN's packed copy of the vocabulary projection, one row the column
    blocks: both give the same logits (and without the packed copy, the blocks serve every call)."""
    projection = tiny_model.engine.logits
    if projection.packed is None:
        pytest.skip("this PyTorch has no oneDNN packing for this CPU")
    hidden = torch.randn(5, 2, tiny_model.engine.dims.n_text_state)
    blocks_only = copy.copy(projection)
    blocks_only.packed = None
    with torch.inference_mode():
        packed = projection(hidden)
        assert packed.shape == (5, 2, tiny_model.engine.dims.n_vocab)
        torch.testing.assert_close(packed, blocks_only(hidden), atol=1e-4, rtol=0)
        torch.testing.assert_close(projection(hidden[:1, :1]), packed[:1, :1], atol=1e-4, rtol=0)


def test_one_row_steps_run_their_layers_on_every_thread_bit_for_bit(
    tiny_weights: Weights, case: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A greedy step's float32 layers split their columns over the threads (`RowSplitLinear`):
    the same logits, to the bit, as the plain layers give; several rows take the plain product."""
    if case["name"] != "tiny.en":
        pytest.skip("one model is enough")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a test worker may run on one; the split needs two
    try:
        engine = TorchEngine(fresh(tiny_weights), "cpu", "float32")
        split = [name for name, layer in engine.model.decoder.named_modules() if isinstance(layer, RowSplitLinear)]
        assert len(split) == 32 and "blocks.0.mlp.0" in split  # every one-row layer of tiny's decoder

        def steps() -> list[np.ndarray]:
            session = engine.decoder(engine.encode(case["mel"][0].numpy()))
            session.step(case["tokens"].numpy()[:, :4])
            return [session.step(case["tokens"].numpy()[:, i : i + 1]) for i in range(4, 10)]

        together = steps()
        monkeypatch.setattr(RowSplitLinear, "forward", torch.nn.Linear.forward)
        assert all(np.array_equal(a, b) for a, b in zip(together, steps(), strict=True))
    finally:
        torch.set_num_threads(threads)


def test_int8_self_attention_projects_query_key_and_value_in_one_product_bit_for_bit(
    tiny_weights: Weights, case: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under int8 each decoder block's self-attention stacks its query, key and value into one
    product (`fuse_self_attention`): the same logits, to the bit, as three products give, for one
    row and for five; float32 keeps the three layers."""
    if case["name"] != "tiny.en":
        pytest.skip("one model is enough")
    fused = TorchEngine(fresh(tiny_weights), "cpu", "int8")
    assert all(b.attn.qkv is not None and not hasattr(b.attn, "query") for b in fused.model.decoder.blocks)
    assert all(b.attn.qkv is None for b in TorchEngine(fresh(tiny_weights), "cpu", "float32").model.decoder.blocks)
    monkeypatch.setattr(pytorch_engine, "fuse_self_attention", lambda decoder: None)
    apart = TorchEngine(fresh(tiny_weights), "cpu", "int8")
    assert all(b.attn.qkv is None for b in apart.model.decoder.blocks)

    def steps(engine: TorchEngine, rows: int) -> list[np.ndarray]:
        session = engine.decoder(engine.encode(case["mel"][0].numpy()), rows)
        tokens = np.repeat(case["tokens"].numpy(), rows, axis=0)
        session.step(tokens[:, :4])
        return [session.step(tokens[:, i : i + 1]) for i in range(4, 10)]

    for rows in (1, 5):
        assert all(np.array_equal(a, b) for a, b in zip(steps(fused, rows), steps(apart, rows), strict=True))


def test_dims_of_the_packaged_models(tiny_weights: Weights, base_weights: Weights) -> None:
    assert tiny_weights.dims == ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4)
    assert not tiny_weights.dims.is_multilingual
    assert base_weights.dims == ModelDimensions(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6)
    assert base_weights.dims.is_multilingual and base_weights.dims.num_languages == 99

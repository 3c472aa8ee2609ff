"""Window decoding: the logit rules one by one, then against openai-whisper's own filters and decoder."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from typing import Any

import numpy as np
import pytest
import torch

import whisper_coreml as wc
from whisper_coreml.decoding import (
    LOOP_CHECK_EVERY,
    LOOP_WINDOW,
    ApplyTimestampRules,
    DecodingOptions,
    SuppressBlank,
    SuppressTokens,
    WindowDecoder,
    compression_ratio,
    decode_window,
    detect_language,
    log_softmax,
)
from whisper_coreml.tokenizer import Tokenizer

EN_CLIPS = ["en/arctic_a0010.wav", "en/ljspeech_LJ001-0008.wav", "en/librispeech_1995-1837-0001.wav"]
MULTI_CLIPS = {  # clip: language spoken
    "multi/aishell_BAC009S0724W0121.wav": "zh",
    "multi/deepspeech_ru.wav": "ru",
    "multi/nst_sv_se10x016-08071999-1334_u0016003.wav": "sv",
    "multi/common_voice_ja_24511055.mp3": "ja",
}
NEG = -np.inf


def openai_decoding() -> Any:
    return pytest.importorskip("whisper.decoding")


@pytest.fixture(scope="module")
def en(tiny_model: wc.WhisperModel) -> Tokenizer:
    return tiny_model.tokenizer.with_language("en")


@pytest.fixture(scope="module")
def multi(base_weights) -> Tokenizer:
    assert base_weights.tokenizer_file is not None
    return Tokenizer(base_weights.tokenizer_file, 51865, 99, "en")


def text_logits(tokenizer: Tokenizer, favourite: int = 100, margin: float = 30.0) -> np.ndarray:
    """(1, V) logits where text token `favourite` dominates, so only the hard rules mask anything."""
    logits = np.zeros((1, tokenizer.n_vocab), np.float32)
    logits[0, favourite] = margin
    return logits


def history(tokenizer: Tokenizer, *sampled: int) -> np.ndarray:
    return np.array([[*tokenizer.sot_sequence, *sampled]], dtype=np.int64)


def rules(tokenizer: Tokenizer, max_index: int | None = 50) -> ApplyTimestampRules:
    return ApplyTimestampRules(tokenizer, len(tokenizer.sot_sequence), max_index)


def masked(logits: np.ndarray) -> np.ndarray:
    return np.isneginf(logits[0])


# --- timestamp rules, by hand -----------------------------------------------------------------------


def test_after_a_lone_timestamp_text_is_forbidden(en: Tokenizer) -> None:
    ts = en.timestamp_begin
    logits = text_logits(en, favourite=en.eot)  # the end likely, so the sum rule keeps it
    rules(en).apply(logits, history(en, ts, 100, 101, ts + 50))  # <|0.00|> text <|1.00|>: open pair
    m = masked(logits)
    assert m[: en.eot].all()  # no text: close the pair (or end)
    assert not m[en.eot]
    assert m[ts : ts + 50].all() and not m[ts + 50 :].any()  # closing at 1.00 or later


def test_after_a_pair_timestamps_are_forbidden(en: Tokenizer) -> None:
    ts = en.timestamp_begin
    logits = text_logits(en)
    rules(en).apply(logits, history(en, ts, 100, ts + 50, ts + 50))
    m = masked(logits)
    assert m[ts:].all()
    assert not m[: en.eot].any() and not m[en.eot]  # text or the end
    # a first sampled timestamp counts as a closed pair: text must follow it
    logits = text_logits(en)
    rules(en).apply(logits, history(en, ts + 7))
    m = masked(logits)
    assert m[ts:].all() and not m[: en.eot].any()


def test_timestamps_never_decrease(en: Tokenizer) -> None:
    ts = en.timestamp_begin
    logits = text_logits(en)
    rules(en).apply(logits, history(en, ts + 10, 100, ts + 60, ts + 60, 101))
    m = masked(logits)
    assert m[ts : ts + 61].all()  # at or before the last timestamp: gone
    assert not m[ts + 61 :].any()
    assert not m[: en.eot].any()


def test_segments_have_nonzero_length(en: Tokenizer) -> None:
    ts = en.timestamp_begin
    logits = text_logits(en)
    rules(en).apply(logits, history(en, ts + 10, 100, 101))
    m = masked(logits)
    assert m[ts : ts + 11].all() and not m[ts + 11 :].any()  # <|0.20|> text <|0.20|> is impossible


def test_first_token_is_a_timestamp_at_most_one_second(en: Tokenizer) -> None:
    ts = en.timestamp_begin
    logits = text_logits(en)
    rules(en, 50).apply(logits, history(en))
    m = masked(logits)
    assert m[:ts].all()  # neither text nor the end
    assert not m[ts : ts + 51].any() and m[ts + 51 :].all()  # <|0.00|> .. <|1.00|>
    logits = text_logits(en)
    rules(en, None).apply(logits, history(en))
    assert masked(logits)[:ts].all() and not masked(logits)[ts:].any()


def test_max_initial_timestamp_option(tiny_model: wc.WhisperModel) -> None:
    def index(**kw: Any) -> int | None:
        decoder = WindowDecoder(tiny_model.engine, tiny_model.tokenizer, DecodingOptions(**kw))
        (rule,) = [f for f in decoder.filters if isinstance(f, ApplyTimestampRules)]
        return rule.max_initial_timestamp_index

    assert index() == 50
    assert index(max_initial_timestamp=0.5) == 25
    assert index(max_initial_timestamp=None) is None
    decoder = WindowDecoder(tiny_model.engine, tiny_model.tokenizer, DecodingOptions(without_timestamps=True))
    assert not any(isinstance(f, ApplyTimestampRules) for f in decoder.filters)
    assert decoder.initial_tokens[-1] == tiny_model.tokenizer.no_timestamps


def test_timestamps_win_when_likelier_in_sum(en: Tokenizer) -> None:
    ts = en.timestamp_begin
    n_timestamps = en.n_vocab - ts  # 1501
    for delta, timestamps_win in ((0.01, True), (-0.01, False)):
        # every timestamp at logit 0: their summed probability is that of one logit log(1501)
        logits = np.full((1, en.n_vocab), -50.0, np.float32)
        logits[0, ts:] = 0.0
        logits[0, 100] = np.log(n_timestamps) - delta
        rules(en).apply(logits, history(en, ts, 100))
        m = masked(logits)
        assert m[:ts].all() == timestamps_win, delta
        assert not m[ts + 1 :].any()


def test_no_timestamps_token_is_always_suppressed(en: Tokenizer) -> None:
    for sampled in ((), (en.timestamp_begin, 100), (en.timestamp_begin, 100, en.timestamp_begin + 9)):
        logits = text_logits(en)
        logits[0, en.no_timestamps] = 100.0
        rules(en).apply(logits, history(en, *sampled))
        assert masked(logits)[en.no_timestamps]


def test_suppress_blank_only_at_sample_begin(en: Tokenizer) -> None:
    rule = SuppressBlank(en, len(en.sot_sequence))
    assert rule.ids == [220, en.eot]
    logits = text_logits(en)
    rule.apply(logits, history(en))
    assert masked(logits)[[220, en.eot]].all() and masked(logits).sum() == 2
    for sampled in ((en.timestamp_begin,), (en.timestamp_begin, 100)):
        logits = text_logits(en)
        rule.apply(logits, history(en, *sampled))
        assert not masked(logits).any()


def test_suppress_tokens(en: Tokenizer) -> None:
    logits = np.random.default_rng(1).normal(size=(2, en.n_vocab)).astype(np.float32)
    before = logits.copy()
    SuppressTokens([5, 7, en.sot]).apply(logits, history(en).repeat(2, axis=0))
    assert np.isneginf(logits[:, [5, 7, en.sot]]).all()
    assert np.isneginf(logits).sum() == 6
    keep = np.ones(en.n_vocab, bool)
    keep[[5, 7, en.sot]] = False
    np.testing.assert_array_equal(logits[:, keep], before[:, keep])


# --- against openai-whisper's DecodingTask ------------------------------------------------------------


@pytest.fixture(scope="module", params=["tiny.en", "base"])
def models(request: pytest.FixtureRequest) -> tuple[wc.WhisperModel, Any]:
    """(our model, openai-whisper's model with the same weights)."""
    if request.param == "tiny.en":
        return request.getfixturevalue("tiny_model"), request.getfixturevalue("openai_tiny")
    return request.getfixturevalue("base_model"), request.getfixturevalue("openai_base")


@pytest.mark.parametrize(
    "options",
    [{}, {"suppress_tokens": "-1,50,60"}, {"suppress_tokens": [5, 7]}, {"suppress_tokens": (11, -1)},
     {"language": "de", "task": "translate"}],
)  # fmt: skip
def test_suppress_token_set_equals_openai(models: tuple[wc.WhisperModel, Any], options: dict) -> None:
    ours_model, openai_model = models  # (English-only models ignore the language and task, like openai's)
    decoding = openai_decoding()
    theirs_options = {**options}
    if isinstance(options.get("suppress_tokens"), tuple):
        theirs_options["suppress_tokens"] = list(options["suppress_tokens"])
    task = decoding.DecodingTask(openai_model, decoding.DecodingOptions(fp16=False, **theirs_options))
    tokenizer = ours_model.tokenizer.with_language(options.get("language", "en"), options.get("task"))
    ours = WindowDecoder(ours_model.engine, tokenizer, DecodingOptions(**options))
    expected = task._get_suppress_tokens()
    assert tuple(ours._suppress_tokens()) == expected
    (rule,) = [f for f in ours.filters if isinstance(f, SuppressTokens)]
    assert tuple(rule.ids) == expected
    if options.get("suppress_tokens", "-1") in ("-1", "-1,50,60", (11, -1)):
        assert set(tokenizer.non_speech_tokens) <= set(expected)


@pytest.mark.parametrize(
    "options",
    [{}, {"without_timestamps": True}, {"prompt": (1, 2, 3)}, {"prefix": (40, 41)},
     {"prompt": tuple(range(300, 600)), "prefix": (7,), "without_timestamps": True},
     {"sample_len": 100, "prefix": (9,)}, {"language": "ja", "task": "translate", "prompt": (5,)}],
)  # fmt: skip
def test_initial_tokens_equal_openai(models: tuple[wc.WhisperModel, Any], options: dict) -> None:
    ours_model, openai_model = models  # (English-only models ignore the language and task, like openai's)
    decoding = openai_decoding()
    theirs = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}
    task = decoding.DecodingTask(openai_model, decoding.DecodingOptions(fp16=False, **theirs))
    tokenizer = ours_model.tokenizer.with_language(options.get("language", "en"), options.get("task"))
    ours = WindowDecoder(ours_model.engine, tokenizer, DecodingOptions(**options))
    assert ours.initial_tokens == tuple(task.initial_tokens)
    assert ours.sample_begin == task.sample_begin
    assert ours.sot_index == task.sot_index
    assert ours.sample_len == task.sample_len


def random_case(rng: np.random.Generator, tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray, int, int | None]:
    """Random (logits, tokens, sample_begin, max_initial_timestamp_index) with plausible histories."""
    ts, eot, n_vocab = tokenizer.timestamp_begin, tokenizer.eot, tokenizer.n_vocab
    batch = 3
    sample_begin = int(rng.choice([1, 3, 6]))
    n_sampled = int(rng.choice([0, 0, 1, 2, 3, 4, 6, 9, 12]))
    tokens = np.zeros((batch, sample_begin + n_sampled), np.int64)
    tokens[:, :sample_begin] = rng.integers(0, eot, (batch, sample_begin))
    for row in range(batch):
        now = int(rng.integers(0, 200))
        for j in range(n_sampled):
            if rng.random() < 0.45:
                if rng.random() < 0.85:  # mostly increasing, sometimes repeated, rarely anywhere
                    now += int(rng.choice([0, 0, 1, 5, 40]))
                    token = ts + min(now, 1500)
                else:
                    token = ts + int(rng.integers(0, 1501))
            else:
                token = int(rng.integers(0, eot))
            tokens[row, sample_begin + j] = token
    logits = rng.normal(0, 2.5, (batch, n_vocab)).astype(np.float32)
    logits[:, ts:] += rng.uniform(-8, 3, (batch, 1)).astype(np.float32)  # timestamp mass, low to dominant
    logits[np.arange(batch), rng.integers(0, eot, batch)] += rng.uniform(0, 14, batch).astype(np.float32)
    max_index = [None, 50, 10][int(rng.integers(0, 3))]
    return logits, tokens, sample_begin, max_index


@pytest.mark.parametrize("which", ["en", "multi"])
def test_random_filters_equal_openai(which: str, request: pytest.FixtureRequest) -> None:
    decoding = openai_decoding()
    tokenizer_module = pytest.importorskip("whisper.tokenizer")
    ours_tok: Tokenizer = request.getfixturevalue(which)
    theirs_tok = tokenizer_module.get_tokenizer(ours_tok.multilingual, num_languages=99, language="en")
    suppress = sorted({*ours_tok.non_speech_tokens, ours_tok.transcribe, ours_tok.translate, ours_tok.sot,
                       ours_tok.sot_prev, ours_tok.sot_lm, ours_tok.no_speech})  # fmt: skip
    ts = ours_tok.timestamp_begin
    rng = np.random.default_rng(20240607 + len(which))
    outcomes = {"text suppressed by the sum rule": 0, "text kept": 0, "open pair": 0, "closed pair": 0, "first": 0}
    for case in range(100):
        logits, tokens, sample_begin, max_index = random_case(rng, ours_tok)
        ours = logits.copy()
        for f in (SuppressBlank(ours_tok, sample_begin), SuppressTokens(suppress),
                  ApplyTimestampRules(ours_tok, sample_begin, max_index)):  # fmt: skip
            f.apply(ours, tokens)
        theirs = torch.from_numpy(logits.copy())
        for g in (decoding.SuppressBlank(theirs_tok, sample_begin), decoding.SuppressTokens(suppress),
                  decoding.ApplyTimestampRules(theirs_tok, sample_begin, max_index)):  # fmt: skip
            g.apply(theirs, torch.from_numpy(tokens))
        theirs_np = theirs.numpy()
        assert (np.isneginf(ours) == np.isneginf(theirs_np)).all(), f"case {case}: {tokens.tolist()}"
        np.testing.assert_array_equal(ours, theirs_np)
        for row in range(tokens.shape[0]):
            sampled = tokens[row, sample_begin:]
            if len(sampled) == 0:
                outcomes["first"] += 1
            elif sampled[-1] >= ts:
                outcomes["closed pair" if len(sampled) < 2 or sampled[-2] >= ts else "open pair"] += 1
            if len(sampled) and np.isneginf(ours[row, :ts]).all() and not (sampled[-1] >= ts and sampled[-2:-1] < ts):
                outcomes["text suppressed by the sum rule"] += 1
            elif not np.isneginf(ours[row, :ts]).all():
                outcomes["text kept"] += 1
    assert all(n >= 10 for n in outcomes.values()), outcomes  # every branch was exercised


# --- real windows against openai-whisper's decode ----------------------------------------------------


def test_compression_ratio() -> None:
    utils = pytest.importorskip("whisper.utils")
    texts = [
        "I'm playing a single hand in what looks like a losing game.",
        "Thank you. " * 40,
        "ja ja ja ja ja ja ja ja ja ja ja ja ja",
        "日本語のテキストと中文，还有한국어。",
        "x",
    ]
    for text in texts:
        data = text.encode()
        assert compression_ratio(text) == pytest.approx(len(data) / len(zlib.compress(data)))
        assert compression_ratio(text) == pytest.approx(utils.compression_ratio(text))
    assert compression_ratio("Thank you. " * 40) > 2.4 > compression_ratio(texts[0])
    assert compression_ratio("") == 0.0


def test_log_softmax_handles_masked_logits() -> None:
    logits = np.array([[0.0, -np.inf, np.log(3.0)], [5.0, 5.0, -np.inf]], np.float32)
    out = log_softmax(logits)
    assert out.dtype == np.float64
    np.testing.assert_allclose(np.exp(out), [[0.25, 0.0, 0.75], [0.5, 0.5, 0.0]], atol=1e-12)


@pytest.mark.parametrize("name", EN_CLIPS)
def test_window_equals_openai_decode(
    name: str, window: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel, openai_tiny: Any
) -> None:
    decoding = openai_decoding()
    mel = window(name)
    engine, tokenizer = tiny_model.engine, tiny_model.tokenizer
    ours = decode_window(engine, engine.encode(mel), tokenizer, DecodingOptions())
    theirs_options = decoding.DecodingOptions(language="en", fp16=False)
    with torch.no_grad():
        theirs = decoding.decode(openai_tiny, torch.from_numpy(mel), theirs_options)
    assert len(ours.tokens) > 5
    assert list(ours.tokens) == list(theirs.tokens)
    assert ours.text == theirs.text
    assert ours.language == theirs.language == "en"
    assert ours.no_speech_prob == pytest.approx(theirs.no_speech_prob, abs=1e-5)
    assert ours.avg_logprob == pytest.approx(theirs.avg_logprob, abs=1e-4)
    assert ours.compression_ratio == pytest.approx(theirs.compression_ratio)
    assert ours.temperature == theirs.temperature == 0.0


def test_window_without_timestamps_equals_openai(
    window: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel, openai_tiny: Any
) -> None:
    decoding = openai_decoding()
    mel = window(EN_CLIPS[2])
    prompt = tuple(tiny_model.tokenizer.encode(" It was the first great sorrow."))
    engine, tokenizer = tiny_model.engine, tiny_model.tokenizer
    ours = decode_window(engine, engine.encode(mel), tokenizer, DecodingOptions(without_timestamps=True, prompt=prompt))
    theirs_options = decoding.DecodingOptions(fp16=False, language="en", without_timestamps=True, prompt=list(prompt))
    with torch.no_grad():
        theirs = decoding.decode(openai_tiny, torch.from_numpy(mel), theirs_options)
    assert not any(t >= tiny_model.tokenizer.timestamp_begin for t in ours.tokens)
    assert list(ours.tokens) == list(theirs.tokens)
    assert ours.avg_logprob == pytest.approx(theirs.avg_logprob, abs=1e-4)
    assert ours.no_speech_prob == pytest.approx(theirs.no_speech_prob, abs=1e-5)


def test_sampling_is_reproducible(window: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel) -> None:
    features = tiny_model.engine.encode(window(EN_CLIPS[0]))
    options = DecodingOptions(temperature=1.0, best_of=3, seed=7, sample_len=40)
    first = decode_window(tiny_model.engine, features, tiny_model.tokenizer, options)
    again = decode_window(tiny_model.engine, features, tiny_model.tokenizer, options)
    assert first == again
    assert first.temperature == 1.0 and first.text and len(first.tokens) <= 40


def test_a_loop_stops_where_it_shows_and_still_sends_the_window_on(
    window: Callable[[str], np.ndarray], tiny_model: wc.WhisperModel, openai_tiny: Any
) -> None:
    """A decode caught in a repetition loop (forced here by a repetitive prefix) stops within
    LOOP_WINDOW + LOOP_CHECK_EVERY tokens instead of running to 224: its tokens are openai-whisper's
    up to there, and its compression ratio is past the threshold, so the fallback moves on as it
    would after openai's whole loop. Without a threshold nothing stops early."""
    decoding = openai_decoding()
    engine, tokenizer = tiny_model.engine, tiny_model.tokenizer
    mel = window(EN_CLIPS[0])
    features = engine.encode(mel)
    prefix = tuple(tokenizer.encode(" I'm playing a single hand, a single hand, a single hand, a single hand,"))
    options = DecodingOptions(language="en", prefix=prefix, without_timestamps=True)
    theirs_options = decoding.DecodingOptions(language="en", prefix=list(prefix), without_timestamps=True, fp16=False)
    with torch.no_grad():
        theirs = decoding.decode(openai_tiny, torch.from_numpy(mel), theirs_options)
    whole = decode_window(engine, features, tokenizer, options)
    assert list(whole.tokens) == list(theirs.tokens) and len(whole.tokens) == 224 and whole.compression_ratio > 2.4
    stopped = decode_window(engine, features, tokenizer, replace(options, compression_ratio_threshold=2.4))
    assert LOOP_WINDOW <= len(stopped.tokens) <= LOOP_WINDOW + LOOP_CHECK_EVERY
    assert stopped.tokens == whole.tokens[: len(stopped.tokens)] and stopped.compression_ratio > 2.4
    # samples stop row by row: best of three at T = 0.4, none runs on to 224
    sampled = replace(options, compression_ratio_threshold=2.4, temperature=0.4, best_of=3)
    assert len(decode_window(engine, features, tokenizer, sampled).tokens) < 224
    # beams stop once all of them loop: here the best is a loop, with its ratio
    features = engine.encode(window(EN_CLIPS[2]))
    beams = DecodingOptions(language="en", prefix=tuple(tokenizer.encode(" a single hand," * 8)), beam_size=3)
    whole_beams = decode_window(engine, features, tokenizer, beams)
    stopped_beams = decode_window(engine, features, tokenizer, replace(beams, compression_ratio_threshold=2.4))
    assert len(whole_beams.tokens) == 224 and whole_beams.compression_ratio > 2.4
    assert LOOP_WINDOW <= len(stopped_beams.tokens) <= LOOP_WINDOW + LOOP_CHECK_EVERY
    assert stopped_beams.compression_ratio > 2.4


@pytest.fixture(scope="module")
def base_features(window: Callable[[str], np.ndarray], base_model: wc.WhisperModel) -> Callable[[str], torch.Tensor]:
    """base's encoder output for a clip's first window: one encoder pass serves both implementations."""

    @cache
    def encode(name: str) -> torch.Tensor:
        with torch.no_grad():
            return base_model.engine.model.encoder(torch.from_numpy(window(name))[None])

    return encode


@pytest.mark.parametrize("name", list(MULTI_CLIPS))
def test_detect_language_equals_openai(
    name: str, base_features: Callable[[str], torch.Tensor], base_model: wc.WhisperModel, openai_base: Any
) -> None:
    engine = base_model.engine
    features = base_features(name)
    language, probs = detect_language(engine, engine.model.decoder.cross_kv(features), base_model.tokenizer)
    with torch.no_grad():
        token, theirs = openai_base.detect_language(features[0])
    assert language == MULTI_CLIPS[name]
    assert base_model.tokenizer.language_token(language) == int(token)
    assert set(probs) == set(theirs) and len(probs) == 99
    assert sum(probs.values()) == pytest.approx(1.0)
    for code, p in theirs.items():
        assert probs[code] == pytest.approx(p, abs=1e-4), code
    assert probs[language] > 0.5


def test_multilingual_window_equals_openai_decode(
    base_features: Callable[[str], torch.Tensor], base_model: wc.WhisperModel, openai_base: Any
) -> None:
    decoding = openai_decoding()
    engine = base_model.engine
    features = base_features("multi/deepspeech_ru.wav")
    ours = decode_window(
        engine, engine.model.decoder.cross_kv(features), base_model.tokenizer, DecodingOptions(language="ru")
    )
    with torch.no_grad():
        theirs = decoding.decode(openai_base, features[0], decoding.DecodingOptions(fp16=False, language="ru"))
    assert ours.language == theirs.language == "ru"
    assert list(ours.tokens) == list(theirs.tokens)
    assert any("\u0400" <= ch <= "\u04ff" for ch in ours.text)  # Cyrillic
    assert ours.no_speech_prob == pytest.approx(theirs.no_speech_prob, abs=1e-5)
    assert ours.avg_logprob == pytest.approx(theirs.avg_logprob, abs=1e-4)

"""Our tokenizer (tokenizers + tokenizer.json) against openai-whisper's tiktoken-based one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from whisper_coreml.errors import ModelError
from whisper_coreml.tokenizer import LANGUAGES, Tokenizer, language_code
from whisper_coreml.weights import Weights

SPECIALS = (
    "eot", "sot", "sot_prev", "sot_lm", "no_speech", "no_timestamps", "timestamp_begin", "transcribe", "translate",
)  # fmt: skip

TEXTS = [
    "Hello, world! It's 3:45 p.m. - isn't it? (Yes; \"quoted\" [brackets] {braces} & 100% <tags>.)",
    " And so, my fellow Americans: ask not what your country can do for you.",
    "Ça va? Déjà vu, naïve café, Straße, ÆØÅ æøå, ñandú, İstanbul.",
    "日本語のテキストと中文，还有한국어。",
    "Emoji 🎉👍🏽 and ♪ music ♪ and 👨‍👩‍👧 family",
    "  two leading spaces\nnew line\ttab  ",
    "Привет, как дела? Γειά σου κόσμε. مرحبا",
    "123,456.789 1st 2nd 3rd -- --- ... !!!",
]


def openai_tokenizer(multilingual: bool, **kwargs: Any) -> Any:
    tokenizer_module = pytest.importorskip("whisper.tokenizer")
    return tokenizer_module.get_tokenizer(multilingual, num_languages=99, **kwargs)


@pytest.fixture(scope="module")
def english(tiny_weights: Weights) -> Tokenizer:
    assert tiny_weights.tokenizer_file is not None
    return Tokenizer(tiny_weights.tokenizer_file, tiny_weights.dims.n_vocab, tiny_weights.dims.num_languages)


@pytest.fixture(scope="module")
def multilingual(base_weights: Weights) -> Tokenizer:
    assert base_weights.tokenizer_file is not None
    return Tokenizer(base_weights.tokenizer_file, base_weights.dims.n_vocab, base_weights.dims.num_languages)


@pytest.fixture(scope="module", params=["english", "multilingual"])
def pair(request: pytest.FixtureRequest) -> tuple[Tokenizer, Any]:
    """(ours, openai's) for the same vocabulary."""
    ours: Tokenizer = request.getfixturevalue(request.param)
    return ours, openai_tokenizer(ours.multilingual)


def test_special_token_ids(pair: tuple[Tokenizer, Any]) -> None:
    ours, theirs = pair
    for name in SPECIALS:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.eot == (50257 if ours.multilingual else 50256)
    assert ours.timestamp_begin == (50364 if ours.multilingual else 50363)
    # 1501 timestamps end exactly at the vocabulary's end
    assert ours.timestamp_begin + 1501 == ours.n_vocab


def test_language_tokens(multilingual: Tokenizer) -> None:
    theirs = openai_tokenizer(True)
    assert len(multilingual.all_language_tokens) == 99
    assert multilingual.all_language_codes == tuple(LANGUAGES)[:99]
    # openai lists them in another order; the code -> token mapping is what matters
    ours_map = dict(zip(multilingual.all_language_codes, multilingual.all_language_tokens, strict=True))
    assert ours_map == dict(zip(theirs.all_language_codes, theirs.all_language_tokens, strict=True))
    for code in ("en", "de", "ja", "zh", "su"):
        assert multilingual.language_token(code) == theirs.to_language_token(code)
    with pytest.raises(ValueError, match="yue"):
        multilingual.language_token("yue")  # large-v3's 100th language


@pytest.mark.parametrize(
    "language, task",
    [("en", "transcribe"), ("de", "transcribe"), ("de", "translate"), ("ja", "translate"), ("es", "transcribe"),
     ("su", "translate"), (None, "transcribe")],
)  # fmt: skip
def test_multilingual_sot_sequence(multilingual: Tokenizer, language: str | None, task: str) -> None:
    theirs = openai_tokenizer(True, language=language, task=task)
    ours = multilingual.with_language(language, task)
    assert ours.sot_sequence == tuple(theirs.sot_sequence)
    assert len(ours.sot_sequence) == 3
    # the clone shares the vocabulary and leaves the original alone
    assert ours.bpe is multilingual.bpe and multilingual.task == "transcribe"
    assert Tokenizer(multilingual.file, 51865, 99, language, task).sot_sequence == ours.sot_sequence


def test_sot_sequence_is_recomputed_after_with_language(multilingual: Tokenizer) -> None:
    german = multilingual.with_language("de")
    assert german.sot_sequence[1] == multilingual.language_token("de")
    spanish = german.with_language("es", "translate")
    assert spanish.sot_sequence == (german.sot, multilingual.language_token("es"), german.translate)
    assert german.sot_sequence[1] == multilingual.language_token("de")


@pytest.mark.parametrize("language, task", [(None, None), ("en", "transcribe"), ("de", "translate")])
def test_english_only_sot_sequence(english: Tokenizer, language: str | None, task: str | None) -> None:
    ours = english.with_language(language, task)
    assert ours.sot_sequence == tuple(openai_tokenizer(False).sot_sequence) == (50257,)
    assert ours.language == "en"


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_round_trip(pair: tuple[Tokenizer, Any], text: str) -> None:
    ours, theirs = pair
    tokens = ours.encode(text)
    assert tokens == theirs.encode(text)
    assert all(0 <= t < ours.eot for t in tokens)
    assert ours.decode(tokens) == text == theirs.decode(tokens)


def test_words_starting_with_t(pair: tuple[Tokenizer, Any]) -> None:
    """GPT-2's first BPE merge is "Ġ t": without it " the" becomes [" ", "the"] instead of [" the"].

    Hugging Face's multilingual Whisper tokenizer.json lacked that merge until early 2024
    (transformers#29368); CTranslate2 conversions made before then still ship it that way.
    openai-whisper, which the model was trained with, encodes " the" as one token.
    """
    ours, theirs = pair
    text = " the test that takes time to think through"
    assert ours.encode(" the") == theirs.encode(" the") == [262 if not ours.multilingual else 264]
    assert ours.encode(text) == theirs.encode(text)
    # an initial prompt is encoded this way, so transcriptions with one depend on it
    assert ours.encode(" " + "Two tall trees.".strip()) == theirs.encode(" Two tall trees.")


@pytest.mark.parametrize("text", [TEXTS[3], TEXTS[4]])
def test_decode_of_partial_characters(pair: tuple[Tokenizer, Any], text: str) -> None:
    """Slices cutting through a multi-byte character decode like openai's (U+FFFD for the fragment)."""
    ours, theirs = pair
    tokens = ours.encode(text)
    assert any("\ufffd" in ours.decode([t]) for t in tokens)  # some tokens are byte fragments
    for i in range(len(tokens)):
        assert ours.decode(tokens[: i + 1]) == theirs.decode(tokens[: i + 1])
        assert ours.decode([tokens[i]]) == theirs.decode([tokens[i]])


def test_decode_drops_special_tokens(multilingual: Tokenizer) -> None:
    t = multilingual.with_language("de")
    text = t.encode(" Guten Tag.")
    tokens = [*t.sot_sequence, t.timestamp_begin, *text, t.timestamp_begin + 50, t.eot]
    assert t.decode(tokens) == " Guten Tag."
    assert t.decode([t.sot_prev, *t.encode(" prompt"), t.no_speech, t.no_timestamps]) == " prompt"


def test_decode_with_timestamps(pair: tuple[Tokenizer, Any]) -> None:
    ours, theirs = pair
    ts = ours.timestamp_begin
    tokens = [ts, *ours.encode(" Hi there."), ts + 50, ts + 50, *ours.encode(" Bye, café!"), ts + 137, ts + 1500]
    expected = "<|0.00|> Hi there.<|1.00|><|1.00|> Bye, café!<|2.74|><|30.00|>"
    assert ours.decode_with_timestamps(tokens) == expected == theirs.decode_with_timestamps(tokens)


def test_non_speech_tokens(pair: tuple[Tokenizer, Any]) -> None:
    ours, theirs = pair
    assert ours.non_speech_tokens == tuple(sorted(theirs.non_speech_tokens))
    assert len(ours.non_speech_tokens) > 80
    # hyphen and apostrophe are suppressed only as word starts: " -" and " '"
    assert ours.encode(" -")[0] in ours.non_speech_tokens and ours.encode(" '")[0] in ours.non_speech_tokens
    assert ours.encode("-")[0] not in ours.non_speech_tokens and ours.encode("'")[0] not in ours.non_speech_tokens
    assert ours.encode(" ♪")[0] in ours.non_speech_tokens and ours.encode(" [")[0] in ours.non_speech_tokens
    assert not set(ours.encode(" hello world")) & set(ours.non_speech_tokens)


@pytest.mark.parametrize(
    "given, code",
    [("en", "en"), ("EN", "en"), (" de ", "de"), ("English", "en"), ("german", "de"), ("Spanish", "es"),
     ("haitian creole", "ht"), ("Haitian Creole", "ht"), ("yue", "yue"), ("Cantonese", "yue"), ("haw", "haw"),
     ("jw", "jw"), ("Javanese", "jw")],
)  # fmt: skip
def test_language_code_accepts_codes_and_names(given: str, code: str) -> None:
    assert language_code(given) == code


def test_every_language_by_code_and_name() -> None:
    assert len(LANGUAGES) == 100
    for code, name in LANGUAGES.items():
        assert language_code(code) == code
        assert language_code(name) == code
        assert language_code(name.title()) == code


def test_languages_equal_openai() -> None:
    tokenizer_module = pytest.importorskip("whisper.tokenizer")
    assert list(LANGUAGES.items()) == list(tokenizer_module.LANGUAGES.items())


@pytest.mark.parametrize("junk", ["", "  ", "xx", "klingon", "e", "english!", "en-US", "english language", "zh_cn"])
def test_language_code_rejects_junk(junk: str) -> None:
    with pytest.raises(ValueError, match="unknown language") as info:
        language_code(junk)
    assert "en" in str(info.value)  # lists some valid choices


def test_unreadable_tokenizer_file(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text("{ not json")
    with pytest.raises(ModelError, match=r"not a readable tokenizer\.json") as info:
        Tokenizer(path, 51864, 99)
    assert str(path) in str(info.value)
    with pytest.raises(ModelError, match=r"not a readable tokenizer\.json"):
        Tokenizer(tmp_path / "missing.json", 51864, 99)


def test_tokenizer_without_whisper_tokens(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as BPE
    from tokenizers.models import WordLevel

    path = tmp_path / "tokenizer.json"
    BPE(WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(path))
    assert json.loads(path.read_text())["model"]["type"] == "WordLevel"
    with pytest.raises(ModelError, match="has no <\\|endoftext\\|> token") as info:
        Tokenizer(path, 51864, 99)
    assert str(path) in str(info.value)

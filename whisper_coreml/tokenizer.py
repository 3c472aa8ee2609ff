"""Whisper's tokenizer, read from the `tokenizer.json` that ships beside the weights.

The byte-level BPE comes from Hugging Face `tokenizers`; the special-token layout (start of
transcript, language, task, timestamps) follows from the vocabulary size, as in openai-whisper:
timestamp tokens sit right after `<|notimestamps|>` and are not in the file at all.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from tokenizers import Tokenizer as BPE

from .errors import ModelError

LANGUAGES = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak",
    "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian",
    "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian", "mk": "macedonian",
    "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian", "ne": "nepali",
    "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian", "sw": "swahili",
    "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala", "km": "khmer",
    "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans", "oc": "occitan",
    "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi", "gu": "gujarati",
    "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek", "fo": "faroese",
    "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk", "mt": "maltese",
    "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan", "tl": "tagalog",
    "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian", "ln": "lingala",
    "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese", "yue": "cantonese",
}  # fmt: skip
"""Language codes in the order of their tokens after <|startoftranscript|>."""

_ALIASES = {
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht", "letzeburgesch": "lb",
    "pushto": "ps", "panjabi": "pa", "moldavian": "ro", "moldovan": "ro", "sinhalese": "si",
    "castilian": "es", "mandarin": "zh",
}  # fmt: skip
"""Other names openai-whisper accepts for the same languages."""


NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
"""Languages usually written without spaces between words."""


def language_code(name_or_code: str) -> str:
    """Accept 'en', 'English' or 'english'; raise ValueError listing the choices otherwise."""
    key = name_or_code.strip().lower()
    if key in LANGUAGES:
        return key
    by_name = {name: code for code, name in LANGUAGES.items()} | _ALIASES
    if key in by_name:
        return by_name[key]
    raise ValueError(f"unknown language '{name_or_code}'; use a code such as {', '.join(list(LANGUAGES)[:12])}, ...")


def _load_bpe(file: Path) -> BPE:
    """The BPE from `tokenizer.json`, repairing a known defect of early Hugging Face conversions.

    Multilingual Whisper tokenizers converted before transformers#29368 lack the very first
    merge, "Ġ t", so " the" encodes as two tokens instead of openai's one. Prompts would then
    differ from what the model was trained on; restoring the merge makes them identical.
    """
    data = json.loads(Path(file).read_text(encoding="utf-8"))
    model = data.get("model", {})
    merges = model.get("merges")
    if model.get("type") == "BPE" and merges and "Ġt" in model.get("vocab", {}):
        first = ["Ġ", "t"] if isinstance(merges[0], list) else "Ġ t"
        if first not in merges:
            model["merges"] = [first, *merges]
    return BPE.from_str(json.dumps(data))


class Tokenizer:
    """Text <-> token ids plus the special tokens decoding needs, for one language and task."""

    def __init__(
        self,
        file: Path,
        n_vocab: int,
        num_languages: int,
        language: str | None = None,
        task: str = "transcribe",
    ) -> None:
        try:
            self.bpe = _load_bpe(file)
        except Exception as e:
            raise ModelError(f"{file}: not a readable tokenizer.json ({e})") from e
        self.file = file
        self.n_vocab = n_vocab
        self.multilingual = n_vocab >= 51865
        self.num_languages = num_languages
        self.language = language if self.multilingual else "en"
        self.task = task
        self.eot = self._special("<|endoftext|>")
        self.sot = self.eot + 1
        self.no_timestamps = self._special("<|notimestamps|>")
        self.timestamp_begin = self.no_timestamps + 1
        # Fixed offsets from <|notimestamps|>, the same in every Whisper vocabulary.
        self.translate = self.no_timestamps - 5
        self.transcribe = self.no_timestamps - 4
        self.sot_lm = self.no_timestamps - 3
        self.sot_prev = self.no_timestamps - 2
        self.no_speech = self.no_timestamps - 1

    def _special(self, text: str) -> int:
        token = self.bpe.token_to_id(text)
        if token is None:
            raise ModelError(f"{self.file}: has no {text} token; is it a Whisper tokenizer?")
        return token

    def with_language(self, language: str | None, task: str | None = None) -> Tokenizer:
        """The same vocabulary for another language or task (cheap: shares the BPE)."""
        clone = object.__new__(Tokenizer)
        clone.__dict__.update(self.__dict__)
        clone.language = language if self.multilingual else "en"
        clone.task = task or self.task
        clone.__dict__.pop("sot_sequence", None)
        return clone

    @property
    def all_language_codes(self) -> tuple[str, ...]:
        return tuple(list(LANGUAGES)[: self.num_languages])

    @property
    def all_language_tokens(self) -> tuple[int, ...]:
        return tuple(range(self.sot + 1, self.sot + 1 + self.num_languages))

    def language_token(self, language: str) -> int:
        codes = self.all_language_codes
        if language not in codes:
            raise ValueError(f"language '{language}' is not one this model knows")
        return self.sot + 1 + codes.index(language)

    @cached_property
    def sot_sequence(self) -> tuple[int, ...]:
        """<|startoftranscript|>, then for multilingual models the language and task tokens."""
        if not self.multilingual:
            return (self.sot,)
        task = self.translate if self.task == "translate" else self.transcribe
        return (self.sot, self.language_token(self.language or "en"), task)

    def encode(self, text: str) -> list[int]:
        return self.bpe.encode(text, add_special_tokens=False).ids

    def decode(self, tokens: Sequence[int]) -> str:
        """Text of the text tokens; timestamps and other specials are dropped."""
        return self.bpe.decode([t for t in tokens if t < self.eot], skip_special_tokens=False)

    def decode_with_timestamps(self, tokens: Sequence[int]) -> str:
        """Text with timestamps rendered as <|1.08|>, for debugging and display."""
        out, text = [], []
        for t in tokens:
            if t >= self.timestamp_begin:
                out.append(self.decode(text))
                out.append(f"<|{(t - self.timestamp_begin) * 0.02:.2f}|>")
                text = []
            else:
                text.append(t)
        out.append(self.decode(text))
        return "".join(out)

    def split_to_word_tokens(self, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
        """Words (with their leading space) and the tokens of each, as word timing needs them.

        Languages written without spaces split wherever the tokens so far decode to whole
        characters; the others also join pieces until the next space or punctuation mark.
        """
        words, word_tokens = self._split_on_unicode(tokens)
        if self.language in NO_SPACE_LANGUAGES:
            return words, word_tokens
        merged: list[str] = []
        merged_tokens: list[list[int]] = []
        for word, pieces in zip(words, word_tokens, strict=True):
            starts_word = pieces[0] >= self.eot or word.startswith(" ") or word.strip() in string.punctuation
            if starts_word or not merged:
                merged.append(word)
                merged_tokens.append(list(pieces))
            else:
                merged[-1] += word
                merged_tokens[-1].extend(pieces)
        return merged, merged_tokens

    def _split_on_unicode(self, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
        """Cut after every token at which the text so far is whole characters (a replacement
        character that the full text also has is genuine, not a cut byte sequence)."""
        full = self.decode(tokens)
        words: list[str] = []
        word_tokens: list[list[int]] = []
        current: list[int] = []
        offset = 0
        for token in tokens:
            current.append(token)
            text = self.decode(current)
            if "\ufffd" not in text or full[offset + text.index("\ufffd")] == "\ufffd":
                words.append(text)
                word_tokens.append(current)
                current = []
                offset += len(text)
        return words, word_tokens

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens that would start speaker tags, music notes or bracketed annotations.

        Suppressing them keeps subtitles to what was said; hyphens and apostrophes stay
        allowed inside words. The symbol list is openai-whisper's, so `-1` means the same.
        """
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        miscellaneous = set("♩♪♫♬♭♮♯")  # multi-token symbols sharing a first byte-token
        result = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(miscellaneous):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in miscellaneous:
                    result.add(tokens[0])
        return tuple(sorted(result))

"""What a user chose, turned into a batch's `Settings` with the command line's defaults and checks.

The CLI and the server must give the same subtitles for the same file and the same choices,
so the choices live in one dataclass (`Choices`, the CLI's option names and defaults) and one
function turns them into TranscriptionOptions and WriteOptions: word timestamps on when cues
are built under the rules for a subtitle format, words moved out of pauses when they are, the
frame grid at --fps or 25. Errors are ValueErrors that name the option the way the caller's
user spelt it (`--max-line-width` on the command line, `max_line_width` in a form).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .batch import Settings
from .engines import COMPUTE_TYPES
from .options import TranscriptionOptions, VadOptions
from .subtitles import CueRules
from .timecode import frame_rate
from .tokenizer import language_code
from .writers import SUBTITLE_FORMATS, WriteOptions, parse_formats


def cli_option(field: str) -> str:
    """`max_line_width` as the command line spells it: `--max-line-width`."""
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class Choices:
    """Everything a user can choose about one transcription and its outputs, with the CLI's
    defaults. `formats` are the outputs asked for: they decide whether words are timed when
    `word_timestamps` is None, as `--format` does."""

    formats: tuple[str, ...] = ("srt",)
    language: str | None = None
    task: str = "transcribe"
    initial_prompt: str | None = None
    temperature: float | None = None  # a fixed temperature; None falls back 0 -> 1
    beam_size: int | None = 5  # beam search at temperature 0; 1 or None: greedy
    patience: float | None = None
    length_penalty: float | None = None
    vad: bool = True  # decode only the speech Silero VAD finds
    batch_size: int = 1  # windows decoded together; above 1, with VAD, stretches are decoded independently
    hallucination_silence_threshold: float | None = None
    compute_type: str = "auto"  # the torch engine's number format (engines/precision.py)
    word_timestamps: bool | None = None
    cues: str = "rules"
    max_line_width: int = 42
    max_lines: int = 2
    max_cps: float = 20.0
    min_duration: float = 5 / 6
    max_duration: float = 7.0
    fps: str | None = None  # None: a video's own rate, else 25
    fcpxml_version: str = "1.8"
    fcpxml_style: str = "captions"
    format_size: str | None = None
    fcpxml_with_media: bool = False
    highlight_words: bool = False


def build_settings(model: str, choices: Choices, option: Callable[[str], str] = cli_option) -> Settings:
    """The batch settings for `choices` with model `model` (a catalog name or resolved path).

    Raises ValueError naming the bad choice as `option(field)` spells it, before any audio is
    read or any model loaded."""
    if choices.task not in ("transcribe", "translate"):
        raise ValueError(f"{option('task')} {choices.task}: choose one of transcribe, translate")
    if choices.compute_type not in COMPUTE_TYPES:
        raise ValueError(f"{option('compute_type')} {choices.compute_type}: choose one of {', '.join(COMPUTE_TYPES)}")
    for field, value, least in (("max_line_width", choices.max_line_width, 1), ("max_lines", choices.max_lines, 1)):
        if value < least:
            raise ValueError(f"{option(field)} {value}: must be at least {least}")
    for field in ("max_cps", "min_duration", "max_duration"):
        if not getattr(choices, field) > 0:
            raise ValueError(f"{option(field)} {getattr(choices, field)}: must be more than 0")
    if choices.min_duration > choices.max_duration:
        raise ValueError(
            f"{option('min_duration')} {choices.min_duration} is longer than "
            f"{option('max_duration')} {choices.max_duration}"
        )
    if choices.batch_size < 1:
        raise ValueError(f"{option('batch_size')} {choices.batch_size}: must be at least 1")
    if choices.beam_size is not None and choices.beam_size < 1:
        raise ValueError(f"{option('beam_size')} {choices.beam_size}: must be at least 1")
    if choices.patience is not None and (choices.beam_size in (None, 1) or not choices.patience > 0):
        raise ValueError(
            f"{option('patience')} {choices.patience}: needs {option('beam_size')} and must be more than 0"
        )
    if choices.length_penalty is not None and not 0 <= choices.length_penalty <= 1:
        raise ValueError(f"{option('length_penalty')} {choices.length_penalty}: must be between 0 and 1")
    silence = choices.hallucination_silence_threshold
    if silence is not None and not silence > 0:
        raise ValueError(f"{option('hallucination_silence_threshold')} {silence}: must be more than 0")
    if silence is not None and choices.word_timestamps is False:
        raise ValueError(f"{option('hallucination_silence_threshold')} needs word timestamps")
    formats = parse_formats(",".join(choices.formats))
    rules = CueRules(
        choices.max_line_width,
        choices.max_lines,
        choices.max_cps,
        choices.min_duration,
        choices.max_duration,
        fps=frame_rate(choices.fps or "25"),
    )
    write = WriteOptions(
        cues=choices.cues,
        rules=rules,
        fcpxml_version=choices.fcpxml_version,
        fcpxml_style=choices.fcpxml_style,
        highlight_words=choices.highlight_words,
        format_size=choices.format_size,
    )
    word_timestamps = choices.word_timestamps
    if word_timestamps is None:  # cues under the rules are cut at word times when there are any
        word_timestamps = choices.cues == "rules" and any(f in SUBTITLE_FORMATS for f in formats)
        word_timestamps = word_timestamps or silence is not None  # the silence is measured at words
    overrides: dict = {
        "language": language_code(choices.language) if choices.language is not None else None,
        "task": choices.task,
        "initial_prompt": choices.initial_prompt,
        "word_timestamps": word_timestamps,
        "words_at_pauses": word_timestamps and choices.cues == "rules",
    }
    if choices.temperature is not None:
        overrides["temperature"] = (choices.temperature,)
    overrides |= {
        # one beam is greedy decoding, as in openai-whisper's API (and its parity with it)
        "beam_size": choices.beam_size if choices.beam_size != 1 else None,
        "patience": choices.patience,
        "length_penalty": choices.length_penalty,
        # In a batch, a file's stretches of speech (cut to a window each) are decoded side by side.
        "vad": (VadOptions().in_windows() if choices.batch_size > 1 else VadOptions()) if choices.vad else None,
        "independent_stretches": choices.vad and choices.batch_size > 1,
        "hallucination_silence_threshold": silence,
    }
    return Settings(
        model,
        TranscriptionOptions(**overrides),
        write,
        fps_explicit=choices.fps is not None,
        with_media=choices.fcpxml_with_media,
        compute_type=choices.compute_type,
    )

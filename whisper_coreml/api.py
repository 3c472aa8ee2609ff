"""The Python API: load a model once, transcribe many files with it."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from .audio import MelSource
from .catalog import default_model, find_bundle, find_tokenizer, models_dir, resolve_weights
from .coreml.bundle import load_bundle
from .coreml.first_use import convert_on_first_use, converts_on_first_use
from .engines import check_compute_type, create_bundle_engine, create_torch_engine, resolve_engine_name
from .engines.base import Engine
from .errors import ModelError
from .result import TranscriptionResult
from .tokenizer import Tokenizer, language_code
from .transcribe import Batcher, Progress, SeekLoop, TranscriptionOptions, WindowJournal, seek_loop
from .transcribe import transcribe as run_transcription
from .vad import VadOptions

_OPTION_NAMES = {f.name for f in fields(TranscriptionOptions)}


class WhisperModel:
    """A loaded model: an engine plus its tokenizer."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, name: str) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.name = name

    @property
    def is_multilingual(self) -> bool:
        return self.tokenizer.multilingual

    def transcribe(
        self,
        audio: str | Path | np.ndarray | MelSource,
        *,
        options: TranscriptionOptions | None = None,
        progress: Progress | None = None,
        journal: WindowJournal | None = None,
        batch_size: int = 1,
        **overrides: Any,
    ) -> TranscriptionResult:
        """Transcribe a file (any audio or video format), 16 kHz mono float32 samples, or an
        opened `MelSource` (which the caller closes; batches open the next file ahead).

        Keyword overrides are `TranscriptionOptions` fields, e.g. `language="de"`,
        `task="translate"`, `initial_prompt="..."`, `temperature=0.0`, `beam_size=5`,
        `vad=True` (or a `VadOptions`). A `journal` (see
        journal.py) keeps every finished window, so a transcription stopped midway resumes.

        `batch_size` > 1 with VAD decodes that many stretches of speech side by side, each cut
        to a window and decoded without the text before it (faster-whisper's batched mode).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        options = self.options(options, **overrides)
        if batch_size > 1 and options.vad is not None:
            options = replace(options, vad=options.vad.in_windows(), independent_stretches=True)
        run = functools.partial(run_transcription, progress=progress, model_name=self.name, journal=journal)
        if isinstance(audio, MelSource):
            return run(self.engine, self.tokenizer, audio, options, batch_size=batch_size)
        n_mels = self.engine.dims.n_mels
        source = (
            MelSource.from_array(audio, n_mels, options.vad)
            if isinstance(audio, np.ndarray)
            else MelSource.from_file(audio, n_mels, options.vad)
        )
        with source:
            result = run(self.engine, self.tokenizer, source, options, batch_size=batch_size)
        return replace(result, source="" if isinstance(audio, np.ndarray) else str(audio))

    def seek_loop(
        self,
        source: MelSource,
        *,
        options: TranscriptionOptions | None = None,
        progress: Progress | None = None,
        journal: WindowJournal | None = None,
        **overrides: Any,
    ) -> SeekLoop:
        """The transcription of an opened `source` as a seek loop, for a `Batcher` to run
        together with others (see `transcribe_batch`)."""
        return seek_loop(
            self.engine, self.tokenizer, source, self.options(options, **overrides), progress, self.name, journal
        )

    def transcribe_batch(
        self, audios: Sequence[str | Path | np.ndarray], batch_size: int = 8, **overrides: Any
    ) -> list[TranscriptionResult]:
        """Transcribe several inputs together, up to `batch_size` at a time, their windows batched
        through the engine: each result is what `transcribe` gives for that input alone, in
        less time in all. An input that fails raises its error once the others are done."""
        options = self.options(None, **overrides)
        n_mels = self.engine.dims.n_mels
        results: list[TranscriptionResult | BaseException | None] = [None] * len(audios)
        batcher = Batcher(self.engine, batch_size)
        pending = list(enumerate(audios))
        open_sources: dict[int, MelSource] = {}

        def start() -> None:
            while pending and len(open_sources) < batch_size:
                i, audio = pending.pop(0)
                try:
                    source = (
                        MelSource.from_array(audio, n_mels, options.vad)
                        if isinstance(audio, np.ndarray)
                        else MelSource.from_file(audio, n_mels, options.vad)
                    )
                except Exception as error:  # noqa: BLE001 - reported for this input once the rest are done
                    results[i] = error
                    continue
                open_sources[i] = source
                batcher.add(self.seek_loop(source, options=options), lambda result, i=i: finish(i, result))

        def finish(i: int, result: TranscriptionResult | BaseException) -> None:
            open_sources.pop(i).close()
            audio = audios[i]
            named = isinstance(result, TranscriptionResult) and not isinstance(audio, np.ndarray)
            results[i] = replace(result, source=str(audio)) if named else result
            start()

        try:
            start()
            batcher.run()
        finally:
            for source in open_sources.values():
                source.close()
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, TranscriptionResult)]

    def options(self, options: TranscriptionOptions | None = None, **overrides: Any) -> TranscriptionOptions:
        """Validated options: unknown names, languages and tasks are errors, not silent no-ops."""
        unknown = set(overrides) - _OPTION_NAMES
        if unknown:
            raise TypeError(f"unknown transcription option(s): {', '.join(sorted(unknown))}")
        if isinstance(overrides.get("temperature"), (int, float)):
            overrides["temperature"] = (float(overrides["temperature"]),)
        if isinstance(overrides.get("vad"), bool):  # vad=True: Silero VAD with faster-whisper's defaults
            overrides["vad"] = VadOptions() if overrides["vad"] else None
        options = replace(options or TranscriptionOptions(), **overrides)
        if options.vad is not None and options.clip_timestamps:
            raise ValueError("clip_timestamps and vad both choose what to decode: give one of them")
        if options.task not in ("transcribe", "translate"):
            raise ValueError(f"unknown task '{options.task}': use transcribe or translate")
        if options.language is not None:
            code = language_code(options.language)
            if not self.is_multilingual and code != "en":
                raise ValueError(f"model '{self.name}' is English-only; it cannot transcribe '{code}'")
            options = replace(options, language=code)
        if options.task == "translate" and not self.is_multilingual:
            raise ValueError(f"model '{self.name}' is English-only; translation needs a multilingual model")
        return options


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_model(
    model: str | None = None,
    engine: str = "auto",
    device: str | None = None,
    progress: Callable[[str], None] = _say,
    compute_type: str | None = None,
) -> WhisperModel:
    """Load a model by catalog name (e.g. 'tiny.en', 'base') or path, on the chosen engine.

    `coreml` and `mil` run a converted bundle (a bundle path, or `models/<name>-coreml`);
    `torch` runs the original weights (for a bundle path: the weights it was converted from);
    `auto` is Core ML on macOS, converting a catalog model the first time (coreml/first_use.py;
    `progress` hears one line about it, on stderr by default), and PyTorch everywhere else (and
    whenever a compute type that only PyTorch runs is asked for).

    `compute_type` is the torch engine's number format: float32, int8, bfloat16, int8_bfloat16
    (a bfloat16 encoder, an int8 decoder), float16 (GPUs), or auto, the fastest that stayed as
    accurate as float32 on this device (see engines/precision.py). The default, None, is
    openai-whisper's: float32 on the CPU (its exact text), float16 on GPUs. A bundle runs in
    the precision it was converted with, so the coreml and mil engines take only None or auto.
    """
    name = model or default_model()
    bundle_path = find_bundle(name)
    bundle_wanted = compute_type in (None, "auto")  # a compute type that just PyTorch runs skips bundles
    if bundle_path is None and engine == "auto" and bundle_wanted and converts_on_first_use(name):
        bundle_path = convert_on_first_use(name, progress)
    engine = resolve_engine_name(engine, bundle_path is not None and bundle_wanted)
    if engine in ("coreml", "mil"):
        check_compute_type(engine, device, compute_type)
        if bundle_path is None:
            raise ModelError(
                f"no converted Core ML bundle for '{name}' (looked for {models_dir() / (name + '-coreml')}); "
                f"run: whisper-coreml convert {name}"
            )
        bundle = load_bundle(bundle_path)
        return WhisperModel(create_bundle_engine(bundle, engine), bundle.tokenizer(), bundle.manifest.name)
    if bundle_path is not None and Path(name).expanduser().exists():
        name = load_bundle(bundle_path, verify_checksums=False).manifest.name
    weights = resolve_weights(name)
    tokenizer = Tokenizer(find_tokenizer(weights), weights.dims.n_vocab, weights.dims.num_languages)
    return WhisperModel(create_torch_engine(weights, device, compute_type), tokenizer, name)


def transcribe(audio: str | Path | np.ndarray, model: str | None = None, **options: Any) -> TranscriptionResult:
    """One-shot shortcut: load `model` and transcribe `audio` with it."""
    engine = options.pop("engine", "auto")
    device = options.pop("device", None)
    compute_type = options.pop("compute_type", None)
    return load_model(model, engine=engine, device=device, compute_type=compute_type).transcribe(audio, **options)

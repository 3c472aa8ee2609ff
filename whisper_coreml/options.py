"""The options of a transcription, apart from the code that uses them.

Frozen dataclasses with openai-whisper's and faster-whisper's names and defaults. They live on
their own, with nothing heavier than the standard library, because deciding whether a file is
up to date needs them (its settings key is made of them) and should not load numpy: a re-run
over a finished folder imports this module, not the decoder's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class TranscriptionOptions:
    """Everything that shapes a transcription (openai-whisper's names and defaults)."""

    language: str | None = None
    task: str = "transcribe"
    temperature: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    best_of: int = 5
    beam_size: int | None = None
    patience: float | None = None
    length_penalty: float | None = None
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = True
    initial_prompt: str | None = None
    carry_initial_prompt: bool = False
    suppress_tokens: str = "-1"
    suppress_blank: bool = True
    without_timestamps: bool = False
    max_initial_timestamp: float | None = 1.0
    clip_timestamps: tuple[float, ...] = ()
    word_timestamps: bool = False
    # Seconds of silence around a likely invention that drop it (openai-whisper's option of
    # that name; needs word_timestamps).
    hallucination_silence_threshold: float | None = None
    # Move word edges out of silences the audio shows (subtitle cues then see sentence pauses);
    # off, words are openai-whisper's exactly.
    words_at_pauses: bool = False
    prepend_punctuations: str = "\"'“¿([{-"
    append_punctuations: str = "\"'.。,，!！?？:：”)]}、"
    # Decode only the speech Silero VAD finds, each stretch of it from a window of its own; the
    # caller opens the MelSource with these options (`MelSource.from_file(path, vad=options.vad)`).
    vad: VadOptions | None = None
    # Decode each stretch of speech (each clip) without the text before it, so that the stretches
    # of one input can be decoded side by side in a batch (faster-whisper's batched mode).
    independent_stretches: bool = False


@dataclass(frozen=True)
class VadOptions:
    """faster-whisper's `VadOptions`: the same fields, defaults and meaning.

    threshold: a frame whose speech probability is at least this starts (or continues) speech.
    neg_threshold: below this a frame is silence; between the two it continues what came
        before. None means max(threshold - 0.15, 0.01).
    min_speech_duration_ms: speech shorter than this (before padding) is dropped.
    max_speech_duration_s: longer speech is split at its last silence of over 98 ms, or
        else cut hard just before this length (padding included).
    min_silence_duration_ms: a silence must last this long to end speech.
    speech_pad_ms: each region grows by this much on both sides (half the gap where two
        regions are closer than twice this).
    bridge_gap_s (ours, not a region rule): the seek loop decodes a pause shorter than this
        with the speech around it. Whisper reads conversational pauses well, and they are
        where Silero misses a hoarse or quiet voice (on the mfa recording of ../shared it cut
        1.8 s of a sick speaker after a 2.7 s pause); long non-speech is still skipped.
    window_s (ours): for stretches decoded side by side (`independent_stretches`), the most
        speech one window takes: a bridged stretch that would grow past it is cut between
        regions, and consecutive stretches are packed into windows of up to this much, the
        silences between them left out (`packing.Pack`), as faster-whisper's batched chunks
        are; None leaves stretches whole.
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_duration_ms: int = 0
    max_speech_duration_s: float = float("inf")
    min_silence_duration_ms: int = 2000
    speech_pad_ms: int = 400
    bridge_gap_s: float = 5.0
    window_s: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"VAD threshold must be between 0 and 1, not {self.threshold:g}")
        if self.neg_threshold is not None and not 0.0 <= self.neg_threshold <= self.threshold:
            raise ValueError(f"VAD neg_threshold must be between 0 and threshold, not {self.neg_threshold:g}")
        if min(self.min_speech_duration_ms, self.min_silence_duration_ms, self.speech_pad_ms) < 0:
            raise ValueError("VAD durations and padding cannot be negative")
        if self.bridge_gap_s < 0:
            raise ValueError(f"VAD bridge_gap_s cannot be negative, not {self.bridge_gap_s:g}")
        if self.max_speech_duration_s <= 0:
            raise ValueError(f"VAD max_speech_duration_s must be positive, not {self.max_speech_duration_s:g}")
        if self.window_s is not None and self.window_s <= 0:
            raise ValueError(f"VAD window_s must be positive, not {self.window_s:g}")

    def in_windows(self, seconds: float = 25.0) -> VadOptions:
        """These options for stretches decoded side by side: speech cut at its quietest pauses
        into pieces that fit a window, as faster-whisper's batched mode cuts it (at 30 s). 25 s,
        because Whisper tends to drop the last words of a window that speech fills to its end:
        on ../shared/speech/long (tiny.en, beam 5, before pieces were packed) pieces of 30 s
        gave 9.7% WER, 25 s 7.8%, against 7.0% decoding in sequence; packed, 28 s gave 6.25%
        and 25 s 6.10%, against 5.71% in sequence."""
        return replace(self, window_s=seconds)

    @property
    def silence_threshold(self) -> float:
        return max(self.threshold - 0.15, 0.01) if self.neg_threshold is None else self.neg_threshold

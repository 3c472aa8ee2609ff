"""Transcription results: small frozen dataclasses every writer and API user reads.

They carry exactly what openai-whisper's result dicts carry (so JSON output is a drop-in
replacement), but typed, immutable and cheap to pass between pipeline stages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Word:
    """One word with its audio span in seconds and the model's confidence in it."""

    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    """One decoded segment: the text between two timestamp tokens, in seconds of the input."""

    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: tuple[int, ...]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: tuple[Word, ...] | None = None


@dataclass(frozen=True)
class TranscriptionResult:
    """Everything a writer needs: the segments plus what describes the whole file."""

    segments: tuple[Segment, ...]
    language: str
    duration: float
    model: str = ""
    task: str = "transcribe"
    source: str = ""
    metadata: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def text(self) -> str:
        """The transcript as openai-whisper joins it: segment texts concatenated."""
        return "".join(s.text for s in self.segments)

    @property
    def avg_logprob(self) -> float | None:
        """The decoder's mean log-probability per token over the whole file (None without
        text): how sure the model was of what it wrote."""
        weighted = [(len(s.tokens), s.avg_logprob) for s in self.segments if s.tokens]
        count = sum(n for n, _ in weighted)
        return sum(n * lp for n, lp in weighted) / count if count else None

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists)."""
        return {
            "text": self.text,
            "language": self.language,
            "duration": self.duration,
            "model": self.model,
            "task": self.task,
            "segments": [asdict(s) for s in self.segments],
        }

"""Audio decoding and Whisper log-Mel features, numerically the same as openai-whisper.

Decoding goes through PyAV's bundled FFmpeg libraries, so no system `ffmpeg` is needed, and
uses the same libswresample conversion (s16, mono, 16 kHz) that openai-whisper's `ffmpeg -ac 1
-ar 16000 -f s16le` call performs: the model sees the samples it was evaluated on.

Long inputs are never held whole: `iter_audio` streams bounded chunks and `MelSource` serves
30-second feature windows from a forward-only buffer, yet its numbers equal openai-whisper's
whole-file spectrogram (whose normalisation depends on the maximum over the entire file).

PyAV and torch are imported by the functions that decode or compute features, not with the
module: its constants and types are what a re-run over finished outputs needs, and that should
not wait for either.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from functools import lru_cache
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from .errors import AudioError, NoAudioTrack

if TYPE_CHECKING:
    import av
    import torch

    from .vad import SpeechRegion, VadOptions

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30-second window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a window

_HALF = N_FFT // 2  # an STFT frame t covers samples [t*HOP - _HALF, t*HOP + _HALF)

PathLike = str | os.PathLike[str]


def _open_container(path: PathLike) -> av.container.InputContainer:
    """Open `path` with FFmpeg, turning every way that can fail into a one-line AudioError."""
    import av

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise AudioError(path, "file not found") from None
    except PermissionError:
        raise AudioError(path, "permission denied") from None
    except OSError as e:
        raise AudioError(path, f"cannot access file ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(path, "is a directory, not an audio file")
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    try:
        return av.open(os.fspath(path), metadata_errors="ignore")
    except PermissionError:
        raise AudioError(path, "permission denied") from None
    except av.error.InvalidDataError:
        raise AudioError(path, "not an audio or video file FFmpeg can read") from None
    except (av.error.FFmpegError, OSError) as e:
        raise AudioError(path, f"cannot open file ({e.strerror or e})") from None


def _decoded_frames(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream
) -> Iterator[av.AudioFrame]:
    """Decode `stream`, skipping damaged packets and stopping at a damaged or cut tail.

    This is what the ffmpeg CLI does (it logs and goes on), so a truncated recording yields
    the audio that is there rather than nothing.
    """
    import av

    try:
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except av.error.InvalidDataError:
                continue
    except av.error.FFmpegError:
        yield from stream.codec_context.decode(None)  # the flush packet demux never sent


def _iter_s16(path: PathLike, sampling_rate: int) -> Iterator[np.ndarray]:
    """Yield the first audio stream of `path` as int16 mono arrays of varying length."""
    import av

    with _open_container(path) as container:
        if not container.streams.audio:
            raise NoAudioTrack(path)
        stream = container.streams.audio[0]
        resampler, source, fifo = None, None, av.AudioFifo()
        decoded, formats = 0.0, 0  # seconds at the source rate; how many formats the stream had

        def resampled(frame: av.AudioFrame | None) -> Iterator[np.ndarray]:
            return (f.to_ndarray().reshape(-1) for f in resampler.resample(frame))

        for frame in _decoded_frames(container, stream):
            decoded += frame.samples / frame.sample_rate
            # A stream may change rate or layout midway (e.g. concatenated mp3s). The ffmpeg CLI
            # then builds a new converter without draining the old one; do the same.
            layout = (frame.format.name, frame.layout.name, frame.sample_rate)
            if layout != source:
                if fifo.samples:
                    yield from resampled(fifo.read())
                resampler, fifo = av.AudioResampler(format="s16", layout="mono", rate=sampling_rate), av.AudioFifo()
                source = layout
                formats += 1
            # Frames go through the resampler a second or so at a time: one call per codec
            # frame (1152 samples of an mp3) costs more than the conversion itself.
            frame.pts = None  # the fifo checks timestamps are contiguous; damaged input skips some
            fifo.write(frame)
            if fifo.samples >= frame.sample_rate:
                yield from resampled(fifo.read())
        if resampler is not None:
            if fifo.samples:
                yield from resampled(fifo.read())
            yield from resampled(None)
        if formats == 1:  # a header describes one format; glued streams outgrow it
            _check_complete(path, stream, decoded)


def _check_complete(path: PathLike, stream: av.audio.stream.AudioStream, decoded: float) -> None:
    """Refuse a file that stops well short of the duration its own header declares.

    A copy cut off mid-transfer still decodes up to the cut, and subtitles for half a file
    look like a success; the header (mp3 Xing/Info frame, wav data size, mp4 track duration)
    is what tells. Durations FFmpeg merely estimates from the bitrate are not in the stream.
    """
    if stream.duration is None or stream.time_base is None:
        return
    declared = float(stream.duration * stream.time_base)
    if declared - decoded > max(1.0, 0.02 * declared):
        raise AudioError(path, f"truncated or damaged: only {decoded:.1f} s of the {declared:.1f} s it declares decode")


def probe_duration(path: PathLike) -> float | None:
    """The duration a file's header declares (seconds), without decoding it; None if unknown.

    For progress bars and planning only: decoding is what finds the real length.
    """
    import av

    try:
        with av.open(os.fspath(path), metadata_errors="ignore") as container:
            if container.streams.audio and container.streams.audio[0].duration is not None:
                stream = container.streams.audio[0]
                return float(stream.duration * stream.time_base)
            return container.duration / av.time_base if container.duration else None
    except (av.error.FFmpegError, OSError):
        return None


def iter_audio(
    path: PathLike, sampling_rate: int = SAMPLE_RATE, chunk_samples: int = N_SAMPLES
) -> Iterator[np.ndarray]:
    """Stream the audio of `path` (any FFmpeg-readable audio or video file) as float32 mono.

    Chunks hold exactly `chunk_samples` samples except the last, so memory stays bounded
    however long the file. Raises AudioError (also midway, e.g. when nothing decodes).
    """
    import av

    pending: list[np.ndarray] = []
    n_pending = total = 0
    try:
        for piece in _iter_s16(path, sampling_rate):
            pending.append(piece)
            n_pending += len(piece)
            if n_pending >= chunk_samples:
                joined = np.concatenate(pending)
                n_full = len(joined) // chunk_samples * chunk_samples
                for start in range(0, n_full, chunk_samples):
                    yield joined[start : start + chunk_samples].astype(np.float32) / 32768.0
                pending, n_pending = [joined[n_full:]], len(joined) - n_full
                total += n_full
    except av.error.FFmpegError as e:
        raise AudioError(path, f"cannot decode audio ({e.strerror or e})") from None
    if n_pending:
        yield np.concatenate(pending).astype(np.float32) / 32768.0
    elif total == 0:
        raise AudioError(path, "no audio could be decoded (0 samples)")


def as_mono_float32(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    """16 kHz samples as Whisper wants them: float32 mono in [-1, 1].

    Integer PCM is scaled by its type's range (int16 as a WAV holds it, int32, uint8), and a
    (channels, samples) or (samples, channels) array is averaged to mono, the channel axis
    being the short one (at most 8 channels), as the arrays of soundfile, librosa and PyAV are.
    """
    import torch

    samples = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if samples.ndim not in (1, 2):
        raise ValueError(f"audio array of shape {samples.shape}: expected (samples,) or (channels, samples)")
    if samples.dtype.kind in "iu":
        info = np.iinfo(samples.dtype)
        middle = (info.max + 1) / 2 if samples.dtype.kind == "u" else 0.0
        samples = (samples.astype(np.float64) - middle) / (info.max + 1 - middle)
    if samples.ndim == 2:
        axis = int(np.argmin(samples.shape))
        if samples.shape[axis] > 8:
            raise ValueError(f"audio array of shape {samples.shape}: expected mono samples or at most 8 channels")
        samples = samples.mean(axis=axis)
    return np.ascontiguousarray(samples, dtype=np.float32)


def decode_audio(path: PathLike, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `path` to a float32 mono array in [-1, 1], as openai-whisper's `load_audio`."""
    return np.concatenate(list(iter_audio(path, sampling_rate)))


@lru_cache
def mel_filters(n_mels: int) -> torch.Tensor:
    """The (n_mels, 201) filter bank of `librosa.filters.mel(sr=16000, n_fft=400, n_mels=n)`.

    openai-whisper ships exactly this matrix in its mel_filters.npz; computing it here spares
    both the asset and librosa's import time, with the same float32 rounding steps.
    """
    import torch

    f_sp = 200.0 / 3  # Slaney's mel scale: linear below 1 kHz, logarithmic above
    min_log_mel = 1000.0 / f_sp
    log_step = np.log(6.4) / 27.0
    mel_max = min_log_mel + np.log(SAMPLE_RATE / 2 / 1000.0) / log_step
    mels = np.linspace(0.0, mel_max, n_mels + 2)
    log_hz = 1000.0 * np.exp(log_step * (mels - min_log_mel))
    edges = np.where(mels >= min_log_mel, log_hz, f_sp * mels)
    fft_freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    widths = np.diff(edges)
    ramps = np.subtract.outer(edges, fft_freqs)
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling)).astype(np.float32)
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return torch.from_numpy(weights)


@lru_cache
def _hann_window() -> torch.Tensor:
    import torch

    return torch.hann_window(N_FFT)


def _log10_mel(samples: np.ndarray | torch.Tensor, n_mels: int, center: bool) -> torch.Tensor:
    """log10 of the clamped mel power spectrum, before Whisper's max-dependent normalisation.

    With `center=True` this is openai-whisper's framing (reflect padding, last frame dropped);
    with `center=False` `samples` must already hold the padded context of the wanted frames.
    float32 samples are shared with the array, not copied.
    """
    import torch

    stft = torch.stft(
        torch.as_tensor(samples), N_FFT, HOP_LENGTH, window=_hann_window(), center=center, return_complex=True
    )
    power = (stft[..., :-1] if center else stft).abs() ** 2
    return torch.clamp(mel_filters(n_mels) @ power, min=1e-10).log10()


def _normalise(log_spec: torch.Tensor, log_max: float) -> torch.Tensor:
    """Whisper's dynamic range: keep 8 decades (80 dB) below the maximum, scale to about ±1."""
    import torch

    return (torch.maximum(log_spec, torch.tensor(log_max - 8.0)) + 4.0) / 4.0


def log_mel_spectrogram(audio: np.ndarray | torch.Tensor, n_mels: int = 80, padding: int = 0) -> np.ndarray:
    """The (n_mels, frames) float32 log-Mel spectrogram exactly as openai-whisper computes it.

    `padding` zero samples are appended first; the clamp uses the maximum over the whole
    result, so this holds the whole input: for long files use `MelSource` instead.
    """
    import torch

    samples = torch.as_tensor(audio, dtype=torch.float32).cpu()
    if padding > 0:
        samples = torch.nn.functional.pad(samples, (0, padding))
    log_spec = _log10_mel(samples, n_mels, center=True)
    return _normalise(log_spec, log_spec.max().item()).numpy()


# log10 of the clamp floor: the value of every all-silent frame, such as those openai's 30 s of
# zero padding always adds, so it is a lower bound of the whole-file maximum. (torch's float32
# log10 of float32 1e-10 is exactly -10.0.)
_SILENCE_LOG = -10.0


class _ForwardBuffer:
    """A forward view of (audio followed by endless zeros) that drops consumed samples.

    Samples before the latest read's start are dropped, or before `keep_from` when that is
    earlier: reads that go back no further than it are served from memory.
    """

    def __init__(self, chunks: Iterator[np.ndarray]) -> None:
        self._chunks = chunks
        self._held: deque[np.ndarray] = deque()
        self.start = 0  # sample index of the first held sample
        self._end = 0  # one past the last held sample
        self.keep_from: int | None = None
        self.n_samples: int | None = None  # known once the source is exhausted

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop); negative indices reflect about sample 0 like torch.stft does.

        `start` must not be before what is held (`self.start`)."""
        if start < 0:
            body = self.read(0, max(stop, 1 - start))
            return np.concatenate([body[1 : 1 - start][::-1], body[:stop]])
        assert start >= self.start, "samples before the held ones were dropped"
        while self._end < stop and self.n_samples is None:
            chunk = next(self._chunks, None)
            if chunk is None:
                self.n_samples = self._end
            else:
                self._held.append(chunk)
                self._end += len(chunk)
        self._drop_before(start if self.keep_from is None else min(start, self.keep_from))
        parts, at = [], self.start
        for chunk in self._held:
            if at >= stop:
                break
            lo, hi = max(start - at, 0), min(stop - at, len(chunk))
            if hi > lo:
                parts.append(chunk[lo:hi])
            at += len(chunk)
        out = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return np.pad(out, (0, stop - start - len(out)))

    @property
    def held(self) -> int:
        """How many samples are in memory."""
        return self._end - self.start

    def _drop_before(self, start: int) -> None:
        while self._held and self.start + len(self._held[0]) <= start:
            self.start += len(self._held.popleft())


class MelSource:
    """Whisper's 30-second log-Mel windows for input of any length, in bounded memory.

    openai-whisper's transcribe() computes `log_mel_spectrogram(audio, padding=N_SAMPLES)` over
    the whole file and clamps every value to (global maximum - 8). To give the same numbers
    while holding only about one window of samples, the input is read twice: pass 1 streams it
    to find the sample count and that maximum, pass 2 streams it again as windows are asked
    for. Files up to KEEP_SAMPLES long keep their pass-1 samples instead of decoding again.
    """

    KEEP_SAMPLES = 40 * N_SAMPLES  # 20 minutes: 38 MB of 16-bit samples, cheaper than a second decode

    def __init__(
        self,
        open_chunks: Callable[[], Iterable[np.ndarray]],
        n_mels: int = 80,
        vad: VadOptions | None = None,
        keep: bool = False,
    ) -> None:
        """`open_chunks` starts a fresh pass over the 16 kHz samples each time it is called.

        With `vad`, Silero VAD listens to pass 1 too and `speech` holds the stretches of speech
        it found (see vad.decoded_stretches): what of the input the seek loop decodes (None
        without: everything). With `keep`, pass 1's chunks, which must be 16-bit samples / 32768
        as `iter_audio` decodes them, are kept (up to KEEP_SAMPLES) as 16 bits for pass 2.
        """
        self.n_mels = n_mels
        self._open_chunks = open_chunks
        self._kept: list[np.ndarray] | None = [] if keep else None
        self.speech: tuple[SpeechRegion, ...] | None = None
        # the regions Silero heard before `speech` bridged and cut them: where a window must find words
        self.voiced: tuple[SpeechRegion, ...] | None = None
        self.n_samples, self._log_max = self._first_pass(vad)
        self._reader: _ForwardBuffer | None = None
        self._stream: Generator[np.ndarray, None, None] | None = None
        self._hold: int | None = None

    @classmethod
    def from_file(cls, path: PathLike, n_mels: int = 80, vad: VadOptions | None = None) -> MelSource:
        """Features of an audio or video file; raises AudioError here if it cannot be decoded.

        With `vad`, `speech` says where the voice is (Silero VAD, in the same pass over the file).
        """
        return cls(lambda: iter_audio(path), n_mels, vad, keep=True)

    @classmethod
    def from_array(cls, audio: np.ndarray | torch.Tensor, n_mels: int = 80, vad: VadOptions | None = None) -> MelSource:
        """Features of 16 kHz samples (see `as_mono_float32`), taken in 30 s slices so no
        whole-input STFT is built; with `vad`, `speech` says where the voice is."""
        samples = as_mono_float32(audio)
        return cls(lambda: (samples[i : i + N_SAMPLES] for i in range(0, len(samples), N_SAMPLES)), n_mels, vad)

    def _chunks(self) -> Generator[np.ndarray, None, None]:
        """Samples for a pass: kept pass-1 chunks, else a fresh decode (for close() to end)."""
        if self._kept is None:
            yield from self._open_chunks()
        else:
            yield from (kept.astype(np.float32) / 32768.0 for kept in self._kept)

    def _first_pass(self, vad: VadOptions | None) -> tuple[int, float]:
        """Count the samples and find the maximum log-mel value over the whole padded input
        (and the speech in it, with `vad`)."""
        kept_samples = 0
        speech: list[SpeechRegion] = []
        if vad is not None:
            from .vad import SpeechFinder  # onnxruntime is loaded only when VAD is asked for

            finder = SpeechFinder(vad)

        def tee() -> Iterator[np.ndarray]:
            nonlocal kept_samples
            for chunk in self._open_chunks():
                if self._kept is not None:
                    self._kept.append((chunk * 32768.0).astype(np.int16))
                    kept_samples += len(chunk)
                    if kept_samples > self.KEEP_SAMPLES:
                        self._kept = None
                if vad is not None:
                    speech.extend(finder.feed(chunk))
                yield chunk

        reader = _ForwardBuffer(tee())
        log_max = _SILENCE_LOG
        first = 0
        # Frames starting at or past the end of the audio see only zeros: _SILENCE_LOG.
        while reader.n_samples is None or first * HOP_LENGTH - _HALF < reader.n_samples:
            samples = reader.read(first * HOP_LENGTH - _HALF, (first + N_FRAMES - 1) * HOP_LENGTH + _HALF)
            block = _log10_mel(samples, self.n_mels, center=False)
            log_max = max(log_max, block.max().item())
            first += N_FRAMES
        if vad is not None:
            from .vad import decoded_stretches

            regions = [*speech, *finder.finish()]
            self.voiced = tuple(regions)
            self.speech = tuple(
                decoded_stretches(regions, vad.bridge_gap_s, vad.window_s, finder.probabilities, vad.silence_threshold)
            )
        return reader.n_samples, log_max

    @property
    def n_frames(self) -> int:
        """Content frames, openai's `content_frames` (the 30 s padding not counted)."""
        return self.n_samples // HOP_LENGTH

    @property
    def duration(self) -> float:
        return self.n_samples / SAMPLE_RATE

    def window(self, seek: int, n_frames: int | None = None) -> np.ndarray:
        """(n_mels, 3000) float32 features from frame `seek`, as openai-whisper feeds its model.

        Equals `pad_or_trim(mel[:, seek:seek + size], N_FRAMES)` of openai's whole-file `mel`
        with size = min(N_FRAMES, n_frames of content left, `n_frames` if given); frames past
        that are 0.0, as pad_or_trim leaves them. Seeks are expected not to decrease below the
        last one or what `hold` keeps; one that does restarts the decode from the beginning.
        """
        if seek < 0:
            raise ValueError(f"seek must be >= 0, got {seek}")
        size = min(N_FRAMES, self.n_frames - seek, N_FRAMES if n_frames is None else n_frames)
        out = np.zeros((self.n_mels, N_FRAMES), np.float32)
        if size <= 0:
            return out
        first = seek * HOP_LENGTH - _HALF
        if self._reader is None or max(first, 0) < self._reader.start:
            self.close()
            self._stream = self._chunks()
            self._reader = _ForwardBuffer(self._stream)
        self._reader.keep_from = self._hold
        samples = self._reader.read(first, (seek + size - 1) * HOP_LENGTH + _HALF)
        log_spec = _log10_mel(samples, self.n_mels, center=False)
        out[:, :size] = _normalise(log_spec, self._log_max).numpy()
        return out

    @property
    def silence(self) -> float:
        """The value `window` gives a silent frame: the floor 80 dB below the file's peak."""
        import torch

        return float(_normalise(torch.tensor(_SILENCE_LOG), self._log_max))

    def hold(self, seek: int | None) -> None:
        """Keep the samples from frame `seek` on as long as this holds (None: release), so that
        windows of several stretches decoded at once can be read in any order at or after it."""
        self._hold = None if seek is None else max(seek * HOP_LENGTH - _HALF, 0)

    def close(self) -> None:
        """Release the decoder of the current pass (a later window() would start a new one)."""
        if self._stream is not None:
            self._stream.close()
        self._stream = self._reader = None

    def __enter__(self) -> MelSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

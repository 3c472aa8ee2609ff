"""Decoding and log-Mel features against openai-whisper and faster-whisper on real speech."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import pytest
import torch

from whisper_coreml.audio import (
    N_FRAMES,
    N_SAMPLES,
    MelSource,
    decode_audio,
    iter_audio,
    log_mel_spectrogram,
    mel_filters,
)
from whisper_coreml.errors import AudioError

SHARED = Path(os.environ.get("WHISPER_COREML_SHARED", Path(__file__).resolve().parents[2] / "shared"))

EN_WAV = "en/arctic_a0010.wav"  # 16 kHz mono, 3.6 s
LJ_WAV = "en/ljspeech_LJ001-0001.wav"  # 22.05 kHz mono, resampled
LONG_WAV = "long/ljspeech_LJ001_0001-0020_concat.wav"  # 138 s
STEREO_WAV = "long/mfa_michaelandsickmichael_stereo.wav"  # 16 kHz, 2 channels
FLAC = "en/jfk_inaugural_excerpt.flac"  # 44.1 kHz stereo
MP3 = "long/librivox_shakespeare_sonnet001.mp3"  # 44.1 kHz stereo, 53 s
MP3_32K = "multi/common_voice_ja_24511055.mp3"  # 32 kHz mono
OPUS = "multi/mls_es_13697_11991_000000.opus"


def speech(name: str) -> Path:
    path = SHARED / "speech" / name
    if not path.is_file():
        pytest.skip(f"shared speech file {path} is not available")
    return path


@cache
def decoded(name: str) -> np.ndarray:
    return decode_audio(speech(name))


def openai_audio() -> ModuleType:
    """openai-whisper's audio module; tests comparing with it skip where it is not installed."""
    return pytest.importorskip("whisper.audio")


def openai_mel(audio: np.ndarray, n_mels: int, padding: int = 0) -> np.ndarray:
    return openai_audio().log_mel_spectrogram(torch.from_numpy(audio), n_mels, padding).numpy()


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


# --- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [EN_WAV, LJ_WAV, STEREO_WAV, FLAC, MP3, MP3_32K, OPUS])
def test_decode_equals_faster_whisper(name: str) -> None:
    fw_audio = pytest.importorskip("faster_whisper.audio")
    ours = decoded(name)
    assert ours.dtype == np.float32 and ours.ndim == 1
    np.testing.assert_array_equal(ours, fw_audio.decode_audio(str(speech(name))))


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="no ffmpeg binary on PATH")
@pytest.mark.parametrize("name", [EN_WAV, LJ_WAV, FLAC, MP3, OPUS])
def test_decode_matches_openai_load_audio(name: str) -> None:
    theirs = openai_audio().load_audio(str(speech(name)))
    # Same libswresample path, but the system ffmpeg may be another FFmpeg release than the
    # one PyAV bundles; resampling then differs by a few 16-bit steps (seen: up to 6).
    assert max_diff(decoded(name), theirs) <= 32 / 32768


def test_iter_audio_streams_the_same_samples_in_bounded_chunks() -> None:
    chunks = list(iter_audio(speech(MP3), chunk_samples=16000))
    assert all(len(c) == 16000 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 16000
    np.testing.assert_array_equal(np.concatenate(chunks), decoded(MP3))


def test_stream_that_changes_sample_rate_midway(tmp_path: Path) -> None:
    """Two mp3s glued together (32 kHz mono, then 44.1 kHz stereo) decode as ffmpeg does."""
    glued = tmp_path / "glued.mp3"
    glued.write_bytes(speech(MP3_32K).read_bytes() + speech(MP3).read_bytes())
    audio = decode_audio(glued)
    assert abs(len(audio) - len(decoded(MP3_32K)) - len(decoded(MP3))) < 2000
    if shutil.which("ffmpeg"):
        assert max_diff(audio, openai_audio().load_audio(str(glued))) <= 32 / 32768


def write_video(path: Path, audio: np.ndarray | None = None) -> None:
    """A tiny video (10 frames) with, if `audio` is given, that audio as a mono AAC track."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=10)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        track = None if audio is None else container.add_stream("aac", rate=16000, layout="mono")
        for i in range(10):
            image = np.full((48, 64, 3), i * 20, np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(video.encode(None))
        if track is not None:
            pcm = (audio * 32767).astype(np.int16)[None, :]
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate, frame.pts = 16000, 0
            container.mux(track.encode(frame))
            container.mux(track.encode(None))


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_audio_track_of_a_video(tmp_path: Path, suffix: str) -> None:
    wav = decoded(EN_WAV)
    path = tmp_path / f"clip{suffix}"
    write_video(path, wav)
    audio = decode_audio(path)
    fw_audio = pytest.importorskip("faster_whisper.audio")
    np.testing.assert_array_equal(audio, fw_audio.decode_audio(str(path)))
    # AAC is lossy and pads its last 1024-sample frame, but the container's edit list keeps
    # it aligned with the source: compare the overlap by signal-to-noise ratio.
    assert len(wav) <= len(audio) < len(wav) + 1024
    noise = audio[: len(wav)] - wav
    assert 10 * np.log10(np.sum(wav**2) / np.sum(noise**2)) > 25


def test_truncated_wav_decodes_what_is_there(tmp_path: Path) -> None:
    wav = tmp_path / "cut.wav"
    wav.write_bytes(speech(EN_WAV).read_bytes()[:20044])
    np.testing.assert_array_equal(decode_audio(wav), decoded(EN_WAV)[:10000])


def test_mp3_cut_short_of_its_declared_duration_is_an_error(tmp_path: Path) -> None:
    """The mp3's Info header declares 53 s; a copy cut in half must not pass as a short file."""
    for size in (3000, len(speech(MP3).read_bytes()) // 2):
        mp3 = tmp_path / f"cut{size}.mp3"
        mp3.write_bytes(speech(MP3).read_bytes()[:size])
        assert_audio_error(mp3, "truncated or damaged")


# --- decoding errors --------------------------------------------------------------------------


def assert_audio_error(path: Path, problem: str) -> None:
    for decode in (decode_audio, lambda p: next(iter_audio(p)), MelSource.from_file):
        with pytest.raises(AudioError) as caught:
            decode(path)
        message = str(caught.value)
        assert message == f"{path}: {caught.value.problem}" and "\n" not in message
        assert problem in caught.value.problem
        assert caught.value.__cause__ is None  # no PyAV traceback chained to the user's error


def test_missing_file(tmp_path: Path) -> None:
    assert_audio_error(tmp_path / "nope.wav", "file not found")


def test_directory(tmp_path: Path) -> None:
    assert_audio_error(tmp_path, "is a directory")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.touch()
    assert_audio_error(path, "empty file (0 bytes)")


def test_text_file_named_wav(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("These are meeting notes, not a recording.\n" * 20)
    assert_audio_error(path, "not an audio or video file FFmpeg can read")


def test_mp3_cut_inside_its_header(tmp_path: Path) -> None:
    path = tmp_path / "cut.mp3"
    path.write_bytes(speech(MP3).read_bytes()[:300])
    assert_audio_error(path, "not an audio or video file FFmpeg can read")


def test_wav_with_header_but_no_samples(tmp_path: Path) -> None:
    path = tmp_path / "header.wav"
    path.write_bytes(speech(EN_WAV).read_bytes()[:44])
    assert_audio_error(path, "0 samples")


def test_video_without_audio_track(tmp_path: Path) -> None:
    path = tmp_path / "silent film.mp4"
    write_video(path)
    assert_audio_error(path, "no audio track")


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Root reads any file, so as root act as `nobody` for file-permission checks."""
    if os.geteuid() != 0:
        yield
        return
    try:
        os.seteuid(65534)
    except OSError:
        pytest.skip("running as root and cannot drop privileges")
    try:
        yield
    finally:
        os.seteuid(0)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "locked.wav"
    shutil.copyfile(speech(EN_WAV), path)
    path.chmod(0)
    with unprivileged():
        assert_audio_error(path, "permission denied")


# --- log-Mel features -------------------------------------------------------------------------


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_are_whisper_assets_and_librosa(n_mels: int) -> None:
    assets = Path(openai_audio().__file__).parent / "assets" / "mel_filters.npz"
    with np.load(assets) as npz:
        np.testing.assert_array_equal(mel_filters(n_mels).numpy(), npz[f"mel_{n_mels}"])
    librosa = pytest.importorskip("librosa")
    expected = librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)
    np.testing.assert_array_equal(mel_filters(n_mels).numpy(), expected)


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("padding", [0, N_SAMPLES])
def test_log_mel_equals_openai(n_mels: int, padding: int) -> None:
    audio = decoded(FLAC)
    ours = log_mel_spectrogram(audio, n_mels, padding)
    assert ours.dtype == np.float32 and ours.shape == (n_mels, (len(audio) + padding) // 160)
    assert max_diff(ours, openai_mel(audio, n_mels, padding)) < 1e-5
    assert max_diff(log_mel_spectrogram(torch.from_numpy(audio), n_mels, padding), ours) == 0


def openai_windows(audio: np.ndarray, n_mels: int, seeks: list[tuple[int, int]]) -> list:
    """What openai-whisper's transcribe() feeds its model at each (seek, clip end frame)."""
    mel = openai_mel(audio, n_mels, N_SAMPLES)
    content_frames = mel.shape[-1] - N_FRAMES
    pad_or_trim = openai_audio().pad_or_trim
    return [
        pad_or_trim(mel[:, seek : seek + min(N_FRAMES, content_frames - seek, end - seek)], N_FRAMES)
        for seek, end in seeks
    ]


def window_plan(n_frames: int) -> list[tuple[int, int]]:
    """Forward seeks as long-form decoding makes them: whole, odd, clipped and last windows."""
    plan = [(0, n_frames), (100, 1100), (2873, n_frames), (3000, n_frames)]
    plan += [(max(0, n_frames - 1234), n_frames), (n_frames - 1, n_frames)]
    return sorted((seek, end) for seek, end in plan if 0 <= seek < n_frames)


@pytest.mark.parametrize(("name", "n_mels"), [(EN_WAV, 80), (LONG_WAV, 80), (LONG_WAV, 128), (FLAC, 128), (MP3, 80)])
def test_mel_source_windows_equal_openai_transcribe(name: str, n_mels: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MelSource, "KEEP_SAMPLES", 4 * N_SAMPLES)  # LONG_WAV decodes twice, the rest once
    audio = decoded(name)
    with MelSource.from_file(speech(name), n_mels) as source:
        assert source.n_samples == len(audio) and source.duration == len(audio) / 16000
        assert source.n_frames == len(audio) // 160
        plan = window_plan(source.n_frames)
        for (seek, end), expected in zip(plan, openai_windows(audio, n_mels, plan), strict=True):
            window = source.window(seek, end - seek)
            assert window.shape == (n_mels, N_FRAMES) and window.dtype == np.float32
            assert max_diff(window, expected) < 1e-5, (seek, end)
        if len(audio) > MelSource.KEEP_SAMPLES:  # pass 2 decoded again, holding one window
            assert source._kept is None
            assert source._reader is not None and source._reader.held < 2 * N_SAMPLES
        else:  # pass 2 read the samples pass 1 kept, as 16 bits: the same numbers
            assert source._kept is not None and sum(map(len, source._kept)) == len(audio)
        # A backwards seek restarts the decode instead of failing.
        assert max_diff(source.window(0), openai_windows(audio, n_mels, [(0, N_FRAMES)])[0]) < 1e-5


def test_mel_source_from_array_edge_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    """Silence, audio shorter than the STFT's reflect padding, and a peak at the very end."""
    monkeypatch.setattr(MelSource, "KEEP_SAMPLES", 0)  # force the second pass
    rng = np.random.default_rng(0)
    loud_end = (rng.standard_normal(2 * N_SAMPLES + 160 * 7 + 37) * 1e-3).astype(np.float32)
    loud_end[-50:] = 0.9
    for audio in (
        np.zeros(50_000, np.float32),
        rng.uniform(-1, 1, 100).astype(np.float32),
        loud_end,
    ):
        source = MelSource.from_array(audio)
        plan = window_plan(source.n_frames) or [(0, 1)]
        for (seek, end), expected in zip(plan, openai_windows(audio, 80, plan), strict=True):
            assert max_diff(source.window(seek, end - seek), expected) < 1e-5, (len(audio), seek)
    assert not source.window(source.n_frames).any()  # past the end: pad_or_trim's zeros
    with pytest.raises(ValueError, match="seek"):
        source.window(-1)

"""The server as its users meet it: the real `serve` command in a subprocess on a loopback port,
driven by OpenAI's own Python client and plain HTTP, its answers compared with the CLI's files
for the same clip, and its job store killed with -9 in the middle of a job."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

ROOT = Path(__file__).resolve().parents[1]
# One thread in the server and the CLI alike: their outputs are compared byte for byte, and one
# thread and two round PyTorch's sums differently (the thread governor follows a parallel test
# run's load), which bfloat16 and int8 can carry into a word or a time.
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "WHISPER_COREML_API_KEY": "", "OMP_NUM_THREADS": "1"}
CLIP = "en/jfk_inaugural_excerpt.flac"  # 11 s, two cues
LONG = "long/ljspeech_LJ001_0001-0020_concat.wav"  # 138 s, five windows
MP3 = "long/librivox_shakespeare_sonnet001.mp3"  # 53 s
LIMIT_MB = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident) of `pid`, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


class Server:
    """`python -m whisper_coreml.server` (the serve command) on a free loopback port."""

    def __init__(self, data_dir: Path, *args: str) -> None:
        self.data_dir = data_dir
        self.args = args
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Server:
        command = [sys.executable, "-m", "whisper_coreml.server", "--port", str(self.port)]
        command += ["--data-dir", str(self.data_dir), *self.args]
        self.process = subprocess.Popen(
            command, env=ENV, stderr=subprocess.PIPE, text=True, preexec_fn=lambda: os.nice(5)
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stderr.read() if self.process.stderr else ""
            with contextlib.suppress(OSError):
                if self.request("GET", "/health")[0] == 200:
                    return self
            time.sleep(0.3)
        raise AssertionError("the server did not come up in 120 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str = "unused") -> Any:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=600)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def json(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        status, _, data = self.request(method, path, body, headers)
        assert status < 300, (status, data)
        return json.loads(data)

    def submit(self, name: str, data: bytes, **fields: str) -> tuple[int, dict[str, str], Any]:
        body, content_type = multipart(fields, name, data)
        status, headers, reply = self.request("POST", "/v1/jobs", body, {"Content-Type": content_type})
        return status, headers, json.loads(reply)

    def wait(self, job_id: str, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.json("GET", f"/v1/jobs/{job_id}")
            if job["status"] in ("done", "failed", "cancelled"):
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> str:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        return self.process.stderr.read() if self.process.stderr else ""


@contextlib.contextmanager
def running(data_dir: Path, *args: str) -> Iterator[Server]:
    server = Server(data_dir, *args).start()
    try:
        yield server
    finally:
        server.stop()


def multipart(fields: dict[str, str], name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "whisper-coreml-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
    parts.append((head + "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    code = "from whisper_coreml.cli import transcribe_main; transcribe_main()"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600
    )


def jobs_in_store(data_dir: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(data_dir / "jobs.sqlite3")) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT id, state, attempts, resumed_at FROM jobs ORDER BY seq")]


def events_in_store(data_dir: Path) -> list[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(data_dir / "jobs.sqlite3")) as db:
        return list(db.execute("SELECT job, event FROM events ORDER BY rowid"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(tmp_path_factory.mktemp("server"), "--max-queue", "8", "--max-upload-mb", str(LIMIT_MB)) as s:
        yield s


@pytest.fixture(scope="module")
def clip(speech: Callable[[str], Path]) -> Path:
    return speech(CLIP)


@pytest.fixture(scope="module")
def cli_files(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], str]:
    """`cli_files(run, ext)`: what the CLI wrote for the clip in one of three runs: "words" (the
    subtitle formats and JSON: word timing on, as for every subtitle format), "plain" (txt and
    json: no word timing), "custom" (itt and srt at 30 fps with 20-character lines) and "beam"
    (srt by beam search)."""
    runs = {
        "words": ("--format", "srt,vtt,fcpxml,itt,json"),
        "plain": ("--format", "txt,json"),
        "custom": ("--format", "itt,srt", "--fps", "30", "--max-line-width", "20"),
        "beam": ("--format", "srt", "--beam-size", "5", "--patience", "2"),
    }
    folders = {}
    for name, args in runs.items():
        folders[name] = tmp_path_factory.mktemp(f"cli-{name}")
        done = cli(clip, *args, "--output-dir", folders[name], "--quiet")
        assert done.returncode == 0, done.stderr
    return lambda run, ext: (folders[run] / f"{clip.stem}.{ext}").read_text(encoding="utf-8")


def test_every_response_format_equals_the_cli(server: Server, clip: Path, cli_files: Callable[[str, str], str]) -> None:
    client = server.client()

    def transcribe(response_format: str, **extra: Any) -> Any:
        with clip.open("rb") as f:
            return client.audio.transcriptions.create(
                file=f, model="whisper-1", response_format=response_format, **extra
            )

    assert transcribe("srt") == cli_files("words", "srt")
    assert transcribe("vtt") == cli_files("words", "vtt")
    assert transcribe("text") == cli_files("plain", "txt")
    assert transcribe("json").text == json.loads(cli_files("plain", "json"))["text"].strip()
    for fmt in ("fcpxml", "itt"):
        with clip.open("rb") as f:
            raw = client.audio.transcriptions.with_raw_response.create(file=f, model="whisper-1", response_format=fmt)
        assert raw.text == cli_files("words", fmt)
    with clip.open("rb") as f:
        extra = {"fps": "30", "max_line_width": 20}
        raw = client.audio.transcriptions.with_raw_response.create(
            file=f, model="whisper-1", response_format="itt", extra_body=extra
        )
    assert raw.text == cli_files("custom", "itt")
    assert transcribe("srt", extra_body={"fps": "30", "max_line_width": "20"}) == cli_files("custom", "srt")
    assert transcribe("srt", extra_body={"beam_size": 5, "patience": 2}) == cli_files("beam", "srt")

    expected = json.loads(cli_files("words", "json"))
    verbose = transcribe("verbose_json", timestamp_granularities=["word", "segment"])
    assert verbose.language == "english" and verbose.duration == expected["duration"]
    assert verbose.text == expected["text"].strip()
    assert [(s.start, s.end, s.text, s.tokens) for s in verbose.segments] == [
        (s["start"], s["end"], s["text"], s["tokens"]) for s in expected["segments"]
    ]
    cli_words = [(w["word"].strip(), w["start"], w["end"]) for s in expected["segments"] for w in s["words"]]
    assert [(w.word, w.start, w.end) for w in verbose.words] == cli_words and len(cli_words) > 10
    words_only = transcribe("verbose_json", timestamp_granularities=["word"])
    assert words_only.segments is None and [(w.word, w.start, w.end) for w in words_only.words] == cli_words
    segments_only = transcribe("verbose_json", timestamp_granularities=["segment"])
    assert segments_only.words is None and len(segments_only.segments) == len(expected["segments"])


def test_job_api_progress_result_in_any_format_and_cancel(
    server: Server, clip: Path, cli_files: Callable[[str, str], str]
) -> None:
    status, headers, job = server.submit(clip.name, clip.read_bytes(), response_format="srt")
    assert status == 202 and headers["location"] == f"/v1/jobs/{job['id']}" and job["status"] in ("queued", "running")
    done = server.wait(job["id"])
    assert done["status"] == "done" and done["progress"]["fraction"] == 1.0 and done["attempts"] == 1
    for query, expected in (
        ("", ("words", "srt")),
        ("?format=itt", ("words", "itt")),
        ("?format=vtt", ("words", "vtt")),
    ):
        status, _, body = server.request("GET", f"/v1/jobs/{job['id']}/result{query}")
        assert status == 200 and body.decode() == cli_files(*expected)
    # other cue rules re-render the stored transcript without model work
    status, _, body = server.request("GET", f"/v1/jobs/{job['id']}/result?format=itt&fps=30&max_line_width=20")
    assert status == 200 and body.decode() == cli_files("custom", "itt")
    assert server.request("GET", f"/v1/jobs/{job['id']}/result?format=doc")[0] == 400
    assert server.request("DELETE", f"/v1/jobs/{job['id']}")[0] == 409  # finished: nothing to cancel
    assert server.request("GET", "/v1/jobs/job_nope")[0] == 404


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the client marks translations deprecated
def test_translation_equals_the_cli(
    base_weights: Any, speech: Callable[[str], Path], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    spanish = speech("multi/mls_es_13697_11991_000000.opus")
    done = cli(spanish, "--model", "base", "--task", "translate", "--format", "srt", "--output-dir", tmp_path, "-q")
    assert done.returncode == 0, done.stderr
    with running(tmp_path_factory.mktemp("base"), "--model", "base") as server:
        client = server.client()
        with spanish.open("rb") as f:
            translated = client.audio.translations.create(file=f, model="whisper-1", response_format="srt")
        with spanish.open("rb") as f:
            verbose = client.audio.translations.create(file=f, model="base", response_format="verbose_json")
    assert translated == (tmp_path / f"{spanish.stem}.srt").read_text()
    assert (
        verbose.language == "english"
        and "the surprise and the disgust" in verbose.text.lower()
        and verbose.task == "translate"
    )


def test_kill_9_with_jobs_queued_and_running_loses_nothing(
    speech: Callable[[str], Path], clip: Path, cli_files: Callable[[str, str], str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    long = speech(LONG)
    server = Server(data).start()
    try:
        first = server.submit(long.name, long.read_bytes(), response_format="json")[2]["id"]
        second = server.submit(clip.name, clip.read_bytes(), response_format="srt")[2]["id"]
        third = server.submit(MP3, speech(MP3).read_bytes(), response_format="text")[2]["id"]
        deadline = time.monotonic() + 300
        while server.json("GET", f"/v1/jobs/{first}")["progress"]["seconds_done"] < 30:  # a window journaled
            assert time.monotonic() < deadline
            time.sleep(0.1)
        server.kill()
    finally:
        log = server.stop()
    # loaded and run on one thread (openmp.ModelThread): the engine warns of a second OpenMP team
    assert "another thread" not in log, log
    states = {j["id"]: j["state"] for j in jobs_in_store(data)}
    assert states == {first: "running", second: "queued", third: "queued"}

    with running(data) as restarted:
        finished = [restarted.wait(j) for j in (first, second, third)]
        results = {j: restarted.request("GET", f"/v1/jobs/{j}/result?format=verbose_json")[2] for j in (first, second)}
        srt = restarted.request("GET", f"/v1/jobs/{second}/result")[2].decode()
    assert [j["status"] for j in finished] == ["done"] * 3
    assert [j["attempts"] for j in finished] == [2, 1, 1]
    assert finished[0]["resumed_at"] >= 30  # the killed job went on from its journal, not from the start
    assert finished[0]["finished_at"] < finished[1]["finished_at"] < finished[2]["finished_at"]  # in order
    done_events = [job for job, event in events_in_store(data) if event == "done"]
    assert sorted(done_events) == sorted([first, second, third])  # each completed exactly once
    assert srt == cli_files("words", "srt")
    uninterrupted = cli(long, "--format", "json", "--output-dir", tmp_path, "--quiet")
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    expected = json.loads((tmp_path / f"{long.stem}.json").read_text())["segments"]
    resumed = json.loads(results[first])["segments"]
    assert [(s["start"], s["end"], s["text"], s["tokens"]) for s in resumed] == [
        (s["start"], s["end"], s["text"], s["tokens"]) for s in expected
    ]
    assert "printing" in resumed[0]["text"].lower() and len(resumed) > 10
    assert not list((data / "uploads").iterdir()) and not list((data / "journals").iterdir())


def test_a_shutdown_answers_waiting_requests_and_keeps_the_jobs(speech: Callable[[str], Path], tmp_path: Path) -> None:
    """SIGTERM (as ^C or a service manager sends it) with a studio page's event stream open and
    an OpenAI request waiting for its job: the stream ends, the request answers 503 naming the
    job, nothing is cancelled into a traceback, and the job finishes after the restart."""
    data = tmp_path / "data"
    long = speech(LONG)
    server = Server(data).start()
    answer: dict[str, Any] = {}

    def wait_for_transcript() -> None:
        body, content_type = multipart({"model": "whisper-1"}, long.name, long.read_bytes())
        answer["reply"] = server.request("POST", "/v1/audio/transcriptions", body, {"Content-Type": content_type})

    waiting = threading.Thread(target=wait_for_transcript)
    try:
        events = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        events.request("GET", "/v1/events")
        stream = events.getresponse()
        assert stream.status == 200 and stream.readline() == b"retry: 1000\n"
        waiting.start()
        deadline = time.monotonic() + 300
        while not (jobs := server.json("GET", "/v1/jobs")["data"]) or jobs[0]["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        log = server.stop()
        waiting.join(60)
    assert server.process is not None and server.process.returncode in (0, -signal.SIGTERM), log  # not killed
    assert "Traceback" not in log and "ERROR" not in log, log
    rest = stream.read()  # the stream ended as a whole response, not cut off
    assert rest.endswith(b"\n\n") and b"event: jobs" in rest
    status, headers, reply = answer["reply"]
    job_id = jobs[0]["id"]
    assert status == 503 and headers["x-job-id"] == job_id, reply
    assert json.loads(reply)["error"]["message"].startswith(f"the server is shutting down: job {job_id} is kept")

    with running(data) as restarted:
        finished = restarted.wait(job_id)
        text = restarted.request("GET", f"/v1/jobs/{job_id}/result?format=text")[2].decode()
    assert finished["status"] == "done" and finished["attempts"] == 2
    assert "printing" in text.lower()


def test_a_full_queue_answers_429_and_memory_stays_bounded(server: Server, speech: Callable[[str], Path]) -> None:
    mp3 = speech(MP3).read_bytes()  # 53 s: no job finishes while the 20 uploads arrive
    replies: list[tuple[int, dict[str, str], Any]] = []
    lock = threading.Lock()

    def upload(i: int) -> None:
        reply = server.submit(f"take{i}.mp3", mp3, response_format="srt")
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [r for r in replies if r[0] == 202]
    refused = [r for r in replies if r[0] == 429]
    assert len(accepted) == 8 and len(refused) == 12, [r[0] for r in replies]
    assert all(int(h["retry-after"]) >= 1 and "queue is full" in body["error"]["message"] for _, h, body in refused)
    with pytest.raises(openai.RateLimitError) as refused_sync:  # the OpenAI endpoints share the queue
        server.client().audio.transcriptions.create(file=("x.mp3", mp3), model="whisper-1")
    assert refused_sync.value.response.headers["retry-after"]
    peak = memory(server.process.pid)["VmHWM"]  # type: ignore[union-attr]
    print(f"server peak RSS with 8 jobs queued after 20 concurrent uploads: {peak / 1024:.0f} MiB")
    for _, _, job in accepted:  # cancel them all: the queued at once, the running one after its window
        status, _, body = server.request("DELETE", f"/v1/jobs/{job['id']}")
        assert status == 200, body
    assert {server.wait(job["id"])["status"] for _, _, job in accepted} <= {"cancelled", "done"}
    assert server.json("GET", "/health")["jobs_unfinished"] == 0
    assert not list((server.data_dir / "uploads").iterdir())


def silent_wav_body(boundary: str, total: int) -> Iterator[bytes]:
    """A multipart body with `total` bytes of WAV silence, generated as it is sent."""
    yield f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="silence.wav"\r\n\r\n'.encode()
    header = b"RIFF" + (total + 36).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
    header += bytes.fromhex("01000100803e0000007d00000200100064617461") + total.to_bytes(4, "little")
    yield header
    chunk = bytes(1 << 20)
    for _ in range(total // len(chunk)):
        yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def stream_upload(server: Server, total: int, declare_length: bool) -> tuple[int, bytes, int]:
    """POST a generated `total`-byte upload chunk by chunk; (status, body, bytes sent before the
    server answered)."""
    boundary = "b0undary"
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    connection.putrequest("POST", "/v1/audio/transcriptions")
    connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    if declare_length:
        connection.putheader("Content-Length", str(sum(len(c) for c in silent_wav_body(boundary, 0)) + total))
    else:
        connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    sent = 0
    try:
        for piece in silent_wav_body(boundary, total):
            connection.send(piece if declare_length else b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
    except OSError:  # the server answered and closed the connection: read what it said
        pass
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body, sent


def test_a_1_gb_upload_over_the_limit_is_413_without_memory_growth(server: Server) -> None:
    pid = server.process.pid  # type: ignore[union-attr]
    before = memory(pid)
    status, body, sent = stream_upload(server, 2**30, declare_length=False)
    after = memory(pid)
    print(
        f"1 GiB chunked upload over a {LIMIT_MB} MiB limit: 413 after {sent / 2**20:.0f} MiB sent; "
        f"server RSS {before['VmRSS'] / 1024:.0f} -> {after['VmRSS'] / 1024:.0f} MiB, "
        f"peak {before['VmHWM'] / 1024:.0f} -> {after['VmHWM'] / 1024:.0f} MiB"
    )
    assert status == 413 and "upload limit" in json.loads(body)["error"]["message"]
    assert sent < 2**30 / 4  # refused while streaming, long before the end
    assert after["VmRSS"] - before["VmRSS"] < LIMIT_MB * 1024
    status, body, sent = stream_upload(server, 2**30, declare_length=True)
    assert status == 413 and sent < 2**30 / 4  # refused from its Content-Length before its body is read
    assert not list((server.data_dir / "uploads").iterdir())


def test_bad_uploads_are_400_with_the_cli_message_and_leave_nothing(
    server: Server, clip: Path, speech: Callable[[str], Path], tmp_path: Path
) -> None:
    import av
    import numpy as np

    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "empty.wav").touch()
    (folder / "notes.wav").write_text("These are meeting notes, not a recording.\n" * 20)
    mp3 = speech(MP3).read_bytes()
    (folder / "cut.mp3").write_bytes(mp3[: len(mp3) // 2])
    with av.open(str(folder / "silent_video.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(10):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i, np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
    names = sorted(p.name for p in folder.iterdir())
    done = cli(*names, "--format", "srt", "--output-dir", tmp_path / "out", cwd=folder)
    reported = [
        line.split(": ", 1)[1] for line in done.stderr.splitlines() if line.startswith(("error: ", "skipped: "))
    ]
    cli_lines = {line.split(": ", 1)[0]: line for line in reported}
    assert set(cli_lines) == set(names), done.stderr
    jobs_before = server.json("GET", "/v1/jobs")["data"]
    client = server.client()
    for name in names:
        with pytest.raises(openai.BadRequestError) as refused:
            client.audio.transcriptions.create(file=(name, (folder / name).read_bytes()), model="whisper-1")
        assert refused.value.response.json()["error"]["message"] == cli_lines[name]
        status, _, reply = server.submit(name, (folder / name).read_bytes())  # the job API checks the same way
        assert status == 400 and reply["error"]["message"] == cli_lines[name]
    # a path for a name is only a name: judged on its content, never opened or written
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.transcriptions.create(
            file=("../../etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"), model="whisper-1"
        )
    assert (
        refused.value.response.json()["error"]["message"]
        == "../../etc/passwd: not an audio or video file FFmpeg can read"
    )
    text = client.audio.transcriptions.create(file=("../../etc/passwd", clip.read_bytes()), model="whisper-1")
    assert "ask not what your country" in text.text.lower()
    # a body cut off mid-file is refused too
    body, content_type = multipart({}, "cut.wav", clip.read_bytes())
    status, _, reply = server.request("POST", "/v1/jobs", body[: len(body) // 2], {"Content-Type": content_type})
    assert status == 400 and "cut off" in json.loads(reply)["error"]["message"]
    for fields, message in (
        ({"response_format": "doc"}, "response_format 'doc'"),
        ({"max_line_width": "0"}, "max_line_width 0: must be at least 1"),
        ({"beam_size": "1", "patience": "2"}, "patience 2.0: needs beam_size and must be more than 0"),
        ({"fps": "31"}, "unknown frame rate '31'"),
        ({"language": "de"}, "English-only"),
        ({"colour": "red"}, "unknown field 'colour'"),
    ):
        status, _, reply = server.submit(clip.name, clip.read_bytes(), **fields)
        assert status == 400 and message in reply["error"]["message"], reply
    status, _, reply = server.request("POST", "/v1/jobs", b"{}", {"Content-Type": "application/json"})
    assert status == 400 and "multipart/form-data" in json.loads(reply)["error"]["message"]
    jobs_after = server.json("GET", "/v1/jobs")["data"]
    assert len(jobs_after) == len(jobs_before) + 1  # only the good upload became a job
    assert not list((server.data_dir / "uploads").iterdir())
    assert not (server.data_dir.parent / "etc").exists() and not (server.data_dir / "etc").exists()


def test_binding_beyond_loopback_needs_a_key(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "whisper_coreml.server", "--host", "0.0.0.0", "--data-dir", str(tmp_path)]
    refused = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: --host 0.0.0.0 is reachable from other machines: give --api-key KEY (or $WHISPER_COREML_API_KEY), "
        "or --insecure-no-auth to serve without one"
    ]


def test_api_key_cors_and_job_timeout(speech: Callable[[str], Path], clip: Path, tmp_path: Path) -> None:
    with running(tmp_path, "--api-key", "s3cret", "--job-timeout", "1") as server:
        with pytest.raises(openai.AuthenticationError):
            server.client("wrong").audio.transcriptions.create(file=clip.open("rb"), model="whisper-1")
        assert server.request("GET", "/v1/jobs")[0] == 401  # no key at all
        with pytest.raises(openai.APIStatusError) as timed_out:  # 53 s of audio cannot finish in 1 s
            server.client("s3cret").audio.transcriptions.create(file=speech(MP3).open("rb"), model="whisper-1")
        assert timed_out.value.status_code == 504 and "timed out after 1 s" in timed_out.value.message
        preflight = {"Origin": "http://example.com", "Access-Control-Request-Method": "POST"}
        _, headers, _ = server.request("OPTIONS", "/v1/audio/transcriptions", headers=preflight)
        assert "access-control-allow-origin" not in headers  # CORS is off unless asked for
    with running(tmp_path, "--cors-origin", "http://example.com") as server:
        status, headers, _ = server.request("OPTIONS", "/v1/audio/transcriptions", headers=preflight)
        assert status == 200 and headers["access-control-allow-origin"] == "http://example.com"

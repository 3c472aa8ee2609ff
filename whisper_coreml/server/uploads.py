"""Uploads: a multipart body streamed to a file of our own, never into memory, never by its name.

The request body is parsed as it arrives (python-multipart's push parser) and the `file`
part's bytes go straight to a new file in the uploads folder under a random name; the size
limit is checked on every chunk, so a 1 GB body over a 100 MB limit costs 100 MB of disk and
no memory. The client's file name is only text, for messages and the FCPXML project's name;
it never becomes a path. The upload is then judged on its content: decoded once from start
to end (bounded chunks), a bad one raises the same one-line AudioError the CLI prints, about
the client's file name.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from ..audio import SAMPLE_RATE, iter_audio
from ..errors import AudioError

MAX_FIELD_BYTES = 64 * 1024  # a prompt is a few hundred characters
MAX_FIELDS = 64
MAX_FILENAME = 255


class UploadError(Exception):
    """An upload refused; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """A received upload: our file, the client's name for it, and the form's other fields."""

    path: Path
    filename: str
    size: int
    fields: dict[str, list[str]] = field(default_factory=dict)

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def display_name(raw: str) -> str:
    """The client's file name as safe one-line text (control characters dropped, length capped)."""
    text = "".join(c for c in raw if c.isprintable()).strip()
    return text[:MAX_FILENAME] or "upload"


def boundary_of(content_type: str | None) -> bytes:
    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise UploadError(400, "expected a multipart/form-data body with the audio in a 'file' field")
    return params[b"boundary"]


class _Receiver:
    """python-multipart callbacks: fields into memory (small), the file part onto disk."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fields: dict[str, list[str]] = {}
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.name: str | None = None
        self.value = bytearray()
        self.in_file = False
        self.file: int | None = None  # descriptor of the file being written
        self.path: Path | None = None
        self.filename: str | None = None
        self.size = 0
        self.finished = False

    def on_part_begin(self) -> None:
        self.headers, self.name, self.value, self.in_file = {}, None, bytearray(), False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.name = params.get(b"name", b"").decode("utf-8", "replace")
        if self.name == "file" and b"filename" in params:
            if self.file is not None or self.path is not None:
                raise UploadError(400, "more than one 'file' in the upload")
            self.filename = display_name(params[b"filename"].decode("utf-8", "replace"))
            self.path = self.directory / f"{secrets.token_hex(16)}.part"
            self.file = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            self.in_file = True
        elif sum(len(v) for v in self.fields.values()) >= MAX_FIELDS:
            raise UploadError(400, f"more than {MAX_FIELDS} form fields")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            assert self.file is not None
            self.size += end - start
            if self.size > self.max_bytes:
                raise UploadError(
                    413, f"{self.filename}: larger than this server's upload limit of {_mb(self.max_bytes)}"
                )
            view = memoryview(data)[start:end]
            while view:
                view = view[os.write(self.file, view) :]
        else:
            self.value += data[start:end]
            if len(self.value) > MAX_FIELD_BYTES:
                raise UploadError(400, f"form field '{self.name}' is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.in_file:
            assert self.file is not None
            os.fsync(self.file)  # an accepted job's audio survives a power cut
            os.close(self.file)
            self.file = None
            self.in_file = False
        elif self.name:
            self.fields.setdefault(self.name, []).append(self.value.decode("utf-8", "replace"))

    def on_end(self) -> None:
        self.finished = True

    def abandon(self) -> None:
        if self.file is not None:
            os.close(self.file)
            self.file = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


async def receive_upload(
    chunks: AsyncIterator[bytes], content_type: str | None, directory: Path, max_bytes: int
) -> Upload:
    """Stream a multipart body into `directory`; the `file` part lands under a random name.

    Raises UploadError (400 malformed, no file or an incomplete body; 413 over `max_bytes`)
    having removed whatever it wrote."""
    receiver = _Receiver(directory, max_bytes)
    callbacks = {name: getattr(receiver, name) for name in dir(_Receiver) if name.startswith("on_")}
    parser = MultipartParser(boundary_of(content_type), callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in chunks:
            parser.write(chunk)
        parser.finalize()
        if not receiver.finished:
            raise UploadError(400, "the upload ended before its last part (the body was cut off)")
        if receiver.path is None:
            raise UploadError(400, "no file in the upload: send the audio as the multipart field 'file'")
        final = receiver.path.with_suffix("")
        os.replace(receiver.path, final)
        assert receiver.filename is not None
        return Upload(final, receiver.filename, receiver.size, receiver.fields)
    except BaseException:  # a malformed body, a disconnect or a cancelled request: leave nothing
        receiver.abandon()
        raise


def check_media(upload: Upload) -> float:
    """Decode the upload once, start to end, and return its duration in seconds; a file that
    is not media, is empty, has no sound or is cut short raises the CLI's AudioError, about the
    client's file name (never our path)."""
    samples = 0
    try:
        for chunk in iter_audio(upload.path):
            samples += len(chunk)
    except AudioError as e:
        raise AudioError(upload.filename, e.problem) from None
    return samples / SAMPLE_RATE


def _mb(size: int) -> str:
    return f"{size / 2**20:g} MiB"

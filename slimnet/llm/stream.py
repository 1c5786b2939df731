"""Weights in and out, a few tensors at a time: safetensors shards read through ``safe_open`` (memory-mapped,
opened for one decoder layer and closed again; the tensors it gives are views of the mapping, so nothing may
keep one past its layer, else the mapped pages of every layer would stay resident), and new shards written
tensor by tensor.

:class:`ShardWriter` keeps no tensor: each one's bytes go to the open shard as it comes, and a full shard
gets its safetensors header (an 8-byte length and the JSON) in the room left for it at the start.
``safetensors.torch.save_file`` would instead hold the whole shard and copy it to ``bytes`` first: twice the
shard in memory.
The shards are named ``model-0000K-of-0000N.safetensors`` when the last one is written (N is known only then),
with ``model.safetensors.index.json``; a model that fits one shard is the single ``model.safetensors``.
"""

from __future__ import annotations

import json
import os
import struct
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import torch

from ..errors import SlimnetError

#: The safetensors dtype names (the format's own spelling).
DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}  # fmt: skip

#: Shards of the output hold at most this many bytes (on disk: the writer keeps none of it in memory).
SHARD_BYTES = 2 << 30


class Weights:
    """Where each tensor of a folder's safetensors lives (from the shards' headers; nothing is read yet)."""

    def __init__(self, files: Iterable[Path]) -> None:
        from safetensors import safe_open

        self.where: dict[str, Path] = {}
        for path in files:
            try:
                with safe_open(str(path), framework="pt") as f:
                    names = list(f.keys())
            except Exception as exc:  # noqa: BLE001 - a broken shard is the user's file problem
                raise SlimnetError(f"{path} is not a readable safetensors file ({exc})") from None
            for name in names:
                if name in self.where:
                    raise SlimnetError(f"tensor {name} is in both {self.where[name].name} and {path.name}")
                self.where[name] = path

    def names(self) -> list[str]:
        return list(self.where)

    def read(self, names: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """The tensors named, shard by shard, each shard opened once and closed before the next."""
        from safetensors import safe_open

        by_file: dict[Path, list[str]] = defaultdict(list)
        for name in names:
            by_file[self.where[name]].append(name)
        for path, wanted in by_file.items():
            with safe_open(str(path), framework="pt") as f:
                for name in wanted:
                    yield name, f.get_tensor(name)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _header(tensors: list[tuple[str, torch.dtype, list[int], int]]) -> bytes:
    """The safetensors header of tensors laid end to end: (name, dtype, shape, bytes) each, 8-byte aligned."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, size in tensors:
        header[name] = {"dtype": DTYPES[dtype], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(text)) + text


def _check_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in DTYPES:
        raise SlimnetError(f"tensor {name} has dtype {t.dtype}, which safetensors cannot store")


def _write_bytes(f: BinaryIO, t: torch.Tensor) -> None:
    if t.numel():
        f.write(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))


def write_safetensors(path: Path, tensors: list[tuple[str, torch.Tensor]]) -> None:
    """One safetensors file, tensor by tensor from its own memory (no copy of the whole file)."""
    for name, t in tensors:
        _check_dtype(name, t)
    with open(path, "wb") as f:
        f.write(_header([(n, t.dtype, list(t.shape), nbytes(t)) for n, t in tensors]))
        for _, t in tensors:
            _write_bytes(f, t)


class ShardWriter:
    """Tensors in, shards out in ``folder`` (see the module docstring); :meth:`close` names them and writes the
    index. ``names``: every tensor that may come (their header entries are reserved at the start of each shard).

    Each tensor's bytes go to the open shard at once, after room left for the header: the writer keeps no
    tensor. The header, written when the shard is full, is padded with spaces to fill that room (the format
    allows whitespace after the header's JSON), so no byte is written twice."""

    def __init__(self, folder: Path, names: list[str], shard_bytes: int = SHARD_BYTES) -> None:
        self.folder, self.shard_bytes = folder, shard_bytes
        # an entry is its name and ~120 characters of dtype, shape and offsets at most; every name may land here
        self.reserve = -(-(64 + sum(len(n) + 160 for n in names)) // 8) * 8
        self.entries: list[tuple[str, torch.dtype, list[int], int]] = []
        self.file: BinaryIO | None = None
        self.pending_bytes = 0
        self.written: list[tuple[Path, list[str]]] = []
        self.total = 0

    def _path(self) -> Path:
        return self.folder / f".shard-{len(self.written) + 1:05d}.safetensors"

    def add(self, name: str, t: torch.Tensor) -> None:
        _check_dtype(name, t)
        size = nbytes(t)
        if self.entries and self.pending_bytes + size > self.shard_bytes:
            self.flush()
        if self.file is None:
            self.file = open(self._path(), "w+b")  # noqa: SIM115 - closed by flush
            self.file.seek(8 + self.reserve)
        _write_bytes(self.file, t)
        self.entries.append((name, t.dtype, list(t.shape), size))
        self.pending_bytes += size
        self.total += size

    def flush(self) -> None:
        if self.file is None:
            return
        head = _header(self.entries)[8:].rstrip(b" ")
        if len(head) > self.reserve:
            raise SlimnetError(f"safetensors header of {len(head)} bytes overflows the {self.reserve} reserved")
        self.file.seek(0)
        self.file.write(struct.pack("<Q", self.reserve) + head + b" " * (self.reserve - len(head)))
        self.file.close()
        self.written.append((self._path(), [n for n, *_ in self.entries]))
        self.entries, self.pending_bytes, self.file = [], 0, None

    def close(self) -> list[str]:
        """Write what is pending, give the shards their final names and write the index; the file names."""
        self.flush()
        n = len(self.written)
        if n == 1:
            os.replace(self.written[0][0], self.folder / "model.safetensors")
            return ["model.safetensors"]
        weight_map: dict[str, str] = {}
        names = []
        for k, (path, tensors) in enumerate(self.written, 1):
            final = f"model-{k:05d}-of-{n:05d}.safetensors"
            os.replace(path, self.folder / final)
            weight_map.update({t: final for t in tensors})
            names.append(final)
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return [*names, "model.safetensors.index.json"]

"""A GGUF file's metadata and tensor table, parsed in one pass over a memory map.

The `gguf` package's GGUFReader builds a numpy view for every part of every field: on SmolLM2's
98k tokenizer strings and merges that is ~2.5 s, a third of the time `ovq chat` may take to get ready.
The format is small (header, key/value pairs, tensor infos, aligned data), so it is read here with
`struct`; the `gguf` package still supplies the type tables and the dequantizers. Any damage (a cut
file, a count past the end, a bad type) raises ValueError; `gguf_file.py` names the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.quants import quant_shape_to_byte_shape

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32  # GGUF's, unless general.alignment says otherwise

_SCALARS = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: innermost (ne0, a row's length) first
    tensor_type: GGMLQuantizationType
    data_offset: int  # from the start of the file
    n_bytes: int
    data: np.ndarray  # uint8 rows of the stored bytes (what gguf.quants.dequantize takes), a view


@dataclass(frozen=True)
class GGUFContents:
    version: int
    fields: dict[str, Any]  # arrays as lists
    tensors: list[TensorInfo]


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf, self.at = buf, 0

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.at)  # struct.error past the end
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("Q")
        if self.at + n > len(self.buf):
            raise ValueError(f"a string of {n} bytes runs past the end of the file")
        text = bytes(self.buf[self.at : self.at + n]).decode("utf-8")
        self.at += n
        return text

    def value(self, kind: int) -> Any:
        if kind == GGUFValueType.STRING:
            return self.string()
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind != GGUFValueType.ARRAY:
            raise ValueError(f"unknown metadata value type {kind}")
        item, n = self.unpack("I"), self.unpack("Q")
        if item in _SCALARS:  # numbers in one read
            dtype = np.dtype("<" + _SCALARS[item])
            if self.at + n * dtype.itemsize > len(self.buf):
                raise ValueError(f"an array of {n} values runs past the end of the file")
            values = np.frombuffer(self.buf, dtype, n, self.at).tolist()
            self.at += n * dtype.itemsize
            return values
        return [self.value(item) for _ in range(n)]


def _qtype(value: int, name: str) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType(value)
    except ValueError:
        raise ValueError(f"tensor {name} has unknown type {value}") from None


def read_gguf(path: Path) -> GGUFContents:
    """Parse `path`. Raises ValueError (not a GGUF file, big-endian, damaged or truncated)."""
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    raw = mm.view(np.ndarray)  # numpy's memmap subclass makes every slice of it slow
    cur = _Cursor(memoryview(raw))
    if bytes(raw[:4]) != MAGIC or len(raw) < 8:
        raise ValueError("not a GGUF file")
    cur.at = 4
    version = cur.unpack("I")
    if version & 0xFFFF == 0:  # a small version number read with the wrong byte order
        raise ValueError("big-endian GGUF files are not supported")
    try:
        n_tensors, n_kv = cur.unpack("Q"), cur.unpack("Q")
        fields = {}
        for _ in range(n_kv):
            key = cur.string()
            fields[key] = cur.value(cur.unpack("I"))
        infos = []
        for _ in range(n_tensors):
            name, n_dims = cur.string(), cur.unpack("I")
            dims = tuple(cur.unpack("Q") for _ in range(n_dims))
            infos.append((name, dims, _qtype(cur.unpack("I"), name), cur.unpack("Q")))
    except (struct.error, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"truncated or corrupt GGUF ({err})") from None
    alignment = fields.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment < 1:
        raise ValueError(f"general.alignment is {alignment!r}")
    start = -(-cur.at // alignment) * alignment
    tensors = []
    for name, dims, qtype, offset in infos:
        block, type_size = GGML_QUANT_SIZES[qtype]
        n_elems = int(np.prod(dims, dtype=np.int64))
        if dims and dims[0] % block:
            raise ValueError(f"tensor {name}: a row of {dims[0]} is not whole {qtype.name} blocks")
        n_bytes = n_elems // block * type_size
        at = start + offset
        if at + n_bytes > len(raw):
            raise ValueError(f"truncated GGUF: tensor {name} ends past the end of the file")
        # rows of bytes, outermost first ([..., ne1, bytes per row]): what the dequantizers take
        byte_shape = quant_shape_to_byte_shape(tuple(reversed(dims)), qtype) if dims else (type_size,)
        data = raw[at : at + n_bytes].reshape(byte_shape)
        tensors.append(TensorInfo(name, dims, qtype, at, n_bytes, data))
    return GGUFContents(version, fields, tensors)

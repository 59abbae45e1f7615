"""Msgpack codec for session snapshots: tensors as raw little-endian bytes, strict decoding, migrations.

A snapshot is a model fingerprint, a stream position, a tree of layer states and JSON-like metadata.
Both trees share one grammar: None, bool, int, float, str, bytes, list, dict with str keys, and
torch.Tensor leaves. `encode` gives one blob; `encode_parts` splits the state into one part per
top-level entry (per element for a top-level list, e.g. one per layer) so that a content-addressed
store keeps a single copy of parts that did not change. `decode` reads either form. Never pickle.
The wire format is described in snapshots/README.md.
"""

from __future__ import annotations

import math
import os
import re
import struct
import sys
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgpack
import torch
import xxhash

from ovq.snapshots.errors import (
    ChecksumError,
    CorruptSnapshot,
    FingerprintMismatch,
    SnapshotError,
    VersionError,
)
from ovq.snapshots.frame import BLAKE3, DIGEST_SIZE, SHA256, Frame, frame, unframe, unpack

if sys.byteorder != "little":  # tensor bytes are written as they lie in memory
    raise ImportError("snapshots.codec assumes a little-endian host")

CURRENT_VERSION = 2
MAX_BYTES = 1 << 32  # default decode limit for one snapshot, all parts together
MAX_DEPTH = 64  # nesting of dicts/lists; deeper trees are malformed, and recursion stays bounded
MAX_NDIM = 16

MAGIC = b"OVQS"
KIND_SNAPSHOT = 1  # a whole snapshot, or the envelope of a split one
KIND_PART = 2  # one subtree of a split snapshot's state
ENVELOPE = "snapshot"  # the part name of the envelope in `encode_parts` output

_EXT_TENSOR_V1 = 1  # v1: the tensor inline, a msgpack map with its bytes and CRC-32
_EXT_PART_REF = 2
_EXT_TENSOR = 3  # v2: [dtype, shape, offset, nbytes, xxh3-64]; the bytes lie in the body's data region
_PAYLOAD_KEYS = ("fingerprint", "position", "state", "meta")
_TENSOR_KEYS_V1 = {"dtype", "shape", "data", "crc"}
_TREE_LEN = struct.Struct("<Q")  # v2 body: u64 tree length, msgpack tree, data region
_FINGERPRINT = re.compile(r"[0-9a-f]{1,128}")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One session state. `state` and `meta` are trees (see module docstring); `version` is the format
    version, always CURRENT_VERSION for snapshots that were encoded or decoded (after migrations)."""

    fingerprint: str
    position: int
    state: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    version: int = CURRENT_VERSION


@dataclass(frozen=True)
class TensorRecord:
    """A tensor as stored: dtype name, shape and raw little-endian bytes (already checked against the
    stored checksum when decoded).

    This is what migrations see in place of tensors; they may return records or torch tensors.
    """

    dtype: str
    shape: tuple[int, ...]
    data: bytes | memoryview

    @classmethod
    def from_tensor(cls, t: torch.Tensor, path: str = "tensor") -> TensorRecord:
        """A record whose data is a view of the tensor's CPU bytes (no copy for a contiguous CPU tensor)."""
        name = _DTYPE_NAMES.get(t.dtype)
        if name is None:
            raise TypeError(f"{path}: unsupported dtype {t.dtype} (supported: {', '.join(DTYPES)})")
        if t.layout != torch.strided:
            raise TypeError(f"{path}: only dense (strided) tensors can be encoded, got {t.layout}")
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        return cls(name, tuple(t.shape), memoryview(flat.view(torch.uint8).numpy()))

    def to_tensor(self) -> torch.Tensor:
        """A fresh, writable, contiguous tensor with exactly the stored bits."""
        dtype = DTYPES[self.dtype]
        if not len(self.data):  # frombuffer refuses empty buffers
            return torch.empty(self.shape, dtype=dtype)
        # bytearray: the tensor owns a private, writable copy instead of aliasing the blob.
        return torch.frombuffer(bytearray(self.data), dtype=dtype).reshape(self.shape)


@dataclass(frozen=True)
class _PartRef:
    name: str
    digest: bytes  # the digest trailer of the part's frame


@dataclass(frozen=True)
class _Ext:
    """A msgpack extension as parsed; `_resolve` turns it into a TensorRecord or a part."""

    code: int
    data: bytes


# -- migrations -----------------------------------------------------------------------------------

Migration = Callable[[dict[str, Any]], dict[str, Any]]
_MIGRATIONS: dict[int, Migration] = {}


def migration(from_version: int) -> Callable[[Migration], Migration]:
    """Register `fn(payload) -> payload` upgrading a decoded payload from `from_version` to the next.

    The payload is a dict with keys fingerprint, position, state, meta; tensors are TensorRecords.
    """

    def register(fn: Migration) -> Migration:
        if not 0 <= from_version < CURRENT_VERSION:
            raise ValueError(f"migration from v{from_version}: must be in [0, {CURRENT_VERSION})")
        if from_version in _MIGRATIONS:
            raise ValueError(f"a migration from v{from_version} is already registered")
        _MIGRATIONS[from_version] = fn
        return fn

    return register


def _check_version(version: int, what: str) -> None:
    if version > CURRENT_VERSION:
        raise VersionError(
            f"{what}: format v{version} is newer than this ovq (it reads up to v{CURRENT_VERSION})"
        )
    missing = [v for v in range(version, CURRENT_VERSION) if v not in _MIGRATIONS]
    if missing:
        raise VersionError(f"{what}: format v{version} is too old: no migration from v{missing[0]}")


@migration(1)
def _v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """v2 changed the wire layout only (tensor bytes in a data region after the tree, xxh3-64 per
    tensor in place of CRC-32, BLAKE3 frame digests); the payload tree is the same."""
    return payload


# -- encoding -------------------------------------------------------------------------------------


def encode(snap: Snapshot) -> bytes:
    """One self-contained blob (header, body, digest trailer)."""
    return encode_raw(_payload(snap), version=CURRENT_VERSION)


def encode_parts(snap: Snapshot) -> dict[str, bytes]:
    """Named blobs: an envelope ("snapshot") plus one part per top-level state entry, one per element
    when that entry is a list. Identical subtrees give identical bytes, so a store dedupes them."""
    payload = _payload(snap)
    named: dict[str, Any] = {}  # part name -> subtree

    def split(name: str, subtree: Any) -> str:
        if name in named:
            raise ValueError(f"state keys collide on part name {name!r}")
        named[name] = subtree
        return name

    layout = {
        key: [split(f"state.{key}[{i}]", item) for i, item in enumerate(value)]
        if isinstance(value, list)
        else split(f"state.{key}", value)
        for key, value in snap.state.items()
    }

    def encode_part(name: str) -> bytes:
        return _frame(CURRENT_VERSION, KIND_PART, _encode_body(named[name], name, 1, CURRENT_VERSION))

    # the frame digests (BLAKE3) release the GIL: the parts are encoded on all cores at once
    parts = dict(zip(named, _pool().map(encode_part, named)))

    def ref(name: str) -> _PartRef:
        return _PartRef(name, parts[name][-DIGEST_SIZE:])

    skeleton = {k: [ref(n) for n in v] if isinstance(v, list) else ref(v) for k, v in layout.items()}
    parts[ENVELOPE] = encode_raw({**payload, "state": skeleton}, version=CURRENT_VERSION)
    return parts


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="ovq-codec")
    return _POOL


def encode_raw(payload: dict[str, Any], *, version: int) -> bytes:
    """Frame a plain payload at any format version, in that version's layout (v1: inline tensors with
    CRC-32, SHA-256 frame), without checking it. For tests and migration tools."""
    return _frame(version, KIND_SNAPSHOT, _encode_body(payload, "payload", 0, version))


def _frame(version: int, kind: int, pieces: list[Any]) -> bytes:
    return frame(MAGIC, version, kind, pieces, digest=SHA256 if version < 2 else BLAKE3)


@dataclass
class _Region:
    """The data region of a v2 body being written: tensor bytes back to back, in tree order."""

    pieces: list[Any] = field(default_factory=list)
    size: int = 0

    def add(self, data: bytes | memoryview) -> tuple[int, int]:
        offset, n = self.size, memoryview(data).nbytes
        self.pieces.append(data)
        self.size += n
        return offset, n


def _encode_body(node: Any, path: str, depth: int, version: int) -> list[Any]:
    """The pieces of a frame body. v2: u64 tree length, msgpack tree, data region (no tensor copy
    until the frame joins the pieces). v1: one msgpack object with tensors inline."""
    if version < 2:
        return [msgpack.packb(_pack(node, path, depth, None), use_bin_type=True)]
    region = _Region()
    tree = msgpack.packb(_pack(node, path, depth, region), use_bin_type=True)
    return [_TREE_LEN.pack(len(tree)), tree, *region.pieces]


def _payload(snap: Snapshot) -> dict[str, Any]:
    if snap.version != CURRENT_VERSION:
        raise ValueError(f"can only encode format v{CURRENT_VERSION}, not v{snap.version}")
    if not isinstance(snap.fingerprint, str) or not _FINGERPRINT.fullmatch(snap.fingerprint):
        raise ValueError(f"fingerprint must be 1-128 lowercase hex digits, got {snap.fingerprint!r}")
    if type(snap.position) is not int or snap.position < 0:
        raise ValueError(f"position must be an int >= 0, got {snap.position!r}")
    if not isinstance(snap.state, dict) or not isinstance(snap.meta, dict):
        raise TypeError("state and meta must be dicts")
    return {
        "fingerprint": snap.fingerprint,
        "position": snap.position,
        "state": snap.state,
        "meta": snap.meta,
    }


def _pack(node: Any, path: str, depth: int, region: _Region | None) -> Any:
    """Check the tree grammar and swap tensors (and part refs) for msgpack extensions; a v2 body's
    tensor bytes go to `region`, a v1 body's (region None) inline."""
    if depth > MAX_DEPTH:
        raise TypeError(f"{path}: nested deeper than {MAX_DEPTH}")
    kind = type(node)
    if node is None or kind in (bool, float, str, bytes):
        return node
    if kind is int:
        if not -(1 << 63) <= node < 1 << 64:
            raise TypeError(f"{path}: int {node} does not fit in 64 bits")
        return node
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if type(k) is not str:
                raise TypeError(f"{path}: map keys must be str, got {type(k).__name__} {k!r}")
            out[k] = _pack(v, f"{path}.{k}", depth + 1, region)
        return out
    if isinstance(node, list):
        return [_pack(v, f"{path}[{i}]", depth + 1, region) for i, v in enumerate(node)]
    if isinstance(node, torch.Tensor):
        node = TensorRecord.from_tensor(node, path)
    if isinstance(node, TensorRecord) and region is None:
        data = bytes(node.data)
        fields = {"dtype": node.dtype, "shape": list(node.shape), "data": data, "crc": zlib.crc32(data)}
        return msgpack.ExtType(_EXT_TENSOR_V1, msgpack.packb(fields, use_bin_type=True))
    if isinstance(node, TensorRecord):
        offset, n = region.add(node.data)
        header = [node.dtype, list(node.shape), offset, n, xxhash.xxh3_64_intdigest(node.data)]
        return msgpack.ExtType(_EXT_TENSOR, msgpack.packb(header, use_bin_type=True))
    if isinstance(node, _PartRef):
        return msgpack.ExtType(_EXT_PART_REF, msgpack.packb([node.name, node.digest], use_bin_type=True))
    hint = " (use a list)" if kind is tuple else ""
    raise TypeError(
        f"{path}: cannot encode {kind.__name__}{hint}; allowed: None, bool, int, float, str, bytes, "
        "list, dict with str keys, torch.Tensor"
    )


# -- decoding -------------------------------------------------------------------------------------


def decode(
    data: bytes | Mapping[str, bytes],
    *,
    expect_fingerprint: str | None = None,
    max_bytes: int = MAX_BYTES,
) -> Snapshot:
    """Read what `encode` (bytes) or `encode_parts` (a mapping) wrote, verifying every checksum.

    Raises a SnapshotError subclass: CorruptSnapshot (truncated or malformed), ChecksumError,
    VersionError (newer than CURRENT_VERSION, or no migration path), FingerprintMismatch (when
    `expect_fingerprint` is given and differs). Nothing is materialised before all checks pass.
    """
    parts = dict(data) if isinstance(data, Mapping) else {ENVELOPE: data}
    total = sum(len(b) for b in parts.values() if isinstance(b, (bytes, bytearray, memoryview)))
    if total > max_bytes:
        raise CorruptSnapshot(f"snapshot is {total} bytes, over the max_bytes limit of {max_bytes}")
    if ENVELOPE not in parts:
        raise CorruptSnapshot(f"no {ENVELOPE!r} part among {sorted(parts)}")
    env = _unframe(parts[ENVELOPE], "snapshot", KIND_SNAPSHOT)
    _check_version(env.version, "snapshot")
    used: set[str] = set()

    def load_part(ref: _PartRef, depth: int) -> Any:
        blob = parts.get(ref.name)
        if blob is None:
            raise CorruptSnapshot(f"part {ref.name!r} is missing")
        part = _unframe(blob, f"part {ref.name!r}", KIND_PART)
        if part.digest != ref.digest:
            raise ChecksumError(f"part {ref.name!r} is not the one this snapshot was saved with")
        if part.version != env.version:
            raise CorruptSnapshot(f"part {ref.name!r} is format v{part.version}, its snapshot v{env.version}")
        used.add(ref.name)
        return _Body(part, f"part {ref.name!r}").read(ref.name, depth, None)

    # The envelope names the parts; they are then checked and read on all cores at once (the digests
    # release the GIL). Errors are raised in the order the parts are referenced.
    deferred: list[tuple[_PartRef, int]] = []

    def defer(ref: _PartRef, depth: int) -> _Deferred:
        deferred.append((ref, depth))
        return _Deferred(len(deferred) - 1)

    tree = _Body(env, "snapshot").read("payload", 0, defer)
    loaded = list(_pool().map(lambda item: _attempt(load_part, *item), deferred))
    for value in loaded:
        if isinstance(value, SnapshotError):
            raise value
    payload = _substitute(tree, loaded)
    unused = set(parts) - used - {ENVELOPE}
    if unused:
        raise CorruptSnapshot(f"parts not referenced by the snapshot: {sorted(unused)}")
    for v in range(env.version, CURRENT_VERSION):
        payload = _MIGRATIONS[v](payload)
    snap = _check_payload(payload)
    if expect_fingerprint is not None and snap.fingerprint != expect_fingerprint:
        raise FingerprintMismatch(
            f"snapshot was made by model {snap.fingerprint[:16]}, this model is {expect_fingerprint[:16]}"
        )
    state = _materialise(snap.state, "state")
    meta = _materialise(snap.meta, "meta")
    return Snapshot(snap.fingerprint, snap.position, state, meta)


@dataclass(frozen=True)
class _Deferred:
    index: int  # into the list of loaded parts


def _attempt(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except SnapshotError as e:  # handed back, raised by the caller in part order
        return e


def _substitute(node: Any, loaded: list[Any]) -> Any:
    """The resolved tree with each deferred part replaced by its loaded tree."""
    if type(node) is _Deferred:
        return loaded[node.index]
    if type(node) is dict:
        return {k: _substitute(v, loaded) for k, v in node.items()}
    if type(node) is list:
        return [_substitute(v, loaded) for v in node]
    return node


def _unframe(blob: Any, what: str, kind: int) -> Frame:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise CorruptSnapshot(f"{what}: expected bytes, got {type(blob).__name__}")
    f = unframe(blob, MAGIC, what)
    if f.kind != kind:
        raise CorruptSnapshot(f"{what}: frame kind {f.kind}, expected {kind}")
    return f


class _Body:
    """A frame's body, parsed: its tree and, from v2, the data region its tensors' bytes lie in."""

    def __init__(self, f: Frame, what: str) -> None:
        self.what, self.cursor = what, 0  # cursor: where the next tensor's bytes must start
        if f.version < 2:
            self.region, tree, self.tensor_code = None, f.body, _EXT_TENSOR_V1
        else:
            if len(f.body) < _TREE_LEN.size:
                raise CorruptSnapshot(f"{what}: body of {len(f.body)} bytes has no tree length")
            (m,) = _TREE_LEN.unpack_from(f.body)
            if m > len(f.body) - _TREE_LEN.size:
                raise CorruptSnapshot(f"{what}: tree length {m} runs past the body")
            tree, self.region = f.body[_TREE_LEN.size : _TREE_LEN.size + m], f.body[_TREE_LEN.size + m :]
            self.tensor_code = _EXT_TENSOR
        self.tree = _parse(tree, what, self.tensor_code)

    def tensor(self, data: bytes, path: str) -> TensorRecord:
        if self.region is None:
            return _read_tensor_v1(data, path)
        m = unpack(data, f"{path} (tensor)")
        if type(m) is not list or len(m) != 5:
            raise CorruptSnapshot(f"{path}: a tensor must be [dtype, shape, offset, nbytes, xxh3]")
        dtype, shape, offset, nbytes, check = m
        expected = _check_dtype_and_shape(dtype, shape, path)
        if not all(type(x) is int for x in (offset, nbytes, check)):
            raise CorruptSnapshot(f"{path}: tensor offset, nbytes and xxh3 must be ints")
        if nbytes != expected:
            raise CorruptSnapshot(f"{path}: {dtype}{shape} needs {expected} bytes, got {nbytes}")
        if offset != self.cursor:
            raise CorruptSnapshot(
                f"{path}: tensor bytes at offset {offset}, expected {self.cursor} (back to back, tree order)"
            )
        if offset + nbytes > len(self.region):
            end = f"{offset} + {nbytes} > {len(self.region)}"
            raise CorruptSnapshot(f"{path}: tensor bytes run past the body ({end})")
        raw = self.region[offset : offset + nbytes]
        if xxhash.xxh3_64_intdigest(raw) != check:
            raise ChecksumError(f"{path}: tensor xxh3-64 mismatch")
        self.cursor += nbytes
        return TensorRecord(dtype, tuple(shape), raw)

    def read(self, path: str, depth: int, load_part: Callable[[_PartRef, int], Any] | None) -> Any:
        """The checked tree (see `_resolve`), once every byte of the data region has been claimed."""
        tree = _resolve(self.tree, path, depth, load_part, self)
        if self.region is not None and self.cursor != len(self.region):
            extra = len(self.region) - self.cursor
            raise CorruptSnapshot(f"{self.what}: {extra} data bytes belong to no tensor")
        return tree


def _parse(tree: memoryview, what: str, tensor_code: int) -> Any:
    def ext_hook(code: int, data: bytes) -> _Ext:
        if code not in (tensor_code, _EXT_PART_REF):
            raise CorruptSnapshot(f"{what}: unknown extension type {code}")
        return _Ext(code, data)

    return unpack(tree, what, ext_hook)


def _resolve(
    node: Any, path: str, depth: int, load_part: Callable[[_PartRef, int], Any] | None, body: _Body
) -> Any:
    """Validate a parsed tree; turn extensions into checked TensorRecords, and part refs into the
    parts' trees (`load_part`; None where refs are not allowed)."""
    if depth > MAX_DEPTH:
        raise CorruptSnapshot(f"{path}: nested deeper than {MAX_DEPTH}")
    kind = type(node)
    if node is None or kind in (bool, int, float, str, bytes):
        return node
    if kind is dict:
        if not all(type(k) is str for k in node):
            raise CorruptSnapshot(f"{path}: map keys must be str")
        return {k: _resolve(v, f"{path}.{k}", depth + 1, load_part, body) for k, v in node.items()}
    if kind is list:
        return [_resolve(v, f"{path}[{i}]", depth + 1, load_part, body) for i, v in enumerate(node)]
    if kind is _Ext and node.code == body.tensor_code:
        return body.tensor(node.data, path)
    if kind is _Ext and node.code == _EXT_PART_REF:
        if load_part is None:
            raise CorruptSnapshot(f"{path}: part reference where none may be")
        ref = unpack(node.data, f"{path} (part reference)")
        if not (type(ref) is list and len(ref) == 2 and type(ref[0]) is str and type(ref[1]) is bytes):
            raise CorruptSnapshot(f"{path}: malformed part reference")
        return load_part(_PartRef(ref[0], ref[1]), depth)
    raise CorruptSnapshot(f"{path}: unexpected {kind.__name__} value")


def _check_dtype_and_shape(dtype: Any, shape: Any, path: str) -> int:
    """The byte count of a valid dtype and shape."""
    if type(dtype) is not str or dtype not in DTYPES:
        raise CorruptSnapshot(f"{path}: unknown dtype {dtype!r}")
    if type(shape) is not list or len(shape) > MAX_NDIM or any(type(d) is not int or d < 0 for d in shape):
        raise CorruptSnapshot(f"{path}: bad shape {shape!r}")
    return math.prod(shape) * DTYPES[dtype].itemsize


def _read_tensor_v1(data: bytes, path: str) -> TensorRecord:
    m = unpack(data, f"{path} (tensor)")
    if type(m) is not dict or m.keys() != _TENSOR_KEYS_V1:
        raise CorruptSnapshot(f"{path}: a tensor must be a map with keys {sorted(_TENSOR_KEYS_V1)}")
    dtype, shape, raw, crc = m["dtype"], m["shape"], m["data"], m["crc"]
    expected = _check_dtype_and_shape(dtype, shape, path)
    if type(raw) is not bytes or type(crc) is not int:
        raise CorruptSnapshot(f"{path}: tensor data must be bytes and crc an int")
    if len(raw) != expected:
        raise CorruptSnapshot(f"{path}: {dtype}{shape} needs {expected} bytes, got {len(raw)}")
    if zlib.crc32(raw) != crc:
        raise ChecksumError(f"{path}: tensor CRC-32 mismatch")
    return TensorRecord(dtype, tuple(shape), raw)


def _check_payload(payload: Any) -> Snapshot:
    if type(payload) is not dict or sorted(payload) != sorted(_PAYLOAD_KEYS):
        keys = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise CorruptSnapshot(f"payload must be a map with keys {list(_PAYLOAD_KEYS)}, got {keys}")
    fp, pos, state, meta = (payload[k] for k in _PAYLOAD_KEYS)
    if type(fp) is not str or not _FINGERPRINT.fullmatch(fp):
        raise CorruptSnapshot(f"fingerprint must be 1-128 lowercase hex digits, got {fp!r:.40}")
    if type(pos) is not int or pos < 0:
        raise CorruptSnapshot(f"position must be an int >= 0, got {pos!r:.40}")
    if type(state) is not dict or type(meta) is not dict:
        raise CorruptSnapshot("state and meta must be maps")
    return Snapshot(fp, pos, state, meta)


def _materialise(node: Any, path: str, depth: int = 0) -> Any:
    """TensorRecords -> tensors; also re-checks the grammar, since migrations may have rebuilt the tree."""
    if depth > MAX_DEPTH:
        raise CorruptSnapshot(f"{path}: nested deeper than {MAX_DEPTH}")
    kind = type(node)
    if node is None or kind in (bool, int, float, str, bytes):
        return node
    if kind is dict and all(type(k) is str for k in node):
        return {k: _materialise(v, f"{path}.{k}", depth + 1) for k, v in node.items()}
    if kind is list:
        return [_materialise(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node)]
    if kind is TensorRecord:
        return node.to_tensor()
    if isinstance(node, torch.Tensor):  # produced by a migration
        return TensorRecord.from_tensor(node, path).to_tensor()
    raise CorruptSnapshot(f"{path}: unexpected {kind.__name__} value")

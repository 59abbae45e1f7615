"""Framing shared by snapshot blobs and export files: a fixed header, a body, a 32-byte digest trailer.

    offset  size  field
    0       4     magic          b"OVQS" snapshot blob or part, b"OVQX" export file
    4       2     version        u16 little-endian, format version of the body
    6       1     kind           what the body is (see the users of this module)
    7       1     digest         trailer algorithm: 1 BLAKE3-256 (written now), 0 SHA-256 (read only)
    8       8     body length    u64 little-endian
    16      n     body
    16+n    32    digest         of header + body

The declared length makes truncation and trailing bytes detectable as such (CorruptSnapshot) before the
digest is checked (ChecksumError). A cryptographic digest rather than a CRC because it also identifies
a part inside its snapshot and a blob in the store. BLAKE3 because it is 3.6x faster than SHA-256
here (4.7 GB/s against 1.3 GB/s on one core, SHA extensions included); frames written before it carry
SHA-256 (byte 7 = 0, then "reserved") and read unchanged.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import blake3
import msgpack

from ovq.snapshots.errors import ChecksumError, CorruptSnapshot, SnapshotError

_HEADER = struct.Struct("<4sHBBQ")
HEADER_SIZE = _HEADER.size  # 16
DIGEST_SIZE = 32
SHA256, BLAKE3 = 0, 1  # header byte 7
_DIGESTS = {SHA256: ("SHA-256", hashlib.sha256), BLAKE3: ("BLAKE3", blake3.blake3)}

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Frame:
    version: int
    kind: int
    body: memoryview
    digest: bytes


def frame(
    magic: bytes, version: int, kind: int, body: Buffer | Sequence[Buffer], digest: int = BLAKE3
) -> bytes:
    """One frame around `body`, given whole or as pieces (joined here: the one copy of the bytes)."""
    pieces = [body] if isinstance(body, (bytes, bytearray, memoryview)) else list(body)
    header = _HEADER.pack(magic, version, kind, digest, sum(memoryview(p).nbytes for p in pieces))
    h = _DIGESTS[digest][1](header)
    for p in pieces:
        h.update(p)
    return b"".join((header, *pieces, h.digest()))


def declared_digest(blob: Buffer) -> bytes | None:
    """The digest trailer of `blob` if it is shaped like a frame (any magic, a known digest algorithm,
    length as its header declares), else None. Unchecked: it is what the writer claims."""
    if len(blob) < HEADER_SIZE + DIGEST_SIZE:
        return None
    *_, algorithm, body_len = _HEADER.unpack_from(blob)
    if algorithm not in _DIGESTS or len(blob) != HEADER_SIZE + body_len + DIGEST_SIZE:
        return None
    return bytes(blob[-DIGEST_SIZE:])


def digest_matches(blob: Buffer) -> bool:
    """Whether a frame-shaped `blob` (see declared_digest) ends in the true digest of what precedes it."""
    view = memoryview(blob)
    _, hasher = _DIGESTS[view[7]]
    return hasher(view[:-DIGEST_SIZE]).digest() == bytes(view[-DIGEST_SIZE:])


def unframe(blob: bytes, magic: bytes, what: str) -> Frame:
    """Check magic, length and digest; return the body as a zero-copy view. `what` prefixes messages."""
    n = len(blob)
    if n < HEADER_SIZE + DIGEST_SIZE:
        raise CorruptSnapshot(
            f"{what}: truncated ({n} bytes, a frame has at least {HEADER_SIZE + DIGEST_SIZE})"
        )
    got_magic, version, kind, algorithm, body_len = _HEADER.unpack_from(blob)
    if got_magic != magic:
        raise CorruptSnapshot(f"{what}: bad magic {got_magic!r}, expected {magic!r}")
    expected = HEADER_SIZE + body_len + DIGEST_SIZE
    if n < expected:
        raise CorruptSnapshot(f"{what}: truncated ({n} bytes, the header declares {expected})")
    if n > expected:
        raise CorruptSnapshot(f"{what}: {n - expected} trailing bytes after the frame")
    if algorithm not in _DIGESTS:
        raise CorruptSnapshot(f"{what}: unknown digest algorithm {algorithm} in header byte 7")
    name, hasher = _DIGESTS[algorithm]
    view = memoryview(blob)
    digest = bytes(view[n - DIGEST_SIZE :])
    if hasher(view[: n - DIGEST_SIZE]).digest() != digest:
        raise ChecksumError(f"{what}: {name} mismatch (the bytes were changed after writing)")
    return Frame(version, kind, view[HEADER_SIZE : n - DIGEST_SIZE], digest)


def unpack(body: bytes | memoryview, what: str, ext_hook: Callable[[int, bytes], Any] | None = None) -> Any:
    """Strict msgpack decoding: str keys only, no raw strings, every length bounded by the body itself."""
    n = len(body)
    kwargs = {} if ext_hook is None else {"ext_hook": ext_hook}
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=n,
            max_bin_len=n,
            max_array_len=n,
            max_map_len=n,
            max_ext_len=n,
            **kwargs,
        )
    except SnapshotError:
        raise
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as e:
        # ExtraData, StackError, FormatError, incomplete input, bad UTF-8 and non-str keys all land here.
        raise CorruptSnapshot(f"{what}: malformed msgpack ({type(e).__name__}: {e})") from e

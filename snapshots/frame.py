"""Framing shared by snapshot blobs and export files: a fixed header, a msgpack body, a SHA-256 trailer.

    offset  size  field
    0       4     magic          b"OVQS" snapshot blob or part, b"OVQX" export file
    4       2     version        u16 little-endian, format version of the body
    6       1     kind           what the body is (see the users of this module)
    7       1     reserved       0
    8       8     body length    u64 little-endian
    16      n     body           msgpack
    16+n    32    digest         SHA-256 of header + body

The declared length makes truncation and trailing bytes detectable as such (CorruptSnapshot) before the
digest is checked (ChecksumError). SHA-256 rather than CRC because this digest also identifies a part
inside its snapshot, and it is hardware-accelerated on current x86/ARM CPUs (faster than BLAKE2 there).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack

from snapshots.errors import ChecksumError, CorruptSnapshot, SnapshotError

_HEADER = struct.Struct("<4sHBBQ")
HEADER_SIZE = _HEADER.size  # 16
DIGEST_SIZE = 32


@dataclass(frozen=True)
class Frame:
    version: int
    kind: int
    body: memoryview
    digest: bytes


def frame(magic: bytes, version: int, kind: int, body: bytes) -> bytes:
    header = _HEADER.pack(magic, version, kind, 0, len(body))
    h = hashlib.sha256(header)
    h.update(body)
    return b"".join((header, body, h.digest()))


def declared_digest(blob: bytes) -> bytes | None:
    """The SHA-256 trailer of `blob` if it is shaped like a frame (any magic, length as its header
    declares), else None. Unchecked: it is what the writer claims the bytes hash to."""
    if len(blob) < HEADER_SIZE + DIGEST_SIZE:
        return None
    body_len = _HEADER.unpack_from(blob)[4]
    if len(blob) != HEADER_SIZE + body_len + DIGEST_SIZE:
        return None
    return bytes(blob[-DIGEST_SIZE:])


def unframe(blob: bytes, magic: bytes, what: str) -> Frame:
    """Check magic, length and digest; return the body as a zero-copy view. `what` prefixes messages."""
    n = len(blob)
    if n < HEADER_SIZE + DIGEST_SIZE:
        raise CorruptSnapshot(
            f"{what}: truncated ({n} bytes, a frame has at least {HEADER_SIZE + DIGEST_SIZE})"
        )
    got_magic, version, kind, reserved, body_len = _HEADER.unpack_from(blob)
    if got_magic != magic:
        raise CorruptSnapshot(f"{what}: bad magic {got_magic!r}, expected {magic!r}")
    expected = HEADER_SIZE + body_len + DIGEST_SIZE
    if n < expected:
        raise CorruptSnapshot(f"{what}: truncated ({n} bytes, the header declares {expected})")
    if n > expected:
        raise CorruptSnapshot(f"{what}: {n - expected} trailing bytes after the frame")
    view = memoryview(blob)
    digest = bytes(view[n - DIGEST_SIZE :])
    if hashlib.sha256(view[: n - DIGEST_SIZE]).digest() != digest:
        raise ChecksumError(f"{what}: SHA-256 mismatch (the bytes were changed after writing)")
    if reserved != 0:
        raise CorruptSnapshot(f"{what}: reserved header byte is {reserved}, expected 0")
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

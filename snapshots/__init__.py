"""Snapshots of session state: msgpack codec and LMDB store. Knows tensors and bytes, not models.

Names are imported lazily so that `snapshots.store` (bytes only) loads without torch: the CLI's
`ovq snapshots list` and the store's worker processes stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from snapshots.errors import (
    ChecksumError,
    CorruptSnapshot,
    FingerprintMismatch,
    SnapshotError,
    SnapshotNotFound,
    VersionError,
)

if TYPE_CHECKING:
    from snapshots.codec import CURRENT_VERSION, Snapshot, decode, encode, encode_parts, migration
    from snapshots.store import SnapshotInfo, SnapshotStore

_LAZY = {
    "CURRENT_VERSION": "snapshots.codec",
    "Snapshot": "snapshots.codec",
    "decode": "snapshots.codec",
    "encode": "snapshots.codec",
    "encode_parts": "snapshots.codec",
    "migration": "snapshots.codec",
    "SnapshotInfo": "snapshots.store",
    "SnapshotStore": "snapshots.store",
}

__all__ = [
    "CURRENT_VERSION",
    "ChecksumError",
    "CorruptSnapshot",
    "FingerprintMismatch",
    "Snapshot",
    "SnapshotError",
    "SnapshotInfo",
    "SnapshotNotFound",
    "SnapshotStore",
    "VersionError",
    "decode",
    "encode",
    "encode_parts",
    "migration",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'snapshots' has no attribute {name!r}")

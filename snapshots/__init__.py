"""Snapshots of session state: msgpack codec and LMDB store. Knows tensors and bytes, not models.

Names are imported lazily so that `snapshots.store` (bytes only) loads without torch: the CLI's
`ovq snapshots list` and the store's worker processes stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ovq.snapshots.errors import (
    ChecksumError,
    CorruptSnapshot,
    FingerprintMismatch,
    SnapshotError,
    SnapshotNotFound,
    VersionError,
)

if TYPE_CHECKING:
    from ovq.snapshots.codec import CURRENT_VERSION, Snapshot, decode, encode, encode_parts, migration
    from ovq.snapshots.store import SnapshotInfo, SnapshotStore

_LAZY = {
    "CURRENT_VERSION": "ovq.snapshots.codec",
    "Snapshot": "ovq.snapshots.codec",
    "decode": "ovq.snapshots.codec",
    "encode": "ovq.snapshots.codec",
    "encode_parts": "ovq.snapshots.codec",
    "migration": "ovq.snapshots.codec",
    "SnapshotInfo": "ovq.snapshots.store",
    "SnapshotStore": "ovq.snapshots.store",
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

"""Typed snapshot errors. Every failure to read a snapshot is a `SnapshotError` (a `ValueError`)."""

from __future__ import annotations


class SnapshotError(ValueError):
    """Base class: a snapshot could not be read, verified or found."""


class CorruptSnapshot(SnapshotError):
    """Truncated, malformed or structurally invalid bytes."""


class ChecksumError(SnapshotError):
    """Bytes that parse but do not match their checksum (or a blob that is missing)."""


class VersionError(SnapshotError):
    """A format version this code cannot read: newer than it knows, or with no migration path."""


class FingerprintMismatch(SnapshotError):
    """The snapshot was made by a different model (config, weights or tokenizer)."""


class SnapshotNotFound(SnapshotError, KeyError):
    """Unknown snapshot id or session name. Also a `KeyError`, so `except KeyError` works."""

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes.
        return str(self.args[0]) if self.args else ""

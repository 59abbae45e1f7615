"""The one error every loader raises for a bad checkpoint."""

from __future__ import annotations

from pathlib import Path


class PretrainedError(ValueError):
    """A checkpoint that cannot be loaded: `path` names the file, `cause` says why."""

    def __init__(self, path: str | Path, cause: str) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = Path(path)
        self.cause = cause

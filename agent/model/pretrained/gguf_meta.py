"""Typed access to a GGUF file's key/value metadata, refusing missing or mistyped keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ovq.agent.model.pretrained.errors import PretrainedError

_REQUIRED = object()


class GGUFMetadata:
    def __init__(self, path: Path, fields: dict[str, Any]) -> None:
        self.path = path
        self._fields = fields

    def __contains__(self, key: str) -> bool:
        return key in self._fields

    def get(self, key: str, kind: type, default: Any = _REQUIRED) -> Any:
        """The value at `key`, checked to be a `kind` (int, float, str, bool, list)."""
        if key not in self._fields:
            if default is _REQUIRED:
                raise PretrainedError(self.path, f"missing metadata key {key}")
            return default
        value = self._fields[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        # bool is an int subclass in Python; a flag is never a count.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise PretrainedError(
                self.path, f"metadata key {key} is {_short(value)}, expected {kind.__name__}"
            )
        return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

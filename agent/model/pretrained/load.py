"""load_pretrained: one entry point for both checkpoint formats."""

from __future__ import annotations

from pathlib import Path

from ovq.agent.model.pretrained.checkpoint import Checkpoint
from ovq.agent.model.pretrained.errors import PretrainedError
from ovq.agent.model.pretrained.gguf_file import load_gguf
from ovq.agent.model.pretrained.hf_dir import load_hf_dir


def load_pretrained(path: str | Path) -> Checkpoint:
    """A `.gguf` file or a Hugging Face directory (with config.json) -> Checkpoint."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return load_gguf(path)
    if path.is_dir() and (path / "config.json").is_file():
        return load_hf_dir(path)
    if not path.exists():
        raise PretrainedError(path, "no such file or directory")
    raise PretrainedError(path, "not a checkpoint (expected a .gguf file or a directory with config.json)")

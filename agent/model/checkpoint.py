"""A model directory: `model.safetensors` + `config.json` + `tokenizer.json` (+ `card.md`).

The fingerprint (SHA-256 over config, weights and tokenizer) identifies a model exactly; snapshots
carry it so that a state is never restored into a different model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ovq.agent.model.hybrid import HybridLM, ModelConfig
from ovq.agent.model.tokenizer import Tokenizer

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.json"
SHIPPED_DIR = Path(__file__).parents[1] / "shipped"  # models that ship as package data, by name
DEFAULT_MODEL_DIR = SHIPPED_DIR / "tiny"


def shipped_models() -> list[str]:
    return (
        sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / CONFIG).is_file())
        if SHIPPED_DIR.is_dir()
        else []
    )


def resolve_model_path(path: str | Path | None) -> Path:
    """None -> the default model; a shipped model's name (`tiny`) -> its directory, unless a directory
    of that name exists where the user stands (their path wins); anything else -> itself."""
    if path is None:
        return DEFAULT_MODEL_DIR
    if isinstance(path, str) and path in shipped_models() and not Path(path).exists():
        return SHIPPED_DIR / path
    return Path(path)


@dataclass
class LoadedModel:
    model: HybridLM
    tokenizer: Tokenizer
    path: Path
    fingerprint: str


def fingerprint(model: HybridLM, tokenizer: Tokenizer) -> str:
    """SHA-256 of the config JSON, every weight (name, dtype, shape, bytes) and the tokenizer."""
    h = hashlib.sha256()
    h.update(model.config.to_json().encode())
    for name, t in sorted(_weights(model).items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    h.update(tokenizer.fingerprint.encode())
    return h.hexdigest()


def save_model(model: HybridLM, tokenizer: Tokenizer, path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"model vocab {model.config.vocab_size} != tokenizer vocab {tokenizer.vocab_size}")
    save_file({k: v.detach().cpu().contiguous() for k, v in _weights(model).items()}, str(path / WEIGHTS))
    (path / CONFIG).write_text(json.dumps(json.loads(model.config.to_json()), indent=2) + "\n")
    tokenizer.save(path / TOKENIZER)
    return path


def load_model(
    path: str | Path | None = None, device: str | torch.device = "cpu", capacity: int | None = None
) -> LoadedModel:
    """Load a model directory (None: the shipped default model; a shipped model's name such as `tiny`
    for that one); raises FileNotFoundError /
    ValueError naming what is wrong.

    `capacity` replaces the OVQ dictionary size N of the saved config. The weights do not depend on
    N, so any N loads; a larger one keeps more slots for facts that arrive late in a long stream,
    at a larger state and slower prefill (the default model's card measures both). It is part of
    the config, so of the fingerprint: sessions saved at one N resume only at that N."""
    if path is None and not (DEFAULT_MODEL_DIR / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"no default model in this installation ({DEFAULT_MODEL_DIR} lacks {WEIGHTS}); "
            "pass a model directory from `ovq train`"
        )
    path = resolve_model_path(path)
    if not path.is_dir():
        known = ", ".join(shipped_models()) or "none"
        raise FileNotFoundError(f"no model directory at {path} (shipped models by name: {known})")
    for name in (WEIGHTS, CONFIG, TOKENIZER):
        if not (path / name).is_file():
            raise FileNotFoundError(f"model directory {path} lacks {name}")
    try:
        config = ModelConfig.from_json((path / CONFIG).read_text())
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise ValueError(f"{path / CONFIG} is not a valid model config: {e}") from e
    if capacity is not None:
        config = _with_capacity(config, capacity)
    tokenizer = Tokenizer.load(path / TOKENIZER)
    model = HybridLM(config)
    state = load_file(str(path / WEIGHTS))
    expected = _weights(model)
    if set(state) != set(expected):
        raise ValueError(
            f"{path / WEIGHTS} does not match its config: missing {sorted(set(expected) - set(state))[:5]}, "
            f"unexpected {sorted(set(state) - set(expected))[:5]}"
        )
    for name, t in state.items():
        if t.shape != expected[name].shape:
            raise ValueError(
                f"{path / WEIGHTS}: {name} has shape {tuple(t.shape)}, expected {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=True)
    model.eval().to(device)
    return LoadedModel(model, tokenizer, path, fingerprint(model, tokenizer))


def _with_capacity(config: ModelConfig, capacity: int) -> ModelConfig:
    if "ovq" not in config.kinds:
        raise ValueError(
            f"capacity={capacity}: this model has no OVQ layer (layers {','.join(config.kinds)})"
        )
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 2:
        raise ValueError(f"capacity must be an int >= 2 (OVQ dictionary slots per head), got {capacity!r}")
    return replace(config, ovq=replace(config.ovq, capacity=capacity))


def _weights(model: HybridLM) -> dict[str, torch.Tensor]:
    return model.state_dict()

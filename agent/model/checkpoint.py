"""Loading models: a hybrid model directory (`model.safetensors` + `config.json` + `tokenizer.json`
(+ `card.md`)), a pretrained checkpoint run with the retrofit, a directory of a tuned memory reading
(`memory_read.safetensors` + `memory_read.json`, naming its base checkpoint), or a model by name.

The fingerprint (SHA-256 over config, weights and tokenizer; for a pretrained model, over the model
config with its retrofit settings and the checkpoint's bytes) identifies a model exactly; snapshots
carry it so that a state is never restored into a different model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import blake3
import torch
from safetensors.torch import load_file, save_file

from ovq.agent.model.hybrid import HybridLM, ModelConfig
from ovq.agent.model.names import (  # noqa: F401  (re-exported: where a model is found)
    CONFIG,
    DEFAULT_MODEL,
    PRETRAINED,
    SHIPPED_DIR,
    TINY_MODEL_DIR,
    TOKENIZER,
    WEIGHTS,
    pretrained_file,
    resolve_model_path,
    shipped_models,
)
from ovq.agent.model.pretrained import PretrainedError, load_pretrained, lora
from ovq.agent.model.pretrained.chat_template import CHATML, TemplateChat, TemplateError
from ovq.agent.model.pretrained.lora import LORA, LoRAConfig
from ovq.agent.model.pretrained.memory_read import (
    ADAPTER,
    ADAPTER_CONFIG,
    MemoryReadParams,
    is_adapter_dir,
    read_adapter_config,
)
from ovq.agent.model.pretrained.retrofit import RetrofitConfig, parse_retrofit
from ovq.agent.model.pretrained.streaming import RetrofitLM
from ovq.agent.model.tokenizer import Tokenizer


@dataclass
class LoadedModel:
    model: HybridLM | RetrofitLM
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


def is_pretrained(path: Path) -> bool:
    """A GGUF file, or a Hugging Face directory (its config.json names a model_type)."""
    if path.is_file():
        return path.suffix.lower() == ".gguf"
    config = path / CONFIG
    if not config.is_file():
        return False
    try:
        return "model_type" in json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def load_model(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    capacity: int | None = None,
    retrofit: str | RetrofitConfig | None = None,
) -> LoadedModel:
    """Load a model: a directory from `ovq train`, a pretrained checkpoint (a GGUF file or a Hugging
    Face directory), or a model's name (`smollm2`, the default; `tiny`). Raises FileNotFoundError /
    ValueError naming what is wrong.

    `capacity` replaces the OVQ dictionary size N (of the hybrid's OVQ layers, or of a pretrained
    model's retrofit). The weights do not depend on N, so any N loads; a larger one keeps more slots
    for facts that arrive late in a long stream, at a larger state. `retrofit` (pretrained models
    only) is a preset name (memory, streaming, full) or `key=value,...` settings over the default.
    Both are part of the fingerprint: sessions saved at one setting resume only at that setting."""
    path = resolve_model_path(path)
    if is_adapter_dir(path):
        return _load_tuned(path, device, capacity, retrofit)
    if is_pretrained(path):
        return _load_pretrained(path, device, capacity, retrofit)
    if retrofit is not None:
        raise ValueError(f"retrofit settings apply to pretrained checkpoints; {path} is a hybrid model")
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


def _load_pretrained(
    path: Path, device, capacity: int | None, retrofit, source: str | None = None
) -> LoadedModel:
    """`source`: the checkpoint's source_digest when the caller has it (hashing 98 MB takes ~30 ms)."""
    config = retrofit if isinstance(retrofit, RetrofitConfig) else parse_retrofit(retrofit)
    if capacity is not None:
        _check_capacity(capacity)
        if config.kind != "memory":
            raise ValueError(f"capacity={capacity}: the {config.kind!r} retrofit has no memory")
        config = config.with_(capacity=capacity)
    try:
        ckpt = load_pretrained(path)
        eos = ckpt.special_token(ckpt.config.eos_ids[0])
        chat = TemplateChat(ckpt.chat_template or CHATML, ckpt.special_token(ckpt.config.bos_id), eos)
    except TemplateError as e:
        raise ValueError(f"{path}: {e}") from None
    except PretrainedError as e:
        raise ValueError(str(e)) from None
    stop = tuple(ckpt.special_token(i) for i in ckpt.config.eos_ids)
    tokenizer = Tokenizer(ckpt.tokenizer, specials=(), stop=stop)
    model = RetrofitLM.from_checkpoint(ckpt, config, chat=chat).to(device)
    digest = hashlib.sha256(model.config.to_json().encode())
    digest.update((source or source_digest(path)).encode())
    return LoadedModel(model, tokenizer, path, digest.hexdigest())


def _load_tuned(path: Path, device, capacity: int | None, retrofit) -> LoadedModel:
    """A directory from `ovq train --init <pretrained>`: its base checkpoint with the retrofit it was
    tuned for (or `retrofit`, when given), its LoRA merged into the weights (when it has one) and its
    learned memory reading. A retrofit that keeps no memory (full, streaming) leaves nothing to read:
    that is the base model as it is, with its LoRA."""
    meta = read_adapter_config(path)
    base = resolve_model_path(meta["base"])
    if not base.exists():
        raise FileNotFoundError(f"{path} was tuned from {meta['base']}, which is not there")
    source = source_digest(base)
    if meta.get("base_digest") not in (None, source):
        raise ValueError(f"{path} was tuned from another {meta['base']} (its files differ from {base})")
    if retrofit is None:
        try:
            retrofit = RetrofitConfig.from_dict(meta["retrofit"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path / ADAPTER_CONFIG}: bad retrofit settings: {e}") from None
    loaded = _load_pretrained(base, device, capacity, retrofit, source)
    digest = hashlib.sha256(loaded.fingerprint.encode())
    if meta.get("lora") is not None:  # new weights, whatever the retrofit: merged once, run at full speed
        try:
            lora_config = LoRAConfig.from_dict(meta["lora"])
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path / ADAPTER_CONFIG}: bad LoRA settings: {e}") from None
        tensors = lora.load_tensors(path / LORA, loaded.model.llama, lora_config)
        lora.merge(loaded.model.llama, lora_config, tensors)
        digest.update((path / LORA).read_bytes())
        loaded = LoadedModel(loaded.model, loaded.tokenizer, path, digest.hexdigest())
    if loaded.model.config.retrofit.kind != "memory":
        return loaded  # no memory to read: the base model (with its LoRA, if any)
    c = loaded.model.config.llama
    params = MemoryReadParams.load(path / ADAPTER, c.n_layers, c.n_heads, c.n_kv_heads)
    loaded.model.attach_memory_read(params)
    digest.update((path / ADAPTER).read_bytes())
    return LoadedModel(loaded.model, loaded.tokenizer, path, digest.hexdigest())


def source_digest(path: Path) -> str:
    """BLAKE3 of a checkpoint's files (weights, tokenizer and template all live in them)."""
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.iterdir() if p.is_file() and p.name != "README.md")
    )
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    for f in files:
        h.update(f.name.encode() + b"\0")
        h.update_mmap(f)
    return h.hexdigest()


def _check_capacity(capacity) -> None:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 2:
        raise ValueError(f"capacity must be an int >= 2 (OVQ dictionary slots per head), got {capacity!r}")


def _with_capacity(config: ModelConfig, capacity: int) -> ModelConfig:
    if "ovq" not in config.kinds:
        raise ValueError(
            f"capacity={capacity}: this model has no OVQ layer (layers {','.join(config.kinds)})"
        )
    _check_capacity(capacity)
    return replace(config, ovq=replace(config.ovq, capacity=capacity))


def _weights(model: HybridLM) -> dict[str, torch.Tensor]:
    return model.state_dict()

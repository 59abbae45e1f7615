"""Load a Hugging Face model directory (config.json, safetensors, tokenizer.json) into a Checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from tokenizers import Tokenizer

from ovq.agent.model.pretrained.checkpoint import (
    Checkpoint,
    check_template,
    check_tensor_table,
    check_tokenizer,
)
from ovq.agent.model.pretrained.config import ARCHS, Llama3RopeScaling, LlamaConfig
from ovq.agent.model.pretrained.errors import PretrainedError

_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")
# Buffers old Llama conversions saved next to the weights; recomputed from the config.
_DERIVED_SUFFIX = ".rotary_emb.inv_freq"


def load_hf_dir(path: str | Path) -> Checkpoint:
    """Read and check a HF directory; raises PretrainedError naming the file and the cause."""
    path = Path(path)
    if not path.is_dir():
        raise PretrainedError(path, "not a directory")
    raw = _read_json(path / "config.json")
    tokenizer_config = _read_json(path / "tokenizer_config.json", optional=True)
    generation_config = _read_json(path / "generation_config.json", optional=True)
    tokenizer = _tokenizer(path / "tokenizer.json")
    config = _config(path / "config.json", raw, tokenizer_config, generation_config, tokenizer)
    check_tokenizer(path / "tokenizer.json", tokenizer, config.vocab_size, exact=False)
    template = _chat_template(path, tokenizer_config)

    files, table_path = _weight_files(path)
    shapes = _tensor_table(files, config)
    check_tensor_table(table_path, config, shapes)
    weights = {}
    for file, names in _by_file(files, shapes).items():
        try:
            with safe_open(file, framework="pt") as f:
                for name in names:
                    weights[name] = f.get_tensor(name).to(torch.float32, copy=True).contiguous()
        except Exception as err:
            raise PretrainedError(file, f"cannot read tensor data ({type(err).__name__}: {err})") from None
    return Checkpoint(
        config=config, weights=weights, tokenizer=tokenizer, chat_template=template, source=path
    )


def _read_json(file: Path, optional: bool = False) -> dict[str, Any]:
    if not file.is_file():
        if optional:
            return {}
        raise PretrainedError(file, "missing file")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PretrainedError(file, f"unreadable JSON ({err})") from None
    if not isinstance(data, dict):
        raise PretrainedError(file, "expected a JSON object")
    return data


def _tokenizer(file: Path) -> Tokenizer:
    if not file.is_file():
        raise PretrainedError(file, "missing file (only fast tokenizers, tokenizer.json, are supported)")
    try:
        return Tokenizer.from_file(str(file))
    except Exception as err:
        raise PretrainedError(file, f"unreadable tokenizer ({err})") from None


def _config(
    file: Path, raw: dict, tokenizer_config: dict, generation_config: dict, tokenizer: Tokenizer
) -> LlamaConfig:
    arch = raw.get("model_type")
    if arch not in ARCHS:
        raise PretrainedError(file, f'unsupported model_type "{arch}" (supported: {", ".join(ARCHS)})')

    def need(key: str) -> Any:
        if key not in raw:
            raise PretrainedError(file, f"missing key {key}")
        return raw[key]

    # Variants of the family that this forward pass does not compute: refuse, never approximate.
    if raw.get("hidden_act", "silu") != "silu":
        raise PretrainedError(file, f'hidden_act "{raw["hidden_act"]}" is not supported (only silu)')
    if raw.get("mlp_bias"):
        raise PretrainedError(file, "mlp_bias=true is not supported")
    if arch == "llama" and raw.get("attention_bias"):
        raise PretrainedError(file, "attention_bias=true is not supported for llama (it adds an o_proj bias)")
    if raw.get("use_sliding_window"):
        raise PretrainedError(file, "use_sliding_window=true is not supported (full attention only)")

    d_model, n_heads = need("hidden_size"), need("num_attention_heads")
    theta, scaling = _rope(file, raw)
    try:
        return LlamaConfig(
            arch=arch,
            vocab_size=need("vocab_size"),
            d_model=d_model,
            n_layers=need("num_hidden_layers"),
            n_heads=n_heads,
            n_kv_heads=raw.get("num_key_value_heads") or n_heads,
            head_dim=raw.get("head_dim") or d_model // n_heads,
            d_ff=need("intermediate_size"),
            rope_theta=theta,
            rope_scaling=scaling,
            rms_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_context=need("max_position_embeddings"),
            tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
            attention_bias=arch == "qwen2",  # Qwen2 always has q/k/v biases
            bos_id=_bos_id(raw, tokenizer_config, tokenizer),
            eos_ids=_eos_ids(raw, tokenizer_config, generation_config, tokenizer),
        )
    except (TypeError, ValueError, ZeroDivisionError) as err:
        raise PretrainedError(file, f"bad model config: {err}") from None


def _rope(file: Path, raw: dict) -> tuple[float, Llama3RopeScaling | None]:
    # transformers < 5 writes rope_theta + rope_scaling; >= 5 one rope_parameters dict.
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise PretrainedError(file, f'rope scaling type "{kind}" is not supported (only llama3)')
    try:
        return theta, Llama3RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise PretrainedError(file, f"bad llama3 rope scaling ({type(err).__name__}: {err})") from None


def _token_id(tokenizer: Tokenizer, token: Any) -> int | None:
    if isinstance(token, dict):  # older tokenizer_config.json stores AddedToken objects
        token = token.get("content")
    return tokenizer.token_to_id(token) if isinstance(token, str) else None


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def _bos_id(raw: dict, tokenizer_config: dict, tokenizer: Tokenizer) -> int | None:
    if raw.get("bos_token_id") is not None:
        return raw["bos_token_id"]
    return _token_id(tokenizer, tokenizer_config.get("bos_token"))


def _eos_ids(
    raw: dict, tokenizer_config: dict, generation_config: dict, tokenizer: Tokenizer
) -> tuple[int, ...]:
    # The tokenizer's eos first (the chat template's eos_token), then every id the configs
    # name: an instruct model may end a turn with any of them.
    ids: list[int] = []
    for i in [
        _token_id(tokenizer, tokenizer_config.get("eos_token")),
        *_ids(raw.get("eos_token_id")),
        *_ids(generation_config.get("eos_token_id")),
    ]:
        if i is not None and i not in ids:
            ids.append(i)
    return tuple(ids)


def _chat_template(path: Path, tokenizer_config: dict) -> str | None:
    # transformers >= 4.43 may save the template as its own file.
    jinja_file = path / "chat_template.jinja"
    if jinja_file.is_file():
        template = jinja_file.read_text(encoding="utf-8")
        check_template(jinja_file, template)
        return template
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise PretrainedError(
            path / "tokenizer_config.json", "chat_template is neither a string nor named templates"
        )
    check_template(path / "tokenizer_config.json", template)
    return template


def _weight_files(path: Path) -> tuple[dict[str, Path], Path]:
    """HF tensor name -> the safetensors file holding it, and the file to blame for the table."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise PretrainedError(index, "missing weight_map")
        files = {name: path / file for name, file in weight_map.items()}
        for file in set(files.values()):
            if not file.is_file():
                raise PretrainedError(file, "missing shard (listed in model.safetensors.index.json)")
        return files, index
    single = path / "model.safetensors"
    if not single.is_file():
        other = (
            "pytorch_model.bin is a pickle checkpoint; only safetensors is loaded"
            if (path / "pytorch_model.bin").exists()
            else "missing file"
        )
        raise PretrainedError(single, other)
    try:
        with safe_open(single, framework="pt") as f:
            return {name: single for name in f.keys()}, single
    except Exception as err:
        raise PretrainedError(single, f"unreadable safetensors ({type(err).__name__}: {err})") from None


def _tensor_table(files: dict[str, Path], config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> shape, from the safetensors headers only; derived and duplicate tensors dropped."""
    shapes = {}
    for file, names in _by_file(files, files.keys()).items():
        try:
            with safe_open(file, framework="pt") as f:
                present = set(f.keys())
                for name in names:
                    if name not in present:
                        raise PretrainedError(file, f"missing tensor {name} (listed in the index)")
                    piece = f.get_slice(name)
                    if piece.get_dtype() not in _FLOAT_DTYPES:
                        raise PretrainedError(file, f"tensor {name} has non-float dtype {piece.get_dtype()}")
                    shapes[name] = tuple(piece.get_shape())
        except PretrainedError:
            raise
        except Exception as err:
            raise PretrainedError(file, f"unreadable safetensors ({type(err).__name__}: {err})") from None
    for name in [n for n in shapes if n.endswith(_DERIVED_SUFFIX)]:
        del shapes[name]
    if config.tie_embeddings:
        # Some tied checkpoints also save the head; HF ties it to the embedding and ignores it.
        shapes.pop("lm_head.weight", None)
    return shapes


def _by_file(files: dict[str, Path], names: Iterable[str]) -> dict[Path, list[str]]:
    groups: dict[Path, list[str]] = {}
    for name in names:
        groups.setdefault(files[name], []).append(name)
    return groups

"""Load a llama.cpp GGUF file (llama / qwen2 architectures) into a float32 Checkpoint."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

from ovq.agent.model.pretrained.checkpoint import (
    Checkpoint,
    check_template,
    check_tensor_table,
    check_tokenizer,
)
from ovq.agent.model.pretrained.config import ARCHS, LlamaConfig, RopeFreqFactors
from ovq.agent.model.pretrained.errors import PretrainedError
from ovq.agent.model.pretrained.gguf_meta import GGUFMetadata
from ovq.agent.model.pretrained.gguf_read import GGUFContents, TensorInfo, read_gguf
from ovq.agent.model.pretrained.gguf_tokenizer import tokenizer_from_gguf

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_BLOCK = re.compile(r"blk\.(\d+)\.(.+)")
ROPE_FREQS = "rope_freqs.weight"  # llama.cpp's Llama-3.1 rope scaling, not a weight


def load_gguf(path: str | Path) -> Checkpoint:
    """Read, check and dequantize a GGUF file; raises PretrainedError naming the file and the cause."""
    path = Path(path)
    contents = _open(path)
    meta = GGUFMetadata(path, contents.fields)
    arch = meta.get("general.architecture", str)
    if arch not in ARCHS:
        raise PretrainedError(
            path, f'unsupported architecture "{arch}" (general.architecture; supported: {", ".join(ARCHS)})'
        )

    tensors = {t.name: t for t in contents.tensors}
    hf_tensors = {_hf_name(path, name): t for name, t in tensors.items() if name != ROPE_FREQS}
    for t in tensors.values():
        if not _dequantizable(t.tensor_type):
            raise PretrainedError(path, f"tensor {t.name} has unsupported type {t.tensor_type.name}")

    config = _config(path, meta, arch, tensors)
    # GGUF dims run innermost first (ne0 = input features); HF shapes are the reverse.
    check_tensor_table(path, config, {name: tuple(reversed(t.shape)) for name, t in hf_tensors.items()})
    tokenizer = tokenizer_from_gguf(path, meta)
    check_tokenizer(path, tokenizer, config.vocab_size, exact=True)
    template = meta.get("tokenizer.chat_template", str, None)
    check_template(path, template)

    weights = {name: _dequantize(path, t) for name, t in hf_tensors.items()}
    if arch == "llama":
        for name in weights:
            if ".q_proj." in name:
                weights[name] = _unpermute(weights[name], config.n_heads)
            elif ".k_proj." in name:
                weights[name] = _unpermute(weights[name], config.n_kv_heads)
    return Checkpoint(
        config=config, weights=weights, tokenizer=tokenizer, chat_template=template, source=path
    )


def _open(path: Path) -> GGUFContents:
    if not path.is_file():
        raise PretrainedError(path, "no such file")
    try:
        return read_gguf(path)
    except ValueError as err:  # read_gguf names the damage
        raise PretrainedError(path, str(err)) from None


def _hf_name(path: Path, name: str) -> str:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK.fullmatch(name)
    if m is None or m.group(2) not in _BLOCK_NAMES:
        raise PretrainedError(path, f"unexpected tensor {name}")
    return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}"


def _config(path: Path, meta: GGUFMetadata, arch: str, tensors: dict[str, TensorInfo]) -> LlamaConfig:
    p = f"{arch}."  # model keys are prefixed by the architecture name
    if "token_embd.weight" not in tensors:
        raise PretrainedError(path, "missing tensor token_embd.weight")
    vocab_size = int(tensors["token_embd.weight"].shape[1])  # ne1 = rows
    stated_vocab = meta.get(p + "vocab_size", int, vocab_size)
    if stated_vocab != vocab_size:
        raise PretrainedError(
            path, f"{p}vocab_size = {stated_vocab} but token_embd.weight has {vocab_size} rows"
        )
    d_model, n_heads = meta.get(p + "embedding_length", int), meta.get(p + "attention.head_count", int)
    head_dim = meta.get(p + "attention.key_length", int, d_model // n_heads if n_heads > 0 else 0)
    if meta.get(p + "attention.value_length", int, head_dim) != head_dim:
        raise PretrainedError(path, f"{p}attention.value_length differs from key_length (not supported)")
    if meta.get(p + "rope.dimension_count", int, head_dim) != head_dim:
        raise PretrainedError(
            path, f"partial RoPE ({p}rope.dimension_count != head_dim {head_dim}) is not supported"
        )
    scaling_type = meta.get(p + "rope.scaling.type", str, "none")
    if scaling_type != "none":
        raise PretrainedError(path, f'rope scaling type "{scaling_type}" is not supported')
    rope_scaling = None
    if ROPE_FREQS in tensors:
        factors = _dequantize(path, tensors[ROPE_FREQS]).reshape(-1)
        rope_scaling = RopeFreqFactors(tuple(float(f) for f in factors))

    # Llama 3 ends a turn with eot (<|eot_id|>) and tool calls with eom: all of them stop.
    eos_ids: list[int] = []
    for name in ("eos_token_id", "eot_token_id", "eom_token_id"):
        token_id = meta.get(f"tokenizer.ggml.{name}", int, None)
        if token_id is not None and token_id not in eos_ids:
            eos_ids.append(token_id)
    try:
        return LlamaConfig(
            arch=arch,
            vocab_size=vocab_size,
            d_model=d_model,
            n_layers=meta.get(p + "block_count", int),
            n_heads=n_heads,
            n_kv_heads=meta.get(p + "attention.head_count_kv", int, n_heads),
            head_dim=head_dim,
            d_ff=meta.get(p + "feed_forward_length", int),
            rope_theta=meta.get(p + "rope.freq_base", float, 10000.0),
            rope_scaling=rope_scaling,
            rms_eps=meta.get(p + "attention.layer_norm_rms_epsilon", float),
            max_context=meta.get(p + "context_length", int),
            tie_embeddings="output.weight" not in tensors,
            attention_bias="blk.0.attn_q.bias" in tensors,
            bos_id=meta.get("tokenizer.ggml.bos_token_id", int, None),
            eos_ids=tuple(eos_ids),
        )
    except ValueError as err:
        raise PretrainedError(path, f"bad model config: {err}") from None


@cache
def _dequantizable(qtype: GGMLQuantizationType) -> bool:
    """Whether the installed gguf package can dequantize `qtype` (probed on one zero block)."""
    _, type_size = GGML_QUANT_SIZES[qtype]
    try:
        dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
    except Exception:  # a probe, not error handling: the package raises NotImplementedError for most
        # types it lacks (Q8_1, Q8_K, F64, ...) and other errors for integer types; any failure on a
        # zero block means "not dequantizable here", which the caller reports naming tensor and type
        return False
    return True


def _dequantize(path: Path, t: TensorInfo) -> torch.Tensor:
    try:
        values = dequantize(t.data, t.tensor_type)
    except Exception as err:
        raise PretrainedError(
            path, f"tensor {t.name} ({t.tensor_type.name}) cannot be dequantized ({err})"
        ) from None
    shape = tuple(reversed(t.shape))  # (out, in) for matrices
    # Copy out of the memory map: the Checkpoint must not depend on the file staying open.
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row order: back to HF's rotate_half halves.

    llama.cpp rotates adjacent pairs (x0, x1), HF rotates halves (x_i, x_{i+D/2}); its converter
    therefore interleaves the two halves of each head's rows. Rows per head: (2, D/2) -> (D/2, 2).
    """
    rows = w.shape[0]
    # (Hq*D, C) -> (H, D/2, 2, C) -> (H, 2, D/2, C) -> (H*D, C); a bias has no C.
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape).contiguous()

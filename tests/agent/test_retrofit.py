"""The retrofit: a pretrained model's attention bounded to sinks + window + OVQ dictionary.

Checked against a per-query reference written from the rules in retrofit.py's docstring; inside the
window the retrofit is the base model; any split of the stream equals one call; the state is bounded."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ovq.agent.model.pretrained import LlamaConfig, LlamaLM
from ovq.agent.model.pretrained.retrofit import (
    LayerPlan,
    RetrofitConfig,
    WindowMemoryState,
    window_memory_attention,
)
from ovq.agent.model.pretrained.streaming import RetrofitLM, RetrofitModelConfig
from ovq.memory.config import schedule_size

V = 97


def tiny_llama(seed: int = 0, context: int = 512) -> LlamaLM:
    config = LlamaConfig(
        arch="llama", vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, d_ff=64,
        rope_theta=10000.0, rope_scaling=None, rms_eps=1e-5, max_context=context, tie_embeddings=True,
        attention_bias=False, bos_id=None, eos_ids=(1,),
    )  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaLM(config).double().eval()
    for p in model.parameters():  # RMSNorm gains away from 1, so the test sees them
        p.data.add_(0.1 * torch.randn_like(p))
    return model


def retrofit(llama: LlamaLM, **settings) -> RetrofitLM:
    defaults = {"sinks": 2, "window": 8, "chunk": 4, "capacity": 6}
    return RetrofitLM(
        llama, RetrofitModelConfig(llama.config, RetrofitConfig(**(defaults | settings)), "float32")
    )


def run(model: RetrofitLM, tokens: torch.Tensor, bounds=None):
    state = model.init_state(tokens.shape[0], torch.float64)
    bounds = bounds or [0, tokens.shape[1]]
    outs = []
    for a, b in zip(bounds, bounds[1:]):
        logits, state = model(tokens[:, a:b], state)
        outs.append(logits)
    return torch.cat(outs, 1), state


def tokens_(T: int, B: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# -- inside the window the retrofit is the base model --------------------------------------------


def test_inside_the_window_every_kind_is_the_base_model():
    llama = tiny_llama()
    x = tokens_(2 + 8, B=2)  # S + W tokens: nothing has left the window
    base = llama(x)  # float32 logits of a float64 forward
    outs = [run(retrofit(llama, kind=kind), x)[0] for kind in ("memory", "window", "full")]
    for out in outs:
        torch.testing.assert_close(out.float(), base, rtol=0, atol=1e-5)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])  # one code path


def test_full_kind_is_the_base_model_up_to_the_context_and_refuses_beyond():
    llama = tiny_llama(context=64)
    x = tokens_(64)
    torch.testing.assert_close(run(retrofit(llama, kind="full"), x)[0].float(), llama(x), rtol=0, atol=1e-5)
    model = retrofit(llama, kind="full")
    state = model.init_state(1, torch.float64)
    model(x, state)
    with pytest.raises(ValueError, match="at most 64 tokens"):
        model(tokens_(1), state)


# -- the layer op against a per-query reference --------------------------------------------------


def rot(x, pos, inv_freq):
    """RoPE by hand: rotate pairs (x_i, x_{i+D/2}) by pos * inv_freq_i."""
    D = x.shape[-1]
    out = torch.empty_like(x)
    for i in range(D // 2):
        a = pos * float(inv_freq[i])
        c, s = math.cos(a), math.sin(a)
        out[..., i] = x[..., i] * c - x[..., i + D // 2] * s
        out[..., i + D // 2] = x[..., i + D // 2] * c + x[..., i] * s
    return out


def reference(q, k, v, S, W, L, kind, distance, inv_freq):
    """Each query on its own: sinks at cache positions, the exact window at true positions, and (memory,
    linear schedule, N >= every folded token) every folded token as its own centroid (count 1), read
    un-rotated from `distance` positions back; a window layer forgets what left the window."""
    B, Hq, T, D = q.shape
    G = Hq // k.shape[1]
    out = torch.zeros_like(q)
    for t in range(T):
        F = max(0, (t - S - W + 1) // L)  # chunks that left the window: folded, or (window) dropped
        lo = S + F * L
        for h in range(Hq):
            g = h // G
            logits, vals = [], []
            for j in range(min(S, t + 1)):  # sinks, read from the query's position in the cache
                logits.append(rot(q[:, h, t], t - (lo - S), inv_freq) @ rot(k[:, g, j], j, inv_freq).T)
                vals.append(v[:, g, j])
            for p in range(S, S + F * L if kind == "memory" else S):  # centroids of one token, log 1 = 0
                logits.append(rot(q[:, h, t], distance, inv_freq) @ k[:, g, p].T)
                vals.append(v[:, g, p])
            for p in range(lo, t + 1):
                logits.append(rot(q[:, h, t], t, inv_freq) @ rot(k[:, g, p], p, inv_freq).T)
                vals.append(v[:, g, p])
            s = torch.stack([x.diagonal() if x.dim() == 2 else x for x in logits], -1) / math.sqrt(D)
            w = torch.softmax(s, -1)  # [B, n]
            out[:, h, t] = torch.einsum("bn,nbd->bd", w, torch.stack(vals))
    return out


def test_tokens_kept_exactly_are_read_beside_their_centroids():
    # exact = L with room for every folded token: each is read twice, as its own centroid (linear
    # schedule, N >= tokens) and as an exact copy; the reference given every folded key and value
    # twice must agree, and the store must hold exactly the folded tokens
    S, W, L, T, D = 2, 6, 3, 31, 8
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, n, T, D, generator=g, dtype=torch.float64) for n in (4, 2, 2))
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    config = RetrofitConfig(
        sinks=S,
        window=W,
        chunk=L,
        capacity=64,
        schedule="linear",
        read_distance=5,
        exact=L,
        exact_capacity=64,
    )
    (plan,) = LayerPlan.resolve(config, 1, context=4096)
    state = WindowMemoryState.allocate(plan, 1, 2, D, torch.float64, "cpu")
    out, state = window_memory_attention(q, k, v, state, plan, inv_freq)
    folded = state.folded
    assert state.exact_len == folded > 0
    for got, want in ((state.k_exact, k), (state.v_exact, v)):  # every folded token, un-rotated, once
        d = torch.cdist(got[:, :, :folded], want[:, :, S : S + folded])
        assert (d.amin(-1) < 1e-12).all() and (d.argmin(-1).sort(-1).values == torch.arange(folded)).all()
    assert (state.exact_score[:, :, :folded] > 0).all()
    # a folded token read twice weighs twice in the softmax: its logit raised by log 2
    want = torch.zeros_like(q)
    for t in range(T):
        F = max(0, (t - S - W + 1) // L)
        lo = S + F * L
        for h in range(4):
            gk = h // 2
            logits, vals = [], []
            for j in range(min(S, t + 1)):
                logits.append(rot(q[0, h, t], t - (lo - S), inv_freq) @ rot(k[0, gk, j], j, inv_freq))
                vals.append(v[0, gk, j])
            for p in range(S, S + F * L):
                logits.append(rot(q[0, h, t], 5, inv_freq) @ k[0, gk, p] + math.sqrt(D) * math.log(2))
                vals.append(v[0, gk, p])
            for p in range(lo, t + 1):
                logits.append(rot(q[0, h, t], t, inv_freq) @ rot(k[0, gk, p], p, inv_freq))
                vals.append(v[0, gk, p])
            w = torch.softmax(torch.stack(logits) / math.sqrt(D), -1)
            want[0, h, t] = w @ torch.stack(vals)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-10)


def test_the_exact_store_keeps_the_most_attended_when_full():
    model = retrofit(tiny_llama(), exact=1, exact_capacity=3)
    state = model.init_state(1, torch.float64)
    seen = []  # each fold's best score per KV head, recorded before the store decides
    import ovq.agent.model.pretrained.retrofit as R

    real = R._keep_exact

    def spy(st, plan, chunk_k, chunk_v):
        seen.append(st.attn[:, :, : plan.L].amax(-1).clone())  # [B, Hkv]
        real(st, plan, chunk_k, chunk_v)

    R._keep_exact = spy
    try:
        _, state = model(tokens_(80), state)
    finally:
        R._keep_exact = real
    layer0 = seen[: len(seen) // 2]  # one forward call: layer 0 takes every token (and fold), then layer 1
    best = torch.stack(layer0, -1).topk(3, dim=-1).values.sort(-1).values  # [B, Hkv, 3]
    kept = state.layers[0].exact_score.sort(-1).values
    torch.testing.assert_close(kept, best, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["memory", "window"])
def test_the_layer_op_matches_the_per_query_reference(kind):
    S, W, L, T, D = 2, 6, 3, 31, 8
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, T, D, generator=g, dtype=torch.float64) for n in (4, 2, 2))
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    config = RetrofitConfig(
        kind=kind, sinks=S, window=W, chunk=L, capacity=64, schedule="linear", read_distance=5
    )
    (plan,) = LayerPlan.resolve(config, 1, context=4096)
    state = WindowMemoryState.allocate(plan, 2, 2, D, torch.float64, "cpu")
    out, state = window_memory_attention(q, k, v, state, plan, inv_freq)
    torch.testing.assert_close(out, reference(q, k, v, S, W, L, kind, 5, inv_freq), rtol=0, atol=1e-10)
    if kind == "memory":  # linear schedule, room for all: every folded token is its own centroid
        folded = state.folded
        assert folded == L * ((T - S - W + 1) // L) and state.size == folded
        assert torch.equal(state.counts[:, :, :folded], torch.ones(2, 2, folded, dtype=torch.int64))
        # seeds open slots in order of least coverage: the slots hold the folded tokens in some order
        for got, want in ((state.keys, k), (state.values, v)):
            d = torch.cdist(got[:, :, :folded], want[:, :, S : S + folded])  # [B, Hkv, slots, tokens]
            assert (d.amin(-1) < 1e-12).all() and (d.argmin(-1).sort(-1).values == torch.arange(folded)).all()


# -- streaming ------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings_", [{"kind": "memory"}, {"kind": "window"}, {"key_space": "post_rope"},
                                       {"memory_layers": "1", "count_cap": 1.0},
                                       {"exact": 2, "exact_capacity": 5}])  # fmt: skip
def test_chunked_prefill_then_token_decode_equals_one_forward(settings_):
    model = retrofit(tiny_llama(), **settings_)
    x = tokens_(70, B=2)
    whole, whole_state = run(model, x)
    split, state = run(model, x, [0, 17, 18, 33, *range(34, 71)])
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-10)
    assert state.pos == whole_state.pos == 70
    for a, b in zip(state.layers, whole_state.layers):
        assert a.scalars() == b.scalars() and torch.equal(a.counts, b.counts)
        torch.testing.assert_close(a.keys, b.keys, rtol=0, atol=1e-10)
        if a.k_exact is not None:  # the same tokens chosen, whatever the split
            assert a.exact_len == 5  # 2 per chunk, 9 chunks folded: full, the most attended kept
            torch.testing.assert_close(a.k_exact, b.k_exact, rtol=0, atol=1e-10)
            torch.testing.assert_close(a.exact_score, b.exact_score, rtol=1e-6, atol=0)  # float32 sums


@settings(max_examples=10, deadline=None)
@given(cuts=st.lists(st.integers(1, 59), max_size=6))
def test_any_split_of_the_stream_gives_the_same_logits(cuts):
    model = retrofit(tiny_llama(seed=2))
    x = tokens_(60, seed=3)
    whole, _ = run(model, x)
    split, _ = run(model, x, sorted({0, 60, *cuts}))
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-10)


def test_the_state_is_bounded_and_counts_add_up():
    model = retrofit(tiny_llama())
    state = model.init_state(1, torch.float64)
    nbytes = state.nbytes
    for n in (5, 40, 200):
        _, state = model(tokens_(n, seed=n), state)
        assert state.nbytes == nbytes
    for s in state.layers:  # plateau growth, every folded token counted once per KV head
        assert s.folded == 4 * ((245 - 2 - 8 + 1) // 4)
        assert s.size == schedule_size(s.folded, 6, "plateau") == 5  # plateau: floor(236 * 6 / 242)
        assert int(s.counts.sum()) == s.folded * 2
        model.validate_layer_state(0, s)


def test_a_model_with_memory_in_some_layers_only():
    model = retrofit(tiny_llama(), memory_layers="every:2")
    assert model.config.kinds == ["memory", "window"]
    _, state = run(model, tokens_(40))
    assert state.layers[0].size > 0 and state.layers[1].keys.numel() == 0


@pytest.mark.parametrize(
    "bad, says",
    [
        ({"kind": "dense"}, "kind must be one of"),
        ({"window": 0}, "window must be an int >= 1"),
        ({"capacity": 1}, "capacity >= 2"),
        ({"memory_layers": "every:0"}, "memory_layers must be"),
        ({"memory_layers": "a,b"}, "memory_layers must be"),
        ({"key_space": "polar"}, "key_space must be one of"),
        ({"schedule": "fast"}, "schedule must be one of"),
        ({"exact": 300}, r"exact must be an int in \[0, chunk=256\]"),
        ({"exact": 8, "exact_capacity": 4}, "exact_capacity must be an int >= exact"),
    ],
)
def test_bad_retrofit_settings_are_refused_by_name(bad, says):
    with pytest.raises(ValueError, match=says):
        RetrofitConfig(**bad)


def test_exact_tokens_change_the_fingerprint_only_when_on():
    # settings added after models shipped stay out of the config at their off value: the fingerprint,
    # and so every session saved before they existed, is unchanged
    assert "exact" not in RetrofitConfig().to_dict() and "exact_capacity" not in RetrofitConfig().to_dict()
    on = RetrofitConfig(exact=4).to_dict()
    assert (on["exact"], on["exact_capacity"]) == (4, 256)
    assert RetrofitConfig.from_dict(on) == RetrofitConfig(exact=4)
    assert RetrofitConfig.from_dict(RetrofitConfig().to_dict()) == RetrofitConfig()


def test_memory_layers_beyond_the_model_are_refused():
    llama = tiny_llama()
    with pytest.raises(ValueError, match="names layer 5; the model has 2"):
        RetrofitModelConfig(llama.config, RetrofitConfig(memory_layers="0,5"))

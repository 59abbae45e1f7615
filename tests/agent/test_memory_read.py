"""The memory's learned reading (memory_read.py): zero is the hand-written rule, each parameter does what
it says against independent references, gradients are exact, and adapter files are checked."""

from __future__ import annotations

import math

import pytest
import torch

from ovq.agent.model.pretrained.memory_read import MemoryReadParams
from ovq.agent.model.pretrained.retrofit import RetrofitConfig
from ovq.agent.model.pretrained.streaming import RetrofitLM
from tests.agent.test_retrofit import retrofit, run, tiny_llama, tokens_


def with_read(model: RetrofitLM, seed: int = 0, size: float = 0.5) -> MemoryReadParams:
    c = model.config.llama
    params = MemoryReadParams(c.n_layers, c.n_heads, c.n_kv_heads).double()
    g = torch.Generator().manual_seed(seed)
    for p in params.parameters():
        p.data.copy_(size * torch.randn(p.shape, generator=g, dtype=torch.float64))
    model.attach_memory_read(params)
    return params


def test_zero_parameters_are_the_hand_written_rule_exactly():
    llama = tiny_llama()
    x = tokens_(60)
    plain = run(retrofit(llama), x)[0]
    model = retrofit(llama)
    c = llama.config
    model.attach_memory_read(MemoryReadParams(c.n_layers, c.n_heads, c.n_kv_heads).double())
    assert torch.equal(run(model, x)[0], plain)


def test_gain_is_the_count_bias_and_inside_the_window_nothing_changes():
    llama = tiny_llama()
    x = tokens_(60)
    model = retrofit(llama, capacity=3)  # few slots: counts > 1, so the gain matters
    params = with_read(model)
    params.log_scale.data.zero_(), params.bias.data.zero_()
    params.log_gain.data.fill_(math.log(2.5))
    doubled = run(retrofit(llama, capacity=3, count_bias=2.5), x)[0]
    # (the count bias is formed in float32 before either factor: agreement to its rounding)
    torch.testing.assert_close(run(model, x)[0], doubled, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(run(retrofit(llama, capacity=3), x)[0], doubled, rtol=1e-2, atol=1e-2)
    with_read(model, seed=3)  # any reading: a stream that has folded nothing is the base model's
    inside = tokens_(2 + 8)
    torch.testing.assert_close(run(model, inside)[0].float(), llama(inside), rtol=0, atol=1e-5)


def test_scale_and_bias_against_a_per_query_reference():
    # one layer's op: every folded token its own centroid (linear schedule, N >= tokens), so a centroid's
    # logit is exp(log_scale_h) * s * q.k + bias_h, read from `distance` back, beside the exact tokens
    from ovq.agent.model.pretrained.retrofit import LayerPlan, WindowMemoryState, window_memory_attention
    from tests.agent.test_retrofit import rot

    S, W, L, N, D, Hq, Hkv, T = 2, 4, 2, 64, 8, 4, 2, 19
    plan = LayerPlan.resolve(
        RetrofitConfig(sinks=S, window=W, chunk=L, capacity=N, schedule="linear"), 1, 512
    )[0]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, T, D, generator=g, dtype=torch.float64) for h in (Hq, Hkv, Hkv))
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    log_scale, bias = (
        0.7 * torch.randn(Hq, generator=g, dtype=torch.float64),
        torch.randn(Hq, generator=g, dtype=torch.float64),
    )
    from ovq.agent.model.pretrained.retrofit import MemoryRead

    read = MemoryRead(log_scale, bias, torch.zeros(Hkv, dtype=torch.float64))
    state = WindowMemoryState.allocate(plan, 1, Hkv, D, torch.float64, "cpu")
    out, _ = window_memory_attention(q, k, v, state, plan, inv_freq, read=read)
    G = Hq // Hkv
    for t in range(T):
        F_ = max(0, (t - S - W + 1) // L)
        lo = S + F_ * L
        for h in range(Hq):
            kv = h // G
            logits, vals = [], []
            for j in range(min(S, t + 1)):
                logits.append(
                    float(rot(q[0, h, t], t - (lo - S), inv_freq) @ rot(k[0, kv, j], j, inv_freq))
                    / math.sqrt(D)
                )
                vals.append(v[0, kv, j])
            for p in range(S, S + F_ * L):
                s = float(rot(q[0, h, t], W, inv_freq) @ k[0, kv, p]) / math.sqrt(D)
                logits.append(math.exp(log_scale[h]) * s + float(bias[h]))
                vals.append(v[0, kv, p])
            for p in range(lo, t + 1):
                logits.append(
                    float(rot(q[0, h, t], t, inv_freq) @ rot(k[0, kv, p], p, inv_freq)) / math.sqrt(D)
                )
                vals.append(v[0, kv, p])
            w = torch.softmax(torch.tensor(logits, dtype=torch.float64), 0)
            torch.testing.assert_close(out[0, h, t], w @ torch.stack(vals), rtol=0, atol=1e-10)


def test_under_autograd_the_outputs_are_the_same_and_the_gradient_is_exact():
    # a prefix under no_grad, then one segment with gradients: d(loss)/d(parameters) against central
    # differences of the same truncated objective (the prefix's state is fixed)
    llama = tiny_llama()
    model = retrofit(llama, capacity=3)
    params = with_read(model)
    x = tokens_(40)
    prefix, last = x[:, :32], x[:, 32:36]
    state = model.init_state(1, torch.float64)
    with torch.no_grad():
        model.stream(prefix, state)
    frozen = state.clone()

    def loss_at(s):
        logits, _ = model.stream(last, s)
        return (logits.log_softmax(-1)[0, :, 5]).sum()

    plain = model(last, frozen.clone())[0]
    loss = loss_at(frozen.clone())
    assert torch.equal(model.stream(last, frozen.clone())[0].detach(), plain)
    loss.backward()
    for name in ("log_scale", "bias", "log_gain"):
        p = getattr(params, name)
        grad = p.grad.clone()
        assert grad.abs().sum() > 0, name
        for idx in [(0, 0), (1, p.shape[1] - 1)]:
            # (RMSNorm normalises in float32 even in a float64 model: a step of 1e-3 keeps the
            # difference quotient clear of that rounding, at an O(1e-6) truncation error)
            with torch.no_grad():
                p[idx] += 1e-3
                up = loss_at(frozen.clone())
                p[idx] -= 2e-3
                down = loss_at(frozen.clone())
                p[idx] += 1e-3
            torch.testing.assert_close(grad[idx], (up - down) / 2e-3, rtol=2e-2, atol=1e-4)


def test_adapter_files_round_trip_and_bad_ones_are_refused(tmp_path):
    params = MemoryReadParams(3, 4, 2)
    for p in params.parameters():
        p.data.normal_()
    params.save(tmp_path / "a.safetensors")
    back = MemoryReadParams.load(tmp_path / "a.safetensors", 3, 4, 2)
    assert all(torch.equal(a, b) for a, b in zip(params.parameters(), back.parameters()))
    with pytest.raises(ValueError, match="shape .* another model"):
        MemoryReadParams.load(tmp_path / "a.safetensors", 3, 6, 2)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable"):
        MemoryReadParams.load(tmp_path / "junk.safetensors", 3, 4, 2)
    params.bias.data[0, 0] = float("nan")
    params.save(tmp_path / "nan.safetensors")
    with pytest.raises(ValueError, match="non-finite"):
        MemoryReadParams.load(tmp_path / "nan.safetensors", 3, 4, 2)
    model = retrofit(tiny_llama())
    with pytest.raises(ValueError, match="do not fit this model"):
        model.attach_memory_read(MemoryReadParams(3, 4, 2))

"""The hybrid model: streaming invariant for every layer kind, bounded state, errors, training."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ovq.agent.model.hybrid import LAYER_KINDS, HybridLM, ModelConfig

V = 61


def tiny(layers: str, seed: int = 0) -> HybridLM:
    torch.manual_seed(seed)
    return HybridLM(ModelConfig.preset("tiny", V, layers=layers)).double()


def run_split(model, tokens, bounds):
    state, outs = model.init_state(tokens.shape[0], torch.float64), []
    for a, b in zip(bounds, bounds[1:]):
        logits, state = model(tokens[:, a:b], state)
        outs.append(logits)
    return torch.cat(outs, 1), state


@pytest.mark.parametrize("layers", [*LAYER_KINDS, "swa,ovq,full,nope,linear"])
def test_chunked_prefill_then_token_decode_equals_one_forward(layers):
    model = tiny(layers)
    tokens = torch.randint(0, V, (2, 50), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole, whole_state = model(tokens)
        split, state = run_split(model, tokens, [0, 17, 18, 33, *range(34, 51)])
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-10)
    assert state.pos == whole_state.pos == 50


@settings(max_examples=15)
@given(cuts=st.lists(st.integers(1, 39), max_size=6))
def test_any_split_of_the_stream_gives_the_same_logits(cuts):
    model = tiny("conv,swa,ovq,linear", seed=2)
    tokens = torch.randint(0, V, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole, _ = model(tokens)
        split, _ = run_split(model, tokens, sorted({0, 40, *cuts}))
    torch.testing.assert_close(split, whole, rtol=0, atol=1e-10)


def test_inference_updates_the_given_state_in_place_and_consistently():
    model = tiny("swa,ovq,linear")
    state = model.init_state(1, torch.float64)
    with torch.no_grad():
        _, out = model(torch.zeros(1, 5, dtype=torch.long), state)
    assert out is state and state.pos == 5 and all(s.pos == 5 for s in state.layers if hasattr(s, "pos"))
    _, new = model(torch.zeros(1, 3, dtype=torch.long), state)  # autograd: a new state, input kept
    assert new is not state and (state.pos, new.pos) == (5, 8)


def test_an_empty_input_gives_no_logits_and_leaves_the_stream_where_it_was():
    model = tiny("conv,swa,ovq,full,nope,linear")
    state = model.init_state(2, torch.float64)
    with torch.no_grad():
        _, state = model(torch.zeros(2, 3, dtype=torch.long), state)
        logits, same = model(torch.zeros(2, 0, dtype=torch.long), state)
        fresh, none = model(torch.zeros(2, 0, dtype=torch.long), keep_state=False)
    assert logits.shape == fresh.shape == (2, 0, V) and none is None
    assert same is state and state.pos == 3


def test_state_is_bounded_and_allocated_once():
    model = tiny("swa,ovq,linear").float()
    state = model.init_state(1)
    nbytes = state.nbytes
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for T in (1, 7, 64, 300):
            _, state = model(torch.randint(0, V, (1, T), generator=g), state)
            assert state.nbytes == nbytes
    assert state.pos == 372


def test_swa_depends_on_relative_positions_only_even_far_into_a_stream():
    model = tiny("swa")
    tokens = torch.randint(0, V, (1, 30), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        near_state = model.init_state(1, torch.float64)
        far_state = model.init_state(1, torch.float64)
        for s in far_state.layers:  # a billion tokens into the stream
            s.pos = 10**9
        _, near_state = model(tokens[:, :10], near_state)  # the same prefix fills both windows
        _, far_state = model(tokens[:, :10], far_state)
        near, _ = model(tokens[:, 10:], near_state)
        far, _ = model(tokens[:, 10:], far_state)
    torch.testing.assert_close(far, near, rtol=0, atol=1e-9)


@pytest.mark.parametrize("K", [2, 5])
def test_a_conv_layer_sees_its_own_and_exactly_K_minus_1_earlier_positions(K):
    model = HybridLM(ModelConfig.preset("tiny", V, layers="conv", conv_kernel=K)).double()
    tokens = torch.randint(0, V, (1, 20), generator=torch.Generator().manual_seed(5))
    t = 12
    with torch.no_grad():
        base, _ = model(tokens)
        for j in range(t - K - 1, t + 2):
            changed = tokens.clone()
            changed[0, j] = (changed[0, j] + 1) % V
            logits, _ = model(changed)
            moved = not torch.equal(logits[0, t], base[0, t])
            assert moved == (t - K < j <= t), (j, moved)


def test_full_attention_refuses_to_pass_its_context_bound():
    model = HybridLM(ModelConfig.preset("tiny", V, layers="full", full_context=16))
    with torch.no_grad():
        _, state = model(torch.zeros(1, 10, dtype=torch.long))
        with pytest.raises(ValueError, match="bounded at 16 tokens"):
            model(torch.zeros(1, 7, dtype=torch.long), state)


def test_bad_tokens_config_and_state():
    model = tiny("swa,ovq")
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[0, V]]))
    with pytest.raises(ValueError, match="int64"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="layers"):
        ModelConfig(V, layers="swa,mamba")
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(V, d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="unknown model preset"):
        ModelConfig.preset("huge", V)
    with pytest.raises(ValueError, match="state has 1 layers"):
        model(torch.zeros(1, 3, dtype=torch.long), tiny("swa").init_state(1, torch.float64))


def test_config_round_trips_through_json_and_weights_are_tied():
    config = ModelConfig.preset("default", 4096)
    assert ModelConfig.from_json(config.to_json()) == config
    # the chat format: written when not plain, so that older models keep their JSON (and fingerprint)
    spaced = ModelConfig.preset("default", 4096, chat_format="spaced")
    assert ModelConfig.from_json(spaced.to_json()) == spaced and spaced.chat.prefix == " "
    assert "chat_format" not in config.to_json() and config.chat.name == "plain"
    with pytest.raises(ValueError, match="unknown chat format"):
        ModelConfig(V, chat_format="fancy")
    # the conv kernel likewise: written only when it is not 4, the value from before the field
    wide = ModelConfig.preset("small", V, layers="conv,swa,ovq", conv_kernel=5)
    assert ModelConfig.from_json(wide.to_json()) == wide and '"conv_kernel": 5' in wide.to_json()
    assert "conv_kernel" not in ModelConfig.preset("small", V, layers="conv,swa,ovq").to_json()
    with pytest.raises(ValueError, match="conv_kernel must be >= 2"):
        ModelConfig(V, conv_kernel=1)
    model = HybridLM(ModelConfig.preset("tiny", V))
    assert model.num_params() == sum(p.numel() for p in model.parameters())
    assert not any(name.startswith("lm_head") for name, _ in model.named_parameters())


@pytest.mark.parametrize("layers", ["swa", "ovq", "full", "nope", "linear", "conv", "swa,ovq"])
def test_every_layer_kind_trains(layers):
    """A short run on a learnable task (each token's successor is fixed): the loss must fall far, and
    the attention layer's own parameters must receive gradient."""
    torch.manual_seed(0)
    model = HybridLM(ModelConfig.preset("tiny", 16, layers=layers))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    successor = torch.randperm(16, generator=g)
    losses = []
    for _ in range(40):
        tokens = [torch.randint(0, 16, (8,), generator=g)]
        for _ in range(23):
            tokens.append(successor[tokens[-1]])
        tokens = torch.stack(tokens, 1)  # [8, 24]
        logits, _ = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 16), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        mixer = model.blocks[0].mixer
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mixer.parameters())
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.25 * sum(losses[:5]) / 5, losses


def test_last_only_logits_equal_the_last_row_and_advance_the_state_alike():
    model = tiny("swa,ovq,linear")
    tokens = torch.randint(0, V, (2, 21), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full, a = model(tokens)
        last, b = model(tokens, last_only=True)
    assert last.shape == (2, 1, V)
    torch.testing.assert_close(last[:, 0], full[:, -1], rtol=0, atol=1e-12)
    assert a.pos == b.pos == 21


@pytest.mark.parametrize("layers", ["swa,ovq", "full,nope", "linear,swa"])
def test_a_stateless_training_forward_gives_the_same_logits_and_gradients(layers):
    torch.manual_seed(0)
    model = HybridLM(ModelConfig.preset("tiny", 50, layers=layers))
    tokens = torch.randint(0, 50, (2, 40))
    with_state, state = model(tokens)
    stateless, none = model(tokens, keep_state=False)
    assert none is None and state is not None
    assert torch.equal(with_state, stateless)
    g1 = torch.autograd.grad(with_state.square().sum(), list(model.parameters()))
    g2 = torch.autograd.grad(stateless.square().sum(), list(model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))
    with pytest.raises(ValueError, match="pass no state"):
        model(tokens, model.init_state(2), keep_state=False)

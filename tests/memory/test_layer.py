import pytest
import torch

from ovq.memory import OVQConfig
from ovq.memory.layer import OVQAttention


def make_layer(seed=0, **kw):
    torch.manual_seed(seed)
    return OVQAttention(d_model=24, n_heads=3, config=OVQConfig(chunk_size=8, capacity=12), **kw).double()


def test_shapes_and_positive_learned_scale():
    layer = make_layer()
    x = torch.randn(2, 21, 24, dtype=torch.float64)
    y, state = layer(x)
    assert y.shape == x.shape and state.seen == 21 and state.shape == (2, 3, 8, 8)
    torch.testing.assert_close(layer.scale, torch.full((3,), 8**0.5, dtype=torch.float64))
    layer.log_scale.data.fill_(-50.0)
    assert bool((layer.scale > 0).all())


def test_streaming_through_the_layer_equals_one_call():
    layer = make_layer()
    x = torch.randn(1, 40, 24, dtype=torch.float64)
    with torch.no_grad():
        whole, _ = layer(x)
        state, outs = None, []
        for a, b in [(0, 1), (1, 9), (9, 10), (10, 33), (33, 40)]:
            y, state = layer(x[:, a:b], state)
            outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), whole, rtol=0, atol=1e-12)


def test_gradients_reach_every_parameter():
    layer = make_layer()
    y, _ = layer(torch.randn(2, 30, 24, dtype=torch.float64))
    y.square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_init_state_and_bad_input():
    layer = make_layer()
    state = layer.init_state(B=2, dtype=torch.float64)
    assert state.seen == 0 and state.keys.shape == (2, 3, 12, 8)
    with pytest.raises(ValueError, match="x must be"):
        layer(torch.randn(2, 5, 23, dtype=torch.float64))
    with pytest.raises(ValueError, match="not divisible"):
        OVQAttention(d_model=10, n_heads=3, config=OVQConfig())
    with pytest.raises(ValueError, match="init_scale"):
        OVQAttention(d_model=12, n_heads=3, config=OVQConfig(), init_scale=0.0)
    assert OVQAttention(d_model=10, n_heads=3, config=OVQConfig(), head_dim=5).head_dim == 5

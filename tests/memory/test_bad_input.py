"""Bad input raises ValueError naming the mismatch, before anything is written."""

import pytest
import torch

from ovq.memory import NonFiniteInputError, OVQConfig, OVQState, ovq_attention
from tests.memory.helpers import assert_states_equal, qkv

CONFIG = OVQConfig(chunk_size=4, capacity=8)


def stream(T=6, seed=0):
    q, k, v = qkv(1, 2, T, 4, seed=seed)
    with torch.no_grad():
        _, state = ovq_attention(q, k, v, 2.0, CONFIG)
    return state


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda q, k, v: (q[0], k, v), "q must have rank 4"),
        (lambda q, k, v: (q, k[:, :, :, :3], v), "q and k shapes differ"),
        (lambda q, k, v: (q, k, v[:, :, :2]), "v shape"),
        (lambda q, k, v: (q, k.float(), v), "dtypes differ"),
        (lambda q, k, v: (q.long(), k.long(), v.long()), "floating"),
        (lambda q, k, v: (q, k.to("meta"), v), "devices differ"),
        (lambda q, k, v: (q.numpy(), k, v), "torch.Tensor"),
    ],
)
def test_malformed_inputs_raise_value_error_naming_the_problem(make, match):
    q, k, v = make(*qkv(1, 2, 5, 4))
    with pytest.raises(ValueError, match=match):
        ovq_attention(q, k, v, 2.0, CONFIG)


@pytest.mark.parametrize(
    "scale, match",
    [
        (torch.ones(3), r"shape \[H\]"),
        ("2", "float or a tensor"),
        (-1.0, "positive"),
        (float("nan"), "positive"),
    ],
)
def test_bad_scale(scale, match):
    with pytest.raises(ValueError, match=match):
        ovq_attention(*qkv(1, 2, 5, 4), scale, CONFIG)


@pytest.mark.parametrize(
    "other, match",
    [
        (OVQConfig(chunk_size=4, capacity=9), "state was made for"),
        (OVQConfig(chunk_size=4, capacity=8, schedule="linear"), "state was made for"),
    ],
)
def test_state_from_another_config_is_rejected(other, match):
    state = stream()
    with pytest.raises(ValueError, match=match):
        ovq_attention(*qkv(1, 2, 3, 4), 2.0, other, state)


@pytest.mark.parametrize(
    "inputs, match",
    [
        (qkv(2, 2, 3, 4), r"\(B, H, D, Dv\)"),
        (qkv(1, 3, 3, 4), r"\(B, H, D, Dv\)"),
        (qkv(1, 2, 3, 5), "shapes differ|\\(B, H, D, Dv\\)"),
        (tuple(t.float() for t in qkv(1, 2, 3, 4)), "dtype"),
    ],
)
def test_state_of_another_shape_or_dtype_is_rejected(inputs, match):
    q, k, v = inputs
    if q.shape[-1] == 5:
        k = k[..., :5]
    with pytest.raises(ValueError, match=match):
        ovq_attention(q, k, v, 2.0, CONFIG, stream())


def test_inconsistent_state_is_rejected():
    state = stream()
    state.size += 1
    with pytest.raises(ValueError, match="OVQState.size"):
        ovq_attention(*qkv(1, 2, 3, 4), 2.0, CONFIG, state)
    state = stream()
    state.keys = state.keys[:, :, :7]
    with pytest.raises(ValueError, match="OVQState.keys has shape"):
        ovq_attention(*qkv(1, 2, 3, 4), 2.0, CONFIG, state)


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises_and_the_state_stays_as_it_was(which, bad):
    state = stream(T=7)  # a partial chunk is pending, so the next call would fold
    before = state.clone()
    inputs = list(qkv(1, 2, 9, 4, seed=1))
    inputs[which][0, 1, 5, 2] = bad
    with pytest.raises(NonFiniteInputError, match=["q", "k", "v"][which]):
        ovq_attention(*inputs, 2.0, CONFIG, state)
    assert_states_equal(state, before)
    assert isinstance(NonFiniteInputError("x"), ValueError)


def test_huge_finite_values_are_accepted():
    q, k, v = qkv(1, 2, 9, 4)
    v = v * 1e300  # the sum overflows to inf; the exact check must still accept it
    out, state = ovq_attention(q, k, v, 2.0, CONFIG)
    assert state.seen == 9 and torch.isfinite(state.counts).all()


def test_unknown_backend_and_wrong_config_type():
    with pytest.raises(ValueError, match="backend"):
        ovq_attention(*qkv(1, 2, 3, 4), 2.0, CONFIG, backend="cuda")
    with pytest.raises(ValueError, match="OVQConfig"):
        ovq_attention(*qkv(1, 2, 3, 4), 2.0, {"chunk_size": 4})
    with pytest.raises(ValueError, match="OVQState or None"):
        ovq_attention(*qkv(1, 2, 3, 4), 2.0, CONFIG, state={})


def test_empty_segment_returns_empty_output_and_unchanged_state():
    state = stream()
    before = state.clone()
    out, state = ovq_attention(*qkv(1, 2, 0, 4), 2.0, CONFIG, state)
    assert out.shape == (1, 2, 0, 4)
    assert_states_equal(state, before)


def test_state_empty_rejects_integer_dtypes():
    with pytest.raises(ValueError, match="float32 or float64"):
        OVQState.empty(CONFIG, 1, 1, 4, dtype=torch.int32)

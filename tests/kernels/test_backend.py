"""The op end to end on the Triton backend, and the fallbacks when Triton cannot run."""

import subprocess
import sys
import warnings

import pytest
import torch

import ovq.memory.state
from ovq import kernels
from ovq.kernels import _triton
from ovq.memory import OVQConfig, ovq_attention
from tests.kernels.helpers import CASES, Inputs, poisoned, requires_triton, tol

CONFIG = OVQConfig(chunk_size=16, capacity=37)
B, H, T, D = 2, 3, 63, 48


@pytest.fixture
def poisoned_state(monkeypatch):
    """Unwritten state storage is NaN (counts hugely negative), so reading it shows."""
    monkeypatch.setattr(ovq.memory.state, "allocate", poisoned)


def qkv(device, dtype, Dv=D):
    x = Inputs(device, dtype, seed=3)
    return x.randn(B, H, T, D), x.randn(B, H, T, D), x.randn(B, H, T, Dv)


def assert_states_close(a, b, dtype):
    assert (a.size, a.seen) == (b.size, b.seen)
    n, P = a.size, a.pending
    assert torch.equal(a.counts[:, :, :n], b.counts[:, :, :n])
    torch.testing.assert_close(a.keys[:, :, :n], b.keys[:, :, :n], **tol(dtype))
    torch.testing.assert_close(a.values[:, :, :n], b.values[:, :, :n], **tol(dtype))
    assert torch.equal(a.chunk_k[:, :, :P], b.chunk_k[:, :, :P])
    assert torch.equal(a.chunk_v[:, :, :P], b.chunk_v[:, :, :P])


@requires_triton
@pytest.mark.parametrize("device,dtype", CASES)
def test_triton_backend_matches_torch(device, dtype, poisoned_state):
    q, k, v = qkv(device, dtype)
    scale = torch.tensor([2.0, 5.0, 9.0], dtype=dtype, device=device)
    out, state = ovq_attention(q, k, v, scale, CONFIG, backend="triton")
    out_t, state_t = ovq_attention(q, k, v, scale, CONFIG, backend="torch")
    torch.testing.assert_close(out, out_t, **tol(dtype))
    assert state.size == CONFIG.size_after(48)
    assert_states_close(state, state_t, dtype)


@requires_triton
@pytest.mark.parametrize("device,dtype", CASES[:1] + CASES[2:])
def test_triton_backend_streams_prefill_then_decode(device, dtype, poisoned_state):
    q, k, v = qkv(device, dtype, Dv=24)
    out_t, state_t = ovq_attention(q, k, v, 4.0, CONFIG, backend="torch")
    out, state = ovq_attention(q[:, :, :37], k[:, :, :37], v[:, :, :37], 4.0, CONFIG, backend="triton")
    outs = [out]
    for t in range(37, T):  # decode: one query at a time, across two chunk boundaries
        one = slice(t, t + 1)
        o, state = ovq_attention(q[:, :, one], k[:, :, one], v[:, :, one], 4.0, CONFIG, state, "triton")
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, dim=2), out_t, **tol(dtype))
    assert_states_close(state, state_t, dtype)


@requires_triton
@pytest.mark.parametrize("device,dtype", CASES[1:2] + CASES[2:])
def test_triton_backend_under_autograd_matches_torch(device, dtype):
    q, k, v = (t[:, :, :40].requires_grad_() for t in qkv(device, dtype))
    grads = []
    for backend in ("triton", "torch"):
        out, _ = ovq_attention(q, k, v, 3.0, CONFIG, backend=backend)
        grads.append(torch.autograd.grad(out.square().sum(), (q, k, v)))
    for g, g_t in zip(*grads):
        torch.testing.assert_close(g, g_t, **tol(dtype))


def test_importing_kernels_does_not_import_triton():
    code = "import sys, kernels, memory; sys.exit('triton' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.fixture
def triton_unimportable(monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` now raises ImportError
    monkeypatch.setattr(_triton, "_warned", False)


def test_without_triton_auto_runs_on_torch_and_triton_raises(triton_unimportable, monkeypatch):
    with pytest.raises(ValueError, match="backend='triton' is not available here: triton could not be"):
        kernels.get_ops("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton would run here, if it imported
    with pytest.warns(UserWarning, match="Triton kernels unavailable, using the torch ops") as caught:
        assert not kernels.triton_available()
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: no second warning
        assert not kernels.triton_available()
    q, k, v = qkv("cpu", torch.float32)
    out, state = ovq_attention(q, k, v, 4.0, CONFIG, backend="auto")
    out_t, state_t = ovq_attention(q, k, v, 4.0, CONFIG, backend="torch")
    assert torch.equal(out, out_t) and torch.equal(state.keys, state_t.keys)
    with pytest.raises(ValueError, match="triton could not be imported"):
        ovq_attention(q, k, v, 4.0, CONFIG, backend="triton")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device lets Triton run without the interpreter")
def test_without_gpu_or_interpreter_triton_is_unavailable(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not kernels.triton_available()
    with pytest.raises(ValueError, match="no CUDA device"):
        kernels.get_ops("triton")

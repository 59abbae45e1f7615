"""`ovq_attention`: the chunked, streaming OVQ attention op, vectorised over batch and heads.

The only Python loop is over chunks (the one sequential dependency, docs/ovq.md section 7). Each
chunk step is three ops from kernels/: read, coverage+assignment, fold.
"""

from __future__ import annotations

import torch

from ovq import kernels
from ovq.memory.config import OVQConfig
from ovq.memory.state import OVQState

EPS = 1e-6  # floor of the L2 norm of q and k


class NonFiniteInputError(ValueError):
    """q, k, v or scale holds NaN or inf; nothing was folded and the state is unchanged."""


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(EPS)


def ovq_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | torch.Tensor,
    config: OVQConfig,
    state: OVQState | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, OVQState]:
    """OVQ attention over a stream segment.

    q, k: [B, H, T, D]; v: [B, H, T, Dv]; any T >= 0 (T=1 is decode). scale: positive float or [H].
    Continues the stream in `state` (chunk boundaries are absolute stream positions) or starts one.
    Returns (out [B, H, T, Dv] in q's dtype, state). Computation and state are float64 for float64
    inputs and float32 otherwise.

    Always use the returned state. When no gradient is being recorded, the given state is updated in
    place (its storage is allocated once and never grows) and returned. When autograd records (inputs
    or state require grad), the dictionary is rebuilt out of place so gradients flow through the
    centroids, the given state is left as it was, and a new state is returned. Bad input raises
    ValueError before anything is written.
    """
    B, H, T, D, Dv = _check_inputs(q, k, v, config)
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = _check_scale(scale, H, dtype, q.device)
    if state is None:
        state = OVQState.empty(config, B, H, D, Dv, dtype=dtype, device=q.device)
    else:
        _check_state(state, config, B, H, D, Dv, dtype, q.device)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not _all_finite(x):
            raise NonFiniteInputError(
                f"{name} contains NaN or inf; nothing was folded into the OVQ dictionary"
            )
    ops = kernels.get_ops(_resolve_backend(backend, q))
    functional = any(t.requires_grad for t in state.tensors().values()) or (
        torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, s))
    )
    qn, kn, v = l2_normalise(q.to(dtype)), l2_normalise(k.to(dtype)), v.to(dtype)
    run = _stream_functional if functional else _stream_inplace
    out, state = run(qn, kn, v, s, state, ops)
    return out.to(q.dtype), state


def _all_finite(x: torch.Tensor) -> bool:
    # A finite sum proves every element finite (NaN and inf propagate); only an overflowing sum
    # needs the exact, 10x slower elementwise check.
    return bool(torch.isfinite(x.detach().sum())) or bool(torch.isfinite(x).all())


def _stream_inplace(qn, kn, v, s, state: OVQState, ops) -> tuple[torch.Tensor, OVQState]:
    """No autograd: write straight into the state's preallocated storage."""
    cfg, L, T = state.config, state.config.chunk_size, qn.shape[2]
    out = v.new_empty(*qn.shape[:3], v.shape[-1])
    n, seen, pos = state.size, state.seen, 0
    logc = state.counts[:, :, :n].to(qn.dtype).log()
    while pos < T:
        P = seen % L
        p = min(L - P, T - pos)
        if p == L:  # a whole chunk inside the input: read and fold it where it lies, no copy
            ck, cv = kn[:, :, pos : pos + p], v[:, :, pos : pos + p]
        else:  # a chunk that spans calls: gather it in the pending buffer
            state.chunk_k[:, :, P : P + p] = kn[:, :, pos : pos + p]
            state.chunk_v[:, :, P : P + p] = v[:, :, pos : pos + p]
            ck, cv = state.chunk_k[:, :, : P + p], state.chunk_v[:, :, : P + p]
        dk, dv = state.keys[:, :, :n], state.values[:, :, :n]
        out[:, :, pos : pos + p] = ops.chunk_read(qn[:, :, pos : pos + p], dk, dv, logc, ck, cv, s, P)
        pos, seen = pos + p, seen + p
        if P + p == L:
            M = cfg.size_after(seen)
            _, assign = ops.coverage_assign(ck, dk, M - n)
            ops.fold_update(state.keys, state.values, state.counts, n, ck, cv, assign, M, True)
            n = M
            logc = state.counts[:, :, :n].to(qn.dtype).log()
    state.size, state.seen = n, seen
    return out, state


def _stream_functional(qn, kn, v, s, state: OVQState, ops) -> tuple[torch.Tensor, OVQState]:
    """Autograd recording: build new tensors each chunk so gradients flow through the means."""
    cfg, L, T = state.config, state.config.chunk_size, qn.shape[2]
    n, seen, pos = state.size, state.seen, 0
    keys, values, counts = state.keys, state.values, state.counts
    pk, pv = state.pending_k, state.pending_v
    logc = counts[:, :, :n].to(qn.dtype).log()
    outs = []
    while pos < T:
        P = seen % L
        p = min(L - P, T - pos)
        ck = torch.cat([pk, kn[:, :, pos : pos + p]], dim=2)  # [B, H, P+p, D]
        cv = torch.cat([pv, v[:, :, pos : pos + p]], dim=2)
        dk, dv = keys[:, :, :n], values[:, :, :n]
        outs.append(ops.chunk_read(qn[:, :, pos : pos + p], dk, dv, logc, ck, cv, s, P))
        pos, seen = pos + p, seen + p
        pk, pv = ck, cv
        if P + p == L:
            M = cfg.size_after(seen)
            _, assign = ops.coverage_assign(ck, dk, M - n)
            keys, values, counts = ops.fold_update(keys, values, counts, n, ck, cv, assign, M, False)
            if cfg.detach_memory:
                keys, values = keys.detach(), values.detach()
            n, logc = M, counts[:, :, :M].to(qn.dtype).log()
            pk, pv = ck[:, :, :0], cv[:, :, :0]
    out = torch.cat(outs, dim=2) if outs else v.new_empty(*qn.shape[:3], v.shape[-1])
    new = OVQState(
        config=cfg,
        keys=keys,
        values=values,
        counts=counts,
        chunk_k=_pad_rows(pk, L, state.chunk_k),
        chunk_v=_pad_rows(pv, L, state.chunk_v),
        size=n,
        seen=seen,
    )
    return out, new


def _pad_rows(x: torch.Tensor, rows: int, like: torch.Tensor) -> torch.Tensor:
    """x's rows on dim 2, then `like`'s remaining rows: a full-capacity tensor."""
    return torch.cat([x, like[:, :, x.shape[2] : rows].detach()], dim=2)


def _resolve_backend(backend: str, q: torch.Tensor) -> str:
    if backend == "auto":
        return "triton" if q.is_cuda and kernels.triton_available() else "torch"
    if backend not in kernels.BACKENDS:
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    return backend


def _check_inputs(q, k, v, config) -> tuple[int, int, int, int, int]:
    if not isinstance(config, OVQConfig):
        raise ValueError(f"config must be an OVQConfig, got {type(config).__name__}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have rank 4 [B, H, T, D], got shape {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating tensor, got {x.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")
    if q.shape != k.shape:
        raise ValueError(f"q and k shapes differ: {tuple(q.shape)} vs {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v shape {tuple(v.shape)} does not match [B, H, T] = {tuple(q.shape[:3])} of q")
    B, H, T, D = q.shape
    if B < 1 or H < 1 or D < 1 or v.shape[-1] < 1:
        raise ValueError(f"B, H, D and Dv must be >= 1, got q {tuple(q.shape)}, v {tuple(v.shape)}")
    return B, H, T, D, v.shape[-1]


def _check_scale(scale, H: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        if scale.dim() == 0:
            scale = scale.expand(H)
        if scale.shape != (H,):
            raise ValueError(
                f"scale must be a float or a tensor of shape [H]=[{H}], got {tuple(scale.shape)}"
            )
        if scale.device != device:
            raise ValueError(f"scale is on {scale.device}, q is on {device}")
        s = scale.to(dtype)
    elif isinstance(scale, (int, float)) and not isinstance(scale, bool):
        s = torch.full((H,), float(scale), dtype=dtype, device=device)
    else:
        raise ValueError(f"scale must be a float or a tensor of shape [H], got {type(scale).__name__}")
    if not bool((torch.isfinite(s) & (s > 0)).all()):
        raise NonFiniteInputError(f"scale must be finite and positive, got {s.detach().tolist()}")
    return s


def _check_state(state, config, B, H, D, Dv, dtype, device) -> None:
    if not isinstance(state, OVQState):
        raise ValueError(f"state must be an OVQState or None, got {type(state).__name__}")
    if state.config != config:
        raise ValueError(f"state was made for {state.config}, but the op was called with {config}")
    state.validate()
    if state.shape != (B, H, D, Dv):
        raise ValueError(f"state has (B, H, D, Dv) = {state.shape}, inputs have {(B, H, D, Dv)}")
    if state.dtype != dtype:
        raise ValueError(f"state dtype is {state.dtype}, inputs compute in {dtype}")
    if state.device != device:
        raise ValueError(f"state is on {state.device}, inputs are on {device}")

"""Memory-op benchmark: OVQ op vs causal full attention (torch SDPA) at the same T, in one run.

    python -m memory.bench [--T 4096 16384 65536] [--repeats 1] [--device cpu|cuda]

Prints JSON: tokens/s and state bytes of each, and their ratios. Not a test: timings are relative.
Beside them, the op's matrix products alone (its floor on this machine; see `_matmul_floor`).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

from ovq.memory.config import OVQConfig
from ovq.memory.op import ovq_attention


def _best_time(fn, repeats: int, device: torch.device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()  # CUDA launches are asynchronous: time the work, not the queueing
        best = min(best, time.perf_counter() - t0)
    return best


def _measure(T, B, H, D, config, repeats, g, device) -> dict:
    q, k, v = (torch.randn(B, H, T, D, generator=g).to(device) for _ in range(3))
    scale, L = D**0.5, config.chunk_size
    states = []
    with torch.no_grad():
        ovq_attention(q[:, :, :L], k[:, :, :L], v[:, :, :L], scale, config)  # warm-up (and compile)
        F.scaled_dot_product_attention(q[:, :, :L], k[:, :, :L], v[:, :, :L], is_causal=True)
        t_ovq = _best_time(lambda: states.append(ovq_attention(q, k, v, scale, config)[1]), repeats, device)
        t_full = _best_time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), repeats, device)
        t_floor = _best_time(lambda: _matmul_floor(q, k, v, config), repeats, device)
    ovq_bytes = states[-1].nbytes
    kv_bytes = B * H * T * 2 * D * q.element_size()
    return {
        "T": T,
        "ovq_tokens_per_s": B * T / t_ovq,
        "full_tokens_per_s": B * T / t_full,
        "speedup_ovq_vs_full": t_full / t_ovq,
        "matmul_floor_tokens_per_s": B * T / t_floor,
        "speedup_floor_vs_full": t_full / t_floor,
        "ovq_state_bytes": ovq_bytes,
        "full_kv_cache_bytes": kv_bytes,
        "state_ratio_full_over_ovq": kv_bytes / ovq_bytes,
    }


def _matmul_floor(q, k, v, config: OVQConfig) -> None:
    """The op's matrix products alone, chunk by chunk at its dictionary sizes: the read's q.mu_k and
    p.mu_v over the n slots in use and its L x L chunk block (whole), and the coverage k.mu_k. No softmax,
    selection, fold or Python beyond the loop: what a fully fused op would take if its products ran
    at this machine's matmul speed, so `speedup_floor_vs_full` bounds what the op can reach here."""
    B, H, T, D = q.shape
    L, N, BH = config.chunk_size, config.capacity, B * H
    q, k, v = (x.reshape(BH, T, -1) for x in (q, k, v))  # [B*H, T, D]
    mu_k, mu_v = q.new_ones(BH, N, D), q.new_ones(BH, N, v.shape[-1])  # values do not change the time
    scores, out = q.new_empty(BH * L * N), q.new_empty(BH, L, v.shape[-1])
    n = 0
    for c in range(0, T - T % L, L):
        qc, kc, vc = q[:, c : c + L], k[:, c : c + L], v[:, c : c + L]
        if n:
            s = scores[: BH * L * n].view(BH, L, n)  # contiguous, so `out=` writes in place
            torch.bmm(qc, mu_k[:, :n].transpose(1, 2), out=s)
            torch.bmm(s, mu_v[:, :n], out=out)
            torch.bmm(kc, mu_k[:, :n].transpose(1, 2), out=s)
        s = scores[: BH * L * L].view(BH, L, L)
        torch.bmm(qc, kc.transpose(1, 2), out=s)
        torch.bmm(s, vc, out=out)
        n = config.size_after(c + L)


def run(Ts=(4096, 16384, 65536), B=1, H=4, D=64, L=256, N=1024, repeats=1, seed=0, device="cpu") -> dict:
    """Time one forward (no grad) of each op at every T; best of `repeats`."""
    config = OVQConfig(chunk_size=L, capacity=N)
    g, device = torch.Generator().manual_seed(seed), torch.device(device)
    rows = [_measure(T, B, H, D, config, repeats, g, device) for T in Ts]
    return {
        "benchmark": "memory",
        "config": {"B": B, "H": H, "D": D, "L": L, "N": N, "schedule": config.schedule, "dtype": "float32"},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "host": {
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "results": rows,
        "state_bytes_constant": len({r["ovq_state_bytes"] for r in rows}) == 1,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m memory.bench", description=__doc__.splitlines()[0])
    p.add_argument("--T", type=int, nargs="+", default=[4096, 16384, 65536], help="stream lengths")
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--H", type=int, default=4)
    p.add_argument("--D", type=int, default=64)
    p.add_argument("--L", type=int, default=256, help="chunk size")
    p.add_argument("--N", type=int, default=1024, help="capacity")
    p.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    p.add_argument("--device", default="cpu", help="cpu (the target machine) or cuda")
    args = p.parse_args(argv)
    if min(args.T) < 1 or args.repeats < 1:
        p.error("--T values and --repeats must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    result = run(args.T, args.B, args.H, args.D, args.L, args.N, args.repeats, device=args.device)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

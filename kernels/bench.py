"""Kernel benchmark: the chunk read against SDPA over the same number of keys, and the share of
coverage+assign+fold in a whole chunk step, for N in {1024, 4096} and L in {128, 256}.

    python -m kernels.bench [--device cuda] [--backend triton]   (also `ovq bench kernels`)

Prints JSON. On a CUDA device it times the Triton kernels; on CPU the torch twins (the Triton
interpreter is exact but far too slow to time).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

from ovq.kernels import get_ops


def _time(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (and compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(ops, N: int, L: int, B: int, H: int, D: int, dtype, device, repeats: int) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    q, ck, cv = F.normalize(rand(B, H, L, D), dim=-1), F.normalize(rand(B, H, L, D), dim=-1), rand(B, H, L, D)
    keys, values = F.normalize(rand(B, H, N, D), dim=-1), rand(B, H, N, D)
    counts = torch.randint(1, 1000, (B, H, N), generator=g).to(device)
    logc, scale = counts.to(dtype).log(), torch.full((H,), 8.0, dtype=dtype, device=device)
    n = N - L  # a dictionary with room for one more chunk's seeds
    m = L // 4

    def read():
        ops.chunk_read(q, keys[:, :, :n], values[:, :, :n], logc[:, :, :n], ck, cv, scale, 0)

    def sdpa():  # the same queries and number of keys, flash attention, causal over the chunk part
        F.scaled_dot_product_attention(q, keys[:, :, : n + L], values[:, :, : n + L])

    def assign_fold():
        _, assign = ops.coverage_assign(ck, keys[:, :, :n], m)
        ops.fold_update(keys.clone(), values.clone(), counts.clone(), n, ck, cv, assign, n + m, True)

    def clones():  # the fold above works on copies; their cost is subtracted
        keys.clone(), values.clone(), counts.clone()

    with torch.no_grad():
        t_read, t_sdpa = _time(read, device, repeats), _time(sdpa, device, repeats)
        t_fold = max(0.0, _time(assign_fold, device, repeats) - _time(clones, device, repeats))
    keys_read = B * H * L * (n + L)
    return {
        "N": N,
        "L": L,
        "read_keys_per_s": keys_read / t_read,
        "sdpa_keys_per_s": keys_read / t_sdpa,
        "read_vs_sdpa": t_sdpa / t_read,
        "assign_fold_ms": 1e3 * t_fold,
        "chunk_step_ms": 1e3 * (t_read + t_fold),
        "assign_fold_share": t_fold / (t_read + t_fold),
    }


def run(backend: str | None = None, device: str | None = None, B=1, H=8, D=64, repeats=5) -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backend = backend or ("triton" if dev.type == "cuda" else "torch")
    ops = get_ops(backend)
    dtype = torch.bfloat16 if dev.type == "cuda" and backend == "torch" else torch.float32
    rows = [measure(ops, N, L, B, H, D, dtype, dev, repeats) for N in (1024, 4096) for L in (128, 256)]
    return {
        "benchmark": "kernels",
        "backend": backend,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.machine()})",
        "dtype": str(dtype).removeprefix("torch."),
        "shape": {"B": B, "H": H, "D": D},
        "targets": {"read_vs_sdpa": ">= 0.6 on an H100-class GPU", "assign_fold_share": "<= 0.07"},
        "results": rows,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["torch", "triton"], help="default: triton on CUDA, torch on CPU")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    print(json.dumps(run(args.backend, args.device, H=args.heads, repeats=args.repeats), indent=2))


if __name__ == "__main__":
    main()

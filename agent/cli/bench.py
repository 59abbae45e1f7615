"""Runtime benchmarks, printed as JSON: `ovq bench session` (soak), `ovq bench snapshots` and `ovq bench
speed` (prefill and generation tokens/s; `--peer llama.cpp` measures llama.cpp beside it on the same
GGUF file, tokens and thread count).

Timings are ratios measured in one run (per-token time late versus early in a stream; codec versus
raw LMDB on the same bytes); absolute numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from ovq.agent.cli.options import add_capacity_option, add_retrofit_option
from ovq.agent.model.names import resolve_model_path
from ovq.agent.runtime.session import Runtime
from ovq.agent.tasks import make_task


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def _token_pool(runtime: Runtime, n: int, seed: int = 0) -> list[int]:
    task, pool, i = make_task("memory_dialogue"), [], 0
    while len(pool) < n:
        pool += runtime.tokenizer.encode(task(seed + i).text)
        i += 1
    return pool[:n]


def session_soak(runtime: Runtime, total: int = 1_000_000, segment: int = 100_000, early: int = 8192) -> dict:
    """Feed `total` tokens through a fresh session; per segment: tokens/s, RSS and state bytes."""
    s = runtime.session(f"bench-soak-{os.getpid()}-{time.time_ns()}")
    pool = _token_pool(runtime, min(total, 200_000))
    feed_chunk = 2048

    def feed(n: int) -> float:
        t0, done = time.perf_counter(), 0
        while done < n:
            k = min(feed_chunk, n - done)
            start = (s.tokens_seen + done) % len(pool)
            ids = (pool + pool)[start : start + k] if start + k > len(pool) else pool[start : start + k]
            s.feed_ids(ids)
            done += k
        return time.perf_counter() - t0

    early_s = feed(early) / early  # seconds per token at the start of the stream
    rows = []
    while s.tokens_seen < total:
        n = min(segment, total - s.tokens_seen)
        dt = feed(n)
        rows.append(
            {
                "tokens_seen": s.tokens_seen,
                "tokens_per_s": n / dt,
                "rss_bytes": _rss_bytes(),
                "state_bytes": s.state.nbytes,
            }
        )
    late_s = 1 / rows[-1]["tokens_per_s"]
    rss_100k = next((r["rss_bytes"] for r in rows if r["tokens_seen"] >= 100_000), rows[0]["rss_bytes"])
    return {
        "benchmark": "session",
        "model_fingerprint": runtime.fingerprint,
        "threads": torch.get_num_threads(),
        "segments": rows,
        "per_token_time_ratio_end_vs_first_8k": late_s / early_s,
        "rss_growth_from_100k": rows[-1]["rss_bytes"] / rss_100k - 1,
        # from the end of the first segment, when the state is allocated and the model warm
        "rss_growth_from_first_segment": rows[-1]["rss_bytes"] / rows[0]["rss_bytes"] - 1,
        "state_bytes_constant": len({r["state_bytes"] for r in rows}) == 1,
        "targets": {
            "per_token_time_ratio_end_vs_first_8k": "<= 1.2",
            "rss_growth_from_100k": "<= 0.05",
            "rss_growth_from_first_segment": "<= 0.05",
        },
    }


def snapshot_bench(runtime: Runtime, tokens: int = 20_000, repeats: int = 30) -> dict:
    """Save + restore of a session's state through the codec and store, beside raw LMDB put/get of
    the same bytes. The two are interleaved in each repeat (fsync latency drifts with the disk, and
    both must see the same drift); medians are reported."""
    import lmdb

    s = runtime.session(f"bench-snap-{os.getpid()}-{time.time_ns()}")
    s.feed_ids(_token_pool(runtime, tokens))
    save_ms, restore_ms, put_ms, get_ms = [], [], [], []
    with tempfile.TemporaryDirectory() as d:
        env = lmdb.open(d, map_size=1 << 34)
        for i in range(repeats):
            s.feed_ids(runtime.tokenizer.encode(" tick"))  # a new state each time: nothing deduplicates
            t0 = time.perf_counter()
            info = s.save()
            t1 = time.perf_counter()
            s._restore(info.id)
            t2 = time.perf_counter()
            save_ms.append(1e3 * (t1 - t0))
            restore_ms.append(1e3 * (t2 - t1))
            _, parts = runtime.store.load(info.id, verify=False)  # the very bytes that were saved
            t0 = time.perf_counter()
            with env.begin(write=True) as txn:
                for name, blob in parts.items():
                    txn.put(f"{i}/{name}".encode(), blob)
            t1 = time.perf_counter()
            with env.begin() as txn:
                _ = [bytes(txn.get(f"{i}/{name}".encode())) for name in parts]
            t2 = time.perf_counter()
            put_ms.append(1e3 * (t1 - t0))
            get_ms.append(1e3 * (t2 - t1))
        env.close()
    nbytes = sum(map(len, parts.values()))
    save, restore, raw = _median(save_ms), _median(restore_ms), _median(put_ms) + _median(get_ms)
    return {
        "benchmark": "snapshots",
        "repeats": repeats,
        "state_bytes": s.state.nbytes,
        "snapshot_bytes": nbytes,
        "save_ms": save,
        "restore_ms": restore,
        "save_plus_restore_ms": save + restore,
        "save_MB_per_s": nbytes / 1e6 / (save / 1e3),
        "restore_MB_per_s": nbytes / 1e6 / (restore / 1e3),
        "raw_lmdb_put_ms": _median(put_ms),
        "raw_lmdb_get_ms": _median(get_ms),
        "raw_lmdb_put_plus_get_ms": raw,
        "codec_overhead_vs_raw": (save + restore) / raw,
        "targets": {"save_plus_restore_ms": "<= 50", "codec_overhead_vs_raw": "<= 2"},
    }


def speed_bench(runtime: Runtime, pool: list[int], generate: int = 256, repeats: int = 3) -> dict:
    """Prefill tokens/s (a session fed the token ids `pool` in 2,048-token pieces) and generation
    tokens/s (greedy, one token per forward, never stopping early), each the median of `repeats` runs on
    a stream that already holds the prefill."""
    from ovq.agent.model.generate import SamplingConfig, generate_tokens

    prefill, model = len(pool), runtime.model
    cfg = SamplingConfig(max_tokens=generate)
    with torch.no_grad():  # warm-up: first-call allocations are not part of the rate
        model(torch.tensor([pool[:2048]]), model.init_state(1), last_only=True)
    prefill_tps, generate_tps = [], []
    for _ in range(repeats):
        state = model.init_state(1)
        t0 = time.perf_counter()
        with torch.no_grad():
            for a in range(0, prefill, 2048):
                _, state = model(torch.tensor([pool[a : a + 2048]]), state, last_only=True)
        prefill_tps.append(prefill / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        n = sum(1 for _ in generate_tokens(model, state, pool[-1:], cfg, torch.Generator()))
        generate_tps.append(n / (time.perf_counter() - t0))
    return {
        "benchmark": "speed",
        "threads": torch.get_num_threads(),
        "prefill_tokens": prefill,
        "prefill_tokens_per_s": _median(prefill_tps),
        "generated_tokens": generate,
        "generate_tokens_per_s": _median(generate_tps),
        "state_bytes": state.nbytes,
        "targets": SPEED_TARGETS[type(model).__name__],
    }


def llama_cpp_speed(gguf: Path, pool: list[int], generate: int, repeats: int, threads: int) -> dict:
    """speed_bench's measurement on llama.cpp (llama-cpp-python): the same GGUF file, token ids and
    thread count; prefill through its KV cache in 2,048-token batches, then greedy generation of
    `generate` tokens one forward each. Medians of `repeats` runs."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(gguf),
        n_ctx=len(pool) + generate + 1,
        n_batch=2048,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    llm.eval(pool[:2048])  # warm-up, as for ours
    prefill_tps, generate_tps = [], []
    for _ in range(repeats):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(pool)
        prefill_tps.append(len(pool) / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(generate):
            llm.eval([llm.sample(temp=0.0)])  # temp 0: llama.cpp's greedy sampler
        generate_tps.append(generate / (time.perf_counter() - t0))
    return {
        "name": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "prefill_tokens_per_s": _median(prefill_tps),
        "generate_tokens_per_s": _median(generate_tps),
    }


def _peer_file(model: str | None) -> Path:
    """The GGUF file llama.cpp runs beside us (a tuned reading's base); ValueError when it cannot run."""
    from ovq.agent.model.pretrained.memory_read import is_adapter_dir, read_adapter_config

    path = resolve_model_path(model)
    if is_adapter_dir(path):
        path = resolve_model_path(read_adapter_config(path)["base"])
    if path.suffix != ".gguf" or not path.is_file():
        raise ValueError(f"--peer llama.cpp runs the same GGUF file, and the model {str(path)!r} is not one")
    if importlib.util.find_spec("llama_cpp") is None:
        raise ValueError(
            "--peer llama.cpp needs llama-cpp-python, an optional benchmark extra: pip install 'ovq[peer]' "
            "(README, 'Speed beside llama.cpp', has the build flags this kind of machine needs)"
        )
    return path


# per model family, on the 2-core CPU: the tiny hybrid's, and a pretrained model's with the retrofit
SPEED_TARGETS = {
    "HybridLM": {"prefill_tokens_per_s": ">= 2000 (2-core CPU)", "generate_tokens_per_s": ">= 30"},
    "RetrofitLM": {"prefill_tokens_per_s": ">= 400 (2-core CPU)", "generate_tokens_per_s": ">= 15"},
}
PEER_AIMS = {"prefill": ">= 2x llama.cpp", "generate": ">= 0.5x llama.cpp"}


def main(suite: str, argv=None) -> None:
    p = argparse.ArgumentParser(prog=f"ovq bench {suite}", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model directory (default: the shipped model)")
    add_capacity_option(p)
    add_retrofit_option(p)
    p.add_argument("--store", help="snapshot store (default: a temporary one)")
    if suite == "session":
        p.add_argument("--tokens", type=int, default=1_000_000)
        p.add_argument("--segment", type=int, default=100_000)
    elif suite == "speed":
        p.add_argument("--tokens", type=int, default=16_384, help="prefill tokens")
        p.add_argument("--generate", type=int, default=256, help="generated tokens")
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument(
            "--peer",
            choices=["llama.cpp"],
            help="also measure llama.cpp on the same GGUF file, tokens and threads (needs ovq[peer])",
        )
    else:
        p.add_argument("--tokens", type=int, default=20_000, help="tokens fed before saving")
        p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    peer = _peer_file(args.model) if getattr(args, "peer", None) else None
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime.load(args.model, args.store or tmp, capacity=args.capacity, retrofit=args.retrofit)
        if suite == "session":
            result = session_soak(runtime, args.tokens, min(args.segment, args.tokens))
        elif suite == "speed":
            pool = _token_pool(runtime, args.tokens)
            result = speed_bench(runtime, pool, args.generate, args.repeats)
            if peer is not None:
                them = llama_cpp_speed(peer, pool, args.generate, args.repeats, torch.get_num_threads())
                result["peer"] = them
                result["ratio_to_peer"] = {
                    "prefill": result["prefill_tokens_per_s"] / them["prefill_tokens_per_s"],
                    "generate": result["generate_tokens_per_s"] / them["generate_tokens_per_s"],
                    "aims": PEER_AIMS,
                }
        else:
            result = snapshot_bench(runtime, args.tokens, args.repeats)
    print(json.dumps(result, indent=2))

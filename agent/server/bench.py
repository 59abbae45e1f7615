"""`ovq bench serve`: what the HTTP layer of `ovq serve` adds to a chat turn, printed as JSON.

Side by side in one run, same prompts, greedy: each round runs one exchange in-process (what the
server's worker thread runs: match, feed, reply, save) on one session and the same request over HTTP
on another session fed the same stream, so both do the same work and write the same reply; the order
alternates each round (whichever runs first in a round is slower on this machine). Two saves per
exchange make one exchange's time vary by tens of ms, so the HTTP layer itself is also taken per
request: the latency the client sees less the server's own time on the session (its Server-Timing
header). Then streaming first-token latency both ways, then memory over many requests: anonymous
memory (the process's own) apart from the file-backed pages of the store's LMDB map, which the kernel
may drop at any time.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit

import torch

from ovq.agent.model.generate import CancelToken, SamplingConfig
from ovq.agent.runtime.session import Runtime
from ovq.agent.server.app import create_app, return_big_buffers, running
from ovq.agent.server.protocol import ChatRequest, Message
from ovq.agent.server.sessions import run_exchange

PROMPTS = (
    "My locker code is 4471.",
    "What did I tell you about the locker?",
    "The staging key is 7F3A; production uses another one.",
    "Summarise what we talked about.",
    "Which key does staging use?",
)
SOAK_SESSIONS = 4


def _memory_mb() -> dict[str, float]:
    """Resident memory by kind (Linux): RssAnon, the process's own; RssFile, mapped files."""
    with open("/proc/self/status") as f:
        kb = {
            k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("RssAnon", "RssFile")
        }
    return {"anon": round(kb["RssAnon"] / 1024, 1), "file": round(kb["RssFile"] / 1024, 1)}


def _at(memory: list[dict], requests: int) -> dict:
    return next(m for m in memory if m["requests"] >= requests)


def _slope(memory: list[dict], start: int) -> float:
    """Anonymous MB per 100 requests from `start` on (once the allocator has settled)."""
    a, b = _at(memory, start), memory[-1]
    return 100 * (b["anon"] - a["anon"]) / max(1, b["requests"] - a["requests"])


def _median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[int(q * (len(xs) - 1))]


def _body(session: str, prompt: str, max_tokens: int) -> dict:
    return {
        "model": "ovq",
        "user": session,
        "max_tokens": max_tokens,
        "temperature": 0,
        "messages": [{"role": "user", "content": prompt}],
    }


def _local(runtime: Runtime, name: str, prompt: str, max_tokens: int) -> tuple[float, float, str]:
    """(seconds to the first piece, seconds in all, reply) of one exchange in this thread."""
    request = ChatRequest(name, (Message("user", prompt),), SamplingConfig(max_tokens=max_tokens))
    t0, first = time.perf_counter(), []

    def emit(event: Any) -> None:
        if isinstance(event, str) and not first:
            first.append(time.perf_counter())

    reply = run_exchange(runtime.session(name), request, CancelToken(), emit)
    end = time.perf_counter()
    return (first[0] if first else end) - t0, end - t0, reply.text


class _Client:
    """One keep-alive HTTP/1.1 connection (the standard library's: the benchmark needs no extra)."""

    def __init__(self, url: str) -> None:
        where = urlsplit(url)
        self.connection = http.client.HTTPConnection(where.hostname, where.port, timeout=120)

    def _post(self, body: dict) -> http.client.HTTPResponse:
        data = json.dumps(body).encode()  # bytes: sent with the headers in one segment
        self.connection.request("POST", "/v1/chat/completions", data, {"Content-Type": "application/json"})
        return self.connection.getresponse()

    def chat(self, body: dict) -> tuple[float, float, str]:
        """(seconds the client waited, seconds the server spent on the session, reply)."""
        t0 = time.perf_counter()
        r = self._post(body)
        data = r.read()
        waited = time.perf_counter() - t0
        if r.status != 200:
            raise RuntimeError(f"the server answered {r.status}: {data[:300]!r}")
        server = float(r.getheader("Server-Timing").split("dur=")[1]) / 1e3
        return waited, server, json.loads(data)["choices"][0]["message"]["content"]

    def first_token(self, body: dict) -> float:
        """Seconds from sending a streaming request to its first content chunk (the rest is drained)."""
        t0, first = time.perf_counter(), None
        r = self._post({**body, "stream": True})
        for line in r:
            if first is None and line.startswith(b"data: {") and _content(json.loads(line[6:])):
                first = time.perf_counter()
        if r.status != 200:
            raise RuntimeError(f"the server answered {r.status}")
        return (first or time.perf_counter()) - t0

    def close(self) -> None:
        self.connection.close()


def _content(chunk: dict) -> str:
    return chunk["choices"][0]["delta"].get("content") or "" if chunk["choices"] else ""


def serve_bench(
    runtime: Runtime, rounds: int = 100, first_token: int = 30, requests: int = 1000, max_tokens: int = 16
) -> dict:
    return_big_buffers()  # as `ovq serve` does: the memory measured is a server's
    with running(create_app(runtime)) as url, contextlib.closing(_Client(url)) as client:

        def remote(name: str, prompt: str) -> tuple[float, float, str]:
            return client.chat(_body(name, prompt, max_tokens))

        tag = f"{os.getpid()}-{time.time_ns()}"  # new sessions, whatever the store holds
        local, remote_name, soak = f"bench-local-{tag}", f"bench-http-{tag}", f"bench-soak-{tag}"
        _local(runtime, local, "Hello.", max_tokens)  # warm-up: first-call allocations, the first save
        remote(remote_name, "Hello.")
        local_s, remote_s, diffs, layer, same = [], [], [], [], 0
        for i in range(rounds):
            prompt = PROMPTS[i % len(PROMPTS)]
            if i % 2:
                waited, server, text_remote = remote(remote_name, prompt)
                _, t_local, text_local = _local(runtime, local, prompt, max_tokens)
            else:
                _, t_local, text_local = _local(runtime, local, prompt, max_tokens)
                waited, server, text_remote = remote(remote_name, prompt)
            local_s.append(t_local)
            remote_s.append(waited)
            diffs.append(waited - t_local)
            layer.append(waited - server)
            same += text_local == text_remote
        first_local, first_remote = [], []
        for i in range(first_token):
            prompt = PROMPTS[i % len(PROMPTS)]
            for side in (0, 1) if i % 2 else (1, 0):
                if side:
                    first_remote.append(client.first_token(_body(remote_name, prompt, max_tokens)))
                else:
                    first_local.append(_local(runtime, local, prompt, max_tokens)[0])
        memory = [{"requests": 0, **_memory_mb()}]
        for i in range(requests):
            waited, server, _ = remote(f"{soak}-{i % SOAK_SESSIONS}", PROMPTS[i % len(PROMPTS)])
            layer.append(waited - server)
            if (i + 1) % 100 == 0 or i + 1 == requests:
                memory.append({"requests": i + 1, **_memory_mb()})
    ms = 1e3
    return {
        "benchmark": "serve",
        "model_fingerprint": runtime.fingerprint,
        "threads": torch.get_num_threads(),
        "client": "http.client, one keep-alive connection, loopback",
        "max_tokens": max_tokens,
        "rounds": rounds,
        "replies_identical": f"{same}/{rounds}",
        "exchange_in_process_ms": _median(local_s) * ms,
        "exchange_http_ms": _median(remote_s) * ms,
        "side_by_side_difference_ms": _median(diffs) * ms,
        "side_by_side_difference_ms_p10_p90": [_pct(diffs, 0.1) * ms, _pct(diffs, 0.9) * ms],
        "http_layer_ms": _median(layer) * ms,
        "http_layer_ms_p90": _pct(layer, 0.9) * ms,
        "http_layer_requests": len(layer),
        "first_token_requests": first_token,
        "first_token_in_process_ms": _median(first_local) * ms,
        "first_token_http_ms": _median(first_remote) * ms,
        "first_token_http_ms_p90": _pct(first_remote, 0.9) * ms,
        "soak_requests": requests,
        "soak_sessions": SOAK_SESSIONS,
        "memory_mb": memory,
        # from the 100th request on: by then every soak session exists (each holds its state)
        "anon_memory_growth_from_100": memory[-1]["anon"] / _at(memory, min(100, requests))["anon"] - 1,
        "anon_mb_per_100_requests_second_half": _slope(memory, requests // 2),
        "targets": {
            "http_layer_ms": "<= 5",
            "first_token_http_ms": "<= 300",
            "anon_memory_growth_from_100": "<= 0.05",
        },
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="ovq bench serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="model (default: tiny)")
    p.add_argument("--store", help="snapshot store (default: a temporary one)")
    p.add_argument("--rounds", type=int, default=100, help="exchanges each way, side by side")
    p.add_argument("--first-token", type=int, default=30, help="streaming requests each way")
    p.add_argument("--requests", type=int, default=1000, help="requests while RSS is watched")
    p.add_argument("--max-tokens", type=int, default=16, help="longest reply")
    args = p.parse_args(argv)
    if min(args.rounds, args.first_token, args.requests, args.max_tokens) < 1:
        raise ValueError("--rounds, --first-token, --requests and --max-tokens must be >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        runtime = Runtime.load(args.model, args.store or tmp)
        result = serve_bench(runtime, args.rounds, args.first_token, args.requests, args.max_tokens)
    print(json.dumps(result, indent=2))

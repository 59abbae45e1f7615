"""`ovq train --init <pretrained>`: teach a retrofit to read its memory, the checkpoint's weights frozen.

What trains: the memory's own parameters (memory_read.py: per head, the temperature and bias of the
centroid logits and the gain on log(count); a few hundred numbers for SmolLM2). Sinks and window are
read as the checkpoint was trained, so inside the window the tuned model is the base model exactly.

Each step streams `batch_size` memory streams (memory_streams.py) of `seq_len` tokens through the
retrofit, a segment of L tokens at a time with the state detached between segments (truncated
back-propagation; the dictionary is built from the frozen model's keys and values, and only the reading
learns). Two losses, on positions past the first fold (where the memory is read):
- distillation: KL(full attention || retrofit) on next-token distributions, over `KL_SEGMENTS` segments
  drawn at random and every segment holding an answer. Full attention is the same weights over the whole
  stream (so seq_len is at most the checkpoint's context);
- the answers: cross-entropy of each fact's value where the stream asks for it, 1k-8k tokens on.
Both are means over their tokens, summed (the KL times --kl-weight). Deterministic in (seed, step) and
resumable, as `ovq train`.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ovq.agent.model.checkpoint import LoadedModel, load_model, source_digest
from ovq.agent.model.names import PRETRAINED, resolve_model_path
from ovq.agent.model.pretrained.memory_read import ADAPTER, ADAPTER_CONFIG, MemoryReadParams, is_adapter_dir
from ovq.agent.model.pretrained.retrofit import RetrofitConfig, parse_retrofit
from ovq.agent.model.pretrained.streaming import RetrofitLM
from ovq.agent.tasks import answer_token_mask, derive_seed
from ovq.agent.train.config import TrainConfig
from ovq.agent.train.memory_streams import memory_stream

TUNE_STATE, OPTIM = "tune_state.json", "tune_optimizer.safetensors"
KL_SEGMENTS = 2  # random segments past the first fold distilled per stream (besides the answers')
# TrainConfig fields that mean something for the hybrid only: a tune refuses them when changed
HYBRID_ONLY = ("preset", "tasks", "vocab_size", "tokenizer", "lm_weight", "workers", "chat_format")


def tune(cfg: TrainConfig, retrofit: str | None = None) -> Path:
    """Train (or resume) the memory reading of `cfg.init` into cfg.out; returns cfg.out."""
    defaults = TrainConfig()
    changed = [f"--{k.replace('_', '-')}" for k in HYBRID_ONLY if getattr(cfg, k) != getattr(defaults, k)]
    if changed:
        raise ValueError(
            f"{', '.join(changed)}: hybrid training options; a pretrained --init tunes its memory"
        )
    out = Path(cfg.out)
    resume = (out / TUNE_STATE).is_file()
    base = _base_name(cfg.init) if not resume else json.loads((out / ADAPTER_CONFIG).read_text())["base"]
    settings = parse_retrofit(retrofit) if not resume else _saved_retrofit(out)
    if resume and retrofit is not None and parse_retrofit(retrofit) != settings:
        raise ValueError(
            f"{out} holds a tune for retrofit {settings.to_dict()}; it cannot resume with another"
        )
    if settings.kind != "memory":
        raise ValueError(f"retrofit {settings.kind!r} has no memory to tune")
    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    loaded = load_model(base, device=device, retrofit=settings)
    model = loaded.model
    if not isinstance(model, RetrofitLM):
        raise ValueError(f"{base} is not a pretrained checkpoint")
    c = model.config.llama
    if cfg.seq_len > c.max_context:
        raise ValueError(
            f"--seq-len {cfg.seq_len} exceeds the checkpoint's context {c.max_context} (the teacher)"
        )
    first_fold = settings.sinks + settings.window + settings.chunk - 1
    if cfg.seq_len < first_fold + settings.chunk:
        raise ValueError(
            f"--seq-len {cfg.seq_len} ends before the memory is read (needs > {first_fold + settings.chunk})"
        )
    model.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    params = MemoryReadParams(c.n_layers, c.n_heads, c.n_kv_heads)
    opt = torch.optim.AdamW(params.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    start = 0
    if resume:
        start = _load(out, params, opt)
    else:
        out.mkdir(parents=True, exist_ok=True)
    model.attach_memory_read(params)
    params = model.memory_read  # moved to the model's device
    end = cfg.steps if cfg.stop_at is None else cfg.stop_at
    began, slowest = time.perf_counter(), 0.0
    for step in range(start, end):
        t0 = time.perf_counter()
        if cfg.time_limit is not None and t0 - began + slowest > cfg.time_limit:
            if step > start:
                _save(out, params, opt, cfg, step, base, settings, loaded)
            break
        lr = _lr(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        totals = {"kl": 0.0, "answer": 0.0, "tokens": 0}
        for i in range(cfg.batch_size):
            seed = derive_seed(cfg.seed, step * cfg.batch_size + i)
            parts = stream_step(model, loaded, cfg.seq_len, seed, 1 / cfg.batch_size, cfg.kl_weight)
            for k, v in parts.items():
                totals[k] += v
        torch.nn.utils.clip_grad_norm_(params.parameters(), cfg.grad_clip)
        opt.step()
        seconds = time.perf_counter() - t0
        slowest = max(slowest, seconds)
        n = cfg.batch_size
        record = {
            "step": step + 1, "kl": totals["kl"] / n, "answer": totals["answer"] / n, "lr": lr,
            "tokens_per_s": totals["tokens"] / seconds, "seconds": seconds,
        }  # fmt: skip
        if cfg.progress:
            print(json.dumps(record), flush=True)
        if cfg.log:
            with open(cfg.log, "a") as f:
                f.write(json.dumps(record) + "\n")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            _save(out, params, opt, cfg, step + 1, base, settings, loaded)
    return out


def stream_step(
    model: RetrofitLM, loaded: LoadedModel, T: int, seed: int, scale: float = 1.0, kl_weight: float = 1.0
) -> dict:
    """One memory stream through the retrofit: gradients of `scale` * (kl_weight * KL + answer loss)
    accumulate in the memory-read parameters. Returns the two losses and the tokens streamed."""
    tokenizer, plan = loaded.tokenizer, model.config.retrofit
    stream = memory_stream(model.config.chat, lambda t: len(tokenizer.encode(t)), T, seed)
    ids, offsets = tokenizer.encode_with_offsets(stream.text)
    ids = ids[:T]
    tokens = torch.tensor([ids], device=model.device)  # [1, T]
    is_answer = answer_token_mask(stream.answer_spans, offsets[: len(ids)])
    answers = [j - 1 for j, a in enumerate(is_answer) if a and j >= 1]  # logits at j-1 predict token j
    L, first = plan.chunk, plan.sinks + plan.window + plan.chunk - 1
    n_seg = (len(ids) + L - 1) // L
    late = [s for s in range(n_seg) if (s + 1) * L > first + L]  # segments that read a dictionary
    rng = random.Random(seed)
    chosen = set(rng.sample(late, min(KL_SEGMENTS, len(late)))) | {p // L for p in answers}
    kl_pos = [p for s in sorted(chosen) for p in range(max(s * L, first), min((s + 1) * L, len(ids) - 1))]
    if not kl_pos:
        return {"kl": 0.0, "answer": 0.0, "tokens": len(ids)}
    teacher = _teacher_logprobs(model, tokens, torch.tensor(kl_pos, device=model.device))  # [P, V]
    row = {p: i for i, p in enumerate(kl_pos)}
    state = model.init_state(1)
    kl_sum, ans_sum = 0.0, 0.0
    for s in range(n_seg):
        a, b = s * L, min((s + 1) * L, len(ids))
        mine = [p for p in kl_pos if a <= p < b]
        if not mine:
            with torch.no_grad():
                model.stream(tokens[:, a:b], state, last_only=True)
            continue
        local = torch.tensor([p - a for p in mine], device=model.device)
        logits, state = model.stream(tokens[:, a:b], state, positions=local)
        logp = F.log_softmax(logits[0].float(), dim=-1)  # [P_s, V]
        t_logp = teacher[[row[p] for p in mine]]
        kl = F.kl_div(logp, t_logp, log_target=True, reduction="sum") / len(kl_pos)
        targets = [(i, ids[p + 1]) for i, p in enumerate(mine) if p in answers]
        loss = kl_weight * kl
        if targets:
            rows = torch.tensor([i for i, _ in targets], device=model.device)
            gold = torch.tensor([t for _, t in targets], device=model.device)
            ce = F.nll_loss(logp[rows], gold, reduction="sum") / len(answers)
            loss, ans_sum = loss + ce, ans_sum + float(ce.detach())
        (scale * loss).backward()
        kl_sum += float(kl.detach())
    return {"kl": kl_sum, "answer": ans_sum, "tokens": len(ids)}


@torch.no_grad()
def _teacher_logprobs(model: RetrofitLM, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Full attention over the whole stream with the same weights: log-probabilities [P, V] at
    `positions` (the head is applied only there)."""
    llama = model.llama
    body = llama.model
    x = body.embed_tokens(tokens)
    pos = torch.arange(tokens.shape[1], device=tokens.device)
    for layer in body.layers:
        x = layer(x, pos)
    x = body.norm(x[0, positions])
    head = body.embed_tokens.weight if llama.lm_head is None else llama.lm_head.weight
    return F.log_softmax(F.linear(x, head).float(), dim=-1)


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr  # a few hundred numbers: a constant rate after warm-up


def _base_name(init: str | None) -> str:
    """What the adapter's JSON records as its base: a shipped model's name, else an absolute path."""
    if init is None:
        raise ValueError("tuning needs --init <pretrained checkpoint or name>")
    if init in PRETRAINED and not Path(init).exists():
        return init
    path = resolve_model_path(init)
    if is_adapter_dir(path):
        raise ValueError(f"{init} is a tuned memory reading; to train it further, give it as --out")
    for name, (_, filename) in PRETRAINED.items():  # a wheel's file copied elsewhere (a GPU machine
        if path.name == filename:  # without the wheel): recorded by name, and the digest checks it
            return name
    return str(path.resolve())


def _saved_retrofit(out: Path) -> RetrofitConfig:
    return RetrofitConfig.from_dict(json.loads((out / ADAPTER_CONFIG).read_text())["retrofit"])


def _save(out: Path, params, opt, cfg: TrainConfig, step: int, base: str, settings, loaded) -> None:
    params.save(out / ADAPTER)
    meta = {
        "base": base,
        "base_digest": source_digest(loaded.path),
        "retrofit": settings.to_dict(),
        "dtype": loaded.model.config.dtype,
        "trained": {
            "steps": step, "streams": step * cfg.batch_size, "tokens": step * cfg.batch_size * cfg.seq_len,
            "seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "lr": cfg.lr, "kl_weight": cfg.kl_weight,
            "data": "generated memory streams (agent/train/memory_streams.py), train vocabulary split",
        },
    }  # fmt: skip
    (out / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    state = opt.state_dict()
    tensors = {f"{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out / OPTIM))
    record = {"step": step, "train_config": asdict(cfg), "param_groups": state["param_groups"]}
    tmp = out / (TUNE_STATE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, out / TUNE_STATE)  # the step marker is written last: a crash leaves the old one


def _load(out: Path, params: MemoryReadParams, opt) -> int:
    record = json.loads((out / TUNE_STATE).read_text())
    for name, t in load_file(str(out / ADAPTER)).items():
        getattr(params, name).data.copy_(t)
    state: dict[int, dict] = {}
    for key, value in load_file(str(out / OPTIM)).items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    return int(record["step"])

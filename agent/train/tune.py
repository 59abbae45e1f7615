"""`ovq train --init <pretrained>`: fine-tune a retrofit with its memory in the forward pass.

What trains: the memory's own parameters (memory_read.py: per head, the temperature and bias of the
centroid logits and the gain on log(count); a few hundred numbers for SmolLM2), and with --lora-rank R
also low-rank adapters on the projections (lora.py; the checkpoint's weights stay frozen). Without a
LoRA, sinks and window are read as the checkpoint was trained, so inside the window the tuned model is
the base model exactly; a LoRA changes the model everywhere, and distillation from the frozen base
keeps ordinary text as it was.

Data: without a LoRA, memory streams (memory_streams.py: facts early, questions late, seq_len at most
the checkpoint's context, which the teacher reads whole); with one, recall dialogues
(recall_dialogues.py: facts told in passing, acknowledged or not, buried under small talk, documents
and pasted passages, asked back in other words at distances from 0 to the whole dialogue, and
questions about what was never told).

Each step streams `batch_size` examples of `seq_len` tokens through the retrofit, a segment of L
tokens at a time with the state detached between segments (truncated back-propagation: the dictionary
is built from the keys and values of earlier segments, and what learns is how they are read). Two
losses:
- distillation: KL(base model under full attention || tuned retrofit) on next-token distributions, over
  `KL_SEGMENTS` segments drawn at random and every segment holding an answer (its answer tokens
  excepted). The teacher is the checkpoint with no adapter over the stream up to its context; without a
  LoRA only positions past the first fold count (before it the two are the same model);
- the answers: cross-entropy of what the assistant should say (a recalled value; with a LoRA, whole
  acknowledgements, answers and "you haven't told me").
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
from ovq.agent.model.pretrained import lora as LORA_MOD
from ovq.agent.model.pretrained.lora import LORA, LoRAConfig, LoRALinear, parse_targets
from ovq.agent.model.pretrained.memory_read import ADAPTER, ADAPTER_CONFIG, MemoryReadParams, is_adapter_dir
from ovq.agent.model.pretrained.retrofit import RetrofitConfig, parse_retrofit
from ovq.agent.model.pretrained.streaming import RetrofitLM
from ovq.agent.tasks import answer_token_mask, derive_seed
from ovq.agent.train.config import TrainConfig
from ovq.agent.train.memory_streams import memory_stream
from ovq.agent.train.recall_dialogues import recall_dialogue

TUNE_STATE, OPTIM = "tune_state.json", "tune_optimizer.safetensors"
KL_SEGMENTS = 2  # random segments distilled per example (besides the answers')
LONG_SHARE = 0.25  # recall dialogues twice --seq-len long (KL only up to the teacher's context)
# TrainConfig fields that mean something for the hybrid only: a tune refuses them when changed
HYBRID_ONLY = ("preset", "tasks", "vocab_size", "tokenizer", "lm_weight", "workers", "chat_format")
DATA = {
    "streams": "generated memory streams (agent/train/memory_streams.py), train vocabulary split",
    "dialogues": "generated recall dialogues (agent/train/recall_dialogues.py): train vocabulary split, "
    "generated small talk and documents, passages of Python standard-library docstrings (PSF licence)",
}


def tune(cfg: TrainConfig, retrofit: str | None = None) -> Path:
    """Train (or resume) the memory reading (and a LoRA) of `cfg.init` into cfg.out; returns cfg.out."""
    defaults = TrainConfig()
    changed = [f"--{k.replace('_', '-')}" for k in HYBRID_ONLY if getattr(cfg, k) != getattr(defaults, k)]
    if changed:
        raise ValueError(
            f"{', '.join(changed)}: hybrid training options; a pretrained --init tunes its memory"
        )
    out = Path(cfg.out)
    resume = (out / TUNE_STATE).is_file()
    saved = json.loads((out / ADAPTER_CONFIG).read_text()) if resume else None
    base = saved["base"] if resume else _base_name(cfg.init)
    settings = _saved_retrofit(out) if resume else parse_retrofit(retrofit)
    if resume and retrofit is not None and parse_retrofit(retrofit) != settings:
        raise ValueError(
            f"{out} holds a tune for retrofit {settings.to_dict()}; it cannot resume with another"
        )
    if settings.kind != "memory":
        raise ValueError(f"retrofit {settings.kind!r} has no memory to tune")
    lora_cfg = _lora_config(cfg)
    if resume and (LoRAConfig.from_dict(saved["lora"]) if saved.get("lora") else None) != lora_cfg:
        raise ValueError(f"{out} holds a tune with LoRA {saved.get('lora')}; it cannot resume with another")
    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    loaded = load_model(base, device=device, retrofit=settings)
    model = loaded.model
    if not isinstance(model, RetrofitLM):
        raise ValueError(f"{base} is not a pretrained checkpoint")
    c = model.config.llama
    if lora_cfg is None and cfg.seq_len > c.max_context:
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
    lora = LORA_MOD.attach(model.llama, lora_cfg) if lora_cfg is not None else {}
    groups = [{"params": list(params.parameters()), "lr": cfg.lr, "peak": cfg.lr}]
    if lora:
        lora_params = [p for m in lora.values() for p in (m.A, m.B)]
        groups.append({"params": lora_params, "lr": cfg.lora_lr, "peak": cfg.lora_lr})
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95), weight_decay=0.0)
    start = 0
    if resume:
        start = _load(out, params, lora, opt)
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
                _save(out, params, lora, lora_cfg, opt, cfg, step, base, settings, loaded)
            break
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg, group.get("peak", cfg.lr))  # (older runs: one group)
        opt.zero_grad(set_to_none=True)
        totals = {"kl": 0.0, "answer": 0.0, "tokens": 0}
        for i in range(cfg.batch_size):
            seed = derive_seed(cfg.seed, step * cfg.batch_size + i)
            if lora:
                parts = dialogue_step(
                    model, loaded, cfg.seq_len, seed, 1 / cfg.batch_size, cfg.kl_weight, lora
                )
            else:
                parts = stream_step(model, loaded, cfg.seq_len, seed, 1 / cfg.batch_size, cfg.kl_weight)
            for k, v in parts.items():
                totals[k] += v
        trained = [p for g in opt.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip)
        opt.step()
        seconds = time.perf_counter() - t0
        slowest = max(slowest, seconds)
        n = cfg.batch_size
        record = {
            "step": step + 1, "kl": totals["kl"] / n, "answer": totals["answer"] / n,
            "lr": opt.param_groups[-1]["lr"], "tokens_per_s": totals["tokens"] / seconds, "seconds": seconds,
        }  # fmt: skip
        if cfg.progress:
            print(json.dumps(record), flush=True)
        if cfg.log:
            with open(cfg.log, "a") as f:
                f.write(json.dumps(record) + "\n")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
            _save(out, params, lora, lora_cfg, opt, cfg, step + 1, base, settings, loaded)
    return out


def _lora_config(cfg: TrainConfig) -> LoRAConfig | None:
    if cfg.lora_rank == 0:
        return None
    return LoRAConfig(cfg.lora_rank, cfg.lora_alpha, parse_targets(cfg.lora_targets))


def stream_step(
    model: RetrofitLM, loaded: LoadedModel, T: int, seed: int, scale: float = 1.0, kl_weight: float = 1.0
) -> dict:
    """One memory stream through the retrofit: gradients of `scale` * (kl_weight * KL + answer loss)
    accumulate in the memory-read parameters. Returns the two losses and the tokens streamed."""
    tokenizer = loaded.tokenizer
    stream = memory_stream(model.config.chat, lambda t: len(tokenizer.encode(t)), T, seed)
    ids, offsets = tokenizer.encode_with_offsets(stream.text)
    ids = ids[:T]
    is_answer = answer_token_mask(stream.answer_spans, offsets[: len(ids)])
    answers = [j - 1 for j, a in enumerate(is_answer) if a and j >= 1]  # logits at j-1 predict token j
    plan = model.config.retrofit
    first = plan.sinks + plan.window + plan.chunk - 1  # before it the retrofit is the base model
    return _train_segments(model, ids, answers, seed, scale, kl_weight, first, {})


def dialogue_step(
    model: RetrofitLM,
    loaded: LoadedModel,
    T: int,
    seed: int,
    scale: float = 1.0,
    kl_weight: float = 1.0,
    lora: dict[str, LoRALinear] | None = None,
) -> dict:
    """One recall dialogue of `T` tokens (2T for a LONG_SHARE of seeds) through the retrofit (with its
    LoRA, if any): gradients of `scale` * (kl_weight * KL to the base model + loss on what the
    assistant should say) accumulate in every trained parameter. Returns the two losses and the
    tokens streamed."""
    tokenizer = loaded.tokenizer
    if random.Random(seed).random() < LONG_SHARE:  # farther distances, a fuller dictionary
        T *= 2
    dialogue = recall_dialogue(model.config.chat, lambda t: len(tokenizer.encode(t)), T, seed)
    ids, offsets = tokenizer.encode_with_offsets(dialogue.text)
    ids = ids[:T]
    is_target = answer_token_mask(dialogue.targets, offsets[: len(ids)])
    targets = [j - 1 for j, a in enumerate(is_target) if a and j >= 1]
    return _train_segments(model, ids, targets, seed, scale, kl_weight, 0, lora or {})


def _train_segments(
    model: RetrofitLM,
    ids: list[int],
    answers: list[int],
    seed: int,
    scale: float,
    kl_weight: float,
    first: int,
    lora: dict[str, LoRALinear],
) -> dict:
    """The segment loop both kinds of example share. `answers`: positions whose logits predict a
    target token (cross-entropy); KL to the teacher on the other positions of the chosen segments from
    `first` on (and below the teacher's context)."""
    L, T = model.config.retrofit.chunk, len(ids)
    tokens = torch.tensor([ids], device=model.device)  # [1, T]
    n_seg = (T + L - 1) // L
    rng = random.Random(seed)
    context = model.config.llama.max_context
    reach = [s for s in range(n_seg) if (s + 1) * L > first and s * L < context - 1]
    chosen = set(rng.sample(reach, min(KL_SEGMENTS, len(reach)))) | {p // L for p in answers}
    targets = set(answers)
    kl_pos = [
        p for s in sorted(chosen) for p in range(max(s * L, first), min((s + 1) * L, T - 1, context))
        if p not in targets or not lora  # a LoRA is taught the answer, not the base model's guess at it
    ]  # fmt: skip
    if not kl_pos and not answers:
        return {"kl": 0.0, "answer": 0.0, "tokens": T}
    teacher = _teacher_logprobs(model, tokens, kl_pos, lora)  # [P, V]
    row = {p: i for i, p in enumerate(kl_pos)}
    state = model.init_state(1)
    kl_sum, ans_sum = 0.0, 0.0
    for s in range(n_seg):
        a, b = s * L, min((s + 1) * L, T)
        mine = sorted({p for p in kl_pos if a <= p < b} | {p for p in answers if a <= p < b})
        if not mine:
            with torch.no_grad():
                model.stream(tokens[:, a:b], state, last_only=True)
            continue
        local = torch.tensor([p - a for p in mine], device=model.device)
        logits, state = model.stream(tokens[:, a:b], state, positions=local)
        logp = F.log_softmax(logits[0].float(), dim=-1)  # [P_s, V]
        loss = logp.new_zeros(())
        distilled = [i for i, p in enumerate(mine) if p in row]
        if distilled:
            t_logp = teacher[[row[mine[i]] for i in distilled]]
            kl = F.kl_div(logp[distilled], t_logp, log_target=True, reduction="sum") / len(kl_pos)
            loss, kl_sum = loss + kl_weight * kl, kl_sum + float(kl.detach())
        taught = [(i, ids[p + 1]) for i, p in enumerate(mine) if p in targets]
        if taught:
            rows = torch.tensor([i for i, _ in taught], device=model.device)
            gold = torch.tensor([t for _, t in taught], device=model.device)
            ce = F.nll_loss(logp[rows], gold, reduction="sum") / len(answers)
            loss, ans_sum = loss + ce, ans_sum + float(ce.detach())
        (scale * loss).backward()
    return {"kl": kl_sum, "answer": ans_sum, "tokens": T}


@torch.no_grad()
def _teacher_logprobs(
    model: RetrofitLM, tokens: torch.Tensor, positions: list[int], lora: dict[str, LoRALinear]
) -> torch.Tensor:
    """The base model (no adapter) under full attention over the stream, up to the last position
    asked: log-probabilities [P, V] at `positions` (the head is applied only there)."""
    if not positions:
        return torch.empty(0, model.config.vocab_size, device=tokens.device)
    LORA_MOD.set_enabled(lora, False)
    try:
        llama = model.llama
        body = llama.model
        end = max(positions) + 1
        x = body.embed_tokens(tokens[:, :end])
        pos = torch.arange(end, device=tokens.device)
        for layer in body.layers:
            x = layer(x, pos)
        x = body.norm(x[0, torch.tensor(positions, device=tokens.device)])
        head = body.embed_tokens.weight if llama.lm_head is None else llama.lm_head.weight
        return F.log_softmax(F.linear(x, head).float(), dim=-1)
    finally:
        LORA_MOD.set_enabled(lora, True)


def _lr(step: int, cfg: TrainConfig, peak: float) -> float:
    if step < cfg.warmup:
        return peak * (step + 1) / cfg.warmup
    return peak  # a constant rate after warm-up


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


def _save(
    out: Path, params, lora, lora_cfg, opt, cfg: TrainConfig, step: int, base, settings, loaded
) -> None:
    params.save(out / ADAPTER)
    if lora:
        LORA_MOD.save(lora, out / LORA)
    meta = {
        "base": base,
        "base_digest": source_digest(loaded.path),
        "retrofit": settings.to_dict(),
        "dtype": loaded.model.config.dtype,
        "trained": {
            "steps": step, "streams": step * cfg.batch_size, "tokens": step * cfg.batch_size * cfg.seq_len,
            "seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "lr": cfg.lr, "kl_weight": cfg.kl_weight,
            "data": DATA["dialogues" if lora else "streams"],
        },
    }  # fmt: skip
    if lora:
        meta["lora"] = lora_cfg.to_dict()
        meta["trained"]["lora_lr"] = cfg.lora_lr
    (out / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    state = opt.state_dict()
    tensors = {f"{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out / OPTIM))
    record = {"step": step, "train_config": asdict(cfg), "param_groups": state["param_groups"]}
    tmp = out / (TUNE_STATE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, out / TUNE_STATE)  # the step marker is written last: a crash leaves the old one


def _load(out: Path, params: MemoryReadParams, lora: dict[str, LoRALinear], opt) -> int:
    record = json.loads((out / TUNE_STATE).read_text())
    for name, t in load_file(str(out / ADAPTER)).items():
        getattr(params, name).data.copy_(t)
    if lora:
        LORA_MOD.load_into(lora, load_file(str(out / LORA)))
    state: dict[int, dict] = {}
    for key, value in load_file(str(out / OPTIM)).items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    return int(record["step"])

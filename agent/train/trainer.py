"""Training: `ovq train`. CPU, one GPU, or several through `torchrun` (DistributedDataParallel).

Batches are a deterministic function of (seed, step): example i of step s is generated from
derive_seed(seed, s * batch + i), and rank r of w takes examples r, r+w, ... of the global batch, so
any number of processes trains on exactly the same data. The loss is the mean over the global batch
of the tokens that carry loss (answer tokens where the task marks answers, else every token), plus
`lm_weight` times the mean over every (non-padding) token: answers alone are a sparse signal, and
predicting the rest teaches the chat format and copying.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ovq.agent.model.checkpoint import load_model, save_model
from ovq.agent.model.hybrid import HybridLM, ModelConfig, layer_kinds
from ovq.agent.model.tokenizer import BOS, PAD, Tokenizer
from ovq.agent.tasks import answer_token_mask, derive_seed
from ovq.agent.train.config import SHAPE, TrainConfig, parse_mix, parse_ovq

TRAIN_STATE, OPTIM = "train_state.json", "optimizer.safetensors"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio * lr."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    )


def make_example_tokens(mix, tokenizer: Tokenizer, seed: int, index: int, T: int):
    """Example `index` of the stream: (tokens [T+1], loss mask over targets [T])."""
    rng = random.Random(derive_seed(seed, 2 * index))
    task = rng.choices([t for t, _ in mix], weights=[w for _, w in mix])[0]
    example = task(derive_seed(seed, 2 * index + 1))
    ids, offsets = tokenizer.encode_with_offsets(example.text)
    mask = answer_token_mask(example.answer_spans, offsets)
    ids, mask = [tokenizer.special[BOS], *ids][: T + 1], [False, *mask][: T + 1]
    pad = T + 1 - len(ids)
    ids, mask = ids + [tokenizer.special[PAD]] * pad, mask + [False] * pad
    return torch.tensor(ids), torch.tensor(mask[1:])


def make_batch(mix, tokenizer, cfg: TrainConfig, step: int, rank: int = 0, world: int = 1):
    rows = [
        make_example_tokens(mix, tokenizer, cfg.seed, step * cfg.batch_size + i, cfg.seq_len)
        for i in range(rank, cfg.batch_size, world)
    ]
    tokens, mask = torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
    if not mask.any():
        raise ValueError(
            f"step {step}: no answer tokens within seq_len={cfg.seq_len}; the task examples are longer "
            "than a sequence (raise --seq-len or use shorter task presets)"
        )
    return tokens, mask


class _StepBatches(torch.utils.data.Dataset):
    """Batch i is the batch of step steps[i]: what a step trains on does not depend on who made it."""

    def __init__(self, mix, tokenizer, cfg: TrainConfig, steps: range, rank: int, world: int) -> None:
        self.mix, self.tokenizer, self.cfg = mix, tokenizer, cfg
        self.steps, self.rank, self.world = steps, rank, world

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int):
        return make_batch(self.mix, self.tokenizer, self.cfg, self.steps[i], self.rank, self.world)


def _batches(mix, tokenizer, cfg: TrainConfig, steps: range, rank: int, world: int, pin: bool):
    """The batches of `steps` in order; with cfg.workers > 0, made ahead by that many processes
    (text generation and tokenisation are Python and would otherwise starve a GPU)."""
    data = _StepBatches(mix, tokenizer, cfg, steps, rank, world)
    if cfg.workers == 0:
        return (data[i] for i in range(len(data)))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # each worker tokenises on its own core
    return iter(
        torch.utils.data.DataLoader(
            data, batch_size=None, num_workers=cfg.workers, pin_memory=pin, prefetch_factor=4
        )
    )


def train_tokenizer(mix, cfg: TrainConfig, n_texts: int = 2000) -> Tokenizer:
    texts = (
        random.Random(i)
        .choices([t for t, _ in mix], weights=[w for _, w in mix])[0](derive_seed(cfg.seed + 7, i))
        .text
        for i in range(n_texts)
    )
    return Tokenizer.train(texts, vocab_size=cfg.vocab_size)


def train(cfg: TrainConfig, model_overrides: dict | None = None) -> Path:
    """Train (or resume) into cfg.out; returns the model directory. Call under torchrun for DDP.
    A pretrained --init (or a tune to resume in cfg.out) tunes its memory reading instead (tune.py)."""
    if _is_tune(cfg):
        from ovq.agent.train.tune import tune

        return tune(cfg, cfg.retrofit)
    if cfg.retrofit is not None or cfg.kl_weight != 1.0:
        raise ValueError(
            "--retrofit and --kl-weight apply to a pretrained --init (a checkpoint or a name like smollm2)"
        )
    rank, world = _init_distributed()
    device = _device(cfg.device, rank)
    out = Path(cfg.out)
    resume = (out / TRAIN_STATE).is_file()
    torch.manual_seed(cfg.seed)
    # the chat format: a resumed run's own; else --chat-format; else --init's; else plain
    if cfg.init is not None and not resume:  # fine-tune: the init model's config, tokenizer, weights
        loaded = load_model("tiny" if cfg.init == "default" else cfg.init)
        model, tokenizer = loaded.model.train().to(device), loaded.tokenizer
        model.config = replace(model.config, chat_format=cfg.chat_format or model.config.chat_format)
        mix = parse_mix(cfg.tasks, model.config.chat_format)
    else:
        if resume:
            config = ModelConfig.from_json((out / "config.json").read_text())
            if cfg.chat_format not in (None, config.chat_format):
                raise ValueError(
                    f"{out} holds a run in chat format {config.chat_format!r}; "
                    f"it cannot resume as {cfg.chat_format!r}"
                )
            for k, v in _shape(cfg).items():
                saved = ",".join(config.kinds) if k == "layers" else getattr(config, k)
                if saved != v:
                    raise ValueError(f"{out} holds a run with {k}={saved!r}; it cannot resume with {v!r}")
        chat = config.chat_format if resume else cfg.chat_format or "plain"
        mix = parse_mix(cfg.tasks, chat)
        if resume or cfg.tokenizer:
            tokenizer = Tokenizer.load(out if resume else cfg.tokenizer)
        else:
            tokenizer = train_tokenizer(mix, cfg)
        if not resume:
            overrides = {**_shape(cfg), "chat_format": chat, **(model_overrides or {})}
            config = ModelConfig.preset(cfg.preset, tokenizer.vocab_size, **overrides)
        model = HybridLM(config).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )
    start = _load_train_state(out, model, opt, cfg) if resume else 0
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()
    progress = _Progress(cfg.steps, start, enabled=cfg.progress and rank == 0)
    end = cfg.steps if cfg.stop_at is None else cfg.stop_at
    batches = _batches(mix, tokenizer, cfg, range(start, end), rank, world, pin=device.type == "cuda")
    t0 = began = time.perf_counter()
    slowest = 0.0
    for step, (tokens, mask) in zip(range(start, end), batches):
        if cfg.time_limit is not None and time.perf_counter() - began + slowest > cfg.time_limit:
            if rank == 0 and step > start:
                _save_train_state(out, model, tokenizer, opt, cfg, step)
            break
        tokens, mask = tokens.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        valid = tokens[:, 1:] != tokenizer.special[PAD]
        counts = torch.stack([mask.sum(), valid.sum()]).float()
        if world > 1:
            dist.all_reduce(counts)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        with autocast:
            logits, _ = net(tokens[:, :-1], keep_state=False)
        nll = F.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
        # sums over this rank's tokens / all ranks' counts; DDP averages gradients over ranks
        loss = (nll * mask.flatten()).sum() * world / counts[0].clamp_min(1)
        if cfg.lm_weight > 0:
            loss = loss + cfg.lm_weight * (nll * valid.flatten()).sum() * world / counts[1].clamp_min(1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        reported = loss.detach() / world
        if world > 1:
            dist.all_reduce(reported)
        slowest = max(slowest, time.perf_counter() - t0)
        tps = tokens[:, :-1].numel() * world / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        progress.update(step + 1, float(reported), tps)
        if rank == 0 and cfg.log:
            record = {"step": step + 1, "loss": float(reported), "lr": lr_at(step, cfg), "tokens_per_s": tps}
            with open(cfg.log, "a") as f:
                f.write(json.dumps(record) + "\n")
        if rank == 0 and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == end):
            _save_train_state(out, model, tokenizer, opt, cfg, step + 1)
    progress.close()
    if world > 1:
        dist.barrier()
    return out


def _is_tune(cfg: TrainConfig) -> bool:
    from ovq.agent.model.checkpoint import is_pretrained
    from ovq.agent.model.names import resolve_model_path
    from ovq.agent.model.pretrained.memory_read import is_adapter_dir
    from ovq.agent.train.tune import TUNE_STATE

    if (Path(cfg.out) / TUNE_STATE).is_file():
        return True
    if cfg.init is None or cfg.init == "default":
        return False
    path = resolve_model_path(cfg.init)  # a pretrained name not installed: FileNotFoundError saying how
    return is_pretrained(path) or is_adapter_dir(path)


def _shape(cfg: TrainConfig) -> dict:
    """The ModelConfig fields that cfg's --layers, --ovq, --d-model, --n-heads, --window and
    --conv-kernel set."""
    shape = {k: getattr(cfg, k) for k in SHAPE if getattr(cfg, k) is not None}
    if "layers" in shape:
        shape["layers"] = ",".join(layer_kinds(cfg.layers))
    if "ovq" in shape:
        shape["ovq"] = parse_ovq(cfg.ovq)
    return shape


def _save_train_state(out: Path, model, tokenizer, opt, cfg: TrainConfig, step: int) -> None:
    save_model(model, tokenizer, out)
    state = opt.state_dict()
    tensors = {f"{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()}
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out / OPTIM))
    meta = {"step": step, "train_config": asdict(cfg), "param_groups": state["param_groups"]}
    tmp = out / (TRAIN_STATE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out / TRAIN_STATE)  # the step marker is written last: a crash leaves the old one


def _load_train_state(out: Path, model, opt, cfg: TrainConfig) -> int:
    meta = json.loads((out / TRAIN_STATE).read_text())
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    flat = load_file(str(out / OPTIM))
    state: dict[int, dict] = {}
    for key, value in flat.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"])


def _init_distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if world > 1 else (0, 1)


def _device(name: str, rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    return torch.device(name)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


class _Progress:
    """A rich progress bar with loss and tokens/s (rank 0 only)."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:,.0f} tok/s"),
                TimeRemainingColumn(),
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, loss=float("nan"), tps=0.0)
        self.last_loss = float("nan")

    def update(self, step: int, loss: float, tps: float) -> None:
        self.last_loss = loss
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=loss, tps=tps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

"""`ovq train`'s configuration, kept free of torch so that the CLI starts fast."""

from __future__ import annotations

from dataclasses import dataclass

from ovq.agent.model.tokenizer import chat_format
from ovq.agent.tasks import BoundTask, make_chat_task

# options that override the preset's shape
SHAPE = ("layers", "ovq", "d_model", "n_heads", "window", "conv_kernel")


@dataclass(frozen=True)
class TrainConfig:
    """`ovq train`'s options; HELP says what each one means."""

    out: str = "runs/model"
    preset: str = "default"
    layers: str | None = None
    ovq: str | None = None
    d_model: int | None = None
    n_heads: int | None = None
    window: int | None = None
    conv_kernel: int | None = None
    tasks: str = "memory_dialogue:1"
    steps: int = 1000
    batch_size: int = 8
    seq_len: int = 1024
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    lm_weight: float = 0.0
    seed: int = 0
    vocab_size: int = 4096
    tokenizer: str | None = None
    checkpoint_every: int = 200
    stop_at: int | None = None
    device: str = "auto"
    progress: bool = True
    log: str | None = None
    init: str | None = None
    workers: int = 0
    chat_format: str | None = None
    retrofit: str | None = None
    time_limit: float | None = None
    kl_weight: float = 1.0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: str = "attn,mlp"
    lora_lr: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "vocab_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 <= self.min_lr_ratio <= 1 and self.warmup >= 0 and self.grad_clip > 0):
            raise ValueError("need lr > 0, 0 <= min_lr_ratio <= 1, warmup >= 0, grad_clip > 0")
        if self.init is not None and self.tokenizer is not None:
            raise ValueError("--init brings its model's own tokenizer; drop --tokenizer")
        given = ["--" + k.replace("_", "-") for k in SHAPE if getattr(self, k) is not None]
        if self.init is not None and given:
            raise ValueError(f"--init brings its model's own architecture; drop {', '.join(given)}")
        for name in SHAPE[2:]:  # the integer ones
            least = 2 if name == "conv_kernel" else 1  # a kernel of 1 would see only its own position
            if getattr(self, name) is not None and getattr(self, name) < least:
                raise ValueError(f"{name} must be >= {least}, got {getattr(self, name)}")
        if self.ovq is not None:
            parse_ovq(self.ovq)
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not self.lm_weight >= 0:
            raise ValueError(f"lm_weight must be >= 0, got {self.lm_weight}")
        if not self.kl_weight >= 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: no LoRA), got {self.lora_rank}")
        if not (self.lora_alpha > 0 and self.lora_lr > 0):
            raise ValueError(f"need lora_alpha > 0 and lora_lr > 0, got {self.lora_alpha}, {self.lora_lr}")
        if self.lora_rank and self.init is None:
            raise ValueError("--lora-rank adapts a pretrained model: give it with --init")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be > 0 seconds, got {self.time_limit}")
        if self.stop_at is not None and not 1 <= self.stop_at <= self.steps:
            raise ValueError(f"stop_at must lie in [1, steps={self.steps}], got {self.stop_at}")
        if self.chat_format is not None:
            chat_format(self.chat_format)
        parse_mix(self.tasks)


HELP = {
    "out": "output directory: weights, config, tokenizer, checkpoints (an existing run there resumes)",
    "preset": "ModelConfig preset: tiny, small, default, base, large",
    "layers": 'override the preset\'s layer pattern, e.g. "swa,full" for a baseline',
    "ovq": 'override the preset\'s OVQ memory: "L,N" or "L,N,schedule", e.g. "32,256,linear"',
    "d_model": "override the preset's model width",
    "n_heads": "override the preset's number of attention heads (must divide the width)",
    "window": "override the preset's sliding-window size W (tokens)",
    "conv_kernel": "positions K that each `conv` layer mixes (itself and K-1 before it)",
    "tasks": 'task mix "name[@preset]:weight,...", e.g. "recite:1,memory_dialogue@train_1k:3"',
    "steps": "optimizer steps (the learning-rate schedule spans them)",
    "batch_size": "global batch, in sequences (split over DDP ranks)",
    "seq_len": "tokens per sequence (inputs)",
    "lr": "peak learning rate (AdamW)",
    "min_lr_ratio": "cosine decay ends at lr times this",
    "warmup": "linear warm-up steps",
    "weight_decay": "AdamW weight decay on matrices",
    "grad_clip": "gradient norm clip",
    "lm_weight": "> 0: add this times the mean loss over every token to the answer-token loss",
    "seed": "data and initialisation seed",
    "vocab_size": "size of the tokenizer trained on task text when none is given",
    "tokenizer": "path of a tokenizer.json to reuse",
    "checkpoint_every": "steps between checkpoints (resumable)",
    "stop_at": "checkpoint and stop after this step (for jobs shorter than the run)",
    "device": "auto | cpu | cuda",
    "progress": "show a progress bar",
    "log": "append one JSON line per step (step, loss, lr, tokens/s) to this file",
    "init": 'start from this model directory\'s weights ("default" or "tiny": the shipped hybrid)',
    "workers": "processes generating batches ahead of the step (0: in the training process)",
    "time_limit": "seconds this run may take: it checkpoints and stops before the next step would pass "
    "them (resume it later; sized by the slowest step so far)",
    "kl_weight": "with a pretrained --init: weight of the distillation from full attention against the "
    "answers' loss (higher keeps plain text as the base model predicts it)",
    "lora_rank": "with a pretrained --init: rank of low-rank adapters on --lora-targets, trained with the "
    "memory reading on recall dialogues (0: the memory reading alone, on memory streams)",
    "lora_alpha": "LoRA scale numerator: the update is (alpha / rank) * B A",
    "lora_targets": "projections a LoRA adapts in every layer: attn (q, k, v, o), mlp (gate, up, down), or "
    "module names, comma-separated",
    "lora_lr": "learning rate of the LoRA (the memory reading keeps --lr)",
    "retrofit": "with a pretrained --init: the retrofit whose memory reading is tuned (default: memory)",
    "chat_format": 'how chat turns are written: "plain" (the shipped model) or "spaced" (a space opens '
    "each turn, so an answer keeps the tokens of its statement); default: --init's, else plain",
}


def parse_ovq(spec: str):
    """ "L,N[,schedule]" -> memory.OVQConfig(chunk_size=L, capacity=N, schedule) (default plateau)."""
    from ovq.memory.config import OVQConfig  # torch comes with it: only when a config is built

    parts = [p.strip() for p in spec.split(",")]
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[:2]):
        raise ValueError(f"--ovq takes 'L,N' or 'L,N,schedule' with integers L and N, got {spec!r}")
    try:
        return OVQConfig(int(parts[0]), int(parts[1]), *parts[2:])
    except ValueError as e:
        raise ValueError(f"--ovq {spec!r}: {e}") from None


def parse_mix(spec: str, chat: str = "plain") -> list[tuple[BoundTask, float]]:
    """'memory_dialogue:3,icr@small:1' -> [(task, weight), ...]; a missing weight means 1. Tasks
    written as chat turns are written in the chat format `chat`."""
    mix = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, weight = part.partition(":")
        name, _, preset = name.partition("@")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"bad weight {weight!r} in task mix {spec!r}") from None
        if not w > 0:
            raise ValueError(f"task weights must be positive, got {w} for {name!r}")
        mix.append((make_chat_task(name, preset or "default", chat), w))
    if not mix:
        raise ValueError(f"empty task mix {spec!r}")
    return mix

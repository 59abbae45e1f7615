"""Generation: a plain generator of tokens, and the text layer above it (streamed pieces, stop strings).

Contract: when `generate_tokens` yields a token, the model state has already consumed it. So whenever
the consumer stops (a stop token or string, max tokens, cancellation, an exception), the state holds
exactly the prompt plus the tokens yielded so far: nothing half-done.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ovq.agent.model.hybrid import HybridLM, ModelState
from ovq.agent.model.tokenizer import Tokenizer


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 0 is greedy; top_k 0 and top_p 1 disable those filters. repeat_penalty > 1 makes
    the tokens among the reply's last `repeat_last_n` less likely (a logit l becomes l / p when positive,
    l * p when not, as in CTRL and llama.cpp); 1 disables it. Only the reply's own tokens count: a
    name the user said is not penalised when the reply has to give it back."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if not self.repeat_penalty >= 1:
            raise ValueError(f"repeat_penalty must be >= 1 (1 disables it), got {self.repeat_penalty}")
        if self.repeat_last_n < 1:
            raise ValueError(f"repeat_last_n must be >= 1, got {self.repeat_last_n}")


class CancelToken:
    """Set from any thread to stop a generation after the current token."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


def sample(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator, recent: Sequence[int] = ()
) -> int:
    """One token from logits [V]; `recent`: the reply's tokens so far, for cfg.repeat_penalty."""
    if cfg.repeat_penalty != 1 and recent:
        seen = torch.tensor(sorted(set(recent[-cfg.repeat_last_n :])), device=logits.device)
        hit = logits[seen].float()
        hit = torch.where(hit > 0, hit / cfg.repeat_penalty, hit * cfg.repeat_penalty)
        logits = logits.float().index_copy(0, seen, hit)
    if cfg.temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / cfg.temperature
    if cfg.top_k:
        kth = torch.topk(logits, min(cfg.top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if cfg.top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = sorted_p.cumsum(0) - sorted_p >= cfg.top_p
        probs = probs.scatter(0, order, sorted_p.masked_fill(drop, 0.0))
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.no_grad()
def generate_tokens(
    model: HybridLM,
    state: ModelState,
    prompt: list[int],
    cfg: SamplingConfig,
    generator: torch.Generator,
    stop_tokens: frozenset[int] = frozenset(),
    cancel: CancelToken | None = None,
) -> Iterator[int]:
    """Feed `prompt` (which must be non-empty, or the state must have seen a token), then yield up to
    cfg.max_tokens sampled tokens. A stop token is fed and yielded, then generation ends."""
    device = model.device
    if not prompt:
        raise ValueError("generation needs a non-empty prompt")
    logits, state = model(torch.tensor([prompt], device=device), state, last_only=True)
    reply: list[int] = []
    for _ in range(cfg.max_tokens):
        if cancel is not None and cancel.cancelled:
            return
        token = sample(logits[0, -1], cfg, generator, reply)
        reply.append(token)
        logits, state = model(
            torch.tensor([[token]], device=device), state, last_only=True
        )  # fed, then yielded
        yield token
        if token in stop_tokens:
            return


def stream_text(tokenizer: Tokenizer, tokens: Iterator[int], stop: tuple[str, ...] = ()) -> Iterator[str]:
    """Text pieces of `tokens`; ends at the first stop string, which is not emitted. Text that could
    still turn into a stop string is held back until it cannot."""
    held = ""
    longest = max((len(s) for s in stop), default=0)
    for piece in tokenizer.decode_stream(tokens, skip_special=True):
        held += piece
        cut = min((i for i in (held.find(s) for s in stop) if i >= 0), default=-1)
        if cut >= 0:
            if cut:
                yield held[:cut]
            if hasattr(tokens, "close"):  # stop the model too: the state ends at this token
                tokens.close()
            return
        safe = len(held) - _pending_prefix(held, stop, longest)
        if safe > 0:
            yield held[:safe]
            held = held[safe:]
    if held:
        yield held


def _pending_prefix(text: str, stop: tuple[str, ...], longest: int) -> int:
    """Length of the longest tail of `text` that is a proper prefix of some stop string."""
    for n in range(min(longest - 1, len(text)), 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stop):
            return n
    return 0

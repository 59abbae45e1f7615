"""Two checks of a memory setting besides recall (agent/eval/chat_recall.py), for any session:

- perplexity of a long text by position: what the bounded memory costs on ordinary reading, in
  buckets of stream position (a memory that only helps recall but hurts text is no product);
- greedy replies to ordinary messages inside the window: a retrofit there must be the base model,
  so its replies should equal full attention's word for word.

The long text is CPython's own help prose (`pydoc_data.topics`, PSF licence: the same passages
chat_recall.py feeds as filler), read in document order from a seeded start.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from ovq.agent.eval.chat_recall import help_passages
from ovq.agent.model.generate import SamplingConfig

EDGES = (512, 2048, 8192, 32768)  # perplexity buckets: [0, 512), [512, 2048), ...

# Ordinary messages a person types (written for this check; no fact, no template of ours).
MESSAGES = (
    "Can you suggest a quick dinner I could make with eggs and spinach?",
    "What's a polite way to decline a meeting invitation?",
    "Explain in two sentences why the sky is blue.",
    "I have a job interview tomorrow. Any tips?",
    "How do I keep basil alive on a windowsill?",
    "Write a short haiku about autumn rain.",
    "What is the difference between weather and climate?",
    "Give me three ideas for a rainy Sunday afternoon.",
    "How many minutes should I boil an egg for a runny yolk?",
    "Summarise the plot of Romeo and Juliet in one sentence.",
    "What should I pack for a weekend hiking trip?",
    "Why do cats purr?",
)


class ScoringSession(Protocol):
    @property
    def tokens_seen(self) -> int: ...

    def feed(self, text: str, role: str | None = None) -> int: ...

    def score(self, text: str, context: str = "") -> list[float]: ...

    def reply(self, message: str, sampling: SamplingConfig) -> str: ...


def long_text(count_tokens: Callable[[str], int], tokens: int, seed: int = 0) -> str:
    """Help prose of at most `tokens` tokens (and within a paragraph of it): whole paragraphs in
    document order from a seeded start (or the first one's first words, if it alone is too long).
    Measured joined (paragraphs counted apart come out shorter)."""
    passages = help_passages()
    start = random.Random(seed).randrange(len(passages))
    parts, n = [], 0
    while n <= tokens:  # enough paragraphs, by their separate counts, to pass the budget
        parts.append(passages[(start + len(parts)) % len(passages)])
        n += count_tokens(parts[-1])
    fits = lambda k: count_tokens("\n\n".join(parts[:k])) <= tokens  # noqa: E731
    lo, hi = 0, len(parts)  # the most paragraphs that fit, joined: fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    if lo:
        return "\n\n".join(parts[:lo])
    words = parts[0].split(" ")  # not one paragraph fits: as many of the first one's words as do
    lo, hi = 0, len(words)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count_tokens(" ".join(words[:mid])) <= tokens else (lo, mid)
    return " ".join(words[:lo])


def perplexity_by_position(session: ScoringSession, text: str, edges: Sequence[int] = EDGES) -> list[dict]:
    """Feed `text` through `session` (scored token by token) and give, per bucket of stream position
    [previous edge, edge), {"from", "to", "tokens", "nll", "ppl"} (mean negative log-likelihood in
    nats, and its exp). Buckets the text does not reach are left out."""
    logprobs = session.score(text)  # the text's first token follows nothing of it: not scored
    first = session.tokens_seen - len(logprobs)  # stream position of the first scored token
    out, lo = [], 0
    for hi in edges:
        nll = [-lp for i, lp in enumerate(logprobs) if lo <= first + i < hi]
        if nll:
            mean_nll = sum(nll) / len(nll)
            out.append(
                {
                    "from": lo,
                    "to": hi,
                    "tokens": len(nll),
                    "nll": round(mean_nll, 4),
                    "ppl": round(math.exp(mean_nll), 3),
                }
            )
        lo = hi
    return out


def greedy_replies(
    new_session: Callable[[], ScoringSession], messages: Sequence[str] | None = None, max_tokens: int = 48
) -> list[str]:
    """Each message (default: MESSAGES) asked in a fresh session (well inside any window), answered
    greedily."""
    sampling = SamplingConfig(max_tokens=max_tokens)
    return [new_session().reply(m, sampling) for m in (MESSAGES if messages is None else messages)]


def agreement(replies: Sequence[str], reference: Sequence[str]) -> dict:
    """How many replies equal the reference's word for word: {"identical", "total", "share"}."""
    if len(replies) != len(reference):
        raise ValueError("agreement needs one reply per reference reply")
    same = sum(a == b for a, b in zip(replies, reference))
    return {"identical": same, "total": len(replies), "share": same / len(replies) if replies else None}


def reply_kl(model, reference, tokenizer, chat, messages: Sequence[str], replies: Sequence[str]) -> dict:
    """How far `model`'s next-token distributions are from `reference`'s over the reference's own
    replies (each after its message in a fresh stream): the mean per-token KL(reference || model) in
    nats, {"kl_per_token", "tokens"}. Both are models taking (tokens [1, T]) -> (logits [1, T, V], state)
    with one tokenizer; a fine-tune that keeps ordinary chat as it was stays near 0."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for message, reply in zip(messages, replies, strict=True):
            prompt = tokenizer.encode(chat.preamble + chat.turn("<|user|>", message) + chat.prompt)
            ids = prompt + tokenizer.encode(reply)
            if len(ids) == len(prompt):
                continue
            tokens = torch.tensor([ids], device=model.device)
            span = slice(len(prompt) - 1, len(ids) - 1)  # logits that predict the reply's tokens
            mine = model(tokens)[0][0, span].double().log_softmax(-1)
            theirs = reference(tokens.to(reference.device))[0][0, span].double().log_softmax(-1)
            total += float((theirs.exp() * (theirs - mine.to(theirs.device))).sum())
            count += len(ids) - len(prompt)
    return {"kl_per_token": round(total / count, 5) if count else None, "tokens": count}


def to_markdown(results_by_label: dict[str, dict]) -> str:
    """A row per setting: state bytes, perplexity per position bucket, agreement with full attention
    (what each result holds of "state_bytes", "perplexity", "agreement"); "" when none has either."""
    edges: list[tuple[int, int]] = []
    for r in results_by_label.values():
        edges += [(b["from"], b["to"]) for b in r.get("perplexity", []) if (b["from"], b["to"]) not in edges]
    has_agreement = any("agreement" in r for r in results_by_label.values())
    if not edges and not has_agreement:
        return ""
    head = ["setting", "state bytes", *(f"ppl @ {a:,}-{b:,}" for a, b in edges)]
    head += ["greedy = full"] if has_agreement else []
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for label, r in results_by_label.items():
        ppl = {(b["from"], b["to"]): b["ppl"] for b in r.get("perplexity", [])}
        cells = [label, f"{r['state_bytes']:,}" if "state_bytes" in r else ""]
        cells += [f"{ppl[e]:.2f}" if e in ppl else "" for e in edges]
        if has_agreement:
            a = r.get("agreement")
            cells.append(f"{a['identical']}/{a['total']}" if a else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

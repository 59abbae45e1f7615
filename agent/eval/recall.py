"""Recall evaluation: exact match of answers, by distance in tokens from statement to question.

An answer counts as recalled when every one of its tokens is the model's argmax given the text
before it: exactly when greedy decoding would reproduce it. Long inputs stream through the model
state chunk by chunk, so evaluation memory is bounded by the chunk, not the input.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence

import torch

from ovq.agent.model.hybrid import HybridLM
from ovq.agent.model.tokenizer import BOS, Tokenizer
from ovq.agent.tasks import Example, make_chat_task
from ovq.agent.tasks.facts import KINDS, Pooled

BUCKETS = (0, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)  # token distance bucket edges


def answer_records(example: Example) -> list[dict]:
    """Per answer: its char span, where its fact was stated (end char) and where it was asked."""
    meta, task = example.meta, example.meta.get("task")
    if task == "memory_dialogue":
        return [
            {"span": q["answer_span"], "stated_start": q["statement_span"][0],
             "stated_end": q["statement_span"][1], "asked": q["question_start"], "kind": q["kind"],
             "value_class": value_class(q["kind"])}
            for q in meta["questions"]
        ]  # fmt: skip
    if task == "icr":
        return [
            {
                "span": q["span"],
                "stated_start": q["value_end"] - (q["span"][1] - q["span"][0]),
                "stated_end": q["value_end"],
                "asked": q["query_start"],
                "kind": "pair",
            }
            for q in meta["queries"]
        ]
    if task == "recite":
        return [
            {"span": r["span"], "stated_end": r["note_end"], "asked": r["query_start"], "kind": "note"}
            for r in meta["recitals"]
        ]
    if task == "positional_icr":
        return [
            {"span": s, "stated_end": e, "asked": q["query_start"], "kind": f"value_{i}"}
            for q in meta["queries"]
            for i, (s, e) in enumerate(zip(q["spans"], q["value_ends"]))
        ]
    return [
        {"span": list(s), "stated_end": None, "asked": s[0], "kind": "answer"} for s in example.answer_spans
    ]


def value_class(kind: str) -> str:
    """ "closed class" for kinds whose values come from a small word pool (sports, spices...), which a
    model can answer from a memorised list instead of its memory; "open" for the rest."""
    return "closed class" if isinstance(KINDS[kind].sample, Pooled) else "open"


def covering(offsets: list[tuple[int, int]], s: int, e: int) -> list[int]:
    """Indices of the tokens overlapping the character span [s, e)."""
    return [i for i, (ts, te) in enumerate(offsets) if ts < e and s < te]


def stated_form(text: str, ids: list[int], offsets: list[tuple[int, int]], rec: dict) -> dict:
    """Whether the answer is made of the same tokens as where its fact was stated. Byte-level BPE
    tokenizes a word after a space differently from one at the start of a turn ("Ġfen" vs "fen"),
    so an answer can have to be copied into tokens the model never saw in the statement."""
    if rec.get("stated_start") is None:
        return {}
    s, e = rec["span"]
    p = text.rfind(text[s:e], rec["stated_start"], rec["stated_end"])
    if p < 0:
        return {"tokenization": "not verbatim"}  # the statement words the value differently
    same = [ids[i] for i in covering(offsets, p, p + e - s)] == [ids[i] for i in covering(offsets, s, e)]
    return {"tokenization": "as stated" if same else "retokenised"}


@torch.no_grad()
def score_example(model: HybridLM, tokenizer: Tokenizer, example: Example, chunk: int = 2048) -> list[dict]:
    """Records of answer_records(example), each with `hit` and `distance_tokens`."""
    text_ids, offsets = tokenizer.encode_with_offsets(example.text)
    ids = [tokenizer.special[BOS], *text_ids]
    starts = [0, *(s for s, _ in offsets)]  # char start of each token (BOS at 0)
    tokens = torch.tensor([ids], device=model.embed.weight.device)
    state, preds = model.init_state(1), []
    for a in range(0, tokens.shape[1] - 1, chunk):
        logits, state = model(tokens[:, a : min(a + chunk, tokens.shape[1] - 1)], state)
        preds.append(logits[0].argmax(-1))
    pred = torch.cat(preds)  # pred[i] predicts ids[i + 1]
    target = tokens[0, 1:]
    out = []
    for rec in answer_records(example):
        s, e = rec["span"]
        idx = covering(offsets, s, e)
        right = sum(bool(pred[i] == target[i]) for i in idx)  # offsets[i] is ids[i + 1]
        hit = bool(idx) and right == len(idx)
        asked_tok = bisect.bisect_right(starts, rec["asked"]) - 1
        stated_tok = None if rec["stated_end"] is None else bisect.bisect_left(starts, rec["stated_end"])
        distance = None if stated_tok is None else max(0, asked_tok - stated_tok)
        out.append(
            {**rec, "hit": hit, "answer_tokens": len(idx), "right_tokens": right, "distance_tokens": distance,
             "tokens": len(ids), "asked_token": asked_tok, "stated_token": stated_tok,
             **stated_form(example.text, text_ids, offsets, rec)}
        )  # fmt: skip
    return out


def rate(hits: list[bool]) -> dict:
    return {"answers": len(hits), "exact_match": sum(hits) / len(hits)}


def summarise(records: Iterable[dict], chunk_size: int | None = None) -> dict:
    """Exact match overall, by token distance, by kind of fact, by class of value and by whether the
    answer keeps the tokens of its statement; with an OVQ chunk size, also by the number of chunk
    updates (dictionary folds) between the statement and the question: the memory horizon."""
    records = list(records)
    by_bucket: dict[str, list[bool]] = {}
    groups: dict[str, dict[str, list[bool]]] = {"kind": {}, "value_class": {}, "tokenization": {}}
    for r in records:
        for field, by in groups.items():
            if field in r:
                by.setdefault(r[field], []).append(r["hit"])
        d = r["distance_tokens"]
        if d is None:
            continue
        i = min(bisect.bisect_right(BUCKETS, d) - 1, len(BUCKETS) - 2)
        by_bucket.setdefault(f"{BUCKETS[i]}-{BUCKETS[i + 1]}", []).append(r["hit"])
    hits = [r["hit"] for r in records]
    horizon = {}
    if chunk_size:
        by_updates: dict[int, list[bool]] = {}
        for r in records:
            if r.get("stated_token") is not None:
                u = r["asked_token"] // chunk_size - r["stated_token"] // chunk_size
                edge = 0 if u < 1 else 1 << (u.bit_length() - 1)  # 0, 1, 2-3, 4-7, ...
                by_updates.setdefault(edge, []).append(r["hit"])
        horizon = {
            "by_chunk_updates": {
                (f"{e}" if e < 2 else f"{e}-{2 * e - 1}"): rate(v) for e, v in sorted(by_updates.items())
            }
        }
    n_tok = sum(r.get("answer_tokens", 0) for r in records)
    return {
        "answers": len(hits),
        # the paper's ICR metric: the share of answer tokens predicted right
        "token_accuracy": sum(r.get("right_tokens", 0) for r in records) / n_tok if n_tok else float("nan"),
        "max_tokens": max((r.get("tokens", 0) for r in records), default=0),
        "exact_match": sum(hits) / len(hits) if hits else float("nan"),
        "by_distance_tokens": {
            k: rate(v) for k, v in sorted(by_bucket.items(), key=lambda kv: int(kv[0].split("-")[0]))
        },
        # which kinds of fact are kept and which lost (memory dialogues: about 50 kinds)
        "by_kind": {k: rate(v) for k, v in sorted(groups["kind"].items())},
        # closed-class values can be recited from training; answers whose tokens differ from the
        # statement's must be copied across tokenizations (memory dialogues only)
        **{
            f"by_{field}": {k: rate(v) for k, v in sorted(groups[field].items())}
            for field in ("value_class", "tokenization")
            if groups[field]
        },
        **horizon,
    }


def evaluate_recall(
    model: HybridLM,
    tokenizer: Tokenizer,
    task: str = "memory_dialogue",
    preset: str = "default",
    n: int | Sequence[int] = 20,
    seed: int | Sequence[int] = 10**6,
    chunk: int = 2048,
    on_example: Callable[[int, int], None] | None = None,
    **overrides,
) -> dict:
    """Exact-match recall over n fresh examples from seed on (memory dialogues use the test
    vocabulary split). Several sets pool into one result: seed=(1000, 5000), n=(60, 40) scores
    examples 1000-1059 and 5000-5039 together. `on_example(done, total)` follows progress."""
    sets = seed_sets(n, seed)
    seeds = [s + i for s, k in sets for i in range(k)]
    if task == "memory_dialogue":
        overrides.setdefault("vocab_split", "test")
    bound = make_chat_task(task, preset, model.config.chat_format, **overrides)
    records = []
    for done, s in enumerate(seeds, 1):
        records += score_example(model, tokenizer, bound(s), chunk)
        if on_example is not None:
            on_example(done, len(seeds))
    state_bytes = model.init_state(1).nbytes
    fold_every = model.config.ovq.chunk_size if "ovq" in model.config.kinds else None
    summary = summarise(records, fold_every)
    pooled = {"seed_sets": [{"seed": s, "examples": k} for s, k in sets]} if len(sets) > 1 else {}
    return {
        "task": task,
        "preset": preset,
        "examples": len(seeds),
        **pooled,
        "state_bytes": state_bytes,
        **summary,
    }


def seed_sets(n: int | Sequence[int], seed: int | Sequence[int]) -> list[tuple[int, int]]:
    """(first seed, examples) per set: one n for every seed, or one n per seed."""
    seeds = [seed] if isinstance(seed, int) else list(seed)
    counts = [n] * len(seeds) if isinstance(n, int) else list(n)
    if not seeds or len(counts) != len(seeds):
        raise ValueError(f"give one example count for every seed, or one for all: n={n}, seed={seed}")
    if any(k < 1 for k in counts):
        raise ValueError(f"example counts must be >= 1, got n={n}")
    ends = sorted((s, s + k) for s, k in zip(seeds, counts))
    if any(b < a_end for (_, a_end), (b, _) in zip(ends, ends[1:])):
        raise ValueError(f"seed sets overlap (an example would count twice): n={n}, seed={seed}")
    return list(zip(seeds, counts))

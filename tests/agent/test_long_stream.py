"""Perplexity by stream position and agreement with full attention (agent/eval/long_stream.py)."""

from __future__ import annotations

import math

import pytest
import torch

from ovq.agent.eval.long_stream import (
    MESSAGES,
    agreement,
    greedy_replies,
    long_text,
    perplexity_by_position,
    to_markdown,
)
from ovq.agent.runtime.session import Runtime, Session


@pytest.fixture(scope="module")
def runtime():
    return Runtime.load("tiny")


def count(runtime):
    return lambda text: len(runtime.tokenizer.encode(text))


def test_long_text_is_whole_paragraphs_within_the_budget_and_the_same_for_a_seed(runtime):
    text = long_text(count(runtime), 3000, seed=3)
    assert 2000 < count(runtime)(text) <= 3000 + 10  # paragraphs joined may merge a token or two
    assert text == long_text(count(runtime), 3000, seed=3)
    assert text != long_text(count(runtime), 3000, seed=4)
    assert "\n\n" in text and not text.startswith(" ")
    short = long_text(count(runtime), 20, seed=3)  # shorter than any paragraph: its first words
    assert 10 < count(runtime)(short) <= 20 and text.startswith(short)


def test_perplexity_buckets_hold_each_scored_tokens_nll_by_stream_position(runtime):
    text = long_text(count(runtime), 700, seed=1)
    s = Session(runtime, "ppl", persist=False)
    s.feed("a few words first")
    before = s.tokens_seen
    twin = s.copy()
    buckets = perplexity_by_position(s, text, edges=(64, 512, 4096))
    ids = runtime.tokenizer.encode(text)
    logits, _ = runtime.model(torch.tensor([ids]), twin.state)
    lp = logits[0].float().log_softmax(-1)
    nll = [-lp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]  # token i + 1 sits at before + i + 1
    pos = [before + 1 + i for i in range(len(nll))]
    assert [(b["from"], b["to"]) for b in buckets] == [(0, 64), (64, 512), (512, 4096)]
    assert sum(b["tokens"] for b in buckets) == len(ids) - 1  # every token but the first is scored
    for b in buckets:
        want = [x for x, p in zip(nll, pos) if b["from"] <= p < b["to"]]
        assert b["tokens"] == len(want)
        assert b["nll"] == pytest.approx(sum(want) / len(want), abs=1e-3)
        assert b["ppl"] == pytest.approx(math.exp(b["nll"]), rel=1e-3)


def test_agreement_counts_replies_equal_word_for_word():
    assert agreement(["a", "b", "c"], ["a", "x", "c"]) == {"identical": 2, "total": 3, "share": 2 / 3}
    with pytest.raises(ValueError, match="one reply per"):
        agreement(["a"], ["a", "b"])


def test_greedy_replies_are_one_fresh_session_per_message_and_repeatable(runtime):
    made = []

    def fresh():
        made.append(Session(runtime, "g", persist=False))
        return made[-1]

    replies = greedy_replies(fresh, MESSAGES[:3], max_tokens=8)
    assert len(replies) == 3 == len(made) and all(isinstance(r, str) for r in replies)
    assert greedy_replies(fresh, MESSAGES[:3], max_tokens=8) == replies


def test_markdown_has_a_row_per_setting_with_bytes_perplexity_and_agreement():
    results = {
        "full": {
            "state_bytes": 1000,
            "perplexity": [{"from": 0, "to": 512, "ppl": 9.5}],
            "agreement": {"identical": 12, "total": 12},
        },
        "memory": {
            "state_bytes": 400,
            "perplexity": [{"from": 0, "to": 512, "ppl": 9.5}, {"from": 512, "to": 2048, "ppl": 11.25}],
            "agreement": {"identical": 11, "total": 12},
        },
    }
    lines = to_markdown(results).splitlines()
    assert lines[0] == "| setting | state bytes | ppl @ 0-512 | ppl @ 512-2,048 | greedy = full |"
    assert lines[2] == "| full | 1,000 | 9.50 |  | 12/12 |"
    assert lines[3] == "| memory | 400 | 9.50 | 11.25 | 11/12 |"
    assert to_markdown({"full": {"state_bytes": 1}}) == ""

import pytest
import torch

import ovq.agent.eval.recall
from ovq.agent.eval.recall import answer_records, evaluate_recall, score_example, seed_sets, summarise
from ovq.agent.model.hybrid import HybridLM, ModelConfig
from ovq.agent.model.tokenizer import Tokenizer
from ovq.agent.tasks import Example, make_task

TOK = Tokenizer.train((make_task("icr", "tiny")(i).text for i in range(50)), vocab_size=300)


class Oracle(HybridLM):
    """Predicts the true next token everywhere: every answer must count as recalled."""

    def __init__(self, ids):
        super().__init__(ModelConfig.preset("tiny", TOK.vocab_size))
        self.ids, self.seen = ids, 0

    def forward(self, tokens, state=None):
        logits, state = super().forward(tokens, state)
        T = tokens.shape[1]
        nxt = self.ids[self.seen + 1 : self.seen + 1 + T]
        self.seen += T
        return torch.nn.functional.one_hot(torch.tensor([nxt]), logits.shape[-1]).float() * 100, state


@pytest.mark.parametrize("task", ["icr", "positional_icr", "memory_dialogue", "recite"])
def test_an_oracle_recalls_everything_and_distances_are_in_tokens(task):
    ex = make_task(task, "tiny" if task in ("icr", "recite") else "default")(5)
    ids = [TOK.special["<|bos|>"], *TOK.encode(ex.text)]
    records = score_example(Oracle(ids), TOK, ex, chunk=97)  # chunks split answers and questions
    assert records and all(r["hit"] for r in records)
    assert all(r["distance_tokens"] is not None and 0 <= r["distance_tokens"] < len(ids) for r in records)
    assert len(records) == len(answer_records(ex))


def test_a_wrong_token_anywhere_in_an_answer_is_a_miss():
    ex = make_task("icr", "tiny")(2)
    ids = [TOK.special["<|bos|>"], *TOK.encode(ex.text)]
    _, offsets = TOK.encode_with_offsets(ex.text)
    s, e = ex.answer_spans[0]
    last = max(i for i, (ts, te) in enumerate(offsets) if ts < e and s < te)
    wrong = list(ids)
    wrong[last + 1] = (wrong[last + 1] + 1) % TOK.vocab_size  # the model "predicts" a wrong last token
    records = score_example(Oracle(wrong), TOK, ex)
    assert [r["hit"] for r in records] == [False] + [True] * (len(records) - 1)
    first = records[0]
    assert first["right_tokens"] == first["answer_tokens"] - 1  # one wrong token of the answer
    summary = summarise(records)
    total = sum(r["answer_tokens"] for r in records)
    assert summary["token_accuracy"] == (total - 1) / total
    assert summary["by_kind"] == {"pair": {"answers": len(records), "exact_match": summary["exact_match"]}}


def test_summary_by_kind_charges_each_miss_to_its_kind():
    recs = [("city", True), ("pet", False), ("pet", True), ("city", True), ("pet", False)]
    summary = summarise([{"hit": h, "kind": k, "distance_tokens": 9} for k, h in recs])
    assert summary["by_kind"] == {
        "city": {"answers": 2, "exact_match": 1.0},
        "pet": {"answers": 3, "exact_match": 1 / 3},
    }


def test_summary_buckets_and_random_model_runs():
    summary = summarise([{"hit": True, "distance_tokens": 10}, {"hit": False, "distance_tokens": 3000}])
    assert summary["exact_match"] == 0.5
    assert summary["by_distance_tokens"] == {
        "0-256": {"answers": 1, "exact_match": 1.0},
        "2048-4096": {"answers": 1, "exact_match": 0.0},
    }
    torch.manual_seed(0)
    model = HybridLM(ModelConfig.preset("tiny", TOK.vocab_size)).eval()
    result = evaluate_recall(model, TOK, task="icr", preset="tiny", n=2)
    assert result["answers"] == 8 and 0 <= result["exact_match"] <= 1 and result["state_bytes"] > 0
    assert answer_records(Example("abc", ((0, 1),), {"task": "other"}))[0]["stated_end"] is None


def test_memory_horizon_counts_chunk_updates_between_statement_and_question():
    recs = [
        {"hit": True, "distance_tokens": 5, "stated_token": 10, "asked_token": 15},  # same chunk: 0
        {"hit": False, "distance_tokens": 20, "stated_token": 10, "asked_token": 30},  # 1 update
        {"hit": True, "distance_tokens": 90, "stated_token": 10, "asked_token": 100},  # 100//16 - 0 = 6
        {"hit": False, "distance_tokens": None, "stated_token": None, "asked_token": 7},  # not a recall
    ]
    horizon = summarise(recs, chunk_size=16)["by_chunk_updates"]
    assert horizon == {
        "0": {"answers": 1, "exact_match": 1.0},
        "1": {"answers": 1, "exact_match": 0.0},
        "4-7": {"answers": 1, "exact_match": 1.0},
    }
    assert "by_chunk_updates" not in summarise(recs)  # no OVQ layer, no horizon


def test_stated_form_tells_an_answer_copied_token_for_token_from_one_retokenised():
    from ovq.agent.eval.recall import stated_form

    # "Ġ" words: a value stated after a space and answered after a space keeps its tokens; answered
    # at the start of a line it begins with a different token (byte-level BPE); restated, it is neither
    text = "code: 4471\n? code: 4471\n4471\nfour four seven one\n"
    ids, offsets = TOK.encode_with_offsets(text)
    assert TOK.encode(" 4471")[0] != TOK.encode("4471")[0]  # the premise: the space is in the token

    def form(answer_at, stated=(0, 10)):
        rec = {"span": [answer_at, answer_at + 4], "stated_start": stated[0], "stated_end": stated[1]}
        return stated_form(text, ids, offsets, rec).get("tokenization")

    assert form(text.index("4471", 11)) == "as stated"
    assert form(text.index("\n4471") + 1) == "retokenised"
    assert form(text.index("\n4471") + 1, stated=(27, 46)) == "not verbatim"
    assert stated_form(text, ids, offsets, {"span": [0, 4], "stated_end": 3}) == {}
    summary = summarise(
        [{"hit": h, "tokenization": t, "distance_tokens": 5} for t, h in
         [("as stated", True), ("retokenised", False), ("retokenised", True)]]
    )  # fmt: skip
    assert summary["by_tokenization"] == {
        "as stated": {"answers": 1, "exact_match": 1.0},
        "retokenised": {"answers": 2, "exact_match": 0.5},
    }
    assert "by_tokenization" not in summarise([{"hit": True, "distance_tokens": 5}])


def test_evaluation_writes_dialogues_in_the_models_chat_format(monkeypatch):

    seen = []
    record = {"hit": True, "distance_tokens": None}  # only the examples matter here
    monkeypatch.setattr(
        ovq.agent.eval.recall, "score_example", lambda m, t, ex, chunk: seen.append(ex.text) or [record]
    )
    for fmt in ("plain", "spaced"):
        model = HybridLM(ModelConfig.preset("tiny", TOK.vocab_size, chat_format=fmt))
        evaluate_recall(model, TOK, task="memory_dialogue", n=1)
    assert "<|user|> " not in seen[0] and "<|user|> " in seen[1]


def test_seed_sets_pool_into_one_result_equal_to_their_parts():
    torch.manual_seed(0)
    model = HybridLM(ModelConfig.preset("tiny", TOK.vocab_size)).eval()
    parts = [
        evaluate_recall(model, TOK, task="icr", preset="tiny", n=k, seed=s) for s, k in [(3, 2), (40, 1)]
    ]
    done = []
    pooled = evaluate_recall(
        model, TOK, task="icr", preset="tiny", n=[2, 1], seed=[3, 40], on_example=lambda *p: done.append(p)
    )
    assert done == [(1, 3), (2, 3), (3, 3)]  # the progress hook: (done, total) after each example
    assert pooled["examples"] == 3 and pooled["seed_sets"] == [
        {"seed": 3, "examples": 2},
        {"seed": 40, "examples": 1},
    ]
    assert pooled["answers"] == sum(p["answers"] for p in parts)
    hits = sum(p["answers"] * p["exact_match"] for p in parts)
    assert pooled["exact_match"] == pytest.approx(hits / pooled["answers"])
    assert "seed_sets" not in parts[0]  # one set reads as before
    assert seed_sets(5, [10, 20]) == [(10, 5), (20, 5)]
    for n, seed, says in [([1, 2], [1], "one example count"), (0, 1, ">= 1"), (5, [10, 12], "overlap")]:
        with pytest.raises(ValueError, match=says):
            seed_sets(n, seed)


def test_memory_dialogue_answers_are_split_by_class_of_value():
    from ovq.agent.eval.recall import value_class

    assert value_class("favourite_sport") == "closed class" and value_class("locker_code") == "open"
    ex = make_task("memory_dialogue", "default")(11)
    classes = {r["kind"]: r["value_class"] for r in answer_records(ex)}
    assert all(c == value_class(k) for k, c in classes.items())
    recs = [
        {"hit": h, "value_class": c, "distance_tokens": 3}
        for c, h in [("open", True), ("closed class", False)]
    ]
    assert summarise(recs)["by_value_class"] == {
        "closed class": {"answers": 1, "exact_match": 0.0},
        "open": {"answers": 1, "exact_match": 1.0},
    }
    assert "by_value_class" not in summarise([{"hit": True, "distance_tokens": 5}])

"""The chat recall harness on a fake session whose memory is the last K whitespace words it was fed."""

from __future__ import annotations

import copy
import itertools
import re
import tomllib
from statistics import mean

import pytest

from ovq.agent.eval.chat_recall import (
    ACKNOWLEDGEMENTS,
    FILLER_TURN_TOKENS,
    MIN_PASSAGE_WORDS,
    PASSAGE_ACK,
    PASSAGE_PREFIX,
    SETS_DIR,
    SKIPPED,
    FactSet,
    is_hit,
    load_fact_set,
    normalise,
    parse_fact_set,
    run_recall,
    to_markdown,
)
from ovq.agent.model.generate import SamplingConfig

TUNING = load_fact_set("tuning")
HELDOUT = load_fact_set("heldout")


def count_words(text: str) -> int:
    return len(text.split())


class FakeSession:
    """A stream of whitespace words. A turn is its text behind `wrap` role words (a chat template's
    markers). Its memory is the last `memory` words: asked a question, it answers with whichever
    accepted answer of that question's fact it can find there, else says it does not remember."""

    def __init__(
        self, answers_by_question: dict, memory: int, log: list, wrap: int = 1, split=str.split
    ) -> None:
        self.answers_by_question, self.memory, self.wrap, self.split = (
            answers_by_question,
            memory,
            wrap,
            split,
        )
        self.words: list[str] = []
        self.turns: list[tuple[str | None, str]] = []
        self.parent: FakeSession | None = None
        self.peak = 0  # the longest this stream or a copy of it ever got
        log.append(self)  # every main session made, for the tests to inspect

    @property
    def tokens_seen(self) -> int:
        return len(self.words)

    def feed(self, text: str, role: str | None = None) -> int:
        words = [f"<{role}>"] * self.wrap * bool(role) + self.split(text)
        self.words += words
        self.turns.append((role, text))
        self.peak = max(self.peak, len(self.words))
        if self.parent is not None:
            self.parent.peak = max(self.parent.peak, self.peak)
        return len(words)

    def reply(self, message: str, sampling: SamplingConfig) -> str:
        assert self.parent is not None, "a question was asked on the main stream"
        assert sampling.temperature == 0
        before = self.parent.tokens_seen
        self.feed(message, "user")
        retained = " ".join(self.words[-self.memory :])
        found = [a for a in self.answers_by_question[message] if is_hit(retained, [a])]
        text = f"I believe it is {found[0]}." if found else "Sorry, I don't remember."
        self.feed(" ".join(text.split()[: sampling.max_tokens]), "assistant")
        assert self.parent.tokens_seen == before  # asking on a copy leaves the main stream as it was
        return text

    def score_turn(self, role: str, text: str, before: str = "") -> list[float]:
        """Log-probabilities of `text`'s words after `before`: certain when it is in memory, else a
        guess among e^5 words each."""
        assert self.parent is not None, "an answer was scored on the main stream"
        self.feed(before, role)
        known = is_hit(" ".join(self.words[-self.memory :]), [text])
        return [0.0 if known else -5.0 for _ in text.split()]

    def copy(self) -> FakeSession:
        twin = copy.copy(self)
        twin.words, twin.turns, twin.parent = list(self.words), list(self.turns), self
        return twin


def factory(fact_set: FactSet, memory: int = 10**9, **kw):
    log: list[FakeSession] = []
    lookup = {f.question: f.answers for f in fact_set.facts}
    return (lambda: FakeSession(lookup, memory, log, **kw)), log


def run(fact_set=TUNING, memory=10**9, wrap=1, split=str.split, **kw):
    new_session, log = factory(fact_set, memory, wrap=wrap, split=split)
    kw.setdefault("distances", (256, 1024, 2048))
    return run_recall(new_session, count_words, fact_set, **kw), log


def split_punctuation(text: str) -> list[str]:
    """A tokenizer that the harness's count_words undercounts: punctuation marks are tokens too."""
    return re.findall(r"\w+|[^\w\s]", text)


# The smallest filler exchange: the passage prefix, a cut passage, the thanks, one role word each.
MIN_EXCHANGE = count_words(PASSAGE_PREFIX) + MIN_PASSAGE_WORDS + count_words(PASSAGE_ACK) + 2


# ---- distances, memory, streams


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_fact_is_asked_at_its_bucket_distance_or_at_most_one_small_exchange_past_it(seed):
    """Questions are asked on copies where each fact lies D tokens back, also at distances shorter than
    the run of statements, where questions fall due while facts are still being stated."""
    result, _ = run(distances=(64, 512, 4096), seed=seed)
    for bucket in result["buckets"]:
        d = bucket["distance"]
        assert bucket["total"] == 10 and len(bucket["per_fact"]) == 10
        for r in bucket["per_fact"]:
            assert d <= r["distance"] <= d + MIN_EXCHANGE, (d, r)
        assert d <= bucket["mean_measured_distance"] <= d + MIN_EXCHANGE
    # once every fact is stated, sized filler lands on D exactly when count_tokens is the tokenizer
    assert [r["distance"] for r in result["buckets"][2]["per_fact"]] == [4096] * 10


@pytest.mark.parametrize("seed", [0, 1])
def test_a_template_that_adds_more_per_turn_is_learnt(seed):
    """count_tokens counts a text, not the template around its turn: the harness learns that per role."""
    result, _ = run(distances=(64, 512, 4096), wrap=6, seed=seed, observation_share=0.3)
    for bucket in result["buckets"]:
        for r in bucket["per_fact"]:
            # the smallest exchange is 2 x 5 role words longer here
            assert bucket["distance"] <= r["distance"] <= bucket["distance"] + MIN_EXCHANGE + 2 * 5, r


@pytest.mark.parametrize("wrap", [1, 6])
def test_distances_stay_within_a_filler_turn_when_count_tokens_undercounts_the_stream(wrap):
    """count_tokens only sizes the filler; distances are measured with tokens_seen. A count_tokens that
    misses one token in seven costs some overshoot, never a question asked short of D."""
    result, _ = run(distances=(64, 512, 4096), wrap=wrap, split=split_punctuation)
    for bucket in result["buckets"]:
        for r in bucket["per_fact"]:
            assert bucket["distance"] <= r["distance"] <= bucket["distance"] + FILLER_TURN_TOKENS // 4, r


def test_facts_within_memory_are_hit_and_those_beyond_it_missed():
    result, _ = run(memory=1500, distances=(256, 1024, 4096))
    assert [b["hits"] for b in result["buckets"]] == [10, 10, 0]
    assert (result["hits"], result["total"]) == (20, 30)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["set"] == "tuning"
    hit = result["buckets"][0]["per_fact"][0]
    assert hit["hit"] and is_hit(hit["reply"], hit["expected"]) and hit["reply"].startswith("I believe")
    # the graded score follows the memory too: certain inside it, a guess beyond it
    assert [b["recital_logprob"] for b in result["buckets"][:2]] == [0.0, 0.0]
    missed = result["buckets"][2]
    assert missed["recital_logprob"] < 0
    assert missed["recital_logprob"] == pytest.approx(mean(r["recital_logprob"] for r in missed["per_fact"]))
    assert all(r["recital_logprob"] <= -5.0 for r in missed["per_fact"])


def test_questions_never_reach_the_main_stream():
    _, log = run(distances=(256, 2048))
    questions = {f.question for f in TUNING.facts}
    for main in log:
        assert main.parent is None
        assert not questions & {text for _, text in main.turns}
        assert main.tokens_seen == sum(count_words(t) + 1 for _, t in main.turns)  # nothing but its feeds


def test_buckets_get_different_facts_while_the_set_lasts_then_reuse_it():
    result, _ = run(distances=(64, 128, 256, 512))
    ids = [r["id"] for b in result["buckets"] for r in b["per_fact"]]
    assert sorted(ids) == sorted(f.id for f in TUNING.facts)  # 4 x 10 facts: each once
    small = FactSet("small", TUNING.facts[:12])
    result, _ = run(small, distances=(64, 128))
    ids = [r["id"] for b in result["buckets"] for r in b["per_fact"]]
    assert len(ids) == 20 and set(ids) == {f.id for f in small.facts}
    for b in result["buckets"]:
        assert len({r["id"] for r in b["per_fact"]}) == 10  # no fact twice within a bucket
    with pytest.raises(ValueError, match="facts_per_distance"):
        run(small, facts_per_distance=13)


def test_the_same_seed_gives_the_same_streams_and_another_seed_others():
    streams = []
    for seed in (0, 0, 1):
        _, log = run(seed=seed, distances=(256, 1024))
        streams.append([main.turns for main in log])
    assert streams[0] == streams[1]
    assert streams[0] != streams[2]


def test_each_fact_is_stated_once_as_a_user_turn_then_acknowledged():
    _, log = run(distances=(1024,))
    turns = log[0].turns
    stated = [i for i, (role, text) in enumerate(turns) if text in {f.statement for f in TUNING.facts}]
    assert len(stated) == 10
    for i in stated:
        assert turns[i][0] == "user" and turns[i + 1] in [("assistant", a) for a in ACKNOWLEDGEMENTS]


def test_filler_never_contains_an_answer():
    every_answer = [a for f in TUNING.facts for a in f.answers]
    _, log = run(distances=(256, 4096))
    statements = {f.statement for f in TUNING.facts}
    filler = [t for main in log for _, t in main.turns if t not in statements]
    assert sum(count_words(t) for t in filler) > 4000
    for text in filler:
        assert not any(normalise(a) in normalise(text) for a in every_answer), text
    # an answer common in the help texts only removes passages: "function" and "object" never appear
    common = parse_fact_set(
        {
            "fact": [
                {
                    "id": "c1",
                    "statement": "I like the word function.",
                    "question": "Which word?",
                    "answers": ["function"],
                },
                {
                    "id": "c2",
                    "statement": "My object is clear.",
                    "question": "What is clear?",
                    "answers": ["object"],
                },
            ]
        }
    )
    _, log = run(common, distances=(2048,), facts_per_distance=2)
    fed = " ".join(t for _, t in log[0].turns if t not in {f.statement for f in common.facts})
    assert count_words(fed) > 2000 and "function" not in fed.lower() and "object" not in fed.lower()


def test_filler_turns_are_passages_the_user_pastes_or_observations():
    _, log = run(distances=(1024,), observation_share=0.5)
    statements = {f.statement for f in TUNING.facts}
    roles = {role for role, text in log[0].turns if text not in statements}
    assert roles == {"user", "assistant", "observation"}
    pasted = [t for role, t in log[0].turns if role == "user" and t not in statements]
    assert pasted and all(t.startswith("Here is a passage I am reading:\n\n") for t in pasted)
    _, log = run(distances=(1024,))
    assert "observation" not in {role for role, _ in log[0].turns}  # none by default
    assert ("assistant", PASSAGE_ACK) in log[0].turns


def test_progress_is_reported_per_answer():
    events = []
    new_session, _ = factory(TUNING)
    run_recall(
        new_session, count_words, TUNING, distances=(256,), facts_per_distance=3, on_progress=events.append
    )
    assert [e["answered"] for e in events] == [0, 1, 2, 3]
    assert all(e["total"] == 3 and e["distance"] == 256 for e in events)


# ---- max_context


def test_buckets_beyond_max_context_are_skipped_without_a_session():
    result, log = run(distances=(256, 1024, 4096), max_context=3000)
    skipped = result["buckets"][2]
    assert skipped == {"distance": 4096, "skipped": SKIPPED, "needed_tokens": skipped["needed_tokens"]}
    assert skipped["needed_tokens"] > 3000
    assert len(log) == 2  # no stream was started for it
    assert all(main.peak <= 3000 for main in log)  # copies (question and reply) included
    assert result["total"] == 20


@pytest.mark.parametrize("wrap", [1, 8])
def test_the_context_a_bucket_needs_is_an_upper_bound(wrap):
    distances = (16, 64, 256, 512, 1024, 4096)
    needed = [b["needed_tokens"] for b in run(distances=distances, max_context=1, wrap=wrap)[0]["buckets"]]
    for seed in range(3):
        _, log = run(distances=distances, seed=seed, wrap=wrap)
        peaks = [main.peak for main in log]
        assert all(p <= n for p, n in zip(peaks, needed)), (peaks, needed)


def test_nothing_fits_gives_no_accuracy():
    result, log = run(distances=(256,), max_context=100)
    assert result["buckets"][0]["skipped"] == SKIPPED and log == []
    assert (result["hits"], result["total"], result["accuracy"]) == (0, 0, None)


# ---- markdown


def test_to_markdown_has_a_row_per_label_and_a_column_per_bucket():
    full, _ = run(distances=(256, 1024, 4096))
    window, _ = run(memory=1500, distances=(256, 1024, 4096), max_context=3000)
    table = to_markdown({"full": full, "retrofit N=1024": window})
    lines = table.splitlines()
    assert "set: tuning" in lines[0]
    assert lines[2] == "| setting | D=256 | D=1,024 | D=4,096 |"
    assert lines[4] == "| full | 10/10 (100%) 0.00 | 10/10 (100%) 0.00 | 10/10 (100%) 0.00 |"
    assert lines[5] == "| retrofit N=1024 | 10/10 (100%) 0.00 | 10/10 (100%) 0.00 | skipped |"
    assert lines[-1].startswith("Mean measured distance (tokens): D=256: ")


# ---- scoring


@pytest.mark.parametrize(
    "reply, answers, hit",
    [
        ("It is 58213.", ["58213"], True),
        ("IT'S ptarmigan42!", ["ptarmigan42"], True),
        ("the code is  5-8-2-1-3", ["58213", "5-8-2-1-3"], True),
        ("at 11.40 on Friday", ["11:40"], True),
        ("11:40am sharp", ["11:40"], True),  # letters and digits that touch are split apart
        ("Plate: kv19rzt", ["KV19 RZT"], True),
        ("on the 19th", ["9th"], False),
        ("the 9th of May", ["9th"], True),
        ("She lives in Valparaíso, Chile.", ["Valparaiso"], True),
        ("Mrs ABERNATHY-KOVAC", ["Abernathy"], True),
        ("the\nSalt   Cartographer", ["Salt Cartographer"], True),
        ("“Kaskede Laul”", ["kaskede laul"], True),
        ("It is 582134.", ["58213"], False),  # whole words only: a longer number is another number
        ("Salt and pepper", ["Salt Cartographer"], False),
        ("I don't remember.", ["Ondine"], False),
        ("anything", ["!!"], False),  # an answer with nothing left after normalising never matches
    ],
)
def test_is_hit_normalises_case_space_punctuation_and_accents(reply, answers, hit):
    assert is_hit(reply, answers) is hit


# ---- the shipped sets


def test_both_shipped_sets_load_with_40_facts_and_unique_ids():
    for name, fact_set in (("tuning", TUNING), ("heldout", HELDOUT)):
        assert fact_set.name == name and len(fact_set.facts) == 40
        assert len({f.id for f in fact_set.facts}) == 40
        assert len({f.statement for f in fact_set.facts}) == 40
        assert len({f.question for f in fact_set.facts}) == 40
    assert load_fact_set(SETS_DIR / "heldout.toml") == HELDOUT


def test_the_sets_share_no_answer_name_or_id():
    tuning = {normalise(a) for f in TUNING.facts for a in f.answers}
    heldout = {normalise(a) for f in HELDOUT.facts for a in f.answers}
    assert not tuning & heldout
    assert not {f.id for f in TUNING.facts} & {f.id for f in HELDOUT.facts}
    # nor a name (a capitalised word inside a sentence) or a number of three digits or more
    ordinary = {"I'm", "I've", "I'd", "I'll", "The", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday"}
    names = [_words(fs, r"(?<![.!?:]\s)(?<!^)\b[A-Z][\w'-]+") - ordinary for fs in (TUNING, HELDOUT)]
    assert not names[0] & names[1]
    assert not _words(TUNING, r"\d{3,}") & _words(HELDOUT, r"\d{3,}")
    # nor does an answer of one set occur anywhere in the other
    for ours, theirs in ((TUNING, HELDOUT), (HELDOUT, TUNING)):
        text = " ".join(f"{f.statement} {f.question}" for f in theirs.facts)
        assert not [a for f in ours.facts for a in f.answers if is_hit(text, [a])]


def _words(fact_set: FactSet, pattern: str) -> set[str]:
    return {
        w for f in fact_set.facts for text in (f.statement, f.question) for w in re.findall(pattern, text)
    }


@pytest.mark.parametrize("fact_set", [TUNING, HELDOUT], ids=["tuning", "heldout"])
def test_no_fact_gives_away_another(fact_set):
    """An answer that occurs in another fact's statement or question could be recalled from that one."""
    for f, g in itertools.permutations(fact_set.facts, 2):
        assert not is_hit(f"{g.statement} {g.question}", f.answers), (f.id, g.id)


def test_shipped_sets_say_which_one_is_for_the_final_table():
    for name in ("tuning", "heldout"):
        head = (SETS_DIR / f"{name}.toml").read_text().split("name =")[0]
        assert "tuning.toml is for design decisions" in head
        assert "heldout.toml is only for the final table and must not be used to choose anything" in head
        tomllib.loads((SETS_DIR / f"{name}.toml").read_text())


# ---- the loader


def fact(**kw) -> dict:
    return {
        "id": "x1",
        "statement": "My locker is 808.",
        "question": "Which locker?",
        "answers": ["808"],
    } | kw


@pytest.mark.parametrize(
    "data, match",
    [
        ({"name": "s"}, "at least one \\[\\[fact\\]\\]"),
        ({"fact": []}, "at least one"),
        ({"fact": [fact()], "colour": 1}, "unknown keys \\['colour'\\]"),
        ({"fact": [fact(hint="x")]}, "fact 1 \\(x1\\): unknown keys \\['hint'\\]"),
        ({"fact": [fact(statement="  ")]}, "fact 1 \\(x1\\): 'statement' must be non-empty text"),
        ({"fact": [fact(question=None)]}, "'question' must be non-empty text"),
        ({"fact": [fact(id="")]}, "'id' must be non-empty text"),
        ({"fact": [fact(answers=[])]}, "fact 1 \\(x1\\): 'answers' must be a non-empty list"),
        ({"fact": [fact(answers="808")]}, "'answers' must be a non-empty list"),
        ({"fact": [fact(answers=["808", 808])]}, "every answer must be text"),
        ({"fact": [fact(answers=["..."])]}, "every answer must be text with a letter or digit"),
        ({"fact": [fact(question="Is it 808?")]}, "x1\\): the question gives away its answer"),
        ({"fact": [fact(answers=["809"])]}, "x1\\): the statement contains none of its answers"),
        ({"fact": [fact(), fact()]}, "duplicate fact id 'x1'"),
        ({"name": 3, "fact": [fact()]}, "'name' must be non-empty text"),
        ({"fact": ["x"]}, "fact 1: must be a table"),
    ],
)
def test_bad_sets_are_rejected_with_the_problem_named(data, match):
    with pytest.raises(ValueError, match=match):
        parse_fact_set(data, where="bad.toml")


def test_bad_files_are_rejected_with_the_file_named(tmp_path):
    with pytest.raises(ValueError, match="no fact set 'nonesuch'.*'heldout', 'tuning'"):
        load_fact_set("nonesuch")
    broken = tmp_path / "broken.toml"
    broken.write_text("[[fact]\nid = 1")
    with pytest.raises(ValueError, match="broken.toml: not valid TOML"):
        load_fact_set(broken)
    dup = tmp_path / "dup.toml"
    dup.write_text('[[fact]]\nid = "a"\nstatement = "Code 123."\nquestion = "Code?"\nanswers = ["123"]\n' * 2)
    with pytest.raises(ValueError, match="dup.toml: duplicate fact id 'a'"):
        load_fact_set(dup)
    good = tmp_path / "mine.toml"
    good.write_text('[[fact]]\nid = "a"\nstatement = "Code 123."\nquestion = "Code?"\nanswers = ["123"]\n')
    assert load_fact_set(good).name == "mine"  # named after its file when it has no name


def test_run_recall_checks_its_arguments():
    new_session, _ = factory(TUNING)
    for kw, match in (
        ({"distances": ()}, "distances"),
        ({"distances": (0,)}, "distances"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"observation_share": 2.0}, "observation_share"),
        ({"facts_per_distance": 0}, "facts_per_distance"),
    ):
        with pytest.raises(ValueError, match=match):
            run_recall(new_session, count_words, TUNING, **kw)
    result = run_recall(new_session, count_words, "tuning", distances=(64,), facts_per_distance=2)
    assert result["set"] == "tuning" and result["total"] == 2


# ---- chat filler, streams of one fact, no acknowledgements


def test_chat_filler_feeds_whole_turns_of_both_roles_without_answers_and_keeps_distances():
    result, log = run(distances=(256, 1024), filler="chat", acknowledge=False)
    answers = [a for f in TUNING.facts for a in f.answers]
    stream = log[0]
    roles = {role for role, _ in stream.turns}
    assert {"user", "assistant"} <= roles  # small talk has both sides
    facts = {f.statement for f in TUNING.facts}
    assert all(role == "user" for role, text in stream.turns if text in facts)  # no fixed acknowledgement
    filler = [text for _, text in stream.turns if text not in facts]
    assert filler and not any(is_hit(text, answers) for text in filler)
    for bucket in result["buckets"]:
        assert all(bucket["distance"] <= r["distance"] for r in bucket["per_fact"])
        assert bucket["hits"] == bucket["total"]  # the fake remembers everything here


def test_one_fact_per_stream_makes_a_stream_per_fact():
    result, log = run(distances=(128, 512), one_per_stream=True, facts_per_distance=3)
    assert len(log) == 6  # 2 buckets x 3 facts, each its own session
    for stream in log:
        assert sum(text in {f.statement for f in TUNING.facts} for _, text in stream.turns) == 1
    assert [b["total"] for b in result["buckets"]] == [3, 3]


def test_an_unknown_filler_is_refused():
    with pytest.raises(ValueError, match="filler must be"):
        run(filler="poetry")


@pytest.mark.parametrize("fact_set", [TUNING, HELDOUT], ids=["tuning", "heldout"])
def test_every_recital_cuts_its_statement_just_before_an_accepted_answer(fact_set):
    from ovq.agent.eval.chat_recall import _recital

    for fact in fact_set.facts:
        before, answer = _recital(fact)
        assert fact.statement.startswith(before + answer), fact.id
        assert answer[:1].isspace() or not before, fact.id  # the word's space travels with it
        assert is_hit(answer, fact.answers) and not is_hit(before, fact.answers), fact.id

"""The recall ladder on a fake session whose memory is its last K words, the easy set's separation from
training and the other sets, `ovq eval ladder`'s errors, and one run on a tiny random checkpoint."""

from __future__ import annotations

import json
import re

import pytest

from ovq.agent.cli.main import LADDER_DEFAULTS, main
from ovq.agent.eval import ladder
from ovq.agent.eval.chat_recall import SETS_DIR, SKIPPED, _recital, is_hit, load_fact_set, normalise
from ovq.agent.eval.ladder import (
    FILLER_TURN_TOKENS,
    RUNGS,
    Ask,
    Feed,
    LadderConfig,
    Setting,
    build_script,
    run_easy,
    run_ladder,
    to_markdown,
    wilson,
)
from ovq.agent.tasks import facts as facts_module
from ovq.agent.tasks import filler as filler_module
from ovq.agent.tasks import pools
from tests.agent.test_chat_recall import FakeSession
from tests.agent.test_pretrained import random_weights, tiny_config, tok, write_hf  # noqa: F401

EASY = load_fact_set("easy")
HELDOUT = load_fact_set("heldout")
SMALL_RUNGS = (0, 128, 512, 2048)
WRAP = 1  # the fake's role words per turn: its template


def count_turn(role: str, text: str) -> int:
    return WRAP + len(text.split())


def fake(memory: int = 10**9, max_context: int | None = None, log: list | None = None, asked=None, **kw):
    """A Setting of fake sessions; `log` gets every fresh session, `asked` (question, turns before it)."""
    log = [] if log is None else log
    lookup = {f.question: f.answers for f in (*EASY.facts, *HELDOUT.facts)}

    class Recording(FakeSession):
        def reply(self, message, sampling):
            if asked is not None:
                asked.append((message, list(self.turns)))
            return super().reply(message, sampling)

    return Setting(
        lambda: Recording(lookup, memory, log, wrap=WRAP),
        count_turn,
        lambda text: len(text.split()),
        max_context=max_context,
        **kw,
    )


def script(n: int = 6, seed: int = 0, rungs=SMALL_RUNGS, spacing: int = 200):
    return build_script(EASY, count_turn, n=n, seed=seed, rungs=rungs, spacing=spacing)


def records(result: dict) -> list[dict]:
    return [{"rung": r["rung"], **x} for r in result["rungs"] if "skipped" not in r for x in r["per_fact"]]


# ---- the script and the walk


@pytest.mark.parametrize("seed", [0, 1])
def test_each_fact_is_asked_at_each_rung_once_at_its_distance_or_within_a_filler_turn(seed):
    s = script(seed=seed)
    asks = [(e.fact, e.rung) for e in s.events if isinstance(e, Ask)]
    assert sorted(asks) == sorted((i, r) for i in range(6) for r in SMALL_RUNGS)
    result = run_easy(s, fake(), max_tokens=8)
    got = records(result)
    assert sorted((r["id"], r["rung"]) for r in got) == sorted(
        (f.id, r) for f in s.facts for r in SMALL_RUNGS
    )
    for r in got:
        assert r["rung"] <= r["distance"] < r["rung"] + FILLER_TURN_TOKENS, r
        if r["rung"] == 0:
            assert r["distance"] == 0  # the question directly follows the statement
    # filler is cut to end where a question falls due: most land on their rung exactly
    assert sum(r["distance"] == r["rung"] for r in got) >= len(got) // 2
    assert [b["total"] for b in result["rungs"]] == [6] * 4 and result["stream_tokens"] == s.tokens


def test_facts_are_stated_spacing_apart_as_plain_user_turns_between_passages_and_chat():
    s = script(n=8, spacing=300)
    pos, starts = 0, []
    for e in s.events:
        if isinstance(e, Feed):
            if e.fact is not None:
                starts.append(pos)
                assert (e.role, e.text) == ("user", s.facts[e.fact].statement)
            pos += e.tokens
    assert [b - a for a, b in zip(starts, starts[1:])] == [300] * 7  # filler lands statements on time
    filler = [e for e in s.events if isinstance(e, Feed) and e.fact is None]
    observed = sum(e.tokens for e in filler if e.role == "observation")
    assert observed > sum(e.tokens for e in filler) // 2  # mostly passages, some generated chat
    assert {e.role for e in filler} == {"observation", "user", "assistant"}
    answers = [a for f in EASY.facts for a in f.answers]
    assert not any(is_hit(e.text, answers) for e in s.events if isinstance(e, Feed) and e.fact is None)
    assert s.tokens == pos and all(
        e.tokens == count_turn(e.role, e.text) for e in s.events if isinstance(e, Feed)
    )


def test_the_main_stream_never_holds_a_question_and_asks_run_on_copies():
    log: list = []
    run_easy(script(), fake(log=log), max_tokens=8)
    assert len(log) == 1  # one stream for every fact and rung
    main_stream = log[0]
    questions = {f.question for f in EASY.facts}
    assert main_stream.parent is None and not questions & {t for _, t in main_stream.turns}
    assert main_stream.tokens_seen == sum(count_turn(r, t) for r, t in main_stream.turns)


@pytest.mark.parametrize("memory, hits", [(300, [6, 6, 0, 0]), (1000, [6, 6, 6, 0])])
def test_a_memory_of_k_words_hits_the_rungs_below_k_and_misses_beyond(memory, hits):
    result = run_easy(script(), fake(memory=memory), max_tokens=8)
    assert [b["hits"] for b in result["rungs"]] == hits
    kept = hits.index(0)
    assert [b["recital_logprob"] for b in result["rungs"][:kept]] == [0.0] * kept
    assert all(b["recital_logprob"] <= -5 for b in result["rungs"][kept:])
    hit = result["rungs"][0]["per_fact"][0]
    assert hit["hit"] and hit["reply"].startswith("I believe")


def test_full_attention_replays_an_episode_per_fact_with_the_same_text_between_fact_and_question():
    s = script()
    bounded_asked, full_asked, log = [], [], []
    run_easy(s, fake(asked=bounded_asked), max_tokens=8)
    result = run_easy(s, fake(max_context=900, log=log, asked=full_asked), max_tokens=8)
    assert len(log) == 6  # an episode per fact
    assert [b.get("skipped") for b in result["rungs"]] == [None, None, None, SKIPPED]
    assert result["rungs"][3]["needed_tokens"] > 900
    assert all(session.peak <= 900 for session in log)  # copies (question and reply) included

    def since_statement(asked):  # per question asked, the turns since its fact was stated, shortest first
        statement = {f.question: f.statement for f in EASY.facts}
        out = []
        for question, turns in asked:
            start = max(k for k, (_, text) in enumerate(turns) if text == statement[question])
            out.append((question, turns[start:]))
        return sorted(out, key=lambda x: (x[0], len(x[1])))

    full = since_statement(full_asked)
    bounded = since_statement(bounded_asked)
    bounded = [x for k, x in enumerate(bounded) if k % len(SMALL_RUNGS) < 3]  # the rungs full reaches
    assert len(full) == 6 * 3 and full == bounded  # the identical text, other facts' statements included
    for session in log:  # an episode opens with its fact's statement
        assert session.turns[0] in {("user", f.statement) for f in s.facts}
    assert len({session.turns[0] for session in log}) == 6


def test_the_same_seed_gives_the_same_script_and_results_and_another_seed_others():
    a, b, c = script(seed=3), script(seed=3), script(seed=4)
    assert a == b and a.events != c.events
    assert run_easy(a, fake(memory=700), max_tokens=8) == run_easy(b, fake(memory=700), max_tokens=8)


def test_distances_are_measured_by_the_session_not_taken_from_the_script():
    """A script counted with 3 tokens more per turn than the session feeds: questions come where the
    script put them, and each records the distance the session measured (shorter here)."""
    s = build_script(EASY, lambda role, text: count_turn(role, text) + 3, n=4, rungs=SMALL_RUNGS, spacing=200)
    got = records(run_easy(s, fake(), max_tokens=8))
    assert all(r["distance"] <= r["rung"] for r in got)
    assert any(r["distance"] < r["rung"] for r in got)


def test_progress_counts_answers():
    events = []
    run_easy(script(n=2, rungs=(0, 64)), fake(), max_tokens=4, on_progress=events.append)
    assert [e["answered"] for e in events] == [0, 1, 2, 3, 4]
    assert all(e["tier"] == "easy" and e["total"] == 4 for e in events)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n must lie in"):
        script(n=len(EASY.facts) + 1)
    with pytest.raises(ValueError, match="rungs must be"):
        script(rungs=(-1, 64))
    with pytest.raises(ValueError, match="tiers must be"):
        LadderConfig(tiers=("easy", "medium"))
    with pytest.raises(ValueError, match="max_tokens"):
        LadderConfig(max_tokens=0)
    assert LadderConfig(rungs=(64, 0, 64)).rungs == (0, 64)


# ---- Wilson intervals


@pytest.mark.parametrize(
    "hits, total, lo, hi",
    [(0, 40, 0.0, 0.0876), (20, 40, 0.3520, 0.6480), (40, 40, 0.9124, 1.0), (3, 10, 0.1078, 0.6032)],
)
def test_wilson_intervals_match_known_values(hits, total, lo, hi):
    assert wilson(hits, total) == pytest.approx((lo, hi), abs=1e-4)


# ---- both tiers, markdown, plot


def test_run_ladder_shares_a_script_between_settings_and_reports_both_tiers(monkeypatch, tmp_path):
    monkeypatch.setattr(ladder, "HARD_DISTANCES", (64, 512))
    monkeypatch.setattr(ladder, "HARD_N", 2)
    built = []
    monkeypatch.setattr(ladder, "build_script", lambda *a, **k: built.append(a) or build_script(*a, **k))
    loaded, events = [], []
    settings = {
        "window": lambda: loaded.append("window") or fake(300, template="words", state_bytes=2**20),
        "full": lambda: loaded.append("full") or fake(max_context=700, template="words", state_bytes=2**22),
    }
    config = LadderConfig(rungs=(0, 256, 1024), n=4, max_tokens=8)
    result = run_ladder(settings, config, lambda label, e: events.append((label, e)))
    assert len(built) == 1 and loaded == ["window", "full"]  # one script for one template
    assert result["config"]["hard_distances"] == [64, 512] and result["config"]["rungs"] == [0, 256, 1024]
    window, full = result["settings"]["window"], result["settings"]["full"]
    assert [b["hits"] for b in window["easy"]["rungs"]] == [4, 4, 0]
    assert [b.get("skipped") for b in full["easy"]["rungs"]] == [None, None, SKIPPED]
    assert [b["hits"] for b in window["hard"]["buckets"]] == [2, 0]
    assert window["hard"]["buckets"][0]["wilson"] == [round(x, 4) for x in wilson(2, 2)]
    assert window["wall_seconds"] >= 0 and window["state_bytes"] == 2**20
    assert {e["tier"] for _, e in events} == {"easy", "hard"} and {lb for lb, _ in events} == {
        "window",
        "full",
    }

    table = to_markdown(result)
    lines = table.splitlines()
    assert lines[0].startswith("Easy tier: facts stated D tokens before the question (set easy, 4 facts")
    assert lines[2] == "| setting | D=0 | D=256 | D=1,024 |"
    all_hit, none_hit = (f"{100 * x:.0f}" for x in (wilson(4, 4)[0], wilson(0, 4)[1]))
    cells = f"4/4 ({all_hit}-100%) 0.00 | 4/4 ({all_hit}-100%) 0.00 | 0/4 (0-{none_hit}%) -"
    assert lines[4].startswith(f"| window | {cells}")
    assert lines[5].startswith("| full | 4/4") and lines[5].endswith("| skipped |")
    assert "Hard tier: chat recall (set heldout, 2 facts per distance" in table
    assert "| setting | D=512 |" not in table and "| setting | D=64 | D=512 |" in table
    assert "| window | 1.0 |" in table and "| full | 4.0 |" in table  # state in MiB

    pytest.importorskip("matplotlib")
    ladder.plot(result, str(tmp_path / "ladder.png"))
    assert (tmp_path / "ladder.png").stat().st_size > 1000


# ---- the easy set: fresh facts, apart from training and the other sets


def test_the_easy_set_has_at_least_48_plain_facts_numbered_from_e01():
    assert EASY.name == "easy" and len(EASY.facts) >= 48
    assert [f.id for f in EASY.facts] == [f"e{i:02d}" for i in range(1, len(EASY.facts) + 1)]
    for attr in ("statement", "question"):
        assert len({getattr(f, attr) for f in EASY.facts}) == len(EASY.facts)
    for f in EASY.facts:
        assert len(re.findall(r"[.!?](\s|$)", f.statement)) == 1, f.id  # one sentence
        before, answer = _recital(f)
        assert f.statement.startswith(before + answer) and is_hit(answer, f.answers), f.id
        # the question asks in other words: it is not the statement less its answer
        assert normalise(f.statement.replace(answer.strip(), "")) not in normalise(f.question), f.id


def test_every_easy_answer_lies_in_the_test_split_and_in_no_training_pool():
    pool_items = {
        normalise(x)
        for module in (pools, facts_module, filler_module)
        for value in vars(module).values()
        if isinstance(value, tuple) and value and all(isinstance(x, str) for x in value)
        for x in value
    }
    assert {"lisbon", "otter", "lasagna", "cello"} <= pool_items  # the pools were found
    for f in EASY.facts:
        for a in f.answers:
            assert pools.split_of(a) == "test", (f.id, a)  # training draws only 'train' values
            assert normalise(a) not in pool_items, (f.id, a)


def test_the_easy_set_shares_no_answer_with_the_tuning_and_heldout_sets():
    easy = {normalise(a) for f in EASY.facts for a in f.answers}
    for other in (load_fact_set("tuning"), HELDOUT):
        assert not easy & {normalise(a) for f in other.facts for a in f.answers}
        text = " ".join(f"{f.statement} {f.question}" for f in other.facts)
        assert not [a for f in EASY.facts for a in f.answers if is_hit(text, [a])]
        mine = " ".join(f"{f.statement} {f.question}" for f in EASY.facts)
        assert not [a for f in other.facts for a in f.answers if is_hit(mine, [a])]
        assert not {f.id for f in EASY.facts} & {f.id for f in other.facts}


def test_no_easy_fact_gives_away_another():
    for f in EASY.facts:
        for g in EASY.facts:
            if f is not g:
                assert not is_hit(f"{g.statement} {g.question}", f.answers), (f.id, g.id)


def _loose(text: str) -> str:
    """A question with placeholders and possessives dropped, normalised: templates compare loosely."""
    text = re.sub(r"\{\w+\}", " ", text)
    return " ".join(w for w in normalise(text).split() if w not in {"my", "your", "our", "s"})


def test_no_easy_question_is_a_training_question_template():
    from ovq.agent.tasks import memory_dialogue

    templates = {_loose(q) for kind in facts_module.KINDS.values() for q in kind.questions}
    templates |= {_loose(t) for t in (*memory_dialogue.QUESTION_PREFIXES, *memory_dialogue.REPLIES) if t}
    assert "what is locker code" in templates  # "What is {whose} locker code?"
    for f in EASY.facts:
        assert _loose(f.question) not in templates, f.id
        for prefix in memory_dialogue.QUESTION_PREFIXES:
            assert _loose(f.question.removeprefix(prefix)) not in templates, f.id


def test_the_easy_set_says_what_it_is_for():
    head = (SETS_DIR / "easy.toml").read_text().split("name =")[0]
    assert "EASY tier of the recall ladder" in head and "heldout.toml" in head


# ---- the command line


def test_the_cli_defaults_match_the_ladder():
    assert LADDER_DEFAULTS["distances"] == ",".join(map(str, RUNGS))
    assert int(LADDER_DEFAULTS["max_tokens"]) == LadderConfig().max_tokens
    assert int(LADDER_DEFAULTS["n"]) == LadderConfig().n


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--settings", "smollm2"], "each setting is MODEL:RETROFIT"),
        (["--settings", "tiny:memory;:full"], "each setting is MODEL:RETROFIT"),
        (["--settings", "no/such/model:memory"], "no model 'no/such/model'"),
        (["--settings", ";"], "no setting given"),
        (["--tiers", "easy,medium"], "tiers must be some of easy, hard"),
        (["--distances", "0,x"], "--distances must be"),
        (["--distances", "-5"], "rungs must be token distances >= 0"),
        (["--n", "0"], "--n must be >= 1"),
        (["--n", "1,2"], "ladder takes one --n"),
        (["--model", "tiny"], "ladder names its models in --settings"),
    ],
)
def test_bad_ladder_arguments_exit_2_with_one_line(argv, message, capsys):
    settings = [] if "--settings" in argv else ["--settings", "tiny:memory"]
    assert main(["eval", "ladder", *settings, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ovq eval") and message in err and err.count("\n") == 1, err


def test_retrofit_settings_are_checked_before_any_model_loads(capsys, tmp_path):
    assert main(["eval", "ladder", "--settings", f"{tmp_path}:window=lots"]) == 2
    assert "retrofit window must be a number" in capsys.readouterr().err
    assert main(["eval", "ladder", "--settings", f"{tmp_path}:tuned"]) == 2
    assert "'tuned' is a tuned model's own settings" in capsys.readouterr().err


# ---- end to end on a tiny random checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):  # noqa: F811
    config = tiny_config()
    return write_hf(tmp_path_factory.mktemp("ckpt") / "hf", config, random_weights(config), tok)


SMALL = "sinks=2,window=16,chunk=8,capacity=12"


def test_eval_ladder_runs_both_tiers_on_a_tiny_checkpoint(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ladder, "HARD_DISTANCES", (16,))
    monkeypatch.setattr(ladder, "HARD_N", 1)
    out, md = tmp_path / "ladder.json", tmp_path / "ladder.md"
    settings = f"{checkpoint}:full;{checkpoint}:{SMALL}"
    argv = ["eval", "ladder", "--settings", settings, "--distances", "0,64", "--n", "2", "--max-tokens", "2"]
    assert main([*argv, "--quiet", "--json", str(out), "--markdown", str(md)]) == 0
    result = json.loads(out.read_text())
    full, bounded = (result["settings"][f"{checkpoint}:{r}"] for r in ("full", SMALL))
    assert [b["rung"] for b in bounded["easy"]["rungs"]] == [0, 64]
    assert all(b["total"] == 2 for b in bounded["easy"]["rungs"])
    for b in bounded["easy"]["rungs"]:
        assert all(r["distance"] >= b["rung"] for r in b["per_fact"])
    # the checkpoint's context (256 tokens) holds rung 0's episodes, not the hard tier's stream
    assert full["easy"]["rungs"][0]["total"] == 2
    assert full["hard"]["buckets"][0]["skipped"] == SKIPPED and bounded["hard"]["total"] == 1
    assert bounded["state_bytes"] < full["state_bytes"]
    assert capsys.readouterr().out == md.read_text()
    assert f"| {checkpoint}:{SMALL} | " in md.read_text()


def test_eval_ladder_adds_what_remembering_must_not_cost(checkpoint, tmp_path, capsys, monkeypatch):
    # perplexity by position and greedy replies, compared with the first full-attention setting (run
    # first whatever its place), word for word and by per-token KL on its own replies
    monkeypatch.setattr(ladder, "HARD_DISTANCES", (16,))
    monkeypatch.setattr(ladder, "HARD_N", 1)
    out = tmp_path / "ladder.json"
    settings = f"{checkpoint}:{SMALL};{checkpoint}:full"
    argv = ["eval", "ladder", "--settings", settings, "--distances", "0", "--n", "1", "--max-tokens", "2",
            "--tiers", "easy", "--perplexity", "300", "--agreement", "--quiet",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())["settings"]
    full, bounded = result[f"{checkpoint}:full"], result[f"{checkpoint}:{SMALL}"]
    assert full["agreement"]["identical"] == full["agreement"]["total"] == 12
    assert full["reply_kl"]["kl_per_token"] == 0 and full["reply_kl"]["with"] == f"{checkpoint}:full"
    assert bounded["agreement"]["with"] == f"{checkpoint}:full" and bounded["reply_kl"]["tokens"] > 0
    assert full["perplexity"][-1]["to"] <= 512 and bounded["perplexity"][0]["tokens"] > 0
    printed = capsys.readouterr().out
    assert "greedy = full" in printed and "Per-token KL" in printed

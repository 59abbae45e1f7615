"""ovq serve end to end: the official openai client against a real server on a loopback port, the
shipped tiny model, greedy. A reply is checked against what an in-process Session says when given the
same stream: deterministic, so it holds even for a weak model."""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx2
import openai
import pytest
import torch

from ovq.agent.cli.main import main
from ovq.agent.model.checkpoint import load_model, save_model
from ovq.agent.model.generate import SamplingConfig
from ovq.agent.model.hybrid import HybridLM, ModelConfig
from ovq.agent.model.tokenizer import Tokenizer
from ovq.agent.runtime.session import Runtime, Session
from ovq.agent.server.app import ServeConfig, create_app, running
from ovq.snapshots.store import SnapshotStore

README = Path(__file__).resolve().parents[2] / "README.md"
MAX_TOKENS = 24
LONG = 16_000  # a reply the rambler would take about 25 s to write: cut short, it stops at once
GREEDY = SamplingConfig(max_tokens=MAX_TOKENS)
FACT, FILLER, QUESTION = "My locker code is 4471.", "Tell me about the weather.", "What is my locker code?"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # servers, clients and tests share two cores
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture(scope="module")
def rambler(tmp_path_factory):
    """An untrained model that repeats a letter and never says <|end|>: its replies run to max_tokens
    unless they are cut short."""
    tok = Tokenizer.train(["Please count slowly from one to a thousand."] * 50, vocab_size=300)
    torch.manual_seed(0)
    model = HybridLM(ModelConfig.preset("tiny", tok.vocab_size))
    with torch.no_grad():  # an untrained model echoes its last token: never a special (silent) one
        model.embed.weight[list(tok.special.values())] = 0
    return load_model(save_model(model, tok, tmp_path_factory.mktemp("m")))


@pytest.fixture
def store(tmp_path):
    """A snapshot store in memory where the machine has one (/dev/shm): each exchange saves twice, and
    these tests check what is saved, not how the disk syncs it."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path / "store"
        return
    path = Path(tempfile.mkdtemp(prefix="ovq-serve-test-", dir=shm))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def serving(loaded, store, **config):
    runtime = Runtime(loaded, SnapshotStore(store))
    # log_config=None: uvicorn's loggers reach the root logger, where caplog sees them
    with running(create_app(runtime, ServeConfig(**config)), log_config=None) as url:
        yield runtime, url


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def chat(c: openai.OpenAI, session: str, *messages: tuple[str, str], **options):
    body = [{"role": role, "content": text} for role, text in messages]
    options = {"max_tokens": MAX_TOKENS, "temperature": 0, **options}
    return c.chat.completions.create(model="tiny", messages=body, user=session, **options)


def reference(loaded, *messages: str) -> list[str]:
    """What an in-process session replies to `messages`, one exchange each."""
    session = Session(Runtime(loaded), "reference", persist=False)
    return [session.reply(m, GREEDY) for m in messages]


def transcript(url: str, session: str) -> list[tuple[str, str]]:
    turns = httpx2.get(f"{url}/v1/sessions/{session}/transcript").json()["turns"]
    return [(t["role"], t["text"]) for t in turns]


def stats(url: str, session: str) -> dict:
    return httpx2.get(f"{url}/v1/sessions/{session}").json()


def test_models_health_and_a_reply_plain_and_streamed(tiny, store):
    with serving(tiny, store, model_id="tiny") as (_, url):
        c = client(url)
        assert [m.id for m in c.models.list()] == ["tiny"]
        assert httpx2.get(f"{url}/health").json() == {"status": "ok", "model": "tiny"}
        first = chat(c, "s", ("user", FACT))
        chunks = list(chat(c, "s", ("user", QUESTION), stream=True, stream_options={"include_usage": True}))
        held = stats(url, "s")
    expected = reference(tiny, FACT, QUESTION)
    assert first.choices[0].message.content == expected[0] and first.choices[0].finish_reason == "stop"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == expected[1]
    assert "4471" in expected[1]  # the tiny model recalls the fact from its memory alone
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    usage = chunks[-1].usage  # the last chunk: usage, no choices
    assert chunks[-1].choices == [] and usage.completion_tokens > 0
    assert first.usage.total_tokens + usage.total_tokens == held["tokens_seen"]  # usage = all that was fed


def test_a_fact_told_in_call_1_is_recalled_in_call_3_from_only_the_newest_message(tiny, store):
    with serving(tiny, store) as (_, url):
        c = client(url)
        replies = [chat(c, "locker", ("user", m)) for m in (FACT, FILLER, QUESTION)]
        turns = transcript(url, "locker")
    texts = [r.choices[0].message.content for r in replies]
    assert texts == reference(tiny, FACT, FILLER, QUESTION) and "4471" in texts[2]
    assert [r.model_extra["session"]["new_messages"] for r in replies] == [1, 1, 1]
    for m, text in zip((FACT, FILLER, QUESTION), texts):
        assert turns[:2] == [("user", m), ("assistant", text)]
        turns = turns[2:]
    assert turns == []


def test_a_client_that_resends_the_whole_history_feeds_only_what_is_new(tiny, store):
    with serving(tiny, store) as (_, url):
        c = client(url)
        history, replies = [], []
        for m in (FACT, FILLER, QUESTION):
            history.append(("user", m))
            replies.append(chat(c, "full", *history))
            history.append(("assistant", replies[-1].choices[0].message.content))
        turns = transcript(url, "full")
        held = stats(url, "full")
    assert turns == history  # each message held once, in order
    assert [r.model_extra["session"]["new_messages"] for r in replies] == [1, 1, 1]
    assert [r.choices[0].message.content for r in replies] == reference(tiny, FACT, FILLER, QUESTION)
    positions = [r.model_extra["session"]["tokens_seen"] for r in replies]
    steps = [b - a for a, b in zip([0, *positions], positions)]
    assert [r.usage.total_tokens for r in replies] == steps and positions[-1] == held["tokens_seen"]
    # the same three exchanges in a session given one message at a time hold exactly as many tokens
    only_newest = Session(Runtime(tiny), "newest", persist=False)
    for m in (FACT, FILLER, QUESTION):
        only_newest.reply(m, GREEDY)
    assert only_newest.tokens_seen == held["tokens_seen"]


def test_a_new_session_takes_a_whole_conversation_and_a_system_message_once(tiny, store):
    with serving(tiny, store) as (_, url):
        c = client(url)
        system = ("system", "You are terse.")
        tool = ("tool", "disk usage on db-1 is 91%")
        first = chat(c, "ops", system, ("user", FACT), ("assistant", "Noted."), tool, ("user", QUESTION))
        again = chat(c, "ops", system, ("user", FILLER))  # the system message matches how it started
        with pytest.raises(openai.ConflictError) as e:
            chat(c, "ops", ("system", "You are chatty."), ("user", FILLER))
        turns = transcript(url, "ops")
    assert [r.model_extra["session"]["new_messages"] for r in (first, again)] == [5, 1]
    held = ["observation", "user", "assistant", "observation"] + ["user", "assistant"] * 2
    assert [r for r, _ in turns] == held
    assert turns[0][1] == "You are terse." and turns[3][1] == tool[1]
    assert "did not start with the system message" in e.value.body["message"]


def test_seed_temperature_and_stop_reach_the_sampler(tiny, store):
    with serving(tiny, store) as (_, url):
        c = client(url)
        sampled = [chat(c, s, ("user", FACT), temperature=1.0, top_p=0.9, seed=7) for s in ("a", "b")]
        cut = chat(c, "a", ("user", QUESTION), stop=["71"])
    local = Session(Runtime(tiny), "local", persist=False)
    local.generator.manual_seed(7)
    expected = local.reply(FACT, SamplingConfig(temperature=1.0, top_p=0.9, max_tokens=MAX_TOKENS))
    assert [r.choices[0].message.content for r in sampled] == [expected, expected]
    full = local.reply(QUESTION, GREEDY)
    assert "71" in full and cut.choices[0].message.content == full.split("71")[0]


def test_a_contradicting_history_is_a_409_that_changes_nothing(tiny, store):
    with serving(tiny, store) as (runtime, url):
        c = client(url)
        said = chat(c, "x", ("user", FACT)).choices[0].message.content
        before = (stats(url, "x"), transcript(url, "x"), runtime.store.head("x").id)
        with pytest.raises(openai.ConflictError) as e:
            chat(c, "x", ("user", FACT), ("assistant", said + " Also, I lied."), ("user", QUESTION))
        after = (stats(url, "x"), transcript(url, "x"), runtime.store.head("x").id)
    assert after == before
    assert e.value.status_code == 409 and e.value.body["code"] == "session_conflict"
    assert "/v1/sessions/x/fork" in e.value.body["message"] and "another `user`" in e.value.body["message"]


def test_with_an_api_key_every_request_needs_it(tiny, store):
    with serving(tiny, store, api_key="sk-test-123") as (_, url):
        with pytest.raises(openai.AuthenticationError):
            chat(client(url, "sk-wrong"), "k", ("user", FACT))
        bare = httpx2.get(f"{url}/health")
        assert chat(client(url, "sk-test-123"), "k", ("user", FACT)).choices[0].message.content
    assert bare.status_code == 401 and bare.headers["www-authenticate"] == "Bearer"
    assert bare.json()["error"]["code"] == "invalid_api_key" and "Authorization: Bearer" in bare.text


@pytest.mark.parametrize(
    "body, param",
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": "hello"}', "messages"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "temperature"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "user": "a/b"}', "user"),
    ],
)
def test_bad_bodies_get_an_openai_style_400(tiny, store, body, param):
    with serving(tiny, store) as (_, url):
        r = httpx2.post(f"{url}/v1/chat/completions", content=body)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error.keys() == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_unknown_fields_are_ignored_and_bodies_over_the_limit_are_413(tiny, store):
    with serving(tiny, store, max_body_bytes=4096) as (_, url):
        ok = chat(client(url), "u", ("user", FACT), frequency_penalty=0.5, extra_body={"ovq_unknown": 1})
        big = {"messages": [{"role": "user", "content": "x" * 5000}]}
        sized = httpx2.post(f"{url}/v1/chat/completions", json=big)
        chunked = httpx2.post(f"{url}/v1/chat/completions", content=iter([b'{"messages": "', b"x" * 5000]))
    assert ok.choices[0].message.content
    for r in (sized, chunked):  # told its length, or not (chunked)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_an_internal_error_is_a_500_without_its_traceback_which_the_log_has(tiny, store, monkeypatch, caplog):
    def broken(self):
        raise RuntimeError("secret internals")

    with serving(tiny, store) as (_, url):
        chat(client(url), "e", ("user", FACT))
        monkeypatch.setattr(Session, "stats", broken)
        r = httpx2.get(f"{url}/v1/sessions/e")
    assert r.status_code == 500 and r.json()["error"]["message"] == "internal error"
    assert "secret" not in r.text and "Traceback" not in r.text
    assert any(rec.exc_info and "secret internals" in str(rec.exc_info[1]) for rec in caplog.records)


def test_eight_clients_on_eight_sessions_and_three_on_one_keep_every_transcript_whole(tiny, store):
    sent: dict[str, list[str]] = {f"c{k}": [] for k in range(8)}
    errors = []

    def run(session: str, count: int, c: openai.OpenAI) -> None:
        try:
            for i in range(count):
                sent[session].append(f"Note {i} for {session}: the key is {i * 7}.")
                chat(c, session, ("user", sent[session][-1]))
        except Exception as e:  # reported by the test thread
            errors.append(e)

    shared = [f"Message {i} to the shared session." for i in range(6)]

    def run_shared(k: int, c: openai.OpenAI) -> None:
        try:
            for m in shared[k::3]:
                chat(c, "shared", ("user", m))
        except Exception as e:
            errors.append(e)

    with serving(tiny, store, max_concurrent=4) as (_, url):
        counts = [7, 7] + [6] * 6  # 50 requests on 8 sessions
        threads = [threading.Thread(target=run, args=(f"c{k}", n, client(url))) for k, n in enumerate(counts)]
        threads += [threading.Thread(target=run_shared, args=(k, client(url))) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors and not any(t.is_alive() for t in threads)
        held = {s: transcript(url, s) for s in [*sent, "shared"]}
    for session, messages in sent.items():
        turns = held[session]
        assert [t for r, t in turns if r == "user"] == messages  # complete and in order
        assert [r for r, _ in turns] == ["user", "assistant"] * len(messages)
    shared_turns = held["shared"]  # three clients at once: exchanges queue whole, one after another
    assert [r for r, _ in shared_turns] == ["user", "assistant"] * len(shared)
    assert sorted(t for r, t in shared_turns if r == "user") == sorted(shared)


def test_a_restarted_server_continues_each_session_from_its_snapshot(tiny, store):
    with serving(tiny, store) as (_, url):
        c = client(url)
        for m in (FACT, FILLER):
            chat(c, "r", ("user", m))
        before = (transcript(url, "r"), stats(url, "r")["tokens_seen"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "ovq", "serve", "--model", "tiny", "--store", str(store), "--port", "0"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)  # a new process
    ports, ready = [], threading.Event()

    def read_log() -> None:  # uvicorn says where it listens once it is ready; the rest is drained
        for line in proc.stderr:
            if found := re.search(r"Uvicorn running on http://127\.0\.0\.1:(\d+)", line):
                ports.append(found.group(1))
                ready.set()
        ready.set()  # it ended

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        assert ready.wait(timeout=120) and ports, "ovq serve did not start"
        url = f"http://127.0.0.1:{ports[0]}"
        after = (transcript(url, "r"), stats(url, "r")["tokens_seen"])
        resumed = chat(client(url), "r", ("user", QUESTION)).choices[0].message.content
    finally:
        proc.terminate()  # SIGTERM: uvicorn shuts down gracefully
        proc.wait(timeout=30)
        reader.join(timeout=30)
    assert after == before
    assert resumed == reference(tiny, FACT, FILLER, QUESTION)[2]  # as if it had never stopped


def test_a_client_that_disconnects_mid_stream_stops_the_reply_and_the_session_stays_whole(rambler, store):
    with serving(rambler, store) as (runtime, url):
        c = client(url)
        stream = chat(c, "d", ("user", "Count."), stream=True, max_tokens=LONG)
        got = [ch.choices[0].delta.content for _, ch in zip(range(3), stream)]
        stream.close()  # the client goes away after a few chunks
        turns = transcript(url, "d")  # queued behind the cut exchange: it has ended when this answers
        held = stats(url, "d")
        head = runtime.store.head("d")
        followed = chat(c, "d", ("user", "Again."))
    assert [r for r, _ in turns] == ["user", "assistant"] and turns[1][1].startswith("".join(got[1:]))
    full = reference(rambler, "Count.")  # what the uninterrupted reply starts with (24 tokens)
    partial = turns[1][1]
    assert full[0].startswith(partial) or partial.startswith(full[0])  # a cut of the same greedy reply
    assert held["tokens_seen"] < LONG / 4  # stopped long before max_tokens
    assert head.tokens_seen == held["tokens_seen"]  # kept and saved: the reply cut short is durable
    assert followed.model_extra["session"]["new_messages"] == 1


def test_a_client_that_times_out_stops_a_plain_reply_too(rambler, store):
    with serving(rambler, store) as (_, url):
        body = {"user": "t", "max_tokens": LONG, "messages": [{"role": "user", "content": "Count."}]}
        with pytest.raises(httpx2.ReadTimeout):
            httpx2.post(f"{url}/v1/chat/completions", json=body, timeout=0.5)
        turns = transcript(url, "t")
        held = stats(url, "t")
    assert [r for r, _ in turns] == ["user", "assistant"] and held["tokens_seen"] < LONG / 4


def test_sessions_fork_rollback_save_and_probe_over_http(tiny, store):
    suite = {
        "name": "mini",
        "threshold": 0.0,
        "max_tokens": 8,
        "probe": [{"fact": FACT, "question": QUESTION, "expect": "4471", "distance": 16}],
    }
    with serving(tiny, store) as (runtime, url):
        c, http = client(url), httpx2.Client(base_url=url, timeout=60)
        chat(c, "p", ("user", FACT))
        first = runtime.store.head("p").id
        chat(c, "p", ("user", FILLER))
        saved = http.post("/v1/sessions/p/save", json={"label": "two-exchanges"})
        forked = http.post("/v1/sessions/p/fork", json={"name": "p2"})
        taken = http.post("/v1/sessions/p/fork", json={"name": "p2"})
        listed = {s["id"] for s in http.get("/v1/sessions").json()["data"]}
        before = stats(url, "p")
        probe = http.post("/v1/sessions/p/probe", json={"suite": suite})
        unchanged = stats(url, "p") == before
        rolled = http.post("/v1/sessions/p/rollback", json={"snapshot_id": first})
        turns, forked_turns = transcript(url, "p"), transcript(url, "p2")
        missing = http.get("/v1/sessions/nobody")
        bad_suite = http.post("/v1/sessions/p/probe", json={"suite": "/etc/passwd"})
    assert saved.status_code == 201 and saved.json()["label"] == "two-exchanges"
    assert forked.status_code == 201 and taken.status_code == 409 and {"p", "p2"} <= listed
    assert probe.json()["results"][0]["distance"] == 16 and unchanged  # probes run on a copy
    assert rolled.json()["turns"] == 2 and len(turns) == 2 and len(forked_turns) == 4
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "session_not_found"
    assert bad_suite.status_code == 400 and bad_suite.json()["error"]["param"] == "suite"


def test_the_readmes_client_example_runs_as_written(tiny, store, capsys):
    section = README.read_text().split("## Serving an OpenAI-compatible API")[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, "README lost its ovq serve example"
    with serving(tiny, store, api_key="sk-local-7f3a") as (_, url):
        code = block.group(1).replace("http://127.0.0.1:8000", url)
        exec(compile(code, "README.md:serve", "exec"), {})
    assert capsys.readouterr().out.strip() == reference(tiny, FACT)[0]


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--port", "70000"], "--port must lie in [0, 65535]"),
        (["--api-key", " "], "the API key is empty"),
        (["--max-concurrent", "0"], "must be >= 1"),
    ],
)
def test_ovq_serve_refuses_bad_options_before_loading_anything(argv, says, capsys):
    assert main(["serve", "--model", "no-such-model", *argv]) == 2
    assert says in capsys.readouterr().err


def test_ovq_bench_serve_prints_its_measures_as_json(capsys):
    argv = ["bench", "serve", "--rounds", "2", "--first-token", "2", "--requests", "3", "--max-tokens", "4"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["replies_identical"] == "2/2"  # both sides did the same work
    assert result["http_layer_requests"] == 5 and result["http_layer_ms"] > 0
    assert [m["requests"] for m in result["memory_mb"]] == [0, 3]

"""The Session runtime on a tiny random model: streaming consistency, chat turns, concurrency, async."""

import asyncio
import threading

import pytest
import torch

from ovq.agent.eval.probes import Probe, ProbeSuite, run_probe
from ovq.agent.model.checkpoint import save_model
from ovq.agent.model.generate import CancelToken, SamplingConfig
from ovq.agent.model.hybrid import HybridLM, ModelConfig
from ovq.agent.model.tokenizer import MARKERS, Tokenizer
from ovq.agent.runtime.session import Runtime
from ovq.agent.tasks import make_task


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    tok = Tokenizer.train((make_task("memory_dialogue")(i).text for i in range(20)), vocab_size=400)
    torch.manual_seed(0)
    model = HybridLM(ModelConfig.preset("tiny", tok.vocab_size))
    path = save_model(model, tok, tmp_path_factory.mktemp("model"))
    return Runtime.load(path, store=tmp_path_factory.mktemp("store"))


def test_feeding_in_bounded_pieces_equals_one_forward(runtime, monkeypatch):
    import ovq.agent.runtime.session

    monkeypatch.setattr(
        ovq.agent.runtime.session, "FEED_TOKENS", 37
    )  # many forwards, cut at arbitrary tokens
    text = make_task("memory_dialogue")(99).text
    s = runtime.session("pieces")
    fed = s.feed(text)
    ids = runtime.tokenizer.encode(text)
    assert fed == len(ids) == s.tokens_seen
    probe = runtime.tokenizer.encode(" next")
    with torch.no_grad():
        whole, _ = runtime.model(torch.tensor([ids + probe]))
    torch.testing.assert_close(s._forward(probe)[0, -1], whole[0, -1], rtol=1e-4, atol=1e-5)


def test_a_turn_always_ends_like_training_data(runtime):
    s = runtime.session("turns")
    s.reply("hi", SamplingConfig(max_tokens=2))  # stopped by max tokens, not by <|end|>
    tok = runtime.tokenizer
    end, nl = tok.special["<|end|>"], tok.encode("\n")
    before = s.tokens_seen
    s.reply("again", SamplingConfig(max_tokens=0))
    prompt = tok.encode("<|user|>again<|end|>\n<|assistant|>")
    assert s.tokens_seen - before == len(prompt) + 1 + len(nl)  # prompt, then <|end|> and the newline
    assert end in prompt


def test_two_sessions_share_the_weights_and_not_the_state(runtime):
    x, y = runtime.session("x"), runtime.session("y")
    assert x.runtime.model is y.runtime.model and runtime.session("x") is x
    x.feed("hello there")
    assert x.tokens_seen > 0 and y.tokens_seen == 0


def test_reply_is_a_chat_turn_and_the_stream_holds_it(runtime):
    s = runtime.session("chat")
    answer = s.reply("What is my locker code?", SamplingConfig(max_tokens=8))
    assert isinstance(answer, str)
    assert [t.role for t in s.transcript.turns] == ["user", "assistant"]
    assert s.tokens_seen >= len(
        runtime.tokenizer.encode("<|user|>What is my locker code?<|end|>\n<|assistant|>")
    )


def test_cancel_keeps_what_was_generated(runtime):
    s = runtime.session("cancel")
    s.feed("start")
    before = s.tokens_seen
    cancel = CancelToken()
    pieces = []
    for piece in s.stream("go", SamplingConfig(max_tokens=40, temperature=1.0), cancel):
        pieces.append(piece)
        cancel.cancel()
    assert s.tokens_seen > before and s.tokens_seen - before < 40


def test_concurrent_writers_are_serialised(runtime):
    s = runtime.session("threads")
    counts = []

    def work():
        counts.append(s.feed("one two three four five six seven"))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.tokens_seen == sum(counts)


def test_async_twins_do_not_block_the_event_loop(runtime):
    s = runtime.session("async")

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        t = asyncio.create_task(ticker())
        fed = await s.afeed("some observation text " * 200)
        pieces = [p async for p in s.astream("and then", SamplingConfig(max_tokens=5))]
        answer = await s.areply("ok?", SamplingConfig(max_tokens=3))
        t.cancel()
        return fed, pieces, answer, ticks

    fed, pieces, answer, ticks = asyncio.run(main())
    assert fed > 0 and isinstance(answer, str) and ticks > 3


def test_stats_report_memory_per_layer(runtime):
    s = runtime.session("stats")
    s.feed("a b c d e f g " * 50)
    st = s.stats()
    assert st["tokens_seen"] == s.tokens_seen and st["state_bytes"] == s.state.nbytes
    ovq = [layer for layer in st["layers"] if layer["kind"] == "ovq"]
    assert ovq and ovq[0]["memory"]["tokens_seen"] == s.tokens_seen and st["kv_cache_bytes"] > 0


def test_bad_input_is_named_and_memory_is_kept(runtime, tmp_path):
    s = runtime.session("bad")
    s.feed("keep this")
    kept = s.tokens_seen
    with pytest.raises(ValueError, match="empty input"):
        s.reply("   ")
    with pytest.raises(ValueError, match="must be str or bytes"):
        s.feed(42)
    with pytest.raises(ValueError, match="role"):
        s.feed("x", role="system")
    with pytest.warns(UserWarning, match="not valid UTF-8"):
        s.feed(b"caf\xe9")
    with pytest.warns(UserWarning, match="control characters"):
        s.feed("bell\x07")
    assert s.tokens_seen > kept
    with pytest.raises(ValueError, match="session names"):
        runtime.session("a/b")
    with pytest.raises(FileNotFoundError, match="lacks model.safetensors"):
        Runtime.load(str(tmp_path))


def _state_bytes(session):
    return [t.clone() for layer in session.state.layers for t in layer.tensors().values()]


def test_probe_leaves_the_live_session_bit_identical(runtime):
    from ovq.agent.eval.probes import parse_suite

    s = runtime.session("probed")
    s.feed("My locker code is 4471. " * 3, role="user")
    before, pos, rng, turns = _state_bytes(s), s.tokens_seen, s.generator.get_state(), len(s.transcript.turns)
    suite = parse_suite(
        {"probe": [{"fact": "My code is 12.", "question": "Code?", "expect": "12", "distance": 300},
                   {"fact": "It is blue.", "question": "Color?", "expect_regex": "bl.e", "distance": 0}],
         "max_tokens": 6}
    )  # fmt: skip
    report = s.probe(suite)
    assert [r.distance for r in report.results] == [300, 0] and 0 <= report.accuracy <= 1
    after = _state_bytes(s)
    assert not any("#" in name for name in runtime.store.sessions())  # probe forks never persist
    assert s.tokens_seen == pos and len(s.transcript.turns) == turns
    assert torch.equal(s.generator.get_state(), rng)
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_fork_starts_from_the_current_state_and_diverges(runtime):
    s = runtime.session("origin")
    s.feed("shared prefix of the stream")
    f = s.fork("origin-fork")
    assert f.tokens_seen == s.tokens_seen and runtime.session("origin-fork") is f
    f.feed("only in the fork")
    assert f.tokens_seen > s.tokens_seen
    with pytest.raises(ValueError, match="already exists"):
        s.fork("origin-fork")


def test_reply_stream_streams_and_closing_it_still_closes_the_turn(runtime):
    s = runtime.session("streamed")
    gen = s.reply_stream("tell me", SamplingConfig(max_tokens=30, temperature=1.0))
    first = next(gen, None)
    gen.close()
    assert first is None or isinstance(first, str)
    assert [t.role for t in s.transcript.turns] == ["user", "assistant"]
    assert s.reply("next", SamplingConfig(max_tokens=2)) is not None  # the session is usable again


def test_a_spaced_model_gets_spaced_turns_and_replies_without_the_space(tmp_path):
    tok = Tokenizer.train((make_task("memory_dialogue")(i).text for i in range(20)), vocab_size=400)
    torch.manual_seed(0)
    model = HybridLM(ModelConfig.preset("tiny", tok.vocab_size, chat_format="spaced"))
    rt = Runtime.load(save_model(model, tok, tmp_path / "model"), store=tmp_path / "store")
    s = rt.session("spaced")
    fed = []
    s.feed_ids = lambda ids, orig=s.feed_ids: fed.append(list(ids)) or orig(ids)
    s.feed("my code is 4471", role="user")
    s.reply("and mine?", SamplingConfig(max_tokens=0))
    assert fed == [tok.encode("<|user|> my code is 4471<|end|>\n"), tok.encode("<|user|> and mine?<|end|>\n")]
    fed.clear()  # a probe's filler is written in the model's format too
    probe = Probe("my code is 4471", "code?", distance=600, expect="4471")
    f = s.fork("probe")
    f.feed_ids = lambda ids, orig=f.feed_ids: fed.append(list(ids)) or orig(ids)
    run_probe(f, probe, ProbeSuite("t", (probe,), observation_prob=0.5, max_tokens=0), 0)
    filler = tok.decode([i for ids in fed for i in ids])
    assert sum(filler.count(m) for m in MARKERS) > 2
    assert all(filler.count(m) == filler.count(m + " ") for m in MARKERS)
    # a reply generated as " 4471" reads "4471": the model is made to say that word, then <|end|>
    say = [tok.special["<|assistant|>"], *tok.encode(" 4471"), tok.special["<|end|>"]]
    nxt = dict(zip(say, say[1:]))

    def forward(tokens, state=None, **kw):
        t = nxt.get(int(tokens[0, -1]), tok.special["<|end|>"])
        return torch.nn.functional.one_hot(torch.tensor([[t]]), tok.vocab_size).float() * 50, state

    rt.model.forward = forward
    assert s.reply("code?", SamplingConfig(max_tokens=8)) == "4471"
    assert s.transcript.turns[-1].text == "4471"


def test_a_session_resumes_only_at_the_capacity_that_saved_it(runtime, tmp_path):
    from ovq.agent.model.checkpoint import load_model

    s = runtime.session("capacity")
    s.feed(make_task("memory_dialogue")(5).text)
    s.save()
    path, store = runtime.loaded.path, runtime.store
    bigger = Runtime.load(path, store, capacity=2 * runtime.model.config.ovq.capacity)
    with pytest.raises(ValueError, match="made by model .* capacity it was saved with"):
        bigger.session("capacity")
    same = Runtime.load(path, store, capacity=runtime.model.config.ovq.capacity)
    assert same.session("capacity").tokens_seen == s.tokens_seen
    with pytest.raises(ValueError, match="pass them to load_model"):
        Runtime.load(load_model(path), store, capacity=64)


def test_score_gives_each_tokens_log_probability_as_one_forward_would_in_any_piece_size(runtime, monkeypatch):
    import ovq.agent.runtime.session as session_module

    s = runtime.session("score")
    s.feed("my locker code is 4471")
    twin = s.copy()
    context, text = " ok, noted.", " and the gate code is 9911"
    tok = runtime.tokenizer
    before, ids = tok.encode(context), tok.encode(text)
    logits, _ = runtime.model(torch.tensor([before + ids]), twin.state)
    logp = logits[0].float().log_softmax(-1)
    want = [logp[len(before) - 1 + i, t].item() for i, t in enumerate(ids)]
    assert s.score(text, context=context) == pytest.approx(want, abs=1e-5)
    assert s.tokens_seen == twin.tokens_seen + len(before) + len(ids)  # it feeds what it scores
    monkeypatch.setattr(session_module, "FEED_TOKENS", 3)  # pieces that split the context and the text
    again = runtime.session("score-pieces")
    again.feed("my locker code is 4471")
    assert again.score(text, context=context) == pytest.approx(want, abs=1e-4)
    # without a context, the text's first token follows nothing fed in this call: not scored
    assert len(runtime.session("score-bare").score(text)) == len(ids) - 1
    with pytest.raises(ValueError, match="empty"):
        s.score("")


def test_score_reply_scores_the_answer_where_the_model_would_write_it(runtime):
    s = runtime.session("score-reply")
    s.feed("my locker code is 4471", role="user")
    twin = s.copy()
    scored = s.copy().score_reply("what is my locker code?", "4471")
    chat, tok = runtime.model.config.chat, runtime.tokenizer
    prompt = tok.encode(chat.turn("<|user|>", "what is my locker code?") + chat.prompt)
    written = tok.encode(chat.open("<|assistant|>")[len(chat.prompt) :] + "4471")
    assert len(scored) == len(written)
    logits, _ = runtime.model(torch.tensor([prompt + written]), twin.state)
    logp = logits[0].float().log_softmax(-1)
    assert scored == pytest.approx(
        [logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(written)], abs=1e-5
    )
    assert s.transcript.turns == twin.transcript.turns  # scoring on copies leaves the session as it was
    # a user turn cut before its last word: that word scored where the turn would say it
    said = s.copy().score_turn("user", " 4471", before="again, my locker code is")
    cue = tok.encode(chat.open("<|user|>") + "again, my locker code is")
    logits, _ = runtime.model(torch.tensor([cue + tok.encode(" 4471")]), twin.state)
    logp = logits[0].float().log_softmax(-1)
    assert said == pytest.approx(
        [logp[len(cue) - 1 + i, t].item() for i, t in enumerate(tok.encode(" 4471"))], abs=1e-5
    )
    with pytest.raises(ValueError, match="role"):
        s.copy().score_turn("system", "x")

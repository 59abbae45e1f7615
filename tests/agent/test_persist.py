"""Snapshots of sessions: exact restore across processes, rollback, forks, loud harmless failures."""

import subprocess
import sys
import textwrap

import pytest
import torch

from ovq.agent.model.checkpoint import save_model
from ovq.agent.model.generate import SamplingConfig
from ovq.agent.model.hybrid import HybridLM, ModelConfig
from ovq.agent.model.tokenizer import Tokenizer
from ovq.agent.runtime.session import Runtime
from ovq.agent.tasks import make_task
from ovq.snapshots import ChecksumError, FingerprintMismatch, decode

TOK = Tokenizer.train((make_task("memory_dialogue")(i).text for i in range(15)), vocab_size=400)


def model_dir(tmp_path, seed=0, layers="conv,swa,ovq,linear"):  # every kind that keeps state
    torch.manual_seed(seed)
    return save_model(
        HybridLM(ModelConfig.preset("tiny", TOK.vocab_size, layers=layers)), TOK, tmp_path / f"m{seed}"
    )


NEXT = textwrap.dedent(
    """
    import sys, torch
    from ovq.agent.runtime.session import Runtime
    from ovq.agent.model.generate import SamplingConfig
    rt = Runtime.load(sys.argv[1], store=sys.argv[2])
    s = rt.session("exact")
    s.rollback(int(sys.argv[4]))  # the live run's replies saved later snapshots (durable turns)
    logits = s._forward(rt.tokenizer.encode(" and then"))[0, -1]
    torch.save({"logits": logits, "tokens_seen": s.tokens_seen,
                "greedy": s.reply("continue", SamplingConfig(max_tokens=12)),
                "sampled": s.reply("again", SamplingConfig(max_tokens=12, temperature=1.0))}, sys.argv[3])
    """
)


def test_save_exit_restore_gives_bit_identical_logits_and_continuations(tmp_path):
    path, store = model_dir(tmp_path), tmp_path / "store"
    text = make_task("memory_dialogue")(7).text[:3000]
    rt = Runtime.load(path, store=store)
    s = rt.session("exact")
    s.feed(text)
    s.reply("hello", SamplingConfig(max_tokens=5, temperature=1.0))  # the sampler RNG has moved
    checkpoint = s.save(label="checkpoint")
    # the session that never stopped
    logits = s._forward(rt.tokenizer.encode(" and then"))[0, -1]
    live = {"logits": logits, "tokens_seen": s.tokens_seen,
            "greedy": s.reply("continue", SamplingConfig(max_tokens=12)),
            "sampled": s.reply("again", SamplingConfig(max_tokens=12, temperature=1.0))}  # fmt: skip
    # a new process restores the snapshot and does the same
    out = tmp_path / "restored.pt"
    run = subprocess.run(
        [sys.executable, "-c", NEXT, str(path), str(store), str(out), str(checkpoint.id)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    restored = torch.load(out)
    assert torch.equal(restored["logits"], live["logits"])
    assert restored["tokens_seen"] == live["tokens_seen"]
    assert restored["greedy"] == live["greedy"] and restored["sampled"] == live["sampled"]


def test_rollback_returns_to_an_earlier_snapshot_and_moves_the_head(tmp_path):
    rt = Runtime.load(model_dir(tmp_path), store=tmp_path / "store")
    s = rt.session("roll")
    s.feed("first part")
    first = s.save()
    probe = rt.tokenizer.encode(" probe")
    s.feed("second part, later")
    s.save()
    s.rollback(first.id)
    assert s.tokens_seen == first.tokens_seen and rt.store.head("roll").id == first.id
    expected = Runtime.load(model_dir(tmp_path), store=tmp_path / "other").session("fresh")
    expected.feed("first part")
    assert torch.equal(s._forward(probe), expected._forward(probe))


def test_a_snapshot_of_another_model_is_refused_and_nothing_changes(tmp_path):
    store = tmp_path / "store"
    a = Runtime.load(model_dir(tmp_path, seed=0), store=store)
    a.session("shared").feed("saved by model A")
    a.session("shared").save()
    b = Runtime.load(model_dir(tmp_path, seed=1), store=store)
    with pytest.raises(FingerprintMismatch, match="snapshot 1 of session 'shared'.*model that saved it"):
        b.session("shared")
    assert a.store.head("shared").id == 1  # the refused session is still there for its own model
    live = b.session("mine")
    live.feed("live text")
    before = [t.clone() for layer in live.state.layers for t in layer.tensors().values()]
    with pytest.raises(ValueError, match="another session"):
        live.rollback(1)
    assert all(
        torch.equal(x, y)
        for x, y in zip(before, [t for layer in live.state.layers for t in layer.tensors().values()])
    )


def test_a_damaged_blob_fails_loudly_and_the_live_state_is_kept(tmp_path):
    rt = Runtime.load(model_dir(tmp_path), store=tmp_path / "store")
    s = rt.session("damaged")
    s.feed("some text")
    info = s.save()
    s.feed("more text")
    pos = s.tokens_seen
    env = rt.store._env()
    digest = bytes.fromhex(next(iter(info.parts.values())))
    with env.env.begin(write=True) as txn:
        blob = bytearray(txn.get(digest, db=env.db["blobs"]))
        blob[len(blob) // 2] ^= 0xFF
        txn.put(digest, bytes(blob), db=env.db["blobs"])
    with pytest.raises(ChecksumError):
        s.rollback(info.id)
    assert s.tokens_seen == pos


def test_fork_shares_blobs_and_reply_commits_the_user_turn_first(tmp_path):
    rt = Runtime.load(model_dir(tmp_path, layers="swa,ovq"), store=tmp_path / "store")
    s = rt.session("base")
    s.feed("a long shared prefix " * 30)
    s.save()
    blobs = rt.store.blob_count()
    f = s.fork("branch")
    assert rt.store.blob_count() == blobs  # identical state: the fork stores no new blob at all
    assert rt.session("branch") is f and f.tokens_seen == s.tokens_seen
    f.reply("what did I say?", SamplingConfig(max_tokens=3))
    first = rt.store.list("branch")[1]  # saved after the user's turn, before the answer
    snap = decode(rt.store.load(first.id)[1])
    assert snap.meta["transcript"][-1] == ["user", "what did I say?"]


def test_retention_keeps_the_last_k_and_labelled_snapshots_and_frees_blobs(tmp_path):
    rt = Runtime.load(model_dir(tmp_path), store=tmp_path / "store", keep_last=3)
    s = rt.session("long-chat")
    s.feed("start")
    s.save(label="pinned")
    for i in range(8):
        s.feed(f" turn {i}")
        s.save()
    infos = rt.store.list("long-chat")
    assert [i.label for i in infos].count("pinned") == 1 and len(infos) == 4  # pinned + last 3
    assert infos[-1].id == s.snapshot_id == rt.store.head("long-chat").id
    assert rt.store.blob_count() <= sum(len(i.parts) for i in infos)  # pruned snapshots' blobs are freed
    with pytest.raises(ValueError, match="keep_last"):
        Runtime.load(model_dir(tmp_path), store=tmp_path / "store", keep_last=0)

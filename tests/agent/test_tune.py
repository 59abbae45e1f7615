"""`ovq train --init <pretrained>`: the memory reading of a tiny random checkpoint tuned for a few
steps on CPU. Its loss falls, a run stopped and resumed equals one run, the result loads as a model
(fingerprinted, the base unchanged inside the window), and bad requests are refused."""

from dataclasses import replace

import pytest
import torch

from ovq.agent.cli.main import main
from ovq.agent.model.checkpoint import load_model
from ovq.agent.model.pretrained.memory_read import ADAPTER, MemoryReadParams
from ovq.agent.tasks import derive_seed
from ovq.agent.train.memory_streams import memory_stream
from ovq.agent.train.tune import stream_step
from tests.agent.test_pretrained import random_weights, tiny_config, tok, write_hf  # noqa: F401

SMALL = "sinks=2,window=32,chunk=16,capacity=8"
ARGS = ["--retrofit", SMALL, "--seq-len", "400", "--batch-size", "1", "--lr", "0.03", "--warmup", "0"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):  # noqa: F811
    config = replace(tiny_config(), max_context=512)
    return write_hf(tmp_path_factory.mktemp("ckpt") / "hf", config, random_weights(config), tok)


@pytest.fixture(scope="module")
def tuned(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "run"
    code = main(["train", "--init", str(checkpoint), "--out", str(out), "--steps", "8", *ARGS,
                 "--checkpoint-every", "4", "--no-progress"])  # fmt: skip
    assert code == 0
    return out


def test_memory_streams_state_facts_early_and_ask_them_late(checkpoint):
    loaded = load_model(checkpoint, retrofit=SMALL)
    count = lambda text: len(loaded.tokenizer.encode(text))  # noqa: E731
    a = memory_stream(loaded.model.config.chat, count, 1500, seed=5)
    assert a == memory_stream(loaded.model.config.chat, count, 1500, seed=5)  # deterministic
    assert a != memory_stream(loaded.model.config.chat, count, 1500, seed=6)
    assert 1300 <= count(a.text) <= 1500 + 8 and a.facts >= 2
    values = [a.text[s:e] for s, e in a.answer_spans]
    assert len(values) == a.facts
    for s, e in a.answer_spans:  # each asked value was stated before, in the first turns
        assert a.text.find(a.text[s:e]) < s and a.text.find(a.text[s:e]) < len(a.text) // 3
    with pytest.raises(ValueError, match="at least 256 tokens"):
        memory_stream(loaded.model.config.chat, count, 100, seed=5)


def test_tuning_lowers_the_loss_and_the_result_loads_as_a_model(checkpoint, tuned):
    # (a random model recalls nothing: what falls is the loss on the streams it was tuned on; what a
    # tune does for a real model's held-out recall is measured in its card)
    base = load_model(checkpoint, retrofit=SMALL)
    model = load_model(tuned)
    assert model.fingerprint != base.fingerprint and model.model.memory_read is not None
    assert model.model.config.retrofit == base.model.config.retrofit  # the tune's own retrofit

    seeds = [derive_seed(0, i) for i in range(8)]  # the streams it was tuned on

    def loss(loaded):
        c = loaded.model.config.llama
        if loaded.model.memory_read is None:
            loaded.model.attach_memory_read(MemoryReadParams(c.n_layers, c.n_heads, c.n_kv_heads))
        loaded.model.requires_grad_(False).memory_read.requires_grad_(True)
        parts = [stream_step(loaded.model, loaded, 400, seed) for seed in seeds]
        return sum(p["kl"] + p["answer"] for p in parts)

    assert loss(model) < loss(base)
    x = torch.tensor([list(range(3, 40))])  # inside the window: the base model's logits exactly
    assert torch.equal(model.model(x)[0], base.model(x)[0])


def test_a_run_stopped_and_resumed_equals_one_run(checkpoint, tuned, tmp_path):
    out = tmp_path / "run"
    common = ["train", "--init", str(checkpoint), "--out", str(out), "--steps", "8", *ARGS, "--no-progress"]
    assert main([*common, "--stop-at", "3"]) == 0
    assert main([*common]) == 0  # resumes at step 3
    one = MemoryReadParams.load(tuned / ADAPTER, 2, 4, 2)
    two = MemoryReadParams.load(out / ADAPTER, 2, 4, 2)
    assert all(torch.equal(a, b) for a, b in zip(one.parameters(), two.parameters()))


def test_the_kl_weight_scales_only_the_distillation(checkpoint):
    loaded = load_model(checkpoint, retrofit=SMALL)
    loaded.model.float()  # bf16 rounding would hide the affine law
    c = loaded.model.config.llama
    loaded.model.attach_memory_read(MemoryReadParams(c.n_layers, c.n_heads, c.n_kv_heads))
    loaded.model.requires_grad_(False).memory_read.requires_grad_(True)
    params = list(loaded.model.memory_read.parameters())

    def grads(kl_weight):  # the loss is kl_weight * KL + answers: its gradient is affine in the weight
        for p in params:
            p.grad = None
        parts = stream_step(loaded.model, loaded, 400, derive_seed(0, 0), kl_weight=kl_weight)
        return torch.cat([p.grad.flatten() for p in params]), parts

    (g0, p0), (g1, p1), (g2, p2) = grads(0.0), grads(1.0), grads(2.0)
    assert p0 == p1 == p2  # the losses it reports are unweighted
    assert not torch.allclose(g1, g2)
    torch.testing.assert_close(g2 - g1, g1 - g0, rtol=1e-4, atol=1e-6)


def test_hybrid_training_refuses_the_tune_options(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "x"), "--kl-weight", "2"]) == 2
    assert "apply to a pretrained --init" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--retrofit", "streaming"], "has no memory to tune"),
        (["--seq-len", "4000"], "exceeds the checkpoint's context 512"),
        (["--seq-len", "256", "--retrofit", "window=300"], "ends before the memory is read"),
        (["--tasks", "recite:1"], "--tasks: hybrid training options"),
        (["--kl-weight", "-1"], "kl_weight must be >= 0"),
    ],
)
def test_bad_tunes_are_refused_in_one_line(checkpoint, tmp_path, capsys, extra, says):
    args = ["train", "--init", str(checkpoint), "--out", str(tmp_path / "x"), "--steps", "2", *ARGS, *extra]
    assert main(args) == 2
    assert says in capsys.readouterr().err


def test_a_tune_applies_only_to_its_own_base(checkpoint, tuned, tmp_path, tok):  # noqa: F811
    with pytest.raises(ValueError, match="to train it further, give it as --out"):
        from ovq.agent.train.config import TrainConfig
        from ovq.agent.train.trainer import train

        train(TrainConfig(init=str(tuned), out=str(tmp_path / "y")))
    config = replace(tiny_config(), max_context=512)
    other = write_hf(tmp_path / "other", config, random_weights(config, seed=1), tok)
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in tuned.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    meta = (moved / "memory_read.json").read_text().replace(str(checkpoint), str(other))
    (moved / "memory_read.json").write_text(meta)
    with pytest.raises(ValueError, match="was tuned from another"):
        load_model(moved)


def test_a_time_limit_stops_at_a_checkpoint_that_resumes(checkpoint, tuned, tmp_path):
    import json

    out = tmp_path / "run"
    common = ["train", "--init", str(checkpoint), "--out", str(out), "--steps", "8", *ARGS, "--no-progress"]
    assert main([*common, "--time-limit", "0.01"]) == 0  # one step passes it: saved after that step
    assert json.loads((out / "tune_state.json").read_text())["step"] == 1
    assert main(common) == 0
    one = MemoryReadParams.load(tuned / ADAPTER, 2, 4, 2)
    two = MemoryReadParams.load(out / ADAPTER, 2, 4, 2)
    assert all(torch.equal(a, b) for a, b in zip(one.parameters(), two.parameters()))


def test_eval_chat_measures_a_tuned_reading_beside_its_base(checkpoint, tuned, tmp_path):
    import json

    out = tmp_path / "chat.json"
    argv = ["eval", "chat", "--model", str(tuned), "--distances", "16", "--n", "1", "--max-tokens", "2"]
    assert main([*argv, "--quiet", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert list(result) == ["full", "streaming", "tuned"]  # beside the base's full attention and StreamingLLM
    assert result["tuned"]["state_bytes"] == load_model(tuned).model.init_state(1).nbytes  # its own settings
    full = load_model(tuned, retrofit="full")  # no memory to read: the base model as it is
    assert full.model.memory_read is None
    assert full.fingerprint == load_model(checkpoint, retrofit="full").fingerprint

"""LoRA fine-tunes with the memory in the loop (`ovq train --init <pretrained> --lora-rank R`) on a tiny
random checkpoint: an untrained adapter is the base model, merging equals running beside, the loss
falls, a run stopped and resumed equals one run, the result loads (fingerprinted, merged, under every
retrofit), and bad adapters and options are refused in one line."""

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from ovq.agent.cli.main import main
from ovq.agent.model.checkpoint import load_model
from ovq.agent.model.pretrained import lora
from ovq.agent.model.pretrained.lora import LORA, LoRAConfig, parse_targets
from ovq.agent.model.pretrained.memory_read import ADAPTER, MemoryReadParams
from ovq.agent.tasks import derive_seed
from ovq.agent.train.recall_dialogues import doc_passages, recall_dialogue
from ovq.agent.train.tune import dialogue_step
from tests.agent.test_pretrained import random_weights, tiny_config, tok, write_hf  # noqa: F401

SMALL = "sinks=2,window=32,chunk=16,capacity=8"
ARGS = ["--retrofit", SMALL, "--seq-len", "600", "--batch-size", "1", "--lr", "0.03", "--warmup", "0",
        "--lora-rank", "2", "--lora-lr", "0.01", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):  # noqa: F811
    config = replace(tiny_config(), max_context=512)  # shorter than a dialogue: KL stops at the context
    return write_hf(tmp_path_factory.mktemp("ckpt") / "hf", config, random_weights(config), tok)


@pytest.fixture(scope="module")
def tuned(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "run"
    assert main(["train", "--init", str(checkpoint), "--out", str(out), "--steps", "6", *ARGS,
                 "--checkpoint-every", "3"]) == 0  # fmt: skip
    return out


def _float(checkpoint, **kw):
    loaded = load_model(checkpoint, retrofit=SMALL, **kw)
    loaded.model.float()
    return loaded


def test_an_untrained_adapter_is_the_base_model_and_merging_equals_running_beside(checkpoint):
    loaded = _float(checkpoint)
    x = torch.tensor([list(range(3, 120))])
    base = loaded.model(x)[0]
    config = LoRAConfig(rank=3, alpha=6.0)
    wrapped = lora.attach(loaded.model.llama, config)
    assert len(wrapped) == 2 * 7  # every projection of both layers
    assert torch.equal(loaded.model(x)[0], base)  # B starts at zero
    torch.manual_seed(0)
    for m in wrapped.values():
        m.B.data.normal_(0, 0.05)
    beside = loaded.model(x)[0]
    assert not torch.allclose(beside, base)
    lora.set_enabled(wrapped, False)
    assert torch.equal(loaded.model(x)[0], base)  # the teacher: the base model
    tensors = lora.state_dict(wrapped)
    merged = _float(checkpoint)
    lora.merge(merged.model.llama, config, tensors)
    torch.testing.assert_close(merged.model(x)[0], beside, rtol=1e-4, atol=1e-4)


def test_targets_parse_and_bad_settings_are_refused():
    assert parse_targets("attn") == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert parse_targets("mlp,q_proj") == ("q_proj", "gate_proj", "up_proj", "down_proj")
    with pytest.raises(ValueError, match="--lora-targets"):
        parse_targets("attn,wq")
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="alpha"):
        LoRAConfig(alpha=float("nan"))


def test_recall_dialogues_tell_facts_and_ask_them_back(checkpoint):
    loaded = load_model(checkpoint, retrofit=SMALL)
    count = lambda text: len(loaded.tokenizer.encode(text))  # noqa: E731
    chat = loaded.model.config.chat
    a = recall_dialogue(chat, count, 3000, seed=5)
    assert a == recall_dialogue(chat, count, 3000, seed=5)  # deterministic
    assert a != recall_dialogue(chat, count, 3000, seed=6)
    assert count(a.text) <= 3000 + 8 and a.facts >= 1
    opening, closing = chat.turn("<|assistant|>", "\0").split("\0")
    for s, e in a.targets:  # every target is a whole assistant turn's text and its closing
        assert a.text[:s].endswith(opening) and a.text[s:e].endswith(closing)
    many = [recall_dialogue(chat, count, 3000, seed=s) for s in range(40)]
    said = [t for d in many for s, e in d.targets for t in [d.text[s:e]]]
    assert any("haven't" in t or "never told" in t for t in said)  # questions about what was never told
    assert any(0 in d.asks for d in many) and max(max(d.asks, default=0) for d in many) > 1000
    assert all(len(p) >= 160 for p in doc_passages()) and len(doc_passages()) > 100
    with pytest.raises(ValueError, match="at least 256 tokens"):
        recall_dialogue(chat, count, 100, seed=5)


def test_lora_tuning_lowers_the_loss_and_the_result_loads_as_a_model(checkpoint, tuned):
    model, base = load_model(tuned), load_model(checkpoint, retrofit=SMALL)
    assert model.fingerprint != base.fingerprint and model.model.memory_read is not None
    x = torch.tensor([list(range(3, 40))])
    assert not torch.equal(model.model(x)[0], base.model(x)[0])  # new weights, inside the window too
    full = load_model(tuned, retrofit="full")  # no memory to read, but the LoRA's weights
    assert (
        full.model.memory_read is None
        and full.fingerprint != load_model(checkpoint, retrofit="full").fingerprint
    )
    saved = load_file(str(tuned / LORA))
    assert len(saved) == 2 * 2 * 7 and all(t.shape[0] == 2 or t.shape[1] == 2 for t in saved.values())

    seeds = [derive_seed(0, i) for i in range(6)]  # the dialogues it was tuned on

    def loss(loaded, tensors):
        c = loaded.model.config.llama
        loaded.model.float().requires_grad_(False)
        if loaded.model.memory_read is None:
            loaded.model.attach_memory_read(MemoryReadParams(c.n_layers, c.n_heads, c.n_kv_heads))
        wrapped = lora.attach(loaded.model.llama, LoRAConfig(rank=2, alpha=16.0))
        if tensors is not None:
            lora.load_into(wrapped, tensors)
        parts = [dialogue_step(loaded.model, loaded, 600, seed, lora=wrapped) for seed in seeds]
        return sum(p["kl"] + p["answer"] for p in parts)

    tuned_base = load_model(checkpoint, retrofit=SMALL)
    tuned_base.model.attach_memory_read(MemoryReadParams.load(tuned / ADAPTER, 2, 4, 2))
    assert loss(tuned_base, saved) < loss(load_model(checkpoint, retrofit=SMALL), None)


def test_a_lora_run_stopped_and_resumed_equals_one_run(checkpoint, tuned, tmp_path):
    out = tmp_path / "run"
    common = ["train", "--init", str(checkpoint), "--out", str(out), "--steps", "6", *ARGS]
    assert main([*common, "--stop-at", "2"]) == 0
    assert main(common) == 0  # resumes at step 2
    one, two = load_file(str(tuned / LORA)), load_file(str(out / LORA))
    assert set(one) == set(two) and all(torch.equal(one[k], two[k]) for k in one)
    a, b = MemoryReadParams.load(tuned / ADAPTER, 2, 4, 2), MemoryReadParams.load(out / ADAPTER, 2, 4, 2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    # another LoRA cannot resume it
    assert main([*common, "--steps", "8", "--lora-rank", "3"]) == 2


def test_a_damaged_adapter_is_refused_naming_the_file(checkpoint, tuned, tmp_path):
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in tuned.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    (moved / LORA).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="lora.safetensors: not a readable LoRA adapter"):
        load_model(moved)
    tensors = load_file(str(tuned / LORA))
    tensors.pop(sorted(tensors)[0])
    from safetensors.torch import save_file

    save_file(tensors, str(moved / LORA))
    with pytest.raises(ValueError, match="do not fit the model"):
        load_model(moved)


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--lora-rank", "-1"], "lora_rank must be >= 0"),
        (["--lora-targets", "attn,wq"], "--lora-targets"),
        (["--lora-lr", "0"], "lora_lr > 0"),
    ],
)
def test_bad_lora_options_are_refused_in_one_line(checkpoint, tmp_path, capsys, extra, says):
    args = ["train", "--init", str(checkpoint), "--out", str(tmp_path / "x"), "--steps", "2", *ARGS, *extra]
    assert main(args) == 2
    assert says in capsys.readouterr().err


def test_a_lora_needs_a_pretrained_init(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--out", str(tmp_path / "x"), "--lora-rank", "4"]) == 2
    assert "--lora-rank adapts a pretrained model" in capsys.readouterr().err


def test_reply_kl_is_zero_against_itself_and_grows_with_an_adapter(checkpoint, tuned):
    from ovq.agent.eval.long_stream import reply_kl

    base, other = load_model(checkpoint, retrofit=SMALL), load_model(tuned)
    chat, tokenizer = base.model.config.chat, base.tokenizer
    messages, replies = ["Why do cats purr?", "Name a colour."], ["Because they are content.", "Blue."]
    same = reply_kl(base.model, base.model, tokenizer, chat, messages, replies)
    assert same == {"kl_per_token": 0, "tokens": sum(len(tokenizer.encode(r)) for r in replies)}
    assert reply_kl(other.model, base.model, tokenizer, chat, messages, replies)["kl_per_token"] > 0
    with pytest.raises(ValueError):
        reply_kl(base.model, base.model, tokenizer, chat, messages, replies[:1])

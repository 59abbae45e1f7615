"""Training: deterministic data, exact resume, DDP equals one process, answer-only loss."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from ovq.agent.cli.main import main as ovq_main
from ovq.agent.model.hybrid import HybridLM, ModelConfig
from ovq.agent.model.tokenizer import Tokenizer
from ovq.agent.tasks import make_task
from ovq.agent.train.trainer import TrainConfig, make_batch, parse_mix, train

TASKS = "icr@tiny:1,icl@tiny:1"


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    bound = [make_task("icr"), make_task("memory_dialogue")]
    tok = Tokenizer.train((bound[i % 2](i).text for i in range(60)), vocab_size=400)
    return str(tok.save(tmp_path_factory.mktemp("tok") / "tokenizer.json"))


def config(out, tokenizer_path, **kw):
    base = dict(
        out=str(out), preset="tiny", tasks=TASKS, steps=4, batch_size=4, seq_len=128, warmup=1,
        tokenizer=tokenizer_path, checkpoint_every=100, progress=False, seed=3,
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def weights(path):
    return load_file(os.path.join(path, "model.safetensors"))


def test_resume_continues_exactly(tmp_path, tokenizer_path):
    straight = train(config(tmp_path / "a", tokenizer_path))
    train(config(tmp_path / "b", tokenizer_path, stop_at=2))
    resumed = train(config(tmp_path / "b", tokenizer_path))
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_data_loader_workers_train_on_exactly_the_same_batches(tmp_path, tokenizer_path):
    inline = train(config(tmp_path / "inline", tokenizer_path))
    ahead = train(config(tmp_path / "ahead", tokenizer_path, workers=2))
    a, b = weights(inline), weights(ahead)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_init_fine_tunes_from_a_model_directory(tmp_path, tokenizer_path):
    base = train(config(tmp_path / "base", tokenizer_path))
    tuned = train(config(tmp_path / "tuned", None, init=str(base), steps=1, lr=1e-9, warmup=0))
    a, b = weights(base), weights(tuned)
    assert set(a) == set(b)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # started from base, barely moved
    assert (tmp_path / "tuned" / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()
    with pytest.raises(FileNotFoundError, match="no model directory"):
        train(config(tmp_path / "c", None, init=str(tmp_path / "nowhere")))


def test_layers_overrides_the_preset_pattern_for_baselines(tmp_path, tokenizer_path):
    out = train(config(tmp_path / "lin", tokenizer_path, layers="swa,linear", steps=1))
    assert ModelConfig.from_json((out / "config.json").read_text()).layers == "swa,linear"


def test_ovq_overrides_the_preset_memory(tmp_path, tokenizer_path):
    out = train(config(tmp_path / "exact", tokenizer_path, ovq="8,128,linear", steps=1))
    ovq = ModelConfig.from_json((out / "config.json").read_text()).ovq
    assert (ovq.chunk_size, ovq.capacity, ovq.schedule) == (8, 128, "linear")


def test_width_heads_and_window_override_the_preset(tmp_path, tokenizer_path, capsys):
    out = train(config(tmp_path / "wide", tokenizer_path, d_model=48, n_heads=3, window=4, steps=1))
    c = ModelConfig.from_json((out / "config.json").read_text())
    assert (c.d_model, c.n_heads, c.window) == (48, 3, 4)
    assert weights(out)["embed.weight"].shape[1] == 48
    # tiny's width 32 does not split into 3 heads: a clear error, not a traceback
    args = ["train", "--out", str(tmp_path / "bad"), "--preset", "tiny", "--n-heads", "3", "--steps", "1",
            "--tokenizer", tokenizer_path, "--tasks", TASKS, "--no-progress"]  # fmt: skip
    assert ovq_main(args) == 2
    assert "d_model=32 is not divisible by n_heads=3" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_conv_kernel_sets_the_conv_layers_width(tmp_path, tokenizer_path):
    out = train(config(tmp_path / "conv", tokenizer_path, layers="conv,swa,ovq", conv_kernel=3, steps=1))
    c = ModelConfig.from_json((out / "config.json").read_text())
    assert (c.layers, c.conv_kernel) == ("conv,swa,ovq", 3)
    assert weights(out)["blocks.0.mixer.conv.weight"].shape == (c.d_model, c.d_model, 3)


def test_a_run_resumes_only_with_its_own_shape(tmp_path, tokenizer_path):
    run = tmp_path / "run"
    train(config(run, tokenizer_path, layers="swa, linear", d_model=48, n_heads=3, stop_at=2))
    saved = (run / "model.safetensors").read_bytes()
    for changed, message in (
        ({"layers": "swa,ovq"}, "layers='swa,linear'; it cannot resume with 'swa,ovq'"),
        ({"d_model": 64}, "d_model=48; it cannot resume with 64"),
        ({"ovq": "8,48"}, "ovq=OVQConfig"),
    ):
        with pytest.raises(ValueError, match=message):
            train(config(run, tokenizer_path, **changed))
    assert (run / "model.safetensors").read_bytes() == saved  # a refused resume leaves the run as it was
    # the same shape, spelled as it was, resumes to the end
    done = train(config(run, tokenizer_path, layers="swa,linear", d_model=48, n_heads=3))
    assert ModelConfig.from_json((done / "config.json").read_text()).layers == "swa,linear"


def test_chat_format_is_the_models_and_shapes_its_dialogues(tmp_path, tokenizer_path):
    def run(name, tok=tokenizer_path, **kw):
        kw = {"steps": 1, **kw}
        return train(
            config(tmp_path / name, tok, tasks="memory_dialogue@train_1k:1", seq_len=1024, batch_size=1, **kw)
        )

    def fmt(out):
        return ModelConfig.from_json((out / "config.json").read_text()).chat_format

    spaced = run("s", chat_format="spaced")
    assert fmt(spaced) == "spaced" and fmt(run("p")) == "plain"
    assert fmt(run("t", None, init=str(spaced))) == "spaced"  # --init brings its format
    assert fmt(run("r", None, init=str(spaced), chat_format="plain")) == "plain"  # which may be changed
    (chat, _), (icr, _) = parse_mix("memory_dialogue:1,icr@tiny:1", "spaced")
    assert chat.config.chat_format == "spaced" and "<|user|> " in chat(0).text
    assert not hasattr(icr.config, "chat_format")  # tasks without turns are left alone
    run("half", chat_format="spaced", steps=2, stop_at=1)
    with pytest.raises(ValueError, match="cannot resume as 'plain'"):
        run("half", chat_format="plain", steps=2)
    with pytest.raises(ValueError, match="unknown chat format"):
        TrainConfig(chat_format="fancy")


def _ddp_worker(rank, world, port, cfg):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    train(cfg)
    torch.distributed.destroy_process_group()


def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path, tokenizer_path):
    torch.set_num_threads(1)
    # lm_weight > 0: both loss terms (answers, every token) are normalised over the global batch
    single = train(config(tmp_path / "single", tokenizer_path, lm_weight=0.5))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config(tmp_path / "ddp", tokenizer_path, lm_weight=0.5)
    mp.spawn(_ddp_worker, args=(2, port, cfg), nprocs=2, join=True)
    a, b = weights(single), weights(tmp_path / "ddp")
    for k in a:  # Adam amplifies float reordering in near-zero gradients: allow 3% of one lr step
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    torch.manual_seed(3)  # the config's seed: the initial weights
    init = HybridLM(ModelConfig.preset("tiny", Tokenizer.load(tokenizer_path).vocab_size)).state_dict()
    assert max(float((a[k] - init[k]).abs().max()) for k in a) > 1e-3  # training really moved them


def test_ranks_split_the_global_batch_exactly(tokenizer_path):
    tok = Tokenizer.load(tokenizer_path)
    mix, cfg = parse_mix(TASKS), config("unused", tokenizer_path)
    whole, whole_mask = make_batch(mix, tok, cfg, step=5)
    parts = [make_batch(mix, tok, cfg, step=5, rank=r, world=2) for r in range(2)]
    assert torch.equal(torch.stack([parts[i % 2][0][i // 2] for i in range(4)]), whole)
    assert torch.equal(torch.stack([parts[i % 2][1][i // 2] for i in range(4)]), whole_mask)


def test_loss_is_on_answer_tokens_only(tokenizer_path):
    tok = Tokenizer.load(tokenizer_path)
    cfg = config("unused", tokenizer_path, tasks="icr:1", seq_len=1500)
    tokens, mask = make_batch(parse_mix("icr:1"), tok, cfg, step=0)
    targets = tokens[0, 1:][mask[0]].tolist()
    answered = tok.decode(targets)
    assert 0 < mask[0].sum() < mask.shape[1] // 2
    assert all(ch.isdigit() or ch.isspace() or ch.isalpha() for ch in answered), answered


def test_a_batch_whose_answers_are_all_truncated_away_is_an_error(tokenizer_path):
    tok = Tokenizer.load(tokenizer_path)
    cfg = config("unused", tokenizer_path, tasks="icr:1", seq_len=32)
    with pytest.raises(ValueError, match="no answer tokens"):
        make_batch(parse_mix("icr:1"), tok, cfg, step=0)


def test_bad_training_configs(tmp_path, capsys):
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="unknown task"):
        TrainConfig(tasks="poetry:1")
    with pytest.raises(ValueError, match="weights must be positive"):
        TrainConfig(tasks="icr:0")
    with pytest.raises(ValueError, match="lm_weight"):
        TrainConfig(lm_weight=-1.0)
    with pytest.raises(ValueError, match="stop_at"):
        TrainConfig(steps=3, stop_at=4)
    with pytest.raises(ValueError, match="own tokenizer"):
        TrainConfig(init="default", tokenizer="tok.json")
    with pytest.raises(ValueError, match="own architecture; drop --layers$"):
        TrainConfig(init="default", layers="swa,full")
    with pytest.raises(ValueError, match="drop --d-model, --n-heads, --window$"):
        TrainConfig(init="default", d_model=64, n_heads=2, window=16)
    with pytest.raises(ValueError, match="n_heads must be >= 1"):
        TrainConfig(n_heads=0)
    with pytest.raises(ValueError, match="conv_kernel must be >= 2"):
        TrainConfig(conv_kernel=1)
    with pytest.raises(ValueError, match="workers"):
        TrainConfig(workers=-1)
    with pytest.raises(ValueError, match="'L,N' or 'L,N,schedule'"):
        TrainConfig(ovq="32")
    with pytest.raises(ValueError, match="integers L and N, got '32,x'"):
        TrainConfig(ovq="32,x")
    with pytest.raises(ValueError, match="--ovq '32,256,cosine': schedule must be one of"):
        TrainConfig(ovq="32,256,cosine")
    with pytest.raises(ValueError, match=r"--ovq '1,1': .* creates no slot"):
        TrainConfig(ovq="1,1")
    with pytest.raises(ValueError, match="own architecture; drop --ovq$"):
        TrainConfig(init="default", ovq="32,256")
    assert ovq_main(["train", "--out", str(tmp_path), "--steps", "0"]) == 2
    assert "steps must be >= 1" in capsys.readouterr().err


def test_every_train_option_has_help():
    from dataclasses import fields

    from ovq.agent.train.config import HELP

    assert set(HELP) == {f.name for f in fields(TrainConfig)}

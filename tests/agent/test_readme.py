"""The README's agent-loop example runs as written (with a tiny model in place of a trained one)."""

import re
from pathlib import Path

import torch

from ovq.agent.model.checkpoint import save_model
from ovq.agent.model.hybrid import HybridLM, ModelConfig
from ovq.agent.model.tokenizer import Tokenizer
from ovq.agent.runtime.session import Runtime

README = Path(__file__).resolve().parents[2] / "README.md"


def test_agent_loop_example_runs(tmp_path, monkeypatch, capsys):
    block = re.search(r"<!-- agent-loop -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README lost its agent-loop example"
    tok = Tokenizer.train(["step 1: disk usage on db-1 is 67%. Which host needs attention next?"] * 40, 300)
    torch.manual_seed(0)
    model_dir = save_model(HybridLM(ModelConfig.preset("tiny", tok.vocab_size)), tok, tmp_path / "model")
    monkeypatch.setenv("OVQ_STORE", str(tmp_path / "store"))
    exec(compile(block.group(1), "README.md:agent-loop", "exec"), {"MODEL_DIR": model_dir})
    assert "tokens seen" in capsys.readouterr().out
    runtime = Runtime.load(model_dir, store=tmp_path / "store")
    labels = [i.label for i in runtime.store.list("ops-agent")]
    assert "after-step-1" in labels and "after-step-3" in labels

"""A tiny random model (as in tests/agent/test_session.py) and a store, shared by the tui tests."""

import pytest
import torch

from ovq.agent.model.checkpoint import save_model
from ovq.agent.model.hybrid import HybridLM, ModelConfig
from ovq.agent.model.tokenizer import Tokenizer
from ovq.agent.runtime.session import Runtime
from ovq.agent.tasks import make_task


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    tok = Tokenizer.train((make_task("memory_dialogue")(i).text for i in range(20)), vocab_size=400)
    torch.manual_seed(0)
    model = HybridLM(ModelConfig.preset("tiny", tok.vocab_size))
    return save_model(model, tok, tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="session")
def runtime(model_dir, store_dir):
    return Runtime.load(model_dir, store=store_dir)

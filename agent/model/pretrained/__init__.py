"""Pretrained Llama-family checkpoints (GGUF files, Hugging Face directories) as plain torch.

Usage:
ckpt = load_pretrained("SmolLM2-135M-Instruct.Q4_1.gguf")   # or an HF directory
model = LlamaLM.from_checkpoint(ckpt)
prompt = ckpt.chat_prompt([{"role": "user", "content": "Hi"}])
logits = model(torch.tensor([ckpt.tokenizer.encode(prompt).ids]))
"""

from ovq.agent.model.pretrained.chat_template import TemplateError, render
from ovq.agent.model.pretrained.checkpoint import Checkpoint
from ovq.agent.model.pretrained.config import (
    Llama3RopeScaling,
    LlamaConfig,
    RopeFreqFactors,
    rope_inv_freq,
    weight_shapes,
)
from ovq.agent.model.pretrained.errors import PretrainedError
from ovq.agent.model.pretrained.gguf_file import load_gguf
from ovq.agent.model.pretrained.hf_dir import load_hf_dir
from ovq.agent.model.pretrained.llama import LlamaLM, apply_rope
from ovq.agent.model.pretrained.load import load_pretrained

__all__ = [
    "Checkpoint",
    "Llama3RopeScaling",
    "LlamaConfig",
    "LlamaLM",
    "PretrainedError",
    "RopeFreqFactors",
    "TemplateError",
    "apply_rope",
    "load_gguf",
    "load_hf_dir",
    "load_pretrained",
    "render",
    "rope_inv_freq",
    "weight_shapes",
]

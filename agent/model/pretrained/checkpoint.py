"""Checkpoint: a loaded pretrained model (config, float32 weights by HF name, tokenizer, template)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from ovq.agent.model.pretrained.chat_template import TemplateError, compile_template, render
from ovq.agent.model.pretrained.config import LlamaConfig, weight_shapes
from ovq.agent.model.pretrained.errors import PretrainedError


@dataclass(frozen=True, eq=False)
class Checkpoint:
    config: LlamaConfig
    weights: dict[str, torch.Tensor]  # Hugging Face names, float32, contiguous
    tokenizer: Tokenizer
    chat_template: str | None
    source: Path

    def fingerprint(self) -> str:
        """sha256 hex over config, every tensor (sorted by name), tokenizer and chat template."""
        h = hashlib.sha256()

        def put(data: bytes | memoryview) -> None:
            # Length-prefixed so that no two different inputs concatenate to the same stream.
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)

        put(self.config.to_json().encode())
        for name in sorted(self.weights):
            t = self.weights[name].detach().to(torch.float32).contiguous()
            put(f"{name}:{tuple(t.shape)}".encode())
            put(memoryview(t.numpy()).cast("B"))
        put(self.tokenizer.to_str().encode())
        put(b"\x00" if self.chat_template is None else b"\x01" + self.chat_template.encode())
        return h.hexdigest()

    def special_token(self, token_id: int | None) -> str:
        return "" if token_id is None else (self.tokenizer.id_to_token(token_id) or "")

    def chat_prompt(
        self, messages: Sequence[Mapping[str, object]], add_generation_prompt: bool = True
    ) -> str:
        """The model's own chat template applied to `messages` (a list of {role, content})."""
        if self.chat_template is None:
            raise PretrainedError(self.source, "the checkpoint has no chat template")
        return render(
            self.chat_template,
            messages,
            add_generation_prompt,
            bos_token=self.special_token(self.config.bos_id),
            eos_token=self.special_token(self.config.eos_ids[0]),
        )


def check_tensor_table(path: Path, config: LlamaConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse a tensor table (HF name -> shape) that is not exactly what `config` needs.

    Called on headers, before any tensor data is read.
    """
    expected = weight_shapes(config)
    missing = [n for n in expected if n not in shapes]
    if missing:
        raise PretrainedError(path, f"missing tensor {missing[0]}" + _more(missing))
    extra = sorted(n for n in shapes if n not in expected)
    if extra:
        raise PretrainedError(path, f"unexpected tensor {extra[0]}" + _more(extra))
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise PretrainedError(
                path, f"tensor {name} has shape {tuple(shapes[name])}, config needs {shape}"
            )


def check_tokenizer(path: Path, tokenizer: Tokenizer, rows: int, exact: bool) -> None:
    """The tokenizer's ids must index the embedding: `exact` (GGUF) or at most `rows` (HF pads rows)."""
    ids = tokenizer.get_vocab(with_added_tokens=True).values()
    n = max(ids) + 1  # ids may have gaps; the largest one must still index a row
    if n > rows or (exact and (n != rows or len(ids) != rows)):
        raise PretrainedError(path, f"tokenizer does not match its vocab: {n} tokens, {rows} embedding rows")


def check_template(path: Path, template: str | None) -> None:
    if template is not None:
        try:
            compile_template(template)
        except TemplateError as err:
            raise PretrainedError(path, str(err)) from None


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""

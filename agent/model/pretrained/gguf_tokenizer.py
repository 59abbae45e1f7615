"""A `tokenizers.Tokenizer` rebuilt from the vocabulary lists a GGUF file carries.

Only byte-level BPE ("gpt2" model, as in SmolLM, Llama 3, Qwen2) is rebuilt; what llama.cpp
calls the pre-tokenizer type ("smollm", "llama-bpe", ...) picks the text splitting rule.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ovq.agent.model.pretrained.errors import PretrainedError
from ovq.agent.model.pretrained.gguf_meta import GGUFMetadata

# llama.cpp's token types (llama_token_type): 3 = control (e.g. <|im_end|>), 4 = user-defined.
CONTROL, USER_DEFINED = 3, 4

# The split regexes of the original HF tokenizers (Llama 3 splits digits in runs of up to 3,
# Qwen2 one by one).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _regex_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer | None:
    if pre == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        # SmolLM's tokenizer.json: every digit its own piece, then GPT-2's byte-level split.
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre == "llama-bpe":
        return _regex_then_bytes(_LLAMA3_SPLIT)
    if pre == "qwen2":
        return _regex_then_bytes(_QWEN2_SPLIT)
    return None


PRE_TYPES = ("gpt-2", "smollm", "llama-bpe", "qwen2")


def tokenizer_from_gguf(path: Path, meta: GGUFMetadata) -> Tokenizer:
    model = meta.get("tokenizer.ggml.model", str)
    if model == "llama":
        raise PretrainedError(
            path,
            'tokenizer model "llama" (SentencePiece) is not supported; load the Hugging Face '
            "directory instead (its tokenizer.json is used as is)",
        )
    if model != "gpt2":
        raise PretrainedError(
            path, f'tokenizer model "{model}" is not supported (only byte-level BPE, "gpt2")'
        )
    pre = meta.get("tokenizer.ggml.pre", str, "default")
    pre_tokenizer = _pre_tokenizer(pre)
    if pre_tokenizer is None:
        raise PretrainedError(
            path, f'tokenizer pre-tokenizer type "{pre}" is not supported (supported: {", ".join(PRE_TYPES)})'
        )

    tokens: list[str] = meta.get("tokenizer.ggml.tokens", list)
    types: list[int] = meta.get("tokenizer.ggml.token_type", list, [1] * len(tokens))
    merge_lines: list[str] = meta.get("tokenizer.ggml.merges", list)
    if len(types) != len(tokens):
        raise PretrainedError(path, f"tokenizer has {len(tokens)} tokens but {len(types)} token types")
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise PretrainedError(path, "tokenizer token list has duplicate entries")
    merges = [tuple(line.split(" ")) for line in merge_lines]
    bad = next((line for line, m in zip(merge_lines, merges) if len(m) != 2), None)
    if bad is not None:
        raise PretrainedError(path, f"tokenizer merge {bad!r} is not two space-separated tokens")

    try:
        # Llama 3 looks a whole piece up before merging (llama.cpp and HF both do).
        bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=(pre == "llama-bpe"))
    except Exception as err:  # tokenizers raises plain Exception for a merge of unknown tokens
        raise PretrainedError(path, f"tokenizer vocabulary and merges disagree ({err})") from None
    tokenizer = Tokenizer(bpe)
    if pre == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    # Control tokens are matched whole in text and never split; they keep their ids.
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types) if kind == CONTROL]
    )
    tokenizer.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, kind in zip(tokens, types)
            if kind == USER_DEFINED
        ]
    )
    _add_bos_eos(path, meta, tokenizer, tokens)
    return tokenizer


def _add_bos_eos(path: Path, meta: GGUFMetadata, tokenizer: Tokenizer, tokens: list[str]) -> None:
    """Prepend BOS / append EOS on encode when the GGUF asks for it (Llama 3 adds BOS)."""
    marks = []
    for flag, key in (("add_bos_token", "bos_token_id"), ("add_eos_token", "eos_token_id")):
        if meta.get(f"tokenizer.ggml.{flag}", bool, False):
            token_id = meta.get(f"tokenizer.ggml.{key}", int)
            if not 0 <= token_id < len(tokens):
                raise PretrainedError(path, f"tokenizer.ggml.{key} = {token_id} is outside the vocabulary")
            marks.append((flag, tokens[token_id], token_id))
    if not marks:
        return
    bos = [t for flag, t, _ in marks if flag == "add_bos_token"]
    eos = [t for flag, t, _ in marks if flag == "add_eos_token"]

    def sequence(piece: str, type_id: int) -> list[str]:
        return [f"{t}:{type_id}" for t in (*bos, piece, *eos)]

    tokenizer.post_processor = processors.TemplateProcessing(
        single=" ".join(sequence("$A", 0)),
        pair=" ".join(sequence("$A", 0) + sequence("$B", 1)),
        special_tokens=[(t, i) for _, t, i in marks],
    )

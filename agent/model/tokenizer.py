"""Byte-level BPE tokenizer (HuggingFace `tokenizers`) with the chat special tokens.

Any text round-trips exactly (byte level: no unknown tokens). Saved as `tokenizer.json` beside the
weights; its SHA-256 is part of a model's fingerprint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

USER, ASSISTANT, OBSERVATION, END = "<|user|>", "<|assistant|>", "<|observation|>", "<|end|>"
PAD, BOS = "<|pad|>", "<|bos|>"
SPECIAL_TOKENS = (PAD, BOS, USER, ASSISTANT, OBSERVATION, END)
MARKERS = (USER, ASSISTANT, OBSERVATION)  # a turn opens with one of these
TURN_SEP = "\n"  # after a turn's END


@dataclass(frozen=True)
class ChatFormat:
    """How a turn is written: MARKER + prefix + text + END + TURN_SEP; a model is trained for one.

    `plain` (no prefix) is the shipped model's. `spaced` opens every turn with a space. Byte-level BPE
    folds a space into the word after it ("Ġfenugreek"), so under `plain` a value stated mid-sentence
    and answered at the start of a turn is two different token sequences that the model must learn
    to copy across; under `spaced` the answer is made of the statement's own tokens.
    """

    name: str
    prefix: str

    def open(self, marker: str) -> str:
        """What precedes a turn's text; a reply is generated after `marker` alone (the prefix, a
        space, belongs to the first word's token)."""
        return marker + self.prefix

    @property
    def prompt(self) -> str:
        """What the model is given to write a reply after: the marker alone (the prefix, a space,
        belongs to the first word's token, which the model writes)."""
        return ASSISTANT

    def close(self, marker: str) -> str:
        """What ends a turn (after its text)."""
        return f"{END}{TURN_SEP}"

    def turn(self, marker: str, text: str) -> str:
        return f"{self.open(marker)}{text}{self.close(marker)}"

    @property
    def preamble(self) -> str:
        """Text a fresh stream starts with (a template's system prompt); the hybrid's formats have none."""
        return ""

    def restyle(self, plain: str) -> str:
        """Text written in the `plain` format, in this one (each marker gains the prefix)."""
        for marker in MARKERS:
            plain = plain.replace(marker, self.open(marker))
        return plain

    def reply(self, generated: str) -> str:
        """A generated reply as the user reads it: without the prefix the format opens it with."""
        return generated.removeprefix(self.prefix)


CHAT_FORMATS = {f.name: f for f in (ChatFormat("plain", ""), ChatFormat("spaced", " "))}


def chat_format(name: str) -> ChatFormat:
    if name not in CHAT_FORMATS:
        raise ValueError(f"unknown chat format {name!r}; choose from {sorted(CHAT_FORMATS)}")
    return CHAT_FORMATS[name]


class Tokenizer:
    """A tokenizer: encode/decode, character offsets, streaming decode, special ids.

    `specials`: tokens it must have (the hybrid's chat tokens by default); `stop`: the tokens that end
    a reply (the hybrid's `<|end|>`; a pretrained checkpoint's end-of-turn tokens)."""

    def __init__(
        self, hf: HFTokenizer, specials: tuple[str, ...] = SPECIAL_TOKENS, stop: tuple[str, ...] = (END,)
    ) -> None:
        missing = [t for t in (*specials, *stop) if hf.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the special tokens {missing}")
        self.hf = hf
        self.special = {t: hf.token_to_id(t) for t in specials}
        self.stop_ids = frozenset(hf.token_to_id(t) for t in stop)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> Tokenizer:
        """Train byte-level BPE on `texts` (an iterator is fine: it is streamed)."""
        if vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(
                f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (bytes + specials), got {vocab_size}"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer at {path}")
        return cls(HFTokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        self.hf.save(str(path))
        return path

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the serialised tokenizer."""
        return hashlib.sha256(self.hf.to_str().encode()).hexdigest()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and each token's [start, end) character span in `text`."""
        enc = self.hf.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def decode_stream(self, ids: Iterable[int], skip_special: bool = False) -> Iterator[str]:
        """Text pieces as tokens arrive; a multi-byte character split across tokens waits whole."""
        stream = decoders.DecodeStream(skip_special_tokens=skip_special)
        for i in ids:
            piece = stream.step(self.hf, i)
            if piece:
                yield piece

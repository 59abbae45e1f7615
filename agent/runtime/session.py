"""The streaming Session runtime: one unbounded token stream through the model, memory bounded by
configuration, driven from threads or asyncio.

    runtime = Runtime.load("path/to/model")
    s = runtime.session("notes")
    s.feed("Observation: the deploy key is 7F3A.")
    print(s.reply("What is the deploy key?"))
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ovq.agent.eval.probes import ProbeReport, ProbeSuite, load_suite, run_probe
from ovq.agent.model.checkpoint import LoadedModel, load_model
from ovq.agent.model.generate import CancelToken, SamplingConfig, generate_tokens, stream_text
from ovq.agent.model.hybrid import ModelState
from ovq.agent.model.tokenizer import ASSISTANT, USER
from ovq.agent.runtime.persist import default_store_path, make_snapshot, restore_state
from ovq.agent.runtime.text import clean, segments
from ovq.snapshots import CorruptSnapshot, FingerprintMismatch, SnapshotError, decode, encode_parts
from ovq.snapshots.store import SnapshotInfo, SnapshotStore

KEEP_LAST = 32  # snapshots kept per session, besides labelled ones
FEED_TOKENS = 2048  # tokens per forward while feeding: bounds activation memory for any input size


@dataclass
class Turn:
    role: str  # "user" | "assistant" | "observation"
    text: str


@dataclass
class Transcript:
    """Chat bookkeeping: the turns of this session (user data; snapshots carry it)."""

    turns: list[Turn] = field(default_factory=list)


class Runtime:
    """A loaded model (shared by all its sessions) and, later, a snapshot store."""

    def __init__(
        self, loaded: LoadedModel, store: SnapshotStore | None = None, keep_last: int = KEEP_LAST
    ) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.loaded, self.store, self.keep_last = loaded, store, keep_last
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.fingerprint = loaded.fingerprint
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        model: str | Path | LoadedModel | None = None,
        store: str | Path | SnapshotStore | None = None,
        keep_last: int = KEEP_LAST,
        capacity: int | None = None,
        retrofit: str | None = None,
    ) -> Runtime:
        """The model at `model` (a directory from `ovq train`, a GGUF file or Hugging Face directory,
        or a model's name: `smollm2-tuned`, the default, `smollm2` or `tiny`) and the snapshot store at
        `store` (default: $OVQ_STORE or the user data directory). Each session keeps at least its last
        `keep_last` snapshots (pruned in batches) plus every labelled one. `capacity` sets the OVQ
        dictionary size N, `retrofit` a pretrained model's memory settings (see `load_model`)."""
        if isinstance(model, LoadedModel) and (capacity is not None or retrofit is not None):
            raise ValueError(
                "capacity and retrofit apply when the runtime loads the model; pass them to load_model"
            )
        if not isinstance(model, LoadedModel):
            model = load_model(model, capacity=capacity, retrofit=retrofit)
        if not isinstance(store, SnapshotStore):
            store = SnapshotStore(store if store is not None else default_store_path())
        return cls(model, store, keep_last)

    def session(self, name: str) -> Session:
        """The session `name` (one object per name in this runtime), resumed from its latest snapshot
        when the store has one."""
        check_session_name(name)
        with self._lock:
            if name not in self._sessions:
                session = Session(self, name)
                if self.store is not None and name in self.store.sessions():
                    session._restore(self.store.head(name).id)
                self._sessions[name] = session
            return self._sessions[name]

    def _adopt(self, session: Session) -> Session:
        check_session_name(session.name)
        with self._lock:
            if session.name in self._sessions:
                raise ValueError(f"session {session.name!r} already exists")
            self._sessions[session.name] = session
            return session


def check_session_name(name: str) -> None:
    """Raise ValueError unless `name` can name a session (in the store, in a URL, in a file name)."""
    bad = not isinstance(name, str) or not name.strip() or len(name) > 128 or not name.isprintable()
    if bad or "/" in name or "#" in name:
        raise ValueError(f"session names are 1-128 printable characters without '/' or '#', got {name!r}")


class Session:
    """One stream. All methods are safe from several threads (one writer at a time)."""

    def __init__(
        self, runtime: Runtime, name: str, state: ModelState | None = None, persist: bool = True
    ) -> None:
        self.runtime, self.name = runtime, name
        self.persist = persist and runtime.store is not None  # probe forks never touch the store
        self.state = state if state is not None else runtime.model.init_state(1)
        self.generator = torch.Generator().manual_seed(0)
        self.transcript = Transcript()
        self.lock = threading.RLock()
        self._last_token: int | None = None
        self.generated = 0  # tokens this object generated (not saved): a server's completion_tokens
        self.snapshot_id: int | None = None  # the snapshot this session was last saved to or restored from
        self._saves = 2 * self.runtime.keep_last  # snapshots possibly held since the last prune: unknown

    @property
    def tokens_seen(self) -> int:
        return self.state.pos

    # ---- feeding
    def feed(
        self, text: str, role: str | None = None, on_forward: Callable[[int], None] | None = None
    ) -> int:
        """Append `text` to the stream (wrapped as a turn of `role` if given). Returns tokens fed.
        Any size: it is tokenised and fed in bounded pieces of at most FEED_TOKENS tokens.
        `on_forward(tokens fed so far)` runs after each piece, holding the session's lock: it may
        save (a snapshot inside a turn holds the tokens fed so far; the transcript lists the turn
        once it is whole)."""
        said = text = self._check_text(text)
        if role is not None:
            if role not in ("user", "assistant", "observation"):
                raise ValueError(f"role must be user, assistant or observation, got {role!r}")
            text = self.runtime.model.config.chat.turn(f"<|{role}|>", text)
        with self.lock:
            fed = self._start()
            for part in segments(text):
                ids = self.runtime.tokenizer.encode(part)
                for a in range(0, len(ids), FEED_TOKENS):
                    fed += self.feed_ids(ids[a : a + FEED_TOKENS])
                    if on_forward is not None:
                        on_forward(fed)
            if role is not None:  # the transcript holds what was said, not the chat format's markup
                self.transcript.turns.append(Turn(role, said))
            return fed

    def feed_ids(self, ids: list[int]) -> int:
        """Append token ids to the stream (bounded forwards)."""
        self._check_ids(ids)
        with self.lock:
            for a in range(0, len(ids), FEED_TOKENS):
                self._forward(ids[a : a + FEED_TOKENS])
            return len(ids)

    @torch.no_grad()
    def score(self, text: str, context: str = "") -> list[float]:
        """Feed `context` then `text` (no role: wrap them yourself, e.g. with the chat format) and
        return the log-probability (nats) of each of `text`'s tokens given everything before it: the
        perplexity of a text under this session's memory, or how strongly it predicts an answer
        (`score("Pumpernickel", context=question_turn)`). Without `context` the first token of
        `text` has no prediction in this call and is not scored."""
        text = self._check_text(text, allow_empty=False)
        tok = self.runtime.tokenizer
        with self.lock:
            self._start()
            before, ids = tok.encode(self._check_text(context)) if context else [], tok.encode(text)
            self._check_ids(before + ids)
            all_ids, scores = before + ids, []  # scores[j]: log p(all_ids[j + 1] | all_ids[: j + 1])
            for a in range(0, len(all_ids), FEED_TOKENS):
                piece = all_ids[a : a + FEED_TOKENS]
                logits, self.state = self.runtime.model(
                    torch.tensor([piece], device=self.runtime.model.device), self.state
                )
                # [T] targets, or [T-1] for the last piece: the stream's last token predicts nothing here
                targets = torch.tensor(all_ids[a + 1 : a + len(piece) + 1], device=logits.device)
                logp = logits[0, : len(targets)].float().log_softmax(-1)  # [len(targets), V]
                scores += logp.gather(-1, targets[:, None])[:, 0].tolist()
            return scores[max(len(before) - 1, 0) :]

    def score_reply(self, message: str, reply: str) -> list[float]:
        """The log-probability (nats) of each token of `reply` as the assistant's answer to the user's
        `message`, both fed as a chat turn would be (the stream then holds them, unclosed: score on a
        `copy()` to keep the session as it was)."""
        message = self._check_text(message, allow_empty=False)
        with self.lock:
            self._start()
            self.feed_ids(self.runtime.tokenizer.encode(self.runtime.model.config.chat.turn(USER, message)))
            return self.score_turn("assistant", reply)

    def score_turn(self, role: str, text: str, before: str = "") -> list[float]:
        """The log-probability (nats) of each token of `text` where a turn of `role` opens with `before`
        ("user", "observation", or "assistant": a reply the model writes), fed as a chat turn would be
        (the stream then holds it, unclosed: score on a `copy()` to keep the session as it was)."""
        if role not in ("user", "assistant", "observation"):
            raise ValueError(f"role must be user, assistant or observation, got {role!r}")
        chat = self.runtime.model.config.chat
        opening = chat.prompt if role == "assistant" else chat.open(f"<|{role}|>")
        # a format whose turns open with a prefix (a space) has the model write it as part of a reply
        written = chat.open(ASSISTANT)[len(chat.prompt) :] if role == "assistant" else ""
        if before:  # tokenised apart from `text`: a space that starts a word belongs at the start of `text`
            return self.score(text, context=opening + written + before)
        return self.score(written + text, context=opening)

    def _check_ids(self, ids: list[int]) -> None:
        vocab = self.runtime.tokenizer.vocab_size
        # checked up front, not per forward: a bad id late in the list must not leave a half-fed stream
        if any(not 0 <= i < vocab for i in ids):
            raise ValueError(f"token ids must lie in [0, {vocab})")

    @torch.no_grad()
    def _forward(self, ids: list[int]) -> torch.Tensor:
        """Feed ids; the next-token logits after them, [1, 1, V]."""
        tokens = torch.tensor([ids], device=self.runtime.model.device)
        logits, self.state = self.runtime.model(tokens, self.state, last_only=True)
        return logits

    # ---- generation
    def stream(
        self, prompt: str, sampling: SamplingConfig | None = None, cancel: CancelToken | None = None
    ) -> Iterator[str]:
        """Feed `prompt`, then yield generated text pieces until a stop string, `<|end|>` or max tokens.
        Cancelling (the token, or closing the iterator) keeps what was generated in the stream."""
        sampling = sampling or SamplingConfig()
        prompt = self._check_text(prompt, allow_empty=False)
        with self.lock:
            tok = self.runtime.tokenizer
            ids = tok.encode(prompt)
            tokens = generate_tokens(
                self.runtime.model, self.state, ids, sampling, self.generator,
                stop_tokens=tok.stop_ids, cancel=cancel,
            )  # fmt: skip
            try:
                yield from stream_text(tok, self._track(tokens), sampling.stop)
            finally:
                tokens.close()

    def _track(self, tokens: Iterator[int]) -> Iterator[int]:
        for t in tokens:
            self._last_token = t
            self.generated += 1
            yield t

    def reply(
        self, message: str, sampling: SamplingConfig | None = None, cancel: CancelToken | None = None
    ) -> str:
        """A chat turn: the user's message, then the assistant's reply (returned)."""
        return "".join(self.reply_stream(message, sampling, cancel))

    def reply_stream(
        self, message: str, sampling: SamplingConfig | None = None, cancel: CancelToken | None = None
    ) -> Iterator[str]:
        """A chat turn, streamed. The user's turn is committed (saved) before the first piece; the
        assistant's turn is closed and recorded however the stream ends (done, cancelled, closed).
        Iterate it in one thread: it holds the session's lock until it ends."""
        message = self._check_text(message, allow_empty=False)
        with self.lock:
            chat = self.runtime.model.config.chat
            self._start()
            self.feed_ids(self.runtime.tokenizer.encode(chat.turn(USER, message)))
            self.transcript.turns.append(Turn("user", message))
            if self.persist:
                self.save()  # the user's turn is durable before the reply starts
            pieces: list[str] = []
            self._last_token = None
            try:
                for piece in self.stream(chat.prompt, sampling, cancel):
                    if not pieces:  # the reply's first piece opens with the format's prefix
                        piece = chat.reply(piece)
                    if piece:
                        pieces.append(piece)
                        yield piece
            finally:
                self.transcript.turns.append(Turn("assistant", "".join(pieces)))
                self._close_turn()

    def _close_turn(self) -> None:
        """End the assistant turn as the chat format does (`<|end|>` and a newline; `<|im_end|>` and a
        newline): its end token unless the model generated it, then the rest."""
        ids = self.runtime.tokenizer.encode(self.runtime.model.config.chat.close(ASSISTANT))
        if ids and self._last_token == ids[0]:
            ids = ids[1:]
        if ids:
            self._forward(ids)

    def _start(self) -> int:
        """Feed the chat format's preamble (a template's system prompt) if the stream is empty."""
        preamble = self.runtime.model.config.chat.preamble
        if self.state.pos or not preamble:
            return 0
        return self.feed_ids(self.runtime.tokenizer.encode(preamble))

    # ---- async twins: the work runs in a thread; the event loop never blocks
    async def afeed(self, text: str, role: str | None = None) -> int:
        return await asyncio.to_thread(self.feed, text, role)

    async def areply(self, message: str, sampling: SamplingConfig | None = None) -> str:
        return await asyncio.to_thread(self.reply, message, sampling)

    async def astream(self, prompt: str, sampling: SamplingConfig | None = None) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel, done = CancelToken(), object()

        def work() -> None:
            try:
                for piece in self.stream(prompt, sampling, cancel):
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
            except BaseException as e:  # delivered to the awaiting side
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        worker = loop.run_in_executor(None, work)
        try:
            while (item := await queue.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.cancel()
            await worker

    # ---- snapshots
    def save(self, label: str | None = None) -> SnapshotInfo:
        """Snapshot the whole session (every layer, sampler RNG, transcript) into the store."""
        store = self._store()
        with self.lock:
            snap = make_snapshot(
                self.runtime.fingerprint, self.state, self.runtime.model.config.kinds,
                self.generator.get_state(), self.transcript.turns,
            )  # fmt: skip
            info = store.save(
                self.name, encode_parts(snap), meta={"tokens_seen": self.state.pos}, label=label
            )
            self.snapshot_id = info.id
            # retention in batches (one prune per K/4 saves): at least the last K stay, plus labelled ones
            keep = self.runtime.keep_last
            self._saves += 1
            if self._saves >= keep + max(1, keep // 4):
                if store.prune(self.name, keep):
                    store.gc()
                self._saves = keep
            return info

    def rollback(self, snapshot_id: int) -> None:
        """Return to an earlier snapshot of this session (it becomes the head)."""
        store = self._store()
        with self.lock:
            if store.show(snapshot_id).session != self.name:
                raise ValueError(f"snapshot {snapshot_id} belongs to another session, not {self.name!r}")
            self._restore(snapshot_id)
            store.rollback(self.name, snapshot_id)

    def _restore(self, snapshot_id: int) -> None:
        """Decode and build the whole state, then swap it in: a failure changes nothing."""
        _, data = self._store().load(snapshot_id, verify=False)  # decode verifies every frame's digest
        try:
            snap = decode(data, expect_fingerprint=self.runtime.fingerprint)
            state = restore_state(snap.state, self.runtime.model)
            rng = snap.state.get("rng")
            turns = [Turn(str(r), str(t)) for r, t in snap.meta.get("transcript", [])]
            generator = torch.Generator().manual_seed(0)
            generator.set_state(rng)
        except SnapshotError as e:
            hint = (  # e.g. a session saved before the shipped model was updated
                ". Resume it with the model that saved it (--model DIR, Runtime.load(model=DIR); --model "
                "smollm2 for a session of the default model from before its memory reading was tuned) at "
                "the capacity it was saved with (--capacity N), or use another session name; its snapshots "
                "stay in the store"
                if isinstance(e, FingerprintMismatch)
                else ""
            )
            raise type(e)(f"snapshot {snapshot_id} of session {self.name!r}: {e}{hint}") from None
        except (TypeError, ValueError, RuntimeError) as e:
            raise CorruptSnapshot(f"snapshot {snapshot_id} of session {self.name!r}: {e}") from None
        self.state, self.generator, self.transcript = state, generator, Transcript(turns)
        self.snapshot_id = snapshot_id

    def _store(self) -> SnapshotStore:
        if not self.persist:
            raise ValueError(f"session {self.name!r} does not persist (a probe fork, or no store)")
        if self.runtime.store is None:
            raise ValueError("this runtime has no snapshot store")
        return self.runtime.store

    # ---- forks and probes
    def fork(self, new_name: str) -> Session:
        """A new session of the runtime that starts from this one's current state (saved under the
        new name when there is a store; unchanged layers share blobs with earlier snapshots)."""
        with self.lock:
            if self.runtime.store is not None and new_name in self.runtime.store.sessions():
                raise ValueError(f"session {new_name!r} already exists in the store")
            fork = self.runtime._adopt(self._copy(new_name))
        if self.runtime.store is not None:
            fork.save()
        return fork

    def copy(self) -> Session:
        """An independent copy of this session's current state that never touches the store (what
        probes and evaluations ask their questions on: this session does not change)."""
        with self.lock:
            return self._copy(f"{self.name}#copy", persist=False)

    def _copy(self, name: str, persist: bool = True) -> Session:
        copy = Session(self.runtime, name, self.state.clone(), persist)
        copy.generator.set_state(self.generator.get_state())
        copy.transcript = Transcript([Turn(t.role, t.text) for t in self.transcript.turns])
        return copy

    def probe(self, suite) -> ProbeReport:
        """Run a probe suite (a ProbeSuite, a TOML path or a shipped suite's name), each probe on its
        own fork of the current state: this session is not changed."""
        if not isinstance(suite, ProbeSuite):
            suite = load_suite(suite)
        with self.lock:  # held only while copying: probes do not block the live session
            base = self._copy(f"{self.name}#probe", persist=False)
        results = tuple(
            run_probe(base._copy(base.name, persist=False), p, suite, i) for i, p in enumerate(suite.probes)
        )
        return ProbeReport(suite.name, results, suite.threshold)

    # ---- state
    def stats(self) -> dict:
        """Memory per layer (OVQ fill, counts, bytes; a pretrained model's window and sinks), total
        bytes, tokens seen, and the bytes a full float32 KV cache would need for this stream."""
        with self.lock:
            model = self.runtime.model
            layers = [model.layer_stats(i, s) for i, s in enumerate(self.state.layers)]
            return {
                "session": self.name,
                "tokens_seen": self.state.pos,
                "state_bytes": self.state.nbytes,
                "kv_cache_bytes": model.kv_cache_bytes(self.state.pos),
                "layers": layers,
            }

    def _check_text(self, text: str, allow_empty: bool = True) -> str:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
            if "\ufffd" in text:
                warnings.warn("input was not valid UTF-8; undecodable bytes were replaced", stacklevel=3)
        if not isinstance(text, str):
            raise ValueError(f"text must be str or bytes, got {type(text).__name__}")
        text, removed = clean(text)
        if removed:
            warnings.warn(f"removed {removed} control characters from the input", stacklevel=3)
        if not allow_empty and not text.strip():
            raise ValueError("empty input: nothing to say")
        return text

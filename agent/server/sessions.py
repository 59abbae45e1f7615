"""Sessions behind the API: which messages of a request are new to its session, one exchange run on a
session, and the queues that order the work (FIFO per session, a bounded number of threads in all).

What a request feeds. A session is one stream that remembers what it was fed, so a request feeds
only what its session does not hold yet. Its messages are read as

    [system messages] [history, up to and including the last assistant message] [new messages]

and compared, turn for turn, with the session's transcript (roles user, assistant and observation; a
tool's output is an observation; texts compared without surrounding whitespace):

- a session that holds nothing yet (0 tokens) takes every message as given: the system messages are
  fed first as observation turns, the history as its turns, then the new messages;
- otherwise the system messages, if any, must equal the observation turns the session started with
  (a system message is fed once, when a session starts), and the history, if any, must equal the
  last turns of the transcript: a client that resends the whole conversation (or its last few
  turns) matches, a client that sends only the newest message (no history) matches too;
- the new messages are fed as turns (a user message, an observation), and the last of them, always
  a user message, is replied to;
- anything else contradicts the session: 409, and nothing is fed.

A client that disconnects stops the reply after its current token; the session keeps what was said,
as `Session.reply_stream` records it: the user's message and the reply cut short, closed as a turn
and saved (the user's turn is user data, saved before the reply starts).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from ovq.agent.model.generate import CancelToken
from ovq.agent.runtime.session import Runtime, Session, Turn
from ovq.agent.server.protocol import ApiError, ChatRequest, Message, Reply

CLIP = 60  # characters of a text quoted in a 409


class Conflict(ApiError):
    def __init__(self, session: str, why: str) -> None:
        super().__init__(
            409,
            f"the messages contradict session {session!r}: {why}. Send only the new messages (the session "
            f"remembers the rest), or resend its history as GET /v1/sessions/{session}/transcript shows "
            f"it; to branch, fork it (POST /v1/sessions/{session}/fork) or roll it back (POST "
            f"/v1/sessions/{session}/rollback); or start a new session (another `user`), which takes the "
            "whole conversation as given",
            code="session_conflict",
        )


def new_messages(name: str, turns: Sequence[Turn], fresh: bool, messages: Sequence[Message]) -> list[Message]:
    """The messages of a request that session `name` (its transcript `turns`; `fresh`: it holds no
    tokens) does not hold yet, in order. Raises Conflict when the request contradicts the session."""
    if fresh:
        return list(messages)
    k = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
    system, rest = messages[:k], messages[k:]
    for i, m in enumerate(system):
        if i >= len(turns) or turns[i].role != "observation" or _norm(turns[i].text) != _norm(m.text):
            raise Conflict(name, f"it did not start with the system message {_clip(m.text)}")
    cut = max((i + 1 for i, m in enumerate(rest) if m.role == "assistant"), default=0)
    history, new = rest[:cut], rest[cut:]
    held = turns[k:]
    if len(history) > len(held):
        raise Conflict(
            name, f"the request's history has {len(history)} messages, the session holds {len(held)} turns"
        )
    start = len(held) - len(history)
    for i, (m, t) in enumerate(zip(history, held[start:])):
        if t.role != m.role or _norm(t.text) != _norm(m.text):  # (history holds no system message)
            raise Conflict(
                name,
                f"message {k + i} ({m.role} {_clip(m.text)}) is not the session's turn "
                f"{k + start + i} ({t.role} {_clip(t.text)})",
            )
    return list(new)


def _turn_role(m: Message) -> str:
    return "observation" if m.role == "system" else m.role


def _norm(text: str) -> str:
    return text.strip()


def _clip(text: str) -> str:
    return repr(text if len(text) <= CLIP else text[: CLIP - 3] + "...")


# ---- one exchange ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """The request matched its session: `new_messages` are being fed, the reply follows."""

    new_messages: int


def run_exchange(
    session: Session, request: ChatRequest, cancel: CancelToken, emit: Callable[[Any], None]
) -> Reply:
    """One chat request on its session, in the calling thread (the server's worker thread; the
    benchmark's in-process baseline): match, feed what is new, reply, save. `emit` receives Started,
    then each text piece of the reply as it is written."""
    with session.lock:  # one request at a time writes this session, whoever else holds it
        t0 = time.perf_counter()
        fresh = session.tokens_seen == 0
        new = new_messages(session.name, session.transcript.turns, fresh, request.messages)
        emit(Started(len(new)))
        pos, generated, pieces = session.tokens_seen, session.generated, []
        try:
            for m in new[:-1]:
                session.feed(m.text, role=_turn_role(m))
            if request.seed is not None:  # the session's sampler continues from this seed
                session.generator.manual_seed(request.seed)
            stream = session.reply_stream(new[-1].text, request.sampling, cancel)
            try:
                for piece in stream:
                    pieces.append(piece)
                    emit(piece)
            finally:
                stream.close()
        finally:
            if session.tokens_seen != pos:  # a reply, whole or cut short, is durable before it is reported
                session.save()
        completion = session.generated - generated
        return Reply(
            text="".join(pieces),
            prompt_tokens=session.tokens_seen - pos - completion,
            completion_tokens=completion,
            finish_reason="length" if completion >= request.sampling.max_tokens else "stop",
            session={
                "name": session.name,
                "new_messages": len(new),
                "tokens_seen": session.tokens_seen,
                "snapshot_id": session.snapshot_id,
            },
            seconds=time.perf_counter() - t0,
        )


# ---- ordering ----------------------------------------------------------------------------------------

_DONE = object()


class Workers:
    """Runs session work in at most `max_concurrent` threads; the work of one session runs in the
    order it was asked for (asyncio locks wake their waiters first come, first served)."""

    def __init__(self, runtime: Runtime, max_concurrent: int) -> None:
        self.runtime = runtime
        self._pool = concurrent.futures.ThreadPoolExecutor(max_concurrent, thread_name_prefix="ovq-serve")
        self._locks: dict[str, asyncio.Lock] = {}

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def call(self, name: str | None, fn: Callable[[], Any]) -> Any:
        """fn() in a worker thread, after the work queued before it on session `name` (None: no queue)."""
        if name is None:
            return await self._run(fn)
        async with self._lock(name):
            return await self._run(fn)

    async def exchange(self, request: ChatRequest, cancel: CancelToken) -> AsyncIterator[Any]:
        """Run `request` on its session in its turn; yields Started, the reply's text pieces (when it
        streams), then the Reply. An ApiError (a 409) comes before Started. Closing this early, or
        `cancel`, stops the reply."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def put(event: Any) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def emit(event: Any) -> None:
            if request.stream or not isinstance(event, str):  # a whole reply: no wake-up per piece
                put(event)

        def work() -> None:
            try:
                if not cancel.cancelled:  # a client that left while queued has nothing fed
                    session = self.runtime.session(request.session)
                    put(run_exchange(session, request, cancel, emit))
            except BaseException as e:  # delivered to the awaiting side
                put(e)
            finally:
                put(_DONE)

        async with self._lock(request.session):
            worker = self._pool.submit(work)
            try:
                while (event := await events.get()) is not _DONE:
                    if isinstance(event, BaseException):
                        raise event
                    yield event
            finally:
                cancel.cancel()  # a consumer that stopped early (a disconnect) stops the reply
                await _finished(worker)

    async def _run(self, fn: Callable[[], Any]) -> Any:
        worker = self._pool.submit(fn)
        try:
            return await asyncio.wrap_future(worker)
        finally:
            await _finished(worker)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())


async def _finished(worker: concurrent.futures.Future) -> None:
    """Wait for a thread's work to end even when this task is being cancelled: the session's queue
    must not let the next request in while this one still writes the session."""
    if worker.done() or worker.cancel():  # cancel() succeeds only if the work never started
        return
    with anyio.CancelScope(shield=True):
        done = asyncio.wrap_future(worker)
        await asyncio.wait([done])
        done.exception()  # its error went to whoever awaited the work, or has nobody to go to

"""The ASGI app of `ovq serve` (Starlette, served by uvicorn): OpenAI's chat completions on persistent
sessions, and the endpoints only ovq has (sessions, stats, save, fork, rollback, probes).

    runtime = Runtime.load("tiny")
    serve(runtime, ServeConfig(api_key="sk-local"), port=8000)

Errors reach clients as OpenAI's JSON error bodies; an unexpected one as a 500 "internal error", its
traceback only in the server's log.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ovq.agent.eval.probes import ProbeSuite, load_suite, parse_suite, shipped_suites
from ovq.agent.model.generate import CancelToken
from ovq.agent.runtime.session import Runtime, Session, check_session_name
from ovq.agent.server.protocol import ApiError, Envelope, Reply, bad, parse_chat, sse
from ovq.agent.server.sessions import Workers
from ovq.snapshots import SnapshotError, SnapshotNotFound

log = logging.getLogger("uvicorn.error")  # beside uvicorn's own messages, in its format


@dataclass(frozen=True)
class ServeConfig:
    api_key: str | None = None  # when set, every request needs `Authorization: Bearer <api_key>`
    max_concurrent: int = 4  # sessions working at once (threads); more requests wait their turn
    max_body_bytes: int = 8 << 20  # larger request bodies get a 413
    temperature: float = 0.0  # for requests that give none (0: greedy, as `ovq chat`)
    max_tokens: int = 256  # for requests that give none
    model_id: str | None = None  # the model's name in responses (default: the checkpoint's file name)

    def __post_init__(self) -> None:
        if self.max_concurrent < 1 or self.max_body_bytes < 1 or self.max_tokens < 1:
            raise ValueError("max_concurrent, max_body_bytes and max_tokens must be >= 1")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must lie in [0, 2], got {self.temperature}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("the API key is empty")


def create_app(runtime: Runtime, config: ServeConfig | None = None) -> Starlette:
    """The app serving `runtime`'s model and the sessions of its store."""
    if runtime.store is None:
        raise ValueError("ovq serve keeps its sessions in a snapshot store; this runtime has none")
    api = _Api(runtime, config or ServeConfig())
    routes = [
        Route("/health", api.health),
        Route("/v1/models", api.models),
        Route("/v1/chat/completions", api.chat, methods=["POST"]),
        Route("/v1/sessions", api.sessions),
        Route("/v1/sessions/{name}", api.stats),
        Route("/v1/sessions/{name}/transcript", api.transcript),
        Route("/v1/sessions/{name}/save", api.save, methods=["POST"]),
        Route("/v1/sessions/{name}/fork", api.fork, methods=["POST"]),
        Route("/v1/sessions/{name}/rollback", api.rollback, methods=["POST"]),
        Route("/v1/sessions/{name}/probe", api.probe, methods=["POST"]),
    ]
    middleware = [Middleware(RequireKey, key=api.config.api_key)] if api.config.api_key else []
    handlers = {
        ApiError: lambda _, e: error_response(e),
        HTTPException: lambda request, e: error_response(_http_error(request, e)),
        SnapshotNotFound: lambda _, e: error_response(ApiError(404, str(e), code="not_found")),
        # e.g. a session saved by another model or at another capacity
        SnapshotError: lambda _, e: error_response(ApiError(409, str(e), code="snapshot_error")),
        Exception: _internal_error,
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await anyio.to_thread.run_sync(api.workers.close)

    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=handlers,
        lifespan=lifespan,
    )


def serve(
    runtime: Runtime, config: ServeConfig | None = None, host: str = "127.0.0.1", port: int = 8000
) -> None:
    """Serve until interrupted (Ctrl+C: replies in progress get a few seconds, then are cut short and
    saved as a disconnect leaves them)."""
    return_big_buffers()
    uvicorn.run(create_app(runtime, config), host=host, port=port, timeout_graceful_shutdown=5)


def return_big_buffers() -> bool:
    """Have glibc map buffers of 1 MiB and more on their own, so that freeing them returns them to the
    system. Every exchange encodes and frees multi-MB snapshots; glibc's default (a threshold that
    rises to 32 MB) kept them in its heaps: +15% RSS over 1,000 requests on the tiny model, +1.1% with
    this. Process-wide, so only a server process calls it. False where libc has no mallopt."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, 1 << 20))  # M_MMAP_THRESHOLD (glibc's malloc.h)
    except (OSError, AttributeError):
        return False


# ---- errors and auth ---------------------------------------------------------------------------------


def error_response(e: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def _internal_error(request: Request, e: Exception) -> JSONResponse:
    # Starlette re-raises after this response, and uvicorn logs the traceback: none reaches the client
    return error_response(ApiError(500, "internal error", type="server_error", code="internal_error"))


def _http_error(request: Request, e: HTTPException) -> ApiError:
    """Starlette's own errors: no such route, a method it does not take."""
    if e.status_code == 404:
        return ApiError(
            404,
            f"no endpoint {request.url.path} (see /v1/models, /v1/chat/completions, /v1/sessions)",
            code="not_found",
        )
    if e.status_code == 405:
        return ApiError(
            405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed"
        )
    return ApiError(e.status_code, str(e.detail), code=None)


class RequireKey:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <key>`."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = Headers(scope=scope).get("authorization")
            if given is None or not hmac.compare_digest(given.encode(), self.expected):  # constant time
                why = "incorrect API key" if given else "missing API key: send 'Authorization: Bearer KEY'"
                await error_response(ApiError(401, why, code="invalid_api_key"))(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_json(request: Request, limit: int, empty: Any = None) -> Any:
    """The request body as JSON, refused with a 413 past `limit` bytes (before reading any of it when
    the client says its length); `empty` stands for no body where one is optional. (Starlette's own
    max_body_size answers a 413 in plain text, not as OpenAI's JSON error.)"""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    if not body and empty is not None:
        return empty
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"the body is not valid JSON: {e}", code="invalid_json") from None


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than {limit:,} bytes", code="request_too_large")


# ---- endpoints ----------------------------------------------------------------------------------------


class _Api:
    def __init__(self, runtime: Runtime, config: ServeConfig) -> None:
        self.runtime, self.config = runtime, config
        self.workers = Workers(runtime, config.max_concurrent)
        self.model_id = config.model_id or runtime.loaded.path.stem
        self.started = int(time.time())

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": self.model_id})

    async def models(self, request: Request) -> Response:
        model = {"id": self.model_id, "object": "model", "created": self.started, "owned_by": "ovq"}
        return JSONResponse({"object": "list", "data": [model]})

    # ---- chat completions
    async def chat(self, request: Request) -> Response:
        config = self.config
        body = await read_json(request, config.max_body_bytes)
        chat = parse_chat(body, config.temperature, config.max_tokens)
        envelope = Envelope.new(self.model_id, self.runtime.fingerprint)
        cancel = CancelToken()
        events = self.workers.exchange(chat, cancel)
        error: Exception | None = None
        try:
            async with anyio.create_task_group() as watch:  # a client gone while queued or replied to
                watch.start_soon(_cancel_on_disconnect, request.receive, cancel)
                try:
                    started = await anext(events, None)
                    done = [e async for e in events] if started is not None and not chat.stream else []
                except Exception as e:  # raised below: a task group would wrap it in an ExceptionGroup
                    error = e
                watch.cancel_scope.cancel()
        finally:
            if error is not None or not chat.stream:
                await events.aclose()
        if error is not None:
            raise error
        if started is None:  # the client left before its turn came: nothing was fed
            return Response(status_code=499)
        if chat.stream:  # from here on the status is sent: the stream itself carries any error
            return EventStream(_chunks(envelope, chat.include_usage, events), events)
        reply = done[-1]  # Server-Timing (a W3C header): the session's share of the latency a client sees
        timing = {"Server-Timing": f"exchange;dur={1e3 * reply.seconds:.2f}"}
        return JSONResponse(envelope.completion(reply), headers=timing)

    # ---- sessions
    async def sessions(self, request: Request) -> Response:
        def listing() -> list[dict]:
            store = self.runtime.store
            return [
                {
                    "id": name,
                    "object": "session",
                    "snapshot_id": head,
                    "tokens_seen": store.show(head).tokens_seen,
                }
                for name, head in sorted(store.sessions().items())
            ]

        return JSONResponse({"object": "list", "data": await self.workers.call(None, listing)})

    async def stats(self, request: Request) -> Response:
        name = _name(request)
        return JSONResponse(await self.workers.call(name, lambda: self._existing(name).stats()))

    async def transcript(self, request: Request) -> Response:
        name = _name(request)
        last = request.query_params.get("last")
        if last is not None and not last.isdigit():
            raise bad(f"last must be a number of turns, got {last!r}", "last")

        def turns() -> dict:
            held = self._existing(name).transcript.turns
            shown = held[len(held) - int(last) :] if last is not None else held
            return {
                "session": name,
                "total_turns": len(held),
                "turns": [{"role": t.role, "text": t.text} for t in shown],
            }

        return JSONResponse(await self.workers.call(name, turns))

    async def save(self, request: Request) -> Response:
        name = _name(request)
        label = _field(await read_json(request, self.config.max_body_bytes, {}), "label", str, None)
        info = await self.workers.call(name, lambda: self._existing(name).save(label=label))
        return JSONResponse(_snapshot(info), status_code=201)

    async def fork(self, request: Request) -> Response:
        name = _name(request)
        new = _field(await read_json(request, self.config.max_body_bytes), "name", str)
        _check_name(new, "name")

        def fork() -> Session:
            source = self._existing(name)
            try:
                return source.fork(new)
            except ValueError as e:  # the name is taken (in the store, or by a session in memory)
                raise ApiError(409, str(e), param="name", code="session_exists") from None

        forked = await self.workers.call(name, fork)
        body = {
            "session": new,
            "forked_from": name,
            "snapshot_id": forked.snapshot_id,
            "tokens_seen": forked.tokens_seen,
        }
        return JSONResponse(body, status_code=201)

    async def rollback(self, request: Request) -> Response:
        name = _name(request)
        snapshot = _field(await read_json(request, self.config.max_body_bytes), "snapshot_id", int)

        def rollback() -> dict:
            session = self._existing(name)
            try:
                session.rollback(snapshot)
            except SnapshotNotFound as e:
                raise ApiError(404, str(e), param="snapshot_id", code="snapshot_not_found") from None
            except SnapshotError:
                raise
            except ValueError as e:  # a snapshot of another session
                raise bad(str(e), "snapshot_id") from None
            return {
                "session": name,
                "snapshot_id": snapshot,
                "tokens_seen": session.tokens_seen,
                "turns": len(session.transcript.turns),
            }

        return JSONResponse(await self.workers.call(name, rollback))

    async def probe(self, request: Request) -> Response:
        """Run a probe suite (a shipped suite's name, or a suite as a JSON object in the TOML format's
        shape) on a copy of the session as it is once the requests queued before this one are done."""
        name = _name(request)
        suite = _suite(_field(await read_json(request, self.config.max_body_bytes), "suite", (str, dict)))
        base = await self.workers.call(name, lambda: self._existing(name).copy())
        report = await self.workers.call(None, lambda: base.probe(suite))  # the live session goes on
        return JSONResponse({"session": name, **report.to_dict()})

    def _existing(self, name: str) -> Session:
        if name not in self.runtime.store.sessions():
            raise ApiError(
                404,
                f"no session {name!r}; a chat request with user={name!r} starts one",
                code="session_not_found",
            )
        return self.runtime.session(name)


async def _cancel_on_disconnect(receive: Any, cancel: CancelToken) -> None:
    # the body is read by now: the next message is the disconnect
    while (await receive())["type"] != "http.disconnect":
        pass
    cancel.cancel()


async def _chunks(
    envelope: Envelope, include_usage: bool, events: AsyncIterator[Any]
) -> AsyncIterator[bytes]:
    yield sse(envelope.chunk({"role": "assistant", "content": ""}))
    try:
        async for event in events:
            if isinstance(event, str):
                yield sse(envelope.chunk({"content": event}))
            elif isinstance(event, Reply):
                yield sse(envelope.chunk({}, event.finish_reason, session=event.session))
                if include_usage:
                    yield sse(envelope.usage_chunk(event))
    except Exception:
        log.exception("chat completion failed while streaming")
        yield sse(ApiError(500, "internal error", type="server_error", code="internal_error").body())
        return
    yield sse("[DONE]")


class EventStream(StreamingResponse):
    """Server-sent events that close the exchange however the response ends (a disconnect, an error
    before the first byte), so that the session's queue moves on."""

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes], events: Any) -> None:
        super().__init__(chunks, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._events = events

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._events.aclose()


def _name(request: Request) -> str:
    name = request.path_params["name"]
    _check_name(name, "session")
    return name


def _check_name(name: str, param: str) -> None:
    try:
        check_session_name(name)
    except ValueError as e:
        raise bad(str(e), param) from None


def _field(body: Any, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    if body.get(key) is None and default is not ...:
        return default
    value = body.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise bad(f"{key} is required and must be of type {_kinds(kind)}", key, "invalid_type")
    return value


def _kinds(kind: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", dict: "object"}
    return " or ".join(names[k] for k in (kind if isinstance(kind, tuple) else (kind,)))


def _suite(source: str | dict) -> ProbeSuite:
    if isinstance(source, dict):
        try:
            return parse_suite(source, where="suite")
        except (TypeError, ValueError) as e:
            raise bad(str(e), "suite") from None
    if source not in shipped_suites():  # names only: a client must not make the server read its files
        raise bad(
            f"no shipped probe suite {source!r}; choose from {shipped_suites()} or send a suite object",
            "suite",
        )
    return load_suite(source)


def _snapshot(info: Any) -> dict:
    keep = ("id", "session", "parent", "created", "tokens_seen", "label")
    return {k: v for k, v in asdict(info).items() if k in keep}


# ---- a server in a thread (tests, benchmarks) ----------------------------------------------------------


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@contextlib.contextmanager
def running(
    app: Starlette, host: str = "127.0.0.1", start_timeout: float = 60, **options: Any
) -> Iterator[str]:
    """Serve `app` from a thread on a free port of `host` until the block ends; yields the base URL.
    `options` go to uvicorn.Config (default log level: warning)."""
    options = {"log_level": "warning", **options}
    server = _Server(uvicorn.Config(app, host=host, port=0, **options))  # port 0: the system picks one
    thread = threading.Thread(target=server.run, name="ovq-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout
        while not server.ready.wait(0.05):  # woken by the start, or by a failed start ending the thread
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see its log)")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join()

"""OpenAI's chat-completions wire format: a request body parsed into a frozen `ChatRequest` (each bad
field a 400 that names it), OpenAI-style error bodies, and the builders of responses and stream chunks.
No I/O and no sessions here.

Fields a body may carry and ovq does not use (`tools`, `logprobs`, `frequency_penalty`, ...) are
ignored, as OpenAI-compatible servers do; a field ovq uses must have the right type and range.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ovq.agent.model.generate import SamplingConfig
from ovq.agent.runtime.session import check_session_name
from ovq.agent.runtime.text import clean

DEFAULT_SESSION = "default"
REPLY_TOKENS_LIMIT = 16_384  # the longest reply a request may ask for
MAX_STOP = 4  # stop strings per request, as OpenAI allows
# request role -> what it is to a session: a tool's output is an observation; `developer` is the
# newer name of `system`
ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "observation",
    "function": "observation",
}


class ApiError(Exception):
    """An error a client is told about, as OpenAI words them: {"error": {message, type, param, code}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant | observation (a tool's output)
    text: str  # cleaned as a session cleans what it is fed (control characters removed)


@dataclass(frozen=True)
class ChatRequest:
    session: str
    messages: tuple[Message, ...]
    sampling: SamplingConfig
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False


def parse_chat(body: Any, temperature: float = 0.0, max_tokens: int = 256) -> ChatRequest:
    """A chat-completions body as a ChatRequest; `temperature` and `max_tokens` apply when it gives
    none. Raises ApiError (400) naming the first bad field."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    _optional(body, "model", str)
    if _optional(body, "n", int) not in (None, 1):
        raise bad("n must be 1: a session is one stream (fork it to try alternatives)", "n")
    session = _optional(body, "user", str)
    session = DEFAULT_SESSION if session is None else session
    try:
        check_session_name(session)
    except ValueError as e:
        raise bad(f"user names the session: {e}", "user") from None
    stream = bool(_optional(body, "stream", bool))
    options = _optional(body, "stream_options", dict) or {}
    include_usage = bool(_optional(options, "include_usage", bool, "stream_options.include_usage"))
    return ChatRequest(
        session,
        _messages(body.get("messages")),
        _sampling(body, temperature, max_tokens),
        _optional(body, "seed", int),
        stream,
        include_usage,
    )


def _sampling(body: dict, temperature: float, max_tokens: int) -> SamplingConfig:
    given = _optional(body, "max_completion_tokens", int)  # the newer name wins
    given = _optional(body, "max_tokens", int) if given is None else given
    if given is not None and not 1 <= given <= REPLY_TOKENS_LIMIT:
        raise bad(f"max_tokens must lie in [1, {REPLY_TOKENS_LIMIT}], got {given}", "max_tokens")
    t = _optional(body, "temperature", float)
    if t is not None and not 0 <= t <= 2:
        raise bad(f"temperature must lie in [0, 2], got {t}", "temperature")
    top_p = _optional(body, "top_p", float)
    if top_p is not None and not 0 < top_p <= 1:
        raise bad(f"top_p must lie in (0, 1], got {top_p}", "top_p")
    top_k = _optional(body, "top_k", int)  # not OpenAI's, but common among compatible servers
    if top_k is not None and top_k < 0:
        raise bad(f"top_k must be >= 0, got {top_k}", "top_k")
    return SamplingConfig(
        temperature=temperature if t is None else float(t),
        top_k=top_k or 0,
        top_p=1.0 if top_p is None else float(top_p),
        max_tokens=max_tokens if given is None else given,
        stop=_stop(body.get("stop")),
    )


def _stop(stop: Any) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else stop
    if stops is None:
        return ()
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop must be a non-empty string or a list of them", "stop", "invalid_type")
    if len(stops) > MAX_STOP:
        raise bad(f"stop takes at most {MAX_STOP} strings, got {len(stops)}", "stop")
    return tuple(stops)


def _messages(raw: Any) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise bad("messages must be a non-empty list of messages", "messages", "invalid_type")
    messages = tuple(_message(m, f"messages[{i}]") for i, m in enumerate(raw))
    leading = next((i for i, m in enumerate(messages) if m.role != "system"), len(messages))
    if any(m.role == "system" for m in messages[leading:]):
        raise bad(
            "system messages are accepted only at the start of messages: a session is given its "
            "system message once, when it starts",
            "messages",
        )
    if messages[-1].role != "user":
        raise bad("the last message must be a user message: ovq replies to a user's turn", "messages")
    return messages


def _message(m: Any, where: str) -> Message:
    if not isinstance(m, dict):
        raise bad(f"{where} must be an object with a role and content", where, "invalid_type")
    role = m.get("role")
    if role not in ROLES:
        raise bad(f"{where}.role must be one of {sorted(ROLES)}, got {role!r}", f"{where}.role")
    if role == "assistant" and m.get("tool_calls"):
        raise bad(f"{where}: ovq serve makes no tool calls; an assistant message needs text content", where)
    content = m.get("content")
    if content is None and role == "assistant":
        content = ""
    text, _ = clean(_text(content, f"{where}.content"))
    if role != "assistant" and not text.strip():
        raise bad(f"{where} has no text: every message but an assistant's must say something", where)
    return Message(ROLES[role], text)


def _text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of text parts (joined by newlines)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        if any(p.get("type") != "text" or not isinstance(p.get("text"), str) for p in content):
            raise bad(f"{where}: only text parts are supported ({{'type': 'text', 'text': ...}})", where)
        return "\n".join(p["text"] for p in content)
    raise bad(f"{where} must be a string or a list of text parts", where, "invalid_type")


def _optional(body: dict, key: str, kind: type, where: str | None = None) -> Any:
    """body[key] if present and not null, checked to be of `kind` (JSON booleans are not numbers)."""
    value = body.get(key)
    if value is None:
        return None
    kinds = (int, float) if kind is float else (kind,)
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kinds):
        name = {int: "an integer", float: "a number", bool: "a boolean", str: "a string", dict: "an object"}
        raise bad(
            f"{where or key} must be {name[kind]}, got {json.dumps(value)[:40]}", where or key, "invalid_type"
        )
    return value


# ---- responses -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What one exchange produced, as the session reports it."""

    text: str
    prompt_tokens: int  # tokens fed that the model did not write: the new messages, the reply's markup
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    session: dict  # name, new_messages, tokens_seen, snapshot_id: ovq's own field of a response
    seconds: float = 0.0  # spent on the session (feeding, replying, saving), not waiting for it


def usage(reply: Reply) -> dict:
    total = reply.prompt_tokens + reply.completion_tokens
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": total,
    }


@dataclass(frozen=True)
class Envelope:
    """The fields every response and chunk of one completion share."""

    model: str
    fingerprint: str
    id: str = ""
    created: int = 0

    @classmethod
    def new(cls, model: str, fingerprint: str) -> Envelope:
        return cls(model, f"fp_{fingerprint[:12]}", f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()))

    def fields(self, kind: str) -> dict:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }

    def completion(self, reply: Reply) -> dict:
        message = {"role": "assistant", "content": reply.text}
        choice = {"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}
        return {
            **self.fields("chat.completion"),
            "choices": [choice],
            "usage": usage(reply),
            "session": reply.session,
        }

    def chunk(self, delta: dict, finish_reason: str | None = None, **extra: Any) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {**self.fields("chat.completion.chunk"), "choices": [choice], **extra}

    def usage_chunk(self, reply: Reply) -> dict:
        """The last chunk when stream_options.include_usage is set: no choices, the usage."""
        return {**self.fields("chat.completion.chunk"), "choices": [], "usage": usage(reply)}


def sse(data: dict | str) -> bytes:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n".encode()

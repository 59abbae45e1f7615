"""Chat templates (the Jinja programs shipped with models) rendered the way HF transformers does."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


class TemplateError(ValueError):
    """A template called raise_exception(...) or failed to compile."""


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False
) -> str:
    # HF's override of Jinja's tojson: no HTML escaping, non-ASCII kept.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def compile_template(template: str) -> jinja2.Template:
    # The same environment as transformers' apply_chat_template: sandboxed, trim/lstrip blocks,
    # loop controls, and its three helpers.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateError as err:
        raise TemplateError(f"chat template does not compile: {err}") from None


def render(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool,
    bos_token: str = "",
    eos_token: str = "",
    **extra: Any,
) -> str:
    """The text of `messages` ([{role, content}, ...]) under a chat template.

    `add_generation_prompt` appends the opening of an assistant turn; `extra` reaches the
    template as further variables (e.g. tools, date_string).
    """
    return compile_template(template).render(
        messages=list(messages),
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
        **extra,
    )


# ---- a template as turns: what the streaming session feeds -------------------------------------

# The hybrid's turn markers name the roles a session writes (agent.model.tokenizer); an observation
# (a tool's output, a document) is a user turn to a model that has no such role.
ROLE_OF = {"<|user|>": "user", "<|assistant|>": "assistant", "<|observation|>": "user"}
_A, _B = "\u2063ovq-sentinel-a\u2063", "\u2063ovq-sentinel-b\u2063"  # text no template produces
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)


class TemplateChat:
    """A checkpoint's chat template cut into the pieces a stream needs: the preamble (e.g. a default
    system prompt), and for each role the text that opens and closes its turn.

    A session is one stream, so turns must be appendable: the template must render a conversation as
    the rendering of its first n-1 messages followed by the n-th (true of ChatML, Llama 3 and most
    templates); one that is not is refused when the model loads."""

    def __init__(self, template: str, bos_token: str = "", eos_token: str = "") -> None:
        def text(messages, prompt=False):
            return render(template, messages, prompt, bos_token=bos_token, eos_token=eos_token)

        user = [{"role": "user", "content": _A}]
        one = text(user)
        self.opens, self.closes = {}, {}
        for role in ("user", "assistant"):
            two = text([*user, {"role": role, "content": _B}])
            if not two.startswith(one) or two.count(_B) != 1:
                raise TemplateError(f"the chat template does not render a {role} turn by appending it")
            self.opens[role], self.closes[role] = two[len(one) :].split(_B)
        before, _, after = one.rpartition(_A)
        if not before.endswith(self.opens["user"]) or after != self.closes["user"]:
            raise TemplateError("the chat template renders the first user turn unlike the others")
        self.preamble = before[: len(before) - len(self.opens["user"])]
        prompt = text(user, prompt=True)
        if not prompt.startswith(one):
            raise TemplateError("the chat template's generation prompt does not follow the conversation")
        self.prompt = prompt[len(one) :]  # what opens a reply the model writes

    def open(self, marker: str) -> str:
        return self.prompt if marker == "<|assistant|>" else self.opens[ROLE_OF[marker]]

    def close(self, marker: str) -> str:
        return self.closes[ROLE_OF[marker]]

    def turn(self, marker: str, text: str) -> str:
        role = ROLE_OF[marker]
        return f"{self.opens[role]}{text}{self.closes[role]}"

    def reply(self, generated: str) -> str:
        return generated

    def restyle(self, plain: str) -> str:
        """Text written in the hybrid's plain format (`<|user|>text<|end|>\\n` turns, as generated filler
        is), in this template's turns."""
        out, rest = [], plain
        while rest:
            starts = [(rest.find(m), m) for m in ROLE_OF if rest.find(m) >= 0]
            if not starts:
                out.append(rest)
                break
            i, marker = min(starts)
            out.append(rest[:i])
            body, sep, rest = rest[i + len(marker) :].partition("<|end|>")
            rest = rest.removeprefix("\n") if sep else ""
            out.append(self.turn(marker, body))
        return "".join(out)

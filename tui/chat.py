"""The chat pane: the conversation log, the message input with history, and text hygiene."""

from __future__ import annotations

import re

from rich.text import Text
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Input, Static

MAX_SHOWN_TURNS = 200  # a days-long transcript is kept in the session; the log shows its tail
ROLES = {
    "user": ("you", "bold cyan"),
    "assistant": ("ovq", "bold green"),
    "observation": ("obs", "bold yellow"),
}
_CHAT_MARKERS = re.compile(r"<\|(?:user|assistant|observation|end)\|>")


def printable(text: str) -> str:
    """Model output may hold any byte sequence: show control characters as U+FFFD instead of letting
    them reach the terminal (newlines and tabs stay)."""
    return "".join(ch if ch.isprintable() or ch in "\n\t" else "\ufffd" for ch in text)


def turn_text(role: str, text: str) -> str:
    """A transcript turn as shown: fed turns carry their chat markers, which are not content."""
    return printable(_CHAT_MARKERS.sub("", text).strip("\n"))


class TurnView(Static):
    """One turn of the conversation. The assistant's turn is updated while it streams."""

    DEFAULT_CSS = """
    TurnView { padding: 0 1; margin-bottom: 1; }
    TurnView.-pending { color: $text-muted; }
    """

    def __init__(self, role: str, text: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.role, self.text, self.note = role, text, ""
        self._paint()

    def set_text(self, text: str, note: str = "") -> None:
        self.text, self.note = text, note
        self._paint()

    def _paint(self) -> None:
        label, style = ROLES.get(self.role, (self.role[:3], "bold"))
        body = turn_text(self.role, self.text)
        parts: list[tuple[str, str] | str] = [(f"{label} ", style), body]
        if self.note:
            parts.append((f"{' ' if body else ''}[{self.note}]", "dim italic"))
        self.update(Text.assemble(*parts))


class ChatLog(VerticalScroll):
    """The conversation. Anchored to the bottom while the user has not scrolled up."""

    DEFAULT_CSS = """
    ChatLog { height: 1fr; scrollbar-size-vertical: 1; }
    ChatLog > .older { color: $text-muted; padding: 0 1; }
    """

    def on_mount(self) -> None:
        self.anchor()

    def reset(self, turns: list[tuple[str, str]]) -> None:
        """Show these (role, text) turns instead of what is shown now."""
        self.remove_children()
        hidden = max(0, len(turns) - MAX_SHOWN_TURNS)
        views: list[Static] = []
        if hidden:
            views.append(Static(f"… {hidden:,} earlier turns are in the session, not shown", classes="older"))
        views += [TurnView(role, text) for role, text in turns[hidden:]]
        if views:
            self.mount_all(views)
        self.anchor()

    def add(self, role: str, text: str = "") -> TurnView:
        view = TurnView(role, text)
        self.mount(view)
        turns = list(self.query_children(TurnView))
        if len(turns) > MAX_SHOWN_TURNS:  # bound the widget count however long the chat runs
            turns[0].remove()
        return view

    @property
    def turns(self) -> list[tuple[str, str]]:
        """What is shown: (role, text) of each turn, oldest first."""
        return [(v.role, v.text) for v in self.query_children(TurnView)]


class HistoryInput(Input):
    """The message line; up and down walk through earlier messages (the draft is kept)."""

    BINDINGS = [
        Binding("up", "history(-1)", "Previous message", show=False),
        Binding("down", "history(1)", "Next message", show=False),
    ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.history: list[str] = []
        self._index: int | None = None  # position in history while browsing; None: editing the draft
        self._draft = ""

    def remember(self, message: str) -> None:
        if message and (not self.history or self.history[-1] != message):
            self.history.append(message)
        self._index = None

    def action_history(self, step: int) -> None:
        if not self.history:
            return
        if self._index is None:
            if step > 0:
                return
            self._draft, self._index = self.value, len(self.history) - 1
        else:
            self._index += step
            if self._index >= len(self.history):
                self._index = None
                self._set(self._draft)
                return
            self._index = max(0, self._index)
        self._set(self.history[self._index])

    def _set(self, value: str) -> None:
        self.value = value
        self.cursor_position = len(value)

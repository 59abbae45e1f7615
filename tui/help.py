"""The help screen (F1)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# ovq chat

A chat with a model whose memory is bounded: sliding-window layers plus OVQ dictionaries that fold
the whole stream into a fixed number of slots. Replies stream in; the input is never blocked.

| key | what it does |
|---|---|
| Enter | send the message (sent while a reply runs: it waits its turn) |
| ↑ / ↓ | earlier / later messages |
| Esc | stop the reply being generated (what was generated stays in the stream) |
| Ctrl+S | save a snapshot now |
| F2 F3 F4 F5 | the Chat, Memory, Probes and Snapshots tabs |
| Ctrl+B | show or hide the memory side panel (wide terminals) |
| Ctrl+P | command palette: every action by name |
| F1 | this help |
| Ctrl+Q | quit (saves the session first; press again to quit at once) |

In the message line, `/obs TEXT` feeds TEXT as an observation (a document, tool output) without a
reply, and `/save [LABEL]` saves a snapshot.

**Memory** shows `Session.stats()`: per layer and head the dictionary fill (size/N), how counts are
spread over slots (min/median/max, entropy), rarely used slots, and the state's bytes beside what a
full KV cache would need at this length. **Probes** runs a recall suite (`basic`, or a TOML path) on
a fork: the live session is not changed. **Snapshots** lists this session's snapshots; select one
and Restore (r) or Delete (d), or Save with a label, or Fork into a new session and switch to it.
The session is saved on quit and every N tokens (`--autosave-tokens`).
"""


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 90%; max-width: 100; height: 90%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    """
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close help")]

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(HELP)

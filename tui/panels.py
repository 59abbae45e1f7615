"""The side tabs: memory (live `Session.stats()`), recall probes, snapshots. Each panel only renders
what it is given and posts a request message; the app runs the work in its threads."""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import Button, DataTable, Input, Static

from ovq.tui.chat import printable

# ---- formatting (pure functions: the tests compare them with `Session.stats()`)


def fmt_bytes(n: int) -> str:
    if n < 1024:
        return f"{n:,} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}"
    raise AssertionError("unreachable")


def fmt_rate(tok_s: float | None) -> str:
    return "–" if tok_s is None else f"{tok_s:,.1f}"


def bar(fraction: float, width: int = 8) -> str:
    full = round(max(0.0, min(1.0, fraction)) * width)
    return "█" * full + "░" * (width - full)


LAYER_COLUMNS = ("layer", "kind", "state", "full KV", "fill size/N", "folded", "chunks", "pending/window")
HEAD_COLUMNS = ("layer", "head", "fill", "count min/med/max", "entropy", "eff. slots", "rare")


def summary_rows(stats: dict, tok_s: float | None) -> list[tuple[str, str]]:
    state, kv = stats["state_bytes"], stats["kv_cache_bytes"]
    ratio = f"{kv / state:,.1f}× the state" if state else "–"
    return [
        ("session", stats["session"]),
        ("tokens seen", f"{stats['tokens_seen']:,}"),
        ("state bytes", f"{fmt_bytes(state)} ({state:,} B)"),
        ("full KV cache", f"{fmt_bytes(kv)} ({kv:,} B): {ratio}"),
        ("tokens/s", fmt_rate(tok_s)),
    ]


def layer_rows(stats: dict) -> list[tuple[str, ...]]:
    rows = []
    for i, layer in enumerate(stats["layers"]):
        m = layer.get("memory")
        if m is None:
            rows.append((str(i), layer["kind"], fmt_bytes(layer["state_bytes"]), "–", "–", "–", "–", "–"))
            continue
        rows.append(
            (
                str(i),
                layer["kind"],
                fmt_bytes(layer["state_bytes"]),
                fmt_bytes(m["kv_cache_bytes"]),
                f"{m['size']}/{m['capacity']} ({m['fill']:.0%})",
                f"{m['tokens_folded']:,}",
                f"{m['chunks_folded']:,}",
                f"{m['pending']:,}",
            )
        )
    return rows


def head_rows(stats: dict) -> list[tuple[str, ...]]:
    rows = []
    for i, layer in enumerate(stats["layers"]):
        m = layer.get("memory")
        if m is None:
            continue
        for b, heads in enumerate(m["heads"]):
            for h, hs in enumerate(heads):
                rows.append(
                    (
                        str(i),
                        str(h) if len(m["heads"]) == 1 else f"{b}.{h}",
                        f"{hs['fill']:.0%}",
                        f"{hs['count_min']:,}/{hs['count_median']:,}/{hs['count_max']:,}",
                        f"{hs['count_entropy_bits']:.2f} b",
                        f"{hs['effective_slots']:.1f}",
                        f"{hs['rare_slots']:,}",
                    )
                )
    return rows


SUMMARY_LAYERS = 8  # memory layers listed one per line in the side panel; more share one line


def summary_text(stats: dict | None, tok_s: float | None) -> Text:
    """The compact memory view for the side panel."""
    if stats is None:
        return Text("memory: loading…", style="dim")
    text = Text()
    text.append("memory\n", style="bold")
    text.append(f"{stats['tokens_seen']:,} tokens seen\n")
    text.append(f"state {fmt_bytes(stats['state_bytes'])}\n")
    text.append(f"full KV {fmt_bytes(stats['kv_cache_bytes'])}\n", style="dim")
    if windowed := [layer for layer in stats["layers"] if "window" in layer]:  # a pretrained model
        text.append(f"window {windowed[0]['window']:,} · sinks {windowed[0]['sinks']}\n")
    memories = [(i, m) for i, layer in enumerate(stats["layers"]) if (m := layer.get("memory")) is not None]
    if len(memories) > SUMMARY_LAYERS:  # a pretrained model's 30 layers: one line for all (F3 has each)
        fills = [m["fill"] for _, m in memories]
        size, capacity = memories[0][1]["size"], memories[0][1]["capacity"]
        text.append(f"{len(memories)} layers {bar(sum(fills) / len(fills), 10)} {size}/{capacity}\n")
    for i, m in memories if len(memories) <= SUMMARY_LAYERS else ():
        text.append(f"L{i} {bar(m['fill'], 10)} {m['size']}/{m['capacity']}\n")
    text.append(f"{fmt_rate(tok_s)} tok/s")
    return text


# ---- memory


class MemoryPanel(VerticalScroll):
    """Everything `Session.stats()` says, per layer and per head, plus the measured tokens/s."""

    DEFAULT_CSS = """
    MemoryPanel { padding: 0 1; }
    MemoryPanel > #mem-summary { height: auto; margin-bottom: 1; }
    MemoryPanel > DataTable { height: auto; max-height: 14; margin-bottom: 1; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stats: dict | None = None
        self.tok_s: float | None = None

    def compose(self) -> ComposeResult:
        yield Static("waiting for the model…", id="mem-summary")
        yield DataTable(id="mem-layers", cursor_type="row", zebra_stripes=True)
        yield DataTable(id="mem-heads", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one("#mem-layers", DataTable).add_columns(*LAYER_COLUMNS)
        self.query_one("#mem-heads", DataTable).add_columns(*HEAD_COLUMNS)

    def show(self, stats: dict, tok_s: float | None) -> None:
        self.stats, self.tok_s = stats, tok_s
        # Hidden (another tab in front), the tables wait: redrawing a pretrained model's 120 rows
        # twice a second holds the GIL that the generating thread needs between its torch ops.
        if self.region.area == 0:
            return
        self._render_tables()

    def on_show(self) -> None:
        if self.stats is not None:
            self._render_tables()

    def _render_tables(self) -> None:
        stats, tok_s = self.stats, self.tok_s
        summary = Text()
        for key, value in summary_rows(stats, tok_s):
            summary.append(f"{key:<14}", style="bold")
            summary.append(f"{value}\n")
        summary.rstrip()
        self.query_one("#mem-summary", Static).update(summary)
        for table_id, rows in (("#mem-layers", layer_rows(stats)), ("#mem-heads", head_rows(stats))):
            table = self.query_one(table_id, DataTable)
            if table.row_count == len(rows):  # update in place: keeps the cursor and the scroll
                for r, row in enumerate(rows):
                    for c, cell in enumerate(row):
                        table.update_cell_at((r, c), cell, update_width=True)
            else:
                table.clear()
                table.add_rows(rows)

    def table_rows(self, table_id: str) -> list[tuple[str, ...]]:
        table = self.query_one(f"#{table_id}", DataTable)
        return [tuple(str(c) for c in table.get_row_at(r)) for r in range(table.row_count)]


# ---- probes


class ProbePanel(Vertical):
    """Choose a suite (a shipped name or a TOML path), run it on a fork, see each probe's result."""

    DEFAULT_CSS = """
    ProbePanel #probe-bar { height: 3; }
    ProbePanel #probe-suite { width: 1fr; }
    ProbePanel Button { min-width: 8; width: auto; }
    ProbePanel #probe-status { height: auto; padding: 0 1; }
    ProbePanel DataTable { height: 1fr; }
    """
    COLUMNS = ("fact", "distance", "expected", "answered", "hit")

    class Run(Message):
        def __init__(self, suite: str) -> None:
            super().__init__()
            self.suite = suite

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.report: Any = None
        self._started: float | None = None
        self._suite = ""

    def compose(self) -> ComposeResult:
        with Horizontal(id="probe-bar"):
            yield Input(placeholder="suite: a shipped name (basic) or a TOML path", id="probe-suite")
            yield Button("Run", id="probe-run", variant="primary")
        yield Static(
            "No probe run yet. Probes run on a fork: the live session is not changed.", id="probe-status"
        )
        yield DataTable(id="probe-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*self.COLUMNS)
        self.set_interval(1.0, self._tick)

    def set_suites(self, names: list[str]) -> None:
        field = self.query_one("#probe-suite", Input)
        field.suggester = SuggestFromList(names, case_sensitive=False)
        if not field.value and names:
            field.value = "basic" if "basic" in names else names[0]

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "probe-run":
            event.stop()
            self._request()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "probe-suite":
            event.stop()
            self._request()

    def _request(self) -> None:
        suite = self.query_one("#probe-suite", Input).value.strip()
        if suite:
            self.post_message(self.Run(suite))

    def started(self, suite: str) -> None:
        self._started, self._suite = time.monotonic(), suite
        self.query_one("#probe-run", Button).disabled = True
        self.query_one(DataTable).clear()
        self._tick()

    def _tick(self) -> None:
        if self._started is not None:
            elapsed = time.monotonic() - self._started
            status = f"running {self._suite!r} on a fork… {elapsed:.0f} s"
            self.query_one("#probe-status", Static).update(status)

    def finished(self, report: Any = None, error: str | None = None) -> None:
        self._started = None
        self.query_one("#probe-run", Button).disabled = False
        status = self.query_one("#probe-status", Static)
        if error is not None:
            status.update(Text(f"probe failed: {error}", style="bold red"))
            return
        self.report = report
        verdict = ("passed", "bold green") if report.passed else ("below threshold", "bold red")
        status.update(
            Text.assemble(
                f"{report.suite}: accuracy {report.accuracy:.0%} (threshold {report.threshold:.0%}) ",
                verdict,
            )
        )
        table = self.query_one(DataTable)
        table.clear()
        for r in report.results:
            hit = Text("yes", style="green") if r.hit else Text("no", style="red")
            table.add_row(printable(r.fact), f"{r.distance:,}", r.expected, printable(r.answered), hit)


# ---- snapshots


class SnapshotTable(DataTable):
    BINDINGS = [
        Binding("r", "request('restore')", "Restore", show=False),
        Binding("d,delete", "request('delete')", "Delete", show=False),
    ]

    def action_request(self, what: str) -> None:
        self.parent.request(what)  # type: ignore[union-attr]


class SnapshotPanel(Vertical):
    """The session's snapshots (newest last), and save / restore / fork / delete."""

    DEFAULT_CSS = """
    SnapshotPanel Horizontal { height: 3; }
    SnapshotPanel Input { width: 1fr; }
    SnapshotPanel Button { min-width: 9; width: auto; }
    SnapshotPanel #snap-status { height: auto; padding: 0 1; }
    SnapshotPanel DataTable { height: 1fr; }
    """
    COLUMNS = ("id", "tokens", "size", "label", "created", "")

    class Request(Message):
        """save (arg: label or None), restore / delete (arg: snapshot id), fork (arg: new name)."""

        def __init__(self, action: str, arg: Any = None) -> None:
            super().__init__()
            self.action, self.arg = action, arg

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.infos: list[Any] = []

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Input(placeholder="label (optional)", id="snap-label")
            yield Button("Save", id="snap-save", variant="primary")
            yield Button("Restore", id="snap-restore")
            yield Button("Delete", id="snap-delete", variant="error")
        with Horizontal():
            yield Input(placeholder="new session name", id="snap-fork-name")
            yield Button("Fork", id="snap-fork")
        yield Static("", id="snap-status")
        yield SnapshotTable(id="snap-table", cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*self.COLUMNS)

    def show(self, infos: list[Any], head: int | None, status: str) -> None:
        self.query_one("#snap-status", Static).update(status)
        table = self.query_one(DataTable)
        keep = self.selected()
        if self.infos and keep == self.infos[-1].id:
            keep = None  # the cursor on the newest snapshot follows new ones
        self.infos = infos
        table.clear()
        for info in infos:
            created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.created))
            tokens = "–" if info.tokens_seen is None else f"{info.tokens_seen:,}"
            mark = Text("● current", style="bold green") if info.id == head else ""
            table.add_row(str(info.id), tokens, fmt_bytes(info.nbytes), info.label or "", created, mark)
        ids = [info.id for info in infos]
        if ids:  # keep the selection; the newest snapshot otherwise
            table.move_cursor(row=ids.index(keep) if keep in ids else len(ids) - 1)

    def set_status(self, status: str) -> None:
        self.query_one("#snap-status", Static).update(status)

    def selected(self) -> int | None:
        table = self.query_one(DataTable)
        if not self.infos or table.cursor_row < 0 or table.cursor_row >= len(self.infos):
            return None
        return self.infos[table.cursor_row].id

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.request(str(event.button.id).removeprefix("snap-"))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.request("save" if event.input.id == "snap-label" else "fork")

    def request(self, what: str) -> None:
        if what == "save":
            field = self.query_one("#snap-label", Input)
            self.post_message(self.Request("save", field.value.strip() or None))
            field.value = ""
        elif what == "fork":
            field = self.query_one("#snap-fork-name", Input)
            if not field.value.strip():
                self.app.notify("Type the new session's name first.", severity="warning")
                return
            self.post_message(self.Request("fork", field.value.strip()))
            field.value = ""
        elif (snapshot := self.selected()) is None:
            self.app.notify("No snapshot selected.", severity="warning")
        else:
            self.post_message(self.Request(what, snapshot))

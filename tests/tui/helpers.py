"""Helpers for driving the app under Pilot."""

import asyncio
import functools
import time


async def wait_for(pilot, condition, timeout: float = 15.0, what: str = "condition") -> None:
    """Poll `condition` while the app runs (its threads post messages meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.02)


async def settle(pilot, timeout: float = 15.0) -> None:
    """Until the session is loaded and every queued job's results are on screen."""
    await wait_for(pilot, lambda: not pilot.app.busy, timeout, "the app to be idle")
    await pilot.pause()


async def wait_exit(app, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while app.is_running:
        if time.monotonic() > deadline:
            raise AssertionError("the app did not exit")
        await asyncio.sleep(0.02)


def async_test(fn):
    """Run an async test on a fresh event loop (no pytest asyncio plugin is needed)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return run

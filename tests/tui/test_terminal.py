"""End to end: `ovq chat` in a real terminal (tmux), typed into and read back from the screen."""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ovq.agent.runtime.session import Runtime

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


class Tmux:
    """One tmux server of our own (its own socket, removed afterwards): nothing else is touched."""

    def __init__(self, width: int, height: int, command: list[str]) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ovq-tmux-"))  # short: socket paths are limited
        # The shell keeps the pane open after the app ends, so that its exit status can be read.
        line = f"{shlex.join(command)}; echo OVQ-EXIT=$?; sleep 120"
        self("new-session", "-d", "-s", "chat", "-x", str(width), "-y", str(height), "-c", str(REPO), line)

    def __call__(self, *args: str) -> str:
        # The server takes its environment from the first call: without LINES and COLUMNS (a harness
        # may set them), the app sizes itself from the pane as it does for a user.
        env = {k: v for k, v in os.environ.items() if k not in ("LINES", "COLUMNS")}
        out = subprocess.run(
            ["tmux", "-S", str(self.dir / "sock"), *args], capture_output=True, text=True, timeout=10, env=env
        )
        if out.returncode != 0:
            raise RuntimeError(f"tmux {args[0]}: {out.stderr.strip()}")
        return out.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "chat")

    def wait(self, condition, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if condition(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "-S", str(self.dir / "sock"), "kill-server"], capture_output=True, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def test_chat_in_a_real_terminal(model_dir, tmp_path):
    store = tmp_path / "store"
    command = [sys.executable, "-m", "ovq", "chat", "--model", str(model_dir), "--store", str(store)]
    command += ["--session", "e2e", "--temperature", "1", "--max-tokens", "16"]
    tmux = Tmux(100, 30, command)
    try:
        tmux.wait(lambda s: "Message" in s and "ready ·" in s, 30, "the prompt and the loaded model")
        tmux("send-keys", "-t", "chat", "-l", "hello from tmux")
        tmux("send-keys", "-t", "chat", "Enter")
        ready = re.compile(r"ready · [\d,]+ tokens · [\d,.]+ tok/s")
        screen = tmux.wait(lambda s: "you hello from tmux" in s and ready.search(s), 30, "the reply")
        lines = screen.splitlines()
        user = next(i for i, line in enumerate(lines) if "you hello from tmux" in line)
        reply = next(line for line in lines[user + 1 :] if line.strip())
        assert reply.strip().startswith("ovq ") and len(reply.strip()) > len("ovq")
        assert len(lines) == 30 and "Quit" in lines[-1] and "Help" in lines[-1]  # the footer, at the bottom

        tmux("send-keys", "-t", "chat", "C-q")
        tmux.wait(lambda s: "OVQ-EXIT=" in s, 30, "the app to exit")
        assert "OVQ-EXIT=0" in tmux.screen()
    finally:
        tmux.close()
    session = Runtime.load(model_dir, store=store).session("e2e")  # saved on quit
    assert [(t.role, t.text) for t in session.transcript.turns][0] == ("user", "hello from tmux")
    assert [t.role for t in session.transcript.turns] == ["user", "assistant"]

"""`ovq feed` SIGKILLed at random moments: the store stays readable, the session resumes at or past
the last save the feed reported, and its token count never goes backwards."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import torch

from ovq.agent.model.checkpoint import save_model
from ovq.agent.model.hybrid import HybridLM, ModelConfig
from ovq.agent.model.tokenizer import Tokenizer
from ovq.agent.runtime.session import Runtime
from ovq.snapshots import decode
from ovq.snapshots.store import SnapshotStore

KILLS = 4
SAVE_EVERY = 1500


def _feed_until_killed(argv: list[str], delay: float, after_saves: int) -> int:
    """Run the feed; SIGKILL it `delay` seconds after it reported `after_saves` saves (or when it ends).
    Returns the token count of the last save it reported."""
    child = subprocess.Popen(
        [sys.executable, "-m", "ovq", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    saves: list[int] = []
    enough = threading.Event()

    def read() -> None:  # the save lines, as they come
        for line in child.stderr:
            if line.startswith("saved snapshot"):
                saves.append(int(line.split(" at ")[1].split()[0]))
                if len(saves) >= after_saves:
                    enough.set()
        enough.set()  # the feed ended (or died) before that many saves

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    enough.wait(timeout=120)
    time.sleep(delay)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    reader.join(timeout=30)
    return saves[-1] if saves else 0


def test_a_feed_killed_at_random_moments_keeps_every_reported_save(tmp_path):
    tok = Tokenizer.train([f"entry {i}: the build number is {i * 37}." for i in range(200)], vocab_size=300)
    torch.manual_seed(0)
    model = str(save_model(HybridLM(ModelConfig.preset("tiny", tok.vocab_size)), tok, tmp_path / "m"))
    text = tmp_path / "log.txt"
    text.write_text("".join(f"entry {i}: the build number is {i * 37}.\n" for i in range(6000)))
    store = tmp_path / "store"
    argv = ["feed", str(text), "--model", model, "--store", str(store), "--session", "log"]
    argv += ["--save-every", str(SAVE_EVERY)]

    rng = random.Random(0)
    resumed, figures = 0, []
    for k in range(KILLS):
        delay, after = rng.uniform(0.0, 1.0), rng.randint(0, 3)  # some kills land before any save
        reported = _feed_until_killed(argv, delay, after)
        head = Runtime.load(model, store).session("log").tokens_seen if store.exists() else 0
        figures.append((k, reported, head))
        assert head >= reported, figures  # every save the feed reported survived the kill
        assert head >= resumed, figures  # and the session never goes backwards
        resumed = head
        for info in SnapshotStore(store).list("log") if store.exists() else []:  # every snapshot decodes
            decode(SnapshotStore(store).load(info.id)[1])
    assert resumed > 0, figures  # at least one kill came after a save
    print("kills (k, tokens of the last reported save, tokens on resume):", figures)

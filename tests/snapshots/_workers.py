"""Worker processes for tests/snapshots/test_processes.py. No torch here, so they start fast.

`python -m tests.snapshots._workers STORE PAYLOADS SEED` runs `crash_loop` until it is killed.
"""

import random
import sys
from pathlib import Path

import msgpack

from ovq.snapshots.errors import SnapshotNotFound
from ovq.snapshots.store import SnapshotStore

TINY_MAP = 1 << 20  # small, so that the map grows while other processes use it


def payload(tag: str, i: int) -> dict[str, bytes]:
    return {"big": bytes([i % 256]) * 60_000 + tag.encode(), "small": f"{tag}-{i}".encode()}


def save_many(path: str, tag: str, n: int, barrier, results) -> None:
    """Save n snapshots, alternating between an own session and one shared with the other worker;
    start together with the other worker (barrier), put (tag, ids) on the results queue."""
    store = SnapshotStore(path, map_size=TINY_MAP)
    barrier.wait()
    ids = [
        store.save(tag if i % 2 else "shared", payload(tag, i), meta={"tag": tag, "i": i}).id
        for i in range(n)
    ]
    results.put((tag, ids))


def crash_loop(path: str, payloads_file: str, seed: int) -> None:
    """Every kind of write, at random, forever; meta["which"] says which payload a snapshot holds."""
    payloads = msgpack.unpackb(Path(payloads_file).read_bytes())
    store = SnapshotStore(path, map_size=TINY_MAP)
    print("ready", flush=True)
    rng = random.Random(seed)
    sessions = ["a", "b", "c", "d"]
    while True:
        session = rng.choice(sessions)
        op = rng.random()
        try:
            if op < 0.6:
                which = rng.randrange(len(payloads))
                label = "milestone" if rng.random() < 0.05 else None
                store.save(session, payloads[which], meta={"which": which, "tokens_seen": which}, label=label)
            elif op < 0.7:
                target = rng.choice(sessions)
                try:
                    store.fork(session, target)
                except ValueError:  # it exists: make room for a later fork
                    store.delete_session(target)
            elif op < 0.8:
                store.prune(session, keep_last=rng.randrange(4))
            elif op < 0.85:
                store.gc()
            else:
                some = rng.choice(store.list(session)).id
                (store.rollback(session, some) if op < 0.93 else store.delete(some))
        except SnapshotNotFound:  # the session does not exist (yet)
            pass


if __name__ == "__main__":
    crash_loop(sys.argv[1], sys.argv[2], int(sys.argv[3]))

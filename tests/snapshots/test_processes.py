"""Store across processes: concurrent writers, fork(), and SIGKILL at random moments."""

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import pytest

from ovq.snapshots import codec
from ovq.snapshots import store as store_module
from ovq.snapshots.store import SnapshotStore
from tests.snapshots import _workers
from tests.snapshots.helpers import FP, make_snapshot

try:
    from lmdb.verify import verify as lmdb_verify  # py-lmdb >= 3
except ImportError:
    lmdb_verify = None

ROOT = Path(__file__).resolve().parents[2]
KILLS = 24


def test_two_processes_save_concurrently(tmp_path):
    path = str(tmp_path / "store")
    ctx = multiprocessing.get_context("spawn")  # fork() with torch loaded is not safe
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=_workers.save_many, args=(path, tag, 40, barrier, results)) for tag in ("p0", "p1")
    ]
    for w in workers:
        w.start()
    saved = dict(results.get(timeout=120) for _ in workers)
    for w in workers:
        w.join()
        assert w.exitcode == 0
    a, b = saved["p0"], saved["p1"]
    assert len(set(a + b)) == 80
    assert min(a) < max(b) and min(b) < max(a), "the two writers did not overlap in time"
    store = SnapshotStore(path)
    assert sorted(a + b) == [i.id for i in store.list()]
    for info in store.list():
        assert store.load(info.id)[1] == _workers.payload(info.meta["tag"], info.meta["i"])
    assert len(store.list("shared")) == 40


def fork_and_save(store: SnapshotStore, session: str) -> bytes:
    """Fork; the child saves through the parent's store object and reports what it used."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            info = store.save(session, session.encode())
            own = (store._real, os.getpid()) in store_module._ENVS  # its own environment, not the parent's
            os.write(w, f"{int(own)} {info.id}".encode())
        finally:
            os._exit(0)
    os.close(w)
    msg = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return msg


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_opens_its_own_environment(tmp_path):
    store = SnapshotStore(tmp_path / "store")
    store.save("parent", b"p")
    assert fork_and_save(store, "child") == b"1 2"
    assert store.load(1)[1] == b"p" and store.load(2)[1] == b"child"
    assert store.save("parent", b"q").id == 3  # the parent's environment still works


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_waits_for_transactions_of_other_threads(tmp_path):
    store = SnapshotStore(tmp_path / "store")
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            store.save("busy", b"x" * 10_000)
            store.list("busy")

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        replies = [fork_and_save(store, f"child{i}") for i in range(5)]
    finally:
        stop.set()
        thread.join()
    assert all(r.startswith(b"1 ") for r in replies), replies
    assert all(store.head(f"child{i}") for i in range(5))


def verify(store: SnapshotStore, expected: list[dict[str, bytes]], positions: list[int]) -> int:
    """Every listed snapshot loads, matches what was saved and decodes; every head is complete."""
    infos = store.list()
    for info in infos:
        _, data = store.load(info.id)
        assert data == expected[info.meta["which"]], f"snapshot {info.id} holds other bytes"
        assert codec.decode(data, expect_fingerprint=FP).position == positions[info.meta["which"]]
    for session, head in store.sessions().items():
        assert store.show(head).session == session
        store.load(head)
    return len(infos)


def test_sigkill_at_random_moments_never_leaves_a_broken_store(tmp_path):
    snaps = [make_snapshot(seed=i % 2, n_layers=4, position=i, width=2048) for i in range(4)]  # ~0.3 MB each
    expected = [codec.encode_parts(s) for s in snaps]
    payloads = tmp_path / "payloads.msgpack"
    payloads.write_bytes(msgpack.packb(expected))
    path = tmp_path / "store"
    rng = random.Random(0)
    verified = 0
    for k in range(KILLS):
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.snapshots._workers", str(path), str(payloads), str(k)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        ready = child.stdout.readline()  # the store opened after the previous kill
        time.sleep(rng.uniform(0.02, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert ready == b"ready\n" and child.returncode == -signal.SIGKILL, child.stderr.read().decode()
        child.stdout.close()
        child.stderr.close()
        verified += verify(SnapshotStore(path), expected, [s.position for s in snaps])
        if lmdb_verify is not None:  # the B-trees and free list themselves, walked offline
            assert lmdb_verify(str(path)) == []
    store = SnapshotStore(path)
    last = store.save("after", expected[0], meta={"which": 0}).id
    assert last > 3 * KILLS  # work was done between kills
    print(f"{KILLS} kills, {verified} snapshot loads verified, {last} snapshot ids used")

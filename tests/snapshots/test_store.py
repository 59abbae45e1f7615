"""Store: one process. Save/load/head/list, forks sharing blobs, rollback, delete, gc, prune,
export/import, map growth, validation, corruption."""

import functools
import hashlib
import threading

import lmdb
import platformdirs
import pytest

from ovq.snapshots import codec
from ovq.snapshots.errors import ChecksumError, CorruptSnapshot, SnapshotError, SnapshotNotFound
from ovq.snapshots.frame import BLAKE3, SHA256, frame
from ovq.snapshots.store import SnapshotStore, _open_env, default_path
from tests.snapshots.helpers import FP, make_snapshot


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / "store")


def parts(tag: str, shared: str = "same") -> dict[str, bytes]:
    return {"a": f"{shared}-a".encode() * 10, "b": f"{tag}-b".encode() * 10}


def ids(infos) -> list[int]:
    return [i.id for i in infos]


def test_save_load_head_list(store):
    one = store.save("chat", b"single blob", meta={"tokens_seen": 10, "title": "x"})
    two = store.save("chat", parts("2"), meta={"tokens_seen": 20}, label="kept")
    other = store.save("other", parts("3"))
    assert (one.id, two.id, other.id) == (1, 2, 3)
    assert (one.parent, two.parent, other.parent) == (None, 1, None)
    assert two.tokens_seen == 20 and two.label == "kept" and two.nbytes == 90 and set(two.parts) == {"a", "b"}
    assert store.load(1) == (one, b"single blob")  # the form given to save comes back
    assert store.load(2) == (two, parts("2"))
    assert store.head("chat") == two and store.show(1) == one
    assert ids(store.list()) == [1, 2, 3] and ids(store.list("chat")) == [1, 2]
    assert store.sessions() == {"chat": 2, "other": 3}


def test_codec_and_store_end_to_end(store):
    snap = make_snapshot()
    store.save("s", codec.encode_parts(snap), meta={"tokens_seen": snap.position})
    _, data = store.load(store.head("s").id)
    out = codec.decode(data, expect_fingerprint=FP)
    assert out.position == snap.position and out.state["layers"][1]["k"].equal(snap.state["layers"][1]["k"])


def test_unchanged_layers_and_forks_share_blobs(store):
    snap, changed = make_snapshot(), make_snapshot()
    changed.state["layers"][0]["size"] = 13
    first = store.save("s", codec.encode_parts(snap))
    n = store.blob_count()
    store.save("s", codec.encode_parts(changed))
    assert store.blob_count() == n + 2  # the changed layer and the envelope; other layers shared
    store.save("s", codec.encode_parts(changed))
    assert store.blob_count() == n + 2  # an unchanged save costs no blob at all
    fork = store.fork("s", "t", first.id)
    assert store.blob_count() == n + 2
    assert (fork.session, fork.parent, fork.parts) == ("t", first.id, first.parts)
    assert store.head("t") == fork and store.load(fork.id)[1] == store.load(first.id)[1]
    assert store.save("t", codec.encode_parts(snap)).parent == fork.id
    with pytest.raises(ValueError, match="already exists"):
        store.fork("s", "t")
    with pytest.raises(SnapshotNotFound, match="belongs to session 's'"):
        store.fork("t", "u", first.id)


def test_rollback(store):
    a, b, _ = (store.save("s", parts(str(i))) for i in range(3))
    assert store.rollback("s", a.id) == a and store.head("s") == a
    assert store.save("s", parts("x")).parent == a.id  # history branches from the rolled-back point
    store.rollback("s", b.id)  # later snapshots were kept: roll forward works
    assert store.head("s").id == b.id
    store.save("t", parts("t"))
    with pytest.raises(SnapshotNotFound, match="not 't'"):
        store.rollback("t", a.id)


def test_delete_moves_the_head_and_gc_frees_only_unshared_blobs(store):
    a = store.save("s", parts("1"))
    b = store.save("s", parts("2"))
    before = store.blob_count()  # "same-a" is shared by both
    store.delete(b.id)
    assert store.head("s") == a  # the head fell back to the parent
    with pytest.raises(SnapshotNotFound, match=f"no snapshot {b.id}"):
        store.load(b.id)
    assert store.blob_count() == before  # delete frees records; gc frees blobs
    result = store.gc()
    assert (result.blobs_removed, result.bytes_freed) == (1, 30) and store.blob_count() == before - 1
    assert store.load(a.id)[1] == parts("1")
    assert store.gc().blobs_removed == 0
    store.delete(a.id)
    assert "s" not in store.sessions() and store.list() == []
    assert store.gc().blobs_removed == 2 and store.blob_count() == 0
    assert store.save("s", parts("3")).id == 3  # ids are never reused


def test_delete_session(store):
    store.save("s", parts("1"))
    store.save("s", parts("2"))
    keep = store.save("t", parts("3"))
    assert store.delete_session("s") == [1, 2]
    assert ids(store.list()) == [keep.id] and store.sessions() == {"t": keep.id}
    with pytest.raises(SnapshotNotFound, match="no session 's'"):
        store.delete_session("s")


def test_prune_keeps_last_labelled_and_head(store):
    infos = [store.save("s", parts(str(i)), label="milestone" if i == 1 else None) for i in range(8)]
    store.rollback("s", infos[2].id)
    gone = store.prune("s", keep_last=2)
    assert gone == [infos[i].id for i in (0, 3, 4, 5)]
    assert ids(store.list("s")) == [infos[i].id for i in (1, 2, 6, 7)]
    assert store.head("s").id == infos[2].id
    assert store.prune("s", keep_last=10) == []  # more than there are
    assert store.prune("s", keep_last=0) == [infos[6].id, infos[7].id]
    with pytest.raises(ValueError, match="keep_last"):
        store.prune("s", keep_last=-1)


def test_export_import_round_trip(store, tmp_path):
    src = store.save("s", codec.encode_parts(make_snapshot()), meta={"tokens_seen": 42}, label="l")
    path = store.export(src.id, tmp_path / "snap.ovqx")
    elsewhere = SnapshotStore(tmp_path / "other")
    got = elsewhere.import_(path)
    assert (got.session, got.label, got.tokens_seen, got.parts, got.parent) == ("s", "l", 42, src.parts, None)
    assert elsewhere.load(got.id)[1] == store.load(src.id)[1]
    again = store.import_(path, session="copy")
    assert again.id == src.id + 1 and store.head("copy") == again
    assert store.blob_count() == len(src.parts)  # the import deduped against what was there


def test_import_rejects_damaged_files(store, tmp_path):
    path = store.export(store.save("s", b"x" * 1000).id, tmp_path / "e")
    blob = path.read_bytes()
    for i in (0, 20, len(blob) // 2, len(blob) - 1):
        bad = bytearray(blob)
        bad[i] ^= 1
        path.write_bytes(bytes(bad))
        with pytest.raises(SnapshotError):
            store.import_(path)
    path.write_bytes(blob[:-5])
    with pytest.raises(CorruptSnapshot, match="truncated"):
        store.import_(path)
    path.write_bytes(blob)
    with pytest.raises(ValueError, match="bad session name"):
        store.import_(path, session="a/b")


def test_map_grows_when_full(tmp_path):
    store = SnapshotStore(tmp_path / "tiny", map_size=1 << 20)
    blobs = [bytes([i]) * 300_000 for i in range(12)]  # 3.6 MB into a 1 MiB map
    infos = [store.save("s", b) for b in blobs]
    assert [store.load(i.id)[1] for i in infos] == blobs
    assert _open_env(store._real, 0).env.info()["map_size"] >= 4 << 20


def test_threads_share_one_environment_while_it_grows(tmp_path):
    store = SnapshotStore(tmp_path / "threads", map_size=1 << 20)
    same = SnapshotStore(tmp_path / "threads")
    assert same._env() is store._env()  # one environment per process and path
    saved, errors = [], []

    def work(t: int) -> None:
        try:
            for i in range(6):
                s = store if i % 2 else same
                saved.append((s.save(f"t{t}", bytes([t, i]) * 100_000).id, bytes([t, i]) * 100_000))
                s.list()
        except Exception as e:  # surfaced below; a thread cannot fail the test itself
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len({i for i, _ in saved}) == 24
    assert all(store.load(i)[1] == data for i, data in saved)


@pytest.mark.parametrize("name", ["", "a/b", "x" * 129, "line\nbreak", "nul\0", 7, None])
def test_bad_session_names(store, name):
    with pytest.raises(ValueError, match="bad session name"):
        store.save(name, b"x")
    with pytest.raises(ValueError, match="bad session name"):
        store.head(name)


def test_bad_arguments(store):
    with pytest.raises(ValueError, match="bad label"):
        store.save("s", b"x", label="a/b")
    with pytest.raises(ValueError, match="non-empty"):
        store.save("s", {})
    with pytest.raises(TypeError, match="bytes"):
        store.save("s", {"a": "text"})
    with pytest.raises(TypeError, match="JSON-like"):
        store.save("s", b"x", meta={"t": (1, 2)})
    with pytest.raises(TypeError, match="tokens_seen"):
        store.save("s", b"x", meta={"tokens_seen": 1.5})
    assert store.list() == []  # nothing half-written


def test_unknown_ids_and_sessions(store):
    store.save("s", b"x")
    for call in (
        store.load,
        store.show,
        store.delete,
        lambda i: store.rollback("s", i),
        lambda i: store.export(i, "p"),
    ):
        with pytest.raises(SnapshotNotFound, match="no snapshot 99") as err:
            call(99)
        assert isinstance(err.value, KeyError) and str(err.value) == "no snapshot 99"
    for call in (store.head, store.list, store.delete_session, lambda s: store.fork(s, "new")):
        with pytest.raises(SnapshotNotFound, match="no session 'nope'"):
            call("nope")
    with pytest.raises(SnapshotNotFound):
        store.load(-1)


def _blob_db(store):
    e = _open_env(store._real, 0)
    return e.env, e.db["blobs"]


def test_a_damaged_blob_fails_only_its_snapshot(store):
    infos = [store.save("s", {"shared": b"common" * 50, "own": bytes([i]) * 500}) for i in range(3)]
    env, blobs = _blob_db(store)
    victim = bytes.fromhex(infos[1].parts["own"])
    with env.begin(write=True) as txn:  # flip bytes behind the store's back
        raw = bytearray(txn.get(victim, db=blobs))
        raw[100] ^= 0xFF
        txn.put(victim, bytes(raw), db=blobs)
    with pytest.raises(ChecksumError, match=rf"snapshot {infos[1].id}: blob 'own' .* damaged"):
        store.load(infos[1].id)
    for ok in (infos[0], infos[2]):
        assert store.load(ok.id)[1]["own"] == bytes([ok.id - 1]) * 500
    store.save("s", {"shared": b"common" * 50, "own": bytes([1]) * 500})  # same content repairs the blob
    assert store.load(infos[1].id)[1]["own"] == bytes([1]) * 500


@pytest.mark.parametrize("digest", [BLAKE3, SHA256], ids=["blake3", "sha256 (older frames)"])
def test_a_frame_is_keyed_by_its_own_digest_and_a_lying_one_is_caught(store, digest):
    make = functools.partial(frame, digest=digest)
    good = make(b"OVQS", 1, 1, b"body" * 100)  # ends in the digest of header + body
    info = store.save("f", {"p": good})
    assert bytes.fromhex(info.parts["p"]) == good[-32:]  # not hashed a second time
    assert store.load(info.id)[1]["p"] == good
    liar = make(b"OVQS", 1, 1, b"BODY" * 100)[:-32] + good[-32:]  # another body, the good trailer
    with pytest.raises(ChecksumError, match="refusing to store a damaged blob"):
        store.save("f", {"p": liar})  # would overwrite the good blob: refused
    assert store.load(info.id)[1]["p"] == good
    other = make(b"OVQS", 1, 1, b"x" * 50)
    lied = store.save("g", {"p": other[:-32] + hashlib.sha256(b"unrelated").digest()})
    with pytest.raises(ChecksumError, match=rf"snapshot {lied.id}: blob 'p' .* damaged"):
        store.load(lied.id)  # a new blob with a false trailer is stored, and fails when read


def test_a_missing_blob_is_a_checksum_error(store):
    info = store.save("s", {"a": b"1", "b": b"2"})
    env, blobs = _blob_db(store)
    with env.begin(write=True) as txn:
        txn.delete(bytes.fromhex(info.parts["b"]), db=blobs)
    with pytest.raises(ChecksumError, match=rf"snapshot {info.id}: blob 'b' .* missing"):
        store.load(info.id)


def test_default_path_is_under_user_data_dir():
    assert default_path() == __import__("pathlib").Path(platformdirs.user_data_dir("ovq")) / "snapshots"


def test_store_env_is_lmdb_with_named_databases(store):
    e = _open_env(store._real, 0)
    assert isinstance(e.env, lmdb.Environment) and set(e.db) == {
        "meta",
        "blobs",
        "snapshots",
        "heads",
        "sessions",
    }

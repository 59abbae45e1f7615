"""LMDB store of snapshots: content-addressed blobs, numbered snapshot records, one head per session.

Bytes in, bytes out: the store never parses what it keeps (see snapshots.codec for that), so it
loads without torch. Layout, durability and GC are described in snapshots/README.md.
"""

from __future__ import annotations

import gc
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgpack
import platformdirs

from ovq.snapshots.errors import ChecksumError, CorruptSnapshot, SnapshotNotFound, VersionError
from ovq.snapshots.frame import declared_digest, digest_matches, frame, unframe, unpack

SCHEMA_VERSION = 1
EXPORT_MAGIC = b"OVQX"
EXPORT_VERSION = 1
_EXPORT_KIND = 1
DEFAULT_MAP_SIZE = 64 << 20
MAX_MAP_SIZE = 1 << 40
MAX_NAME = 128
SINGLE_PART = "blob"  # the part name under which `save(session, bytes)` keeps its one blob

_DBS = ("meta", "blobs", "snapshots", "heads", "sessions")
_NEXT_ID = b"next_id"
_SCHEMA = b"schema"
_RECORD_KEYS = set("id session parent created tokens_seen bytes label parts single meta".split())

T = TypeVar("T")


def default_path() -> Path:
    return Path(platformdirs.user_data_dir("ovq")) / "snapshots"


def content_key(blob: bytes) -> bytes:
    """The key a blob is stored under. A frame (snapshots.frame) already ends in a digest (BLAKE3, or
    SHA-256 in older frames) of everything before it, which identifies it; that trailer is the key as
    is, so saving hashes each byte once (in the codec), not twice. Any other blob: its SHA-256. A
    trailer that lies is caught wherever blobs are checked (`key_matches`: load with verify, the
    codec's decode, import, overwrites)."""
    return declared_digest(blob) or hashlib.sha256(blob).digest()


def key_matches(blob: bytes, key: bytes) -> bool:
    """Whether `blob` really has content key `key` (either form of `content_key`)."""
    if declared_digest(blob) == key:
        return digest_matches(blob)
    return hashlib.sha256(blob).digest() == key


@dataclass(frozen=True)
class SnapshotInfo:
    """A snapshot record. `parts` maps part names to the content keys (hex) of their blobs."""

    id: int
    session: str
    parent: int | None
    created: float
    tokens_seen: int | None
    nbytes: int
    label: str | None
    parts: dict[str, str]
    meta: dict[str, Any]


@dataclass(frozen=True)
class GCResult:
    blobs_removed: int
    bytes_freed: int


# -- one environment per process and path ---------------------------------------------------------


class _Gate:
    """Lets any number of this process's transactions run at once, or one exclusive holder alone:
    LMDB forbids mdb_env_set_mapsize while the process has a live transaction, and no transaction
    may be live across fork()."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._exclusive = False

    @contextmanager
    def txn(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._cond.wait_for(lambda: not self._exclusive)
            self._exclusive = True
            self._cond.wait_for(lambda: self._active == 0)

    def open(self) -> None:
        with self._cond:
            self._exclusive = False
            self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        self.close()
        try:
            yield
        finally:
            self.open()


@dataclass
class _Env:
    env: lmdb.Environment
    gate: _Gate
    db: dict[str, Any]


# Keyed by (realpath, pid): a forked child misses its parent's entries and opens its own environment.
# It keeps the inherited ones referenced but unused, because closing them in the child would clear the
# parent's reader slots -- unless py-lmdb refuses a second open in this process (py-lmdb >= 3 tracks
# open files): such versions skip mdb_env_close when a forked child frees an inherited Environment,
# so `_open_env` then drops the inherited entries and tries again.
_ENVS: dict[tuple[str, int], _Env] = {}
_ENVS_LOCK = threading.Lock()


def _own_envs() -> list[_Env]:
    pid = os.getpid()
    return [e for (_, p), e in _ENVS.items() if p == pid]


def _before_fork() -> None:
    # No transaction may cross fork(): a child would inherit it half-done, and a live Transaction
    # object would keep the inherited Environment alive. Wait for running ones; hold back new ones.
    _ENVS_LOCK.acquire()
    for e in _own_envs():
        e.gate.close()


def _after_fork_in_parent() -> None:
    for e in _own_envs():
        e.gate.open()
    _ENVS_LOCK.release()


def _after_fork_in_child() -> None:
    global _ENVS_LOCK
    _ENVS_LOCK = threading.Lock()  # inherited gates stay closed: those environments are not ours


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


def _lmdb_open(real: str, map_size: int) -> lmdb.Environment:
    kwargs = dict(map_size=map_size, max_dbs=len(_DBS), subdir=True, lock=True, sync=True, metasync=True)
    try:
        return lmdb.open(real, **kwargs)
    except lmdb.Error as err:
        inherited = [k for k in _ENVS if k[1] != os.getpid()]
        if "already open" not in str(err) or not inherited:
            raise
    for k in inherited:
        del _ENVS[k]
    gc.collect()  # free the inherited Environment objects now, releasing py-lmdb's per-process claim
    return lmdb.open(real, **kwargs)


def _open_env(real: str, map_size: int) -> _Env:
    key = (real, os.getpid())
    with _ENVS_LOCK:
        if key not in _ENVS:
            env = _lmdb_open(real, map_size)
            env.reader_check()  # free reader slots of killed processes, which would pin old pages
            e = _Env(env, _Gate(), {})
            try:
                _run(e, True, _init_schema)
            except BaseException:
                env.close()
                raise
            _ENVS[key] = e
        return _ENVS[key]


def _init_schema(txn: lmdb.Transaction, e: _Env) -> None:
    for name in _DBS:
        e.db[name] = e.env.open_db(name.encode(), txn=txn)
    raw = txn.get(_SCHEMA, db=e.db["meta"])
    if raw is None:
        txn.put(_SCHEMA, msgpack.packb({"version": SCHEMA_VERSION}), db=e.db["meta"])
        return
    schema = unpack(raw, "store schema")
    version = schema.get("version") if type(schema) is dict else None
    if version != SCHEMA_VERSION:
        raise VersionError(f"store schema v{version}, this ovq reads v{SCHEMA_VERSION}")


def _run(e: _Env, write: bool, fn: Callable[[lmdb.Transaction, _Env], T]) -> T:
    """Run `fn` in one transaction; retried whole when the map is full (after doubling it) or when
    another process grew it. `fn` must have no effects outside the transaction."""
    for _ in range(64):
        try:
            with e.gate.txn():
                size = e.env.info()["map_size"]
                with e.env.begin(write=write) as txn:
                    return fn(txn, e)
        except lmdb.MapFullError:
            if size >= MAX_MAP_SIZE:
                raise
            with e.gate.exclusive():
                if e.env.info()["map_size"] == size:  # another thread may have grown it already
                    e.env.set_mapsize(min(2 * size, MAX_MAP_SIZE))
        except lmdb.MapResizedError:
            with e.gate.exclusive():
                e.env.set_mapsize(0)  # adopt the size another process set
    raise RuntimeError("LMDB transaction kept failing on map size changes")


# -- keys and records -----------------------------------------------------------------------------


def _id_key(snapshot_id: int) -> bytes:
    return snapshot_id.to_bytes(8, "big")  # big-endian: cursor order is id order


def _index_key(session: str, snapshot_id: int) -> bytes:
    return session.encode() + b"\0" + _id_key(snapshot_id)


def _check_name(name: Any, what: str = "session name") -> str:
    if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME and name.isprintable() and "/" not in name):
        raise ValueError(f"bad {what} {name!r}: want 1-{MAX_NAME} printable characters, no '/'")
    return name


def _check_record(rec: Any, what: str) -> dict[str, Any]:
    """Records are re-checked when read: an import file is untrusted, and a store may be damaged."""
    ok = type(rec) is dict and rec.keys() == _RECORD_KEYS
    ok = ok and type(rec["id"]) is int and type(rec["session"]) is str and type(rec["bytes"]) is int
    ok = ok and (rec["parent"] is None or type(rec["parent"]) is int)
    ok = ok and type(rec["created"]) in (int, float) and type(rec["single"]) is bool
    ok = ok and (rec["tokens_seen"] is None or type(rec["tokens_seen"]) is int)
    ok = ok and (rec["label"] is None or type(rec["label"]) is str) and type(rec["meta"]) is dict
    ok = ok and type(rec["parts"]) is list and len(rec["parts"]) > 0
    ok = ok and all(
        type(p) is list and len(p) == 2 and type(p[0]) is str and type(p[1]) is bytes and len(p[1]) == 32
        for p in rec["parts"]
    )
    if not ok:
        raise CorruptSnapshot(f"{what}: malformed snapshot record")
    return rec


def _info(rec: dict[str, Any]) -> SnapshotInfo:
    return SnapshotInfo(
        id=rec["id"],
        session=rec["session"],
        parent=rec["parent"],
        created=float(rec["created"]),
        tokens_seen=rec["tokens_seen"],
        nbytes=rec["bytes"],
        label=rec["label"],
        parts={name: digest.hex() for name, digest in rec["parts"]},
        meta=rec["meta"],
    )


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); directories cannot be opened for this on Windows."""
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pack_meta(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    meta = dict(meta or {})
    try:
        # strict_types: tuples and dict/int subclasses would come back as something else.
        msgpack.packb(meta, use_bin_type=True, strict_types=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(
            f"meta must be JSON-like (dict, list, str, int, float, bool, None, bytes): {e}"
        ) from e
    tokens = meta.get("tokens_seen")
    if tokens is not None and type(tokens) is not int:
        raise TypeError(f"meta['tokens_seen'] must be an int, got {tokens!r}")
    return meta


# -- the store ------------------------------------------------------------------------------------


class SnapshotStore:
    """Snapshots of named sessions in one LMDB environment (a directory).

    Safe to use from several threads and processes at once: writers are serialised by LMDB, readers
    never block them. Each method is one transaction, so a crash leaves either all of it or none.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, map_size: int = DEFAULT_MAP_SIZE):
        self.path = Path(path) if path is not None else default_path()
        self.path.mkdir(parents=True, exist_ok=True)
        self._real = os.path.realpath(self.path)
        self._map_size = map_size
        self._env()  # open now, so that a bad path or schema fails here

    def _env(self) -> _Env:
        return _open_env(self._real, self._map_size)

    def _write(self, fn: Callable[[lmdb.Transaction, _Env], T]) -> T:
        return _run(self._env(), True, fn)

    def _read(self, fn: Callable[[lmdb.Transaction, _Env], T]) -> T:
        return _run(self._env(), False, fn)

    # -- transaction helpers (run inside a transaction) --

    @staticmethod
    def _record(txn: lmdb.Transaction, e: _Env, snapshot_id: int) -> dict[str, Any]:
        if type(snapshot_id) is not int:
            raise TypeError(f"snapshot ids are ints, got {snapshot_id!r}")
        raw = txn.get(_id_key(snapshot_id), db=e.db["snapshots"]) if 0 <= snapshot_id < 1 << 64 else None
        if raw is None:
            raise SnapshotNotFound(f"no snapshot {snapshot_id}")
        return _check_record(unpack(raw, f"snapshot {snapshot_id}"), f"snapshot {snapshot_id}")

    @staticmethod
    def _head_id(txn: lmdb.Transaction, e: _Env, session: str) -> int | None:
        raw = txn.get(_check_name(session).encode(), db=e.db["heads"])
        return None if raw is None else int.from_bytes(raw, "big")

    def _session_record(self, txn: lmdb.Transaction, e: _Env, session: str, snapshot_id: int | None):
        """The record of `snapshot_id` (default: the head) after checking it belongs to `session`."""
        if snapshot_id is None:
            snapshot_id = self._head_id(txn, e, session)
            if snapshot_id is None:
                raise SnapshotNotFound(f"no session {session!r}")
        rec = self._record(txn, e, snapshot_id)
        if rec["session"] != session:
            raise SnapshotNotFound(
                f"snapshot {snapshot_id} belongs to session {rec['session']!r}, not {session!r}"
            )
        return rec

    @staticmethod
    def _session_ids(txn: lmdb.Transaction, e: _Env, session: str) -> list[int]:
        prefix = session.encode() + b"\0"
        ids = []
        with txn.cursor(db=e.db["sessions"]) as cur:
            found = cur.set_range(prefix)
            while found and cur.key().startswith(prefix):
                ids.append(int.from_bytes(cur.key()[len(prefix) :], "big"))
                found = cur.next()
        return ids

    @staticmethod
    def _insert(txn: lmdb.Transaction, e: _Env, rec: dict[str, Any], blobs: Mapping[bytes, bytes]) -> None:
        """Give `rec` the next id and write it, its blobs, its index entry and its session's head."""
        raw = txn.get(_NEXT_ID, db=e.db["meta"])
        rec["id"] = int.from_bytes(raw, "big") if raw else 1
        txn.put(_NEXT_ID, _id_key(rec["id"] + 1), db=e.db["meta"])
        for digest, blob in blobs.items():
            stored = txn.get(digest, db=e.db["blobs"])
            if stored == blob:
                continue
            if stored is not None and not key_matches(blob, digest):
                # same key, other bytes, and the new ones do not hash to it: never overwrite with them
                raise ChecksumError(f"refusing to store a damaged blob ({digest.hex()[:12]})")
            txn.put(digest, blob, db=e.db["blobs"])  # new, or a repair of a damaged stored copy
        txn.put(_id_key(rec["id"]), msgpack.packb(rec, use_bin_type=True), db=e.db["snapshots"])
        txn.put(_index_key(rec["session"], rec["id"]), b"", db=e.db["sessions"])
        txn.put(rec["session"].encode(), _id_key(rec["id"]), db=e.db["heads"])

    def _remove(self, txn: lmdb.Transaction, e: _Env, rec: dict[str, Any]) -> None:
        """Delete a record; if it was its session's head, the head falls back to its parent (when in the
        same session) or else to the newest remaining snapshot; a session with none left disappears."""
        session, sid = rec["session"], rec["id"]
        txn.delete(_id_key(sid), db=e.db["snapshots"])
        txn.delete(_index_key(session, sid), db=e.db["sessions"])
        if self._head_id(txn, e, session) != sid:
            return
        remaining = self._session_ids(txn, e, session)
        parent = rec["parent"]
        new_head = parent if parent in remaining else (remaining[-1] if remaining else None)
        if new_head is None:
            txn.delete(session.encode(), db=e.db["heads"])
        else:
            txn.put(session.encode(), _id_key(new_head), db=e.db["heads"])

    # -- public API --

    def save(
        self,
        session: str,
        data: bytes | Mapping[str, bytes],
        meta: Mapping[str, Any] | None = None,
        label: str | None = None,
    ) -> SnapshotInfo:
        """Store a new snapshot of `session` and make it the head, in one durable transaction.

        `data` is one blob or named parts (e.g. `codec.encode_parts`); parts are stored by content key, so
        parts equal to any stored ones cost nothing. `load` returns `data` in the form it was given.
        `meta` is small JSON-like data kept in the record; its "tokens_seen" is shown by `list`.
        """
        _check_name(session)
        if label is not None:
            _check_name(label, "label")
        single = isinstance(data, (bytes, bytearray, memoryview))
        parts = {SINGLE_PART: data} if single else dict(data)
        if not parts or not all(isinstance(n, str) and n for n in parts):
            raise ValueError("parts must be a non-empty mapping with non-empty str names")
        if not all(isinstance(b, (bytes, bytearray, memoryview)) for b in parts.values()):
            raise TypeError("part values must be bytes")
        parts = {name: bytes(blob) for name, blob in parts.items()}
        digests = {name: content_key(blob) for name, blob in parts.items()}
        rec = {
            "id": 0,  # set by _insert
            "session": session,
            "parent": None,
            "created": time.time(),
            "tokens_seen": None,
            "bytes": sum(map(len, parts.values())),
            "label": label,
            "parts": [[name, digests[name]] for name in parts],
            "single": single,
            "meta": _pack_meta(meta),
        }
        rec["tokens_seen"] = rec["meta"].get("tokens_seen")

        def write(txn: lmdb.Transaction, e: _Env) -> SnapshotInfo:
            r = {**rec, "parent": self._head_id(txn, e, session)}
            self._insert(txn, e, r, {digests[n]: parts[n] for n in parts})
            return _info(r)

        return self._write(write)

    def load(self, snapshot_id: int, verify: bool = True) -> tuple[SnapshotInfo, bytes | dict[str, bytes]]:
        """(info, data) with `data` as given to `save`; every blob is checked against its content key.
        `verify=False` skips the hash (not the missing-blob check) for callers whose decoder checks
        every byte again anyway, like `snapshots.codec.decode`.

        Raises SnapshotNotFound, or ChecksumError naming the snapshot when a blob is missing or damaged.
        """
        rec, blobs = self._load(snapshot_id, verify)
        return _info(rec), blobs[SINGLE_PART] if rec["single"] else blobs

    def _load(self, snapshot_id: int, verify: bool = True) -> tuple[dict[str, Any], dict[str, bytes]]:
        def read(txn: lmdb.Transaction, e: _Env) -> tuple[dict[str, Any], dict[str, bytes | None]]:
            rec = self._record(txn, e, snapshot_id)
            return rec, {name: txn.get(digest, db=e.db["blobs"]) for name, digest in rec["parts"]}

        rec, blobs = self._read(read)
        for name, digest in rec["parts"]:
            blob = blobs[name]
            if blob is None:
                raise ChecksumError(f"snapshot {snapshot_id}: blob {name!r} ({digest.hex()[:12]}) is missing")
            if verify and not key_matches(blob, digest):
                raise ChecksumError(f"snapshot {snapshot_id}: blob {name!r} ({digest.hex()[:12]}) is damaged")
        return rec, blobs

    def show(self, snapshot_id: int) -> SnapshotInfo:
        return self._read(lambda txn, e: _info(self._record(txn, e, snapshot_id)))

    def head(self, session: str) -> SnapshotInfo:
        """The latest snapshot of `session` (or the one it was rolled back to)."""
        return self._read(lambda txn, e: _info(self._session_record(txn, e, session, None)))

    def sessions(self) -> dict[str, int]:
        """Session name -> head snapshot id."""

        def read(txn: lmdb.Transaction, e: _Env) -> dict[str, int]:
            return {k.decode(): int.from_bytes(v, "big") for k, v in txn.cursor(db=e.db["heads"])}

        return self._read(read)

    def list(self, session: str | None = None) -> list[SnapshotInfo]:
        """Snapshots of one session (SnapshotNotFound if it does not exist) or of all, oldest first."""

        def read(txn: lmdb.Transaction, e: _Env) -> list[SnapshotInfo]:
            if session is None:
                return [
                    _info(_check_record(unpack(v, "snapshot record"), f"snapshot {int.from_bytes(k, 'big')}"))
                    for k, v in txn.cursor(db=e.db["snapshots"])
                ]
            if self._head_id(txn, e, session) is None:
                raise SnapshotNotFound(f"no session {session!r}")
            return [_info(self._record(txn, e, i)) for i in self._session_ids(txn, e, session)]

        return self._read(read)

    def fork(self, session: str, new_session: str, snapshot_id: int | None = None) -> SnapshotInfo:
        """Start `new_session` from `snapshot_id` of `session` (default: its head). The new snapshot is a
        copy of the record (parent = the source) sharing every blob."""
        _check_name(new_session)

        def write(txn: lmdb.Transaction, e: _Env) -> SnapshotInfo:
            if self._head_id(txn, e, new_session) is not None:
                raise ValueError(f"session {new_session!r} already exists")
            src = self._session_record(txn, e, session, snapshot_id)
            rec = {**src, "session": new_session, "parent": src["id"], "created": time.time()}
            self._insert(txn, e, rec, {})
            return _info(rec)

        return self._write(write)

    def rollback(self, session: str, snapshot_id: int) -> SnapshotInfo:
        """Point `session`'s head at one of its snapshots; later ones are kept (roll forward works too)."""

        def write(txn: lmdb.Transaction, e: _Env) -> SnapshotInfo:
            rec = self._session_record(txn, e, session, snapshot_id)
            txn.put(session.encode(), _id_key(snapshot_id), db=e.db["heads"])
            return _info(rec)

        return self._write(write)

    def delete(self, snapshot_id: int) -> None:
        """Remove one snapshot record. Its blobs stay until `gc()`."""
        self._write(lambda txn, e: self._remove(txn, e, self._record(txn, e, snapshot_id)))

    def delete_session(self, session: str) -> list[int]:
        """Remove a session and all its snapshots; returns their ids. Blobs stay until `gc()`."""

        def write(txn: lmdb.Transaction, e: _Env) -> list[int]:
            if self._head_id(txn, e, session) is None:
                raise SnapshotNotFound(f"no session {session!r}")
            ids = self._session_ids(txn, e, session)
            for i in ids:
                txn.delete(_id_key(i), db=e.db["snapshots"])
                txn.delete(_index_key(session, i), db=e.db["sessions"])
            txn.delete(session.encode(), db=e.db["heads"])
            return ids

        return self._write(write)

    def prune(self, session: str, keep_last: int) -> list[int]:
        """Delete `session`'s snapshots except the newest `keep_last`, labelled ones and the head;
        returns the deleted ids. Blobs stay until `gc()`."""
        if type(keep_last) is not int or keep_last < 0:
            raise ValueError(f"keep_last must be an int >= 0, got {keep_last!r}")

        def write(txn: lmdb.Transaction, e: _Env) -> list[int]:
            head = self._head_id(txn, e, session)
            if head is None:
                raise SnapshotNotFound(f"no session {session!r}")
            ids = self._session_ids(txn, e, session)
            keep = set(ids[max(0, len(ids) - keep_last) :] if keep_last else ()) | {head}
            gone = []
            for i in ids:
                rec = self._record(txn, e, i)
                if i not in keep and rec["label"] is None:
                    self._remove(txn, e, rec)
                    gone.append(i)
            return gone

        return self._write(write)

    def gc(self) -> GCResult:
        """Mark and sweep, in one write transaction: delete every blob no snapshot record names."""

        def write(txn: lmdb.Transaction, e: _Env) -> GCResult:
            live = set()
            for k, v in txn.cursor(db=e.db["snapshots"]):
                rec = _check_record(unpack(v, "snapshot record"), f"snapshot {int.from_bytes(k, 'big')}")
                live.update(digest for _, digest in rec["parts"])
            dead = [(k, len(v)) for k, v in txn.cursor(db=e.db["blobs"]) if k not in live]
            for k, _ in dead:
                txn.delete(k, db=e.db["blobs"])
            return GCResult(len(dead), sum(n for _, n in dead))

        return self._write(write)

    def blob_count(self) -> int:
        """Number of distinct blobs stored (shared parts count once)."""
        return self._read(lambda txn, e: txn.stat(e.db["blobs"])["entries"])

    def export(self, snapshot_id: int, path: str | os.PathLike[str]) -> Path:
        """Write one portable, checksummed file holding the record and its blobs (atomically)."""
        rec, blobs = self._load(snapshot_id)  # verifies the blobs
        by_digest = {digest: blobs[name] for name, digest in rec["parts"]}
        body = msgpack.packb(
            {"record": rec, "blobs": [[d, b] for d, b in by_digest.items()]}, use_bin_type=True
        )
        out = Path(path)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(frame(EXPORT_MAGIC, EXPORT_VERSION, _EXPORT_KIND, body))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, out)  # readers see the old file or the whole new one, never a partial one
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(out.parent)
        return out

    def import_(self, path: str | os.PathLike[str], session: str | None = None) -> SnapshotInfo:
        """Add the snapshot in an `export` file as a new snapshot (new id, no parent) and make it the head
        of `session` (default: the session it was exported from), creating the session if needed."""
        what = f"export file {os.fspath(path)}"
        f = unframe(Path(path).read_bytes(), EXPORT_MAGIC, what)
        if f.kind != _EXPORT_KIND:
            raise CorruptSnapshot(f"{what}: frame kind {f.kind}, expected {_EXPORT_KIND}")
        if f.version > EXPORT_VERSION:
            raise VersionError(
                f"{what}: format v{f.version} is newer than this ovq (reads v{EXPORT_VERSION})"
            )
        body = unpack(f.body, what)
        if not (type(body) is dict and body.keys() == {"record", "blobs"} and type(body["blobs"]) is list):
            raise CorruptSnapshot(f"{what}: expected a map with 'record' and 'blobs'")
        rec = _check_record(body["record"], what)
        blobs = {}
        for item in body["blobs"]:
            if not (type(item) is list and len(item) == 2 and all(type(x) is bytes for x in item)):
                raise CorruptSnapshot(f"{what}: malformed blob entry")
            if not key_matches(item[1], item[0]):
                raise ChecksumError(f"{what}: blob {item[0].hex()[:12]} is damaged")
            blobs[item[0]] = item[1]
        if any(digest not in blobs for _, digest in rec["parts"]):
            raise CorruptSnapshot(f"{what}: a part's blob is missing")
        rec["session"] = _check_name(session if session is not None else rec["session"])
        rec["parent"] = None
        if rec["tokens_seen"] != rec["meta"].get("tokens_seen"):
            raise CorruptSnapshot(f"{what}: tokens_seen disagrees with the record's meta")

        def write(txn: lmdb.Transaction, e: _Env) -> SnapshotInfo:
            r = dict(rec)
            self._insert(txn, e, r, blobs)
            return _info(r)

        return self._write(write)

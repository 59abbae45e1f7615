"""Codec: exact round trips, strict decoding with typed errors, migrations."""

import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import msgpack
import pytest
import torch
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from ovq.snapshots import codec
from ovq.snapshots.errors import (
    ChecksumError,
    CorruptSnapshot,
    FingerprintMismatch,
    SnapshotError,
    VersionError,
)
from ovq.snapshots.frame import SHA256, frame
from tests.snapshots.helpers import FP, body_of, make_snapshot, reframe, v2_body

DATA = Path(__file__).parent / "data"


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_trees_identical(a, b):
    """Same structure, same scalar types and values (NaN-safe), tensors bit-identical."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert bits(a) == bits(b)
    elif isinstance(a, dict):
        assert type(b) is dict and list(a) == list(b)
        for k in a:
            assert_trees_identical(a[k], b[k])
    elif isinstance(a, list):
        assert type(b) is list and len(a) == len(b)
        for x, y in zip(a, b):
            assert_trees_identical(x, y)
    else:  # msgpack bytes compare type, value and float bits at once
        assert msgpack.packb(a) == msgpack.packb(b)


def plain(snap: codec.Snapshot, **override) -> dict:
    payload = {
        "fingerprint": snap.fingerprint,
        "position": snap.position,
        "state": snap.state,
        "meta": snap.meta,
    }
    return {**payload, **override}


# -- round trips ----------------------------------------------------------------------------------


@st.composite
def tensors(draw):
    name = draw(st.sampled_from(sorted(codec.DTYPES)))
    dtype = codec.DTYPES[name]
    shape = draw(st.lists(st.integers(0, 4), max_size=4))  # [] is 0-d; a 0 anywhere is empty
    n = math.prod(shape)
    if dtype is torch.bool:
        raw = bytes(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    else:  # any bit pattern: NaN payloads, -0.0, subnormals, infinities
        raw = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    t = (
        torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
        if raw
        else torch.empty(shape, dtype=dtype)
    )
    if t.ndim >= 2 and draw(st.booleans()):
        t = t.transpose(0, 1)  # non-contiguous input
    return t


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=16,
)


@given(st.lists(tensors(), min_size=1, max_size=4), json_like, st.booleans())
def test_round_trip_is_bit_exact(ts, meta, split):
    snap = codec.Snapshot(
        FP, 7, {"layers": [{"t": t, "n": i} for i, t in enumerate(ts)], "x": ts[0]}, {"m": meta}
    )
    blob = codec.encode_parts(snap) if split else codec.encode(snap)
    out = codec.decode(blob, expect_fingerprint=FP)
    assert (out.fingerprint, out.position, out.version) == (FP, 7, codec.CURRENT_VERSION)
    assert_trees_identical(snap.state, out.state)
    assert_trees_identical(snap.meta, out.meta)
    for layer in out.state["layers"]:
        t = layer["t"]
        assert t.is_contiguous()
        if t.numel():
            before = bits(t)
            t.view(-1)[0] = t.view(-1)[-1]  # writable; and owned by the tensor, not the blob
            assert bits(codec.decode(blob).state["layers"][layer["n"]]["t"]) == before


def from_bits(fmt: str, values: list[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.frombuffer(bytearray(struct.pack(f"<{len(values)}{fmt}", *values)), dtype=dtype)


def test_special_float_bits_survive():
    specials = {  # NaN payloads (quiet and signalling), -0.0, subnormals, infinities
        "f32": from_bits("I", [0x7FC00001, 0xFFBFFFFF, 0x7F800001, 0x80000000, 0x00000001], torch.float32),
        "f16": from_bits("H", [0x7E01, 0xFC01, 0x8000, 0x0001], torch.float16),
        "bf16": from_bits("H", [0x7FC1, 0xFF81, 0x8000], torch.bfloat16),
        "f64": from_bits("Q", [0x7FF0000000000001, 0x8000000000000000], torch.float64),
    }
    out = codec.decode(codec.encode(codec.Snapshot(FP, 0, specials, {"z": -0.0, "n": math.nan})))
    assert_trees_identical(specials, out.state)
    assert math.copysign(1.0, out.meta["z"]) == -1.0


def test_parts_share_bytes_for_unchanged_layers(snapshot):
    changed = make_snapshot()
    changed.state["layers"][1]["k"] = changed.state["layers"][1]["k"] + 1
    a, b = codec.encode_parts(snapshot), codec.encode_parts(changed)
    assert set(a) == {"snapshot", "state.layers[0]", "state.layers[1]", "state.layers[2]", "state.pending"}
    assert a["state.layers[0]"] == b["state.layers[0]"] and a["state.pending"] == b["state.pending"]
    assert a["state.layers[1]"] != b["state.layers[1]"] and a["snapshot"] != b["snapshot"]


def test_encode_rejects_what_would_not_round_trip():
    bad_states = [
        {"t": (1, 2)},  # tuple would come back as a list
        {"t": torch.zeros(2, dtype=torch.complex64)},
        {"t": {1: 2}},
        {"t": object()},
        {"t": 1 << 64},
    ]
    for state in bad_states:
        with pytest.raises(TypeError, match=r"state\.t"):
            codec.encode(codec.Snapshot(FP, 0, state))
    with pytest.raises(ValueError, match="fingerprint"):
        codec.encode(codec.Snapshot("NOT-HEX", 0, {}))
    with pytest.raises(ValueError, match="position"):
        codec.encode(codec.Snapshot(FP, -1, {}))


# -- strict decoding ------------------------------------------------------------------------------


def test_wrong_fingerprint(snapshot):
    with pytest.raises(FingerprintMismatch, match="made by model 0123"):
        codec.decode(codec.encode(snapshot), expect_fingerprint="ff" * 32)


def test_future_version(snapshot):
    blob = codec.encode_raw(plain(snapshot), version=codec.CURRENT_VERSION + 1)
    with pytest.raises(VersionError, match="newer"):
        codec.decode(blob)


def test_every_flipped_byte_is_caught():
    blob = codec.encode(codec.Snapshot(FP, 3, {"t": torch.arange(6.0)}, {"a": "b"}))
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x40
        with pytest.raises(SnapshotError):
            codec.decode(bytes(bad))


def test_truncation_and_trailing_bytes(snapshot):
    blob = codec.encode(snapshot)
    for n in range(len(blob)):
        with pytest.raises(CorruptSnapshot, match="truncated|magic"):
            codec.decode(blob[:n])
    with pytest.raises(CorruptSnapshot, match="3 trailing bytes"):
        codec.decode(blob + b"xyz")
    with pytest.raises(CorruptSnapshot, match="max_bytes"):
        codec.decode(blob, max_bytes=len(blob) - 1)


REGION = bytes(8)  # two float32 zeros


def _tensor_ext(**fields):
    """A v2 tensor header over REGION (valid unless `fields` says otherwise)."""
    f = {"dtype": "float32", "shape": [2], "offset": 0, "nbytes": 8, "xxh3": xxhash.xxh3_64_intdigest(REGION)}
    f.update(fields)
    return msgpack.ExtType(3, msgpack.packb([f["dtype"], f["shape"], f["offset"], f["nbytes"], f["xxh3"]]))


def _payload(state) -> bytes:
    return msgpack.packb({"fingerprint": FP, "position": 0, "state": state, "meta": {}}, use_bin_type=True)


@pytest.mark.parametrize(
    "state, region, error, match",
    [
        ({"t": _tensor_ext(xxh3=123)}, REGION, ChecksumError, "xxh3-64 mismatch"),
        ({"t": _tensor_ext(dtype="complex64")}, REGION, CorruptSnapshot, "unknown dtype"),
        ({"t": _tensor_ext(shape=[3])}, REGION, CorruptSnapshot, "needs 12 bytes, got 8"),
        ({"t": _tensor_ext(shape=[-2])}, REGION, CorruptSnapshot, "bad shape"),
        ({"t": _tensor_ext(shape=2)}, REGION, CorruptSnapshot, "bad shape"),
        ({"t": _tensor_ext(offset=4)}, REGION + bytes(4), CorruptSnapshot, "offset 4, expected 0"),
        ({"t": _tensor_ext(offset="0")}, REGION, CorruptSnapshot, "must be ints"),
        ({"t": _tensor_ext()}, REGION[:4], CorruptSnapshot, "run past the body"),
        ({"t": _tensor_ext()}, REGION + b"x", CorruptSnapshot, "1 data bytes belong to no tensor"),
        ({"t": _tensor_ext(), "u": _tensor_ext()}, REGION * 2, CorruptSnapshot, "offset 0, expected 8"),
        (
            {"t": msgpack.ExtType(3, msgpack.packb(["float32", [2]]))},
            REGION,
            CorruptSnapshot,
            "must be \\[dtype",
        ),
        ({"t": msgpack.ExtType(1, b"")}, REGION, CorruptSnapshot, "unknown extension type 1"),  # v1's tensor
        ({"t": msgpack.ExtType(9, b"")}, b"", CorruptSnapshot, "unknown extension type 9"),
        (
            {"t": msgpack.ExtType(2, msgpack.packb(["x", bytes(32)]))},
            b"",
            CorruptSnapshot,
            "part 'x' is missing",
        ),
        ({"t": msgpack.Timestamp(0)}, b"", CorruptSnapshot, "unexpected Timestamp"),
    ],
)
def test_strict_tensor_and_tree_checks(state, region, error, match):
    with pytest.raises(error, match=match):
        codec.decode(reframe(v2_body(_payload(state), region)))


def test_a_valid_hand_built_tensor_is_accepted():
    two = {"t": _tensor_ext(), "u": _tensor_ext(offset=8)}
    out = codec.decode(reframe(v2_body(_payload(two), REGION * 2)))
    assert out.state["t"].tolist() == out.state["u"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "body, match", [(b"", "no tree length"), (struct.pack("<Q", 99) + b"x", "runs past")]
)
def test_body_layout_checks(body, match):
    with pytest.raises(CorruptSnapshot, match=match):
        codec.decode(reframe(body))


def _v1_tensor_ext(**fields):
    base = {"dtype": "float32", "shape": [2], "data": bytes(8), "crc": zlib.crc32(bytes(8))}
    return msgpack.ExtType(1, msgpack.packb({**base, **fields}))


def test_v1_tensors_are_still_checked_strictly():
    def v1(state):
        return reframe(_payload(state), version=1)

    assert codec.decode(v1({"t": _v1_tensor_ext()})).state["t"].tolist() == [0.0, 0.0]
    with pytest.raises(ChecksumError, match="CRC-32 mismatch"):
        codec.decode(v1({"t": _v1_tensor_ext(crc=123)}))
    with pytest.raises(CorruptSnapshot, match="needs 12 bytes, got 8"):
        codec.decode(v1({"t": _v1_tensor_ext(shape=[3])}))
    with pytest.raises(CorruptSnapshot, match="must be bytes"):
        codec.decode(v1({"t": _v1_tensor_ext(data="text")}))
    with pytest.raises(CorruptSnapshot, match="keys"):
        codec.decode(v1({"t": msgpack.ExtType(1, msgpack.packb({"dtype": "float32"}))}))
    with pytest.raises(CorruptSnapshot, match="unknown extension type 3"):  # v2's tensor in a v1 body
        codec.decode(v1({"t": _tensor_ext()}))


def test_snapshots_written_by_format_v1_read_back_identically():
    """Files written by the v1 codec (SHA-256 frames, inline tensors with CRC-32), kept as test data."""
    expected = make_snapshot(seed=5)
    whole = (DATA / "v1_snapshot.bin").read_bytes()
    parts = msgpack.unpackb((DATA / "v1_parts.msgpack").read_bytes(), raw=False)
    assert whole[4:8] == bytes([1, 0, codec.KIND_SNAPSHOT, SHA256])  # version 1, SHA-256 trailer
    for data in (whole, parts):
        out = codec.decode(data, expect_fingerprint=FP)
        assert out.version == codec.CURRENT_VERSION
        assert_trees_identical(out.state, expected.state)
        assert_trees_identical(out.meta, expected.meta)
    bad = bytearray(whole)
    bad[200] ^= 1
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        codec.decode(bytes(bad))


@pytest.mark.parametrize(
    "body, match",
    [
        (msgpack.packb([1, 2]), "payload must be a map"),
        (msgpack.packb({"fingerprint": FP, "position": 0, "state": {}}), "payload must be a map"),
        (
            msgpack.packb({"fingerprint": FP, "position": 0, "state": {}, "meta": {}, "x": 1}),
            "payload must be a map",
        ),
        (msgpack.packb({"fingerprint": "XYZ", "position": 0, "state": {}, "meta": {}}), "fingerprint"),
        (msgpack.packb({"fingerprint": FP, "position": -1, "state": {}, "meta": {}}), "position"),
        (msgpack.packb({"fingerprint": FP, "position": 0.5, "state": {}, "meta": {}}), "position"),
        (msgpack.packb({"fingerprint": FP, "position": 0, "state": [], "meta": {}}), "state and meta"),
        (
            msgpack.packb({"fingerprint": FP, "position": 0, "state": {}, "meta": {b"k": 1}}),
            "keys must be str",
        ),
        (msgpack.packb({"fingerprint": FP, "position": 0, "state": {}, "meta": {1: 1}}), "malformed msgpack"),
        (msgpack.packb({"fingerprint": FP, "position": 0, "state": {}, "meta": {}}) + b"\x00", "malformed"),
        (msgpack.packb({"fingerprint": FP, "position": 0, "state": {}, "meta": {}})[:-1], "malformed"),
        (b"\xa2\xff\xfe", "malformed"),  # invalid UTF-8 in a str
        (b"\x91" * 2000 + b"\xc0", "malformed|deeper"),
    ],
)
def test_strict_payload_checks(body, match):
    with pytest.raises(CorruptSnapshot, match=match):
        codec.decode(reframe(v2_body(body)))


def test_frame_kind_and_digest_algorithm_are_checked(snapshot):
    body = body_of(codec.encode(snapshot))
    with pytest.raises(CorruptSnapshot, match="kind"):
        codec.decode(reframe(body, kind=codec.KIND_PART))
    blob = bytearray(reframe(body))
    blob[7] = 7
    with pytest.raises(CorruptSnapshot, match="unknown digest algorithm 7"):
        codec.decode(bytes(blob))
    blob[7] = SHA256  # the algorithm byte is covered by the digest: no downgrade without a new digest
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        codec.decode(bytes(blob))
    sha_framed = frame(codec.MAGIC, codec.CURRENT_VERSION, codec.KIND_SNAPSHOT, body, digest=SHA256)
    assert_trees_identical(codec.decode(sha_framed).state, snapshot.state)
    with pytest.raises(CorruptSnapshot, match="magic"):
        codec.decode(b"PK\x03\x04" + bytes(60))


def test_parts_must_match_their_envelope(snapshot):
    parts = codec.encode_parts(snapshot)
    other = codec.encode_parts(make_snapshot(seed=1))
    with pytest.raises(ChecksumError, match=r"state\.layers\[0\]"):
        codec.decode({**parts, "state.layers[0]": other["state.layers[0]"]})
    with pytest.raises(CorruptSnapshot, match="missing"):
        codec.decode({k: v for k, v in parts.items() if k != "state.pending"})
    with pytest.raises(CorruptSnapshot, match="not referenced"):
        codec.decode({**parts, "extra": parts["state.pending"]})
    with pytest.raises(CorruptSnapshot, match="no 'snapshot' part"):
        codec.decode({k: v for k, v in parts.items() if k != "snapshot"})
    with pytest.raises(CorruptSnapshot, match="missing"):
        codec.decode(parts["snapshot"])  # an envelope alone, as if it were a whole snapshot
    with pytest.raises(CorruptSnapshot, match="kind"):
        codec.decode(parts["state.pending"])


# -- migrations -----------------------------------------------------------------------------------


@pytest.fixture
def fresh_migrations(monkeypatch):
    """The real registry without any migration from v0, which the tests make up; restored afterwards."""
    monkeypatch.setattr(codec, "_MIGRATIONS", {v: f for v, f in codec._MIGRATIONS.items() if v >= 1})


def test_migration_upgrades_old_payloads(fresh_migrations, snapshot):
    # Pretend format v0 called the position "pos" and stored keys as float64.
    @codec.migration(0)
    def v0_to_v1(payload):
        payload = dict(payload)
        payload["position"] = payload.pop("pos")
        layer = payload["state"]["layers"][0]
        layer["keys"] = layer["keys"].to_tensor().float()  # migrations may return tensors
        return payload

    old_state = {"layers": [{"keys": torch.ones(2, 3, dtype=torch.float64)}]}
    blob = codec.encode_raw({"fingerprint": FP, "pos": 9, "state": old_state, "meta": {}}, version=0)
    out = codec.decode(blob, expect_fingerprint=FP)
    assert out.position == 9 and out.version == codec.CURRENT_VERSION
    assert out.state["layers"][0]["keys"].dtype == torch.float32
    with pytest.raises(ValueError, match="already registered"):
        codec.migration(0)(v0_to_v1)
    with pytest.raises(ValueError, match="must be in"):
        codec.migration(codec.CURRENT_VERSION)(v0_to_v1)


def test_missing_migration_is_a_version_error(fresh_migrations, snapshot):
    with pytest.raises(VersionError, match="no migration from v0"):
        codec.decode(codec.encode_raw(plain(snapshot), version=0))


def test_bad_migration_output_is_caught(fresh_migrations, snapshot):
    codec.migration(0)(lambda payload: {**payload, "position": "nine"})
    with pytest.raises(CorruptSnapshot, match="position"):
        codec.decode(codec.encode_raw(plain(snapshot), version=0))


# -- boundaries -----------------------------------------------------------------------------------


def test_package_imports_no_model_code_and_store_needs_no_torch():
    root = Path(__file__).resolve().parents[2]
    script = (
        "import sys, ovq.snapshots.store, ovq.snapshots.errors\n"
        "assert 'torch' not in sys.modules, 'the store must load without torch'\n"
        "import ovq.snapshots.codec\n"
        "model_code = ('ovq.agent', 'ovq.memory', 'ovq.kernels', 'ovq.tui')\n"
        "bad = [m for m in sys.modules if m.startswith(model_code)]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=root, check=True)


def test_header_layout_is_stable(snapshot):
    blob = codec.encode(snapshot)
    magic, version, kind, digest, n = struct.unpack_from("<4sHBBQ", blob)
    assert (magic, version, kind, digest, n) == (b"OVQS", 2, 1, 1, len(blob) - 48)
    (tree_len,) = struct.unpack_from("<Q", blob, 16)
    region = blob[24 + tree_len : -32]
    assert region == b"".join(bits(t) for t in _tensors_in_order(snapshot.state))


def _tensors_in_order(node):
    if isinstance(node, torch.Tensor):
        return [node]
    if isinstance(node, dict):
        return [t for v in node.values() for t in _tensors_in_order(v)]
    if isinstance(node, list):
        return [t for v in node for t in _tensors_in_order(v)]
    return []

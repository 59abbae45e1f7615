"""Fuzz: whatever bytes reach `decode`, it returns a Snapshot or raises a SnapshotError, nothing else."""

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovq.snapshots import codec
from ovq.snapshots.errors import SnapshotError
from tests.snapshots.helpers import FP, body_of, make_snapshot, reframe, v2_body

BLOB = codec.encode(make_snapshot(n_layers=2))
PARTS = codec.encode_parts(make_snapshot(n_layers=2))


def decode_or_snapshot_error(data) -> None:
    try:
        codec.decode(data, expect_fingerprint=FP)
    except SnapshotError:
        pass


@st.composite
def mutated(draw, blob: bytes) -> bytes:
    """A few random byte edits: overwrite, insert, delete, or cut."""
    out = bytearray(blob)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        i = draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "set" and out:
            out[i] = draw(st.integers(0, 255))
        elif op == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[i : i + draw(st.integers(1, 8))]
        else:
            del out[i:]
    return bytes(out)


@given(st.binary(max_size=512))
def test_random_bytes(data):
    decode_or_snapshot_error(data)


@given(mutated(BLOB))
def test_mutated_blobs(data):
    decode_or_snapshot_error(data)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(mutated(body_of(BLOB)))
def test_mutated_bodies_with_valid_frames(body):
    decode_or_snapshot_error(reframe(body))  # past the checksum, into the strict parser


@given(st.sampled_from(sorted(PARTS)), st.data())
def test_mutated_parts_with_valid_frames(name, data):
    kind = codec.KIND_SNAPSHOT if name == codec.ENVELOPE else codec.KIND_PART
    body = data.draw(mutated(body_of(PARTS[name])))
    decode_or_snapshot_error({**PARTS, name: reframe(body, kind=kind)})


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=16)
    | st.builds(msgpack.ExtType, st.integers(0, 3), st.binary(max_size=24)),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@given(msgpack_values, st.booleans())
def test_arbitrary_msgpack_payloads(value, as_payload):
    if as_payload:  # keep the right top-level keys so that deeper checks are reached
        value = {"fingerprint": FP, "position": 0, "state": {"x": value}, "meta": {}}
    decode_or_snapshot_error(reframe(v2_body(msgpack.packb(value, use_bin_type=True))))

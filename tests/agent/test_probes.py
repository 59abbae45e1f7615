import pytest

from ovq.agent.eval.probes import Probe, load_suite, parse_suite, shipped_suites


def test_shipped_suites_load():
    assert "basic" in shipped_suites()
    suite = load_suite("basic")
    assert len(suite.probes) >= 5 and max(p.distance for p in suite.probes) >= 16384


def test_expectations():
    assert Probe("f", "q", 0, expect="4471").check("It is 4471.")
    assert not Probe("f", "q", 0, expect="4471").check("It is 4417.")
    assert Probe("f", "q", 0, expect_regex=r"KL ?1823").check("flight KL1823")


@pytest.mark.parametrize(
    "data, match",
    [
        ({}, "at least one"),
        ({"probe": [{"fact": "a", "question": "b"}]}, "exactly one of"),
        ({"probe": [{"fact": "a", "question": "b", "expect": "x", "expect_regex": "y"}]}, "exactly one of"),
        ({"probe": [{"fact": "", "question": "b", "expect": "x"}]}, "'fact' must be"),
        ({"probe": [{"fact": "a", "question": "b", "expect": "x", "distance": -1}]}, "distance"),
        ({"probe": [{"fact": "a", "question": "b", "expect_regex": "("}]}, "bad expect_regex"),
        ({"probe": [{"fact": "a", "question": "b", "expect": "x", "role": "system"}]}, "role"),
        ({"probe": [{"fact": "a", "question": "b", "expect": "x", "colour": 1}]}, "unknown keys"),
        ({"threshold": 2, "probe": [{"fact": "a", "question": "b", "expect": "x"}]}, "threshold"),
        ({"tresh": 1, "probe": []}, "unknown keys"),
    ],
)
def test_bad_suites_are_named(data, match):
    with pytest.raises(ValueError, match=match):
        parse_suite(data)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no probe suite"):
        load_suite(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_suite(bad)

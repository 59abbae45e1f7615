"""The benchmark runs and reports what it promises (no timing is asserted)."""

import json

from ovq.agent.cli.main import main as ovq_main
from ovq.memory import bench


def test_bench_json_has_both_ops_ratios_and_constant_state_bytes(capsys):
    bench.main(["--T", "64", "256", "--H", "2", "--D", "8", "--L", "16", "--N", "32"])
    result = json.loads(capsys.readouterr().out)
    assert result["benchmark"] == "memory" and result["state_bytes_constant"] is True
    assert [r["T"] for r in result["results"]] == [64, 256]
    for r in result["results"]:
        assert r["ovq_tokens_per_s"] > 0 and r["full_tokens_per_s"] > 0
        assert (
            abs(r["speedup_ovq_vs_full"] - r["ovq_tokens_per_s"] / r["full_tokens_per_s"])
            < 1e-9 * r["speedup_ovq_vs_full"]
        )
        floor = r["matmul_floor_tokens_per_s"] / r["full_tokens_per_s"]  # the op's products alone
        assert abs(r["speedup_floor_vs_full"] - floor) < 1e-9 * floor
    assert result["results"][1]["full_kv_cache_bytes"] == 4 * result["results"][0]["full_kv_cache_bytes"]


def test_ovq_bench_memory_subcommand(capsys):
    assert ovq_main(["bench", "memory", "--T", "32", "--H", "1", "--D", "4", "--L", "8", "--N", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["T"] == 32

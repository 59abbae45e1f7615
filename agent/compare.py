"""`ovq eval compare`: several models on one task at several test lengths, side by side.

For each model and each length (by default the task's `target_chars`; any integer field of the task
config, e.g. ICL's `examples_per_function`), exact-match recall over the same fresh examples, and the
bytes of state the model holds at that length: OVQ, SWA and linear states are fixed by
configuration; a `full`/`nope` layer holds a KV cache of every token seen. Output: a dict (JSON), a
markdown table, and optionally a PNG plot (matplotlib, the `plot` extra).
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.attention import WindowState
from agent.checkpoint import load_model
from agent.evaluate import evaluate_recall
from agent.tasks import make_task


def state_bytes_at(states: list, tokens: int) -> int:
    """Bytes of streaming state after `tokens` tokens, from a model's fresh layer states: a bounded
    (full-attention) layer's cache is allocated at its bound but holds min(tokens, bound) rows, so
    count those; the rest is fixed."""
    return sum(
        s.nbytes * min(tokens, s.window) // s.window if isinstance(s, WindowState) and s.bounded else s.nbytes
        for s in states
    )


def compare(
    models: Sequence[str],
    task: str,
    preset: str,
    lengths: Sequence[int],
    n: int = 10,
    seed: int = 10**6,
    length_field: str = "target_chars",
) -> dict:
    """Recall of each model directory at each length (values of `length_field`); the same examples
    for all models."""
    if not models:
        raise ValueError("give at least one model directory")
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths must be positive integers, got {list(lengths)}")
    make_task(task, preset, **{length_field: lengths[0]})  # a task without that field fails here, named
    rows = []
    for path in models:
        loaded = load_model(path)
        model, cfg = loaded.model, loaded.model.config
        states = model.init_state(1).layers  # allocated once per model, for its byte counts
        results = []
        for length in lengths:
            r = evaluate_recall(model, loaded.tokenizer, task, preset, n, seed, **{length_field: length})
            results.append(
                {
                    "length": length,
                    "tokens": r["max_tokens"],
                    "exact_match": r["exact_match"],
                    "token_accuracy": r["token_accuracy"],
                    "answers": r["answers"],
                    "state_bytes": state_bytes_at(states, r["max_tokens"]),
                    "by_distance_tokens": r["by_distance_tokens"],
                    **({"by_chunk_updates": r["by_chunk_updates"]} if "by_chunk_updates" in r else {}),
                }
            )
        rows.append(
            {
                "model": str(path),
                "layers": cfg.layers,
                "params": model.num_params(),
                "fingerprint": loaded.fingerprint,
                "results": results,
            }
        )
    return {
        "task": task, "preset": preset, "examples": n, "seed": seed, "length_field": length_field,
        "lengths": list(lengths), "models": rows,
    }  # fmt: skip


def to_markdown(result: dict) -> str:
    """One row per model: exact match (and, in brackets, answer-token accuracy) at each length."""
    lengths = result["lengths"]
    unit = "ch" if result.get("length_field", "target_chars") == "target_chars" else result["length_field"]
    head = ["model", "layers", "params"] + [f"{c:,} {unit}" for c in lengths] + ["state at longest"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for m in result["models"]:
        accs = [f"{r['exact_match']:.1%} ({r['token_accuracy']:.0%})" for r in m["results"]]
        last = m["results"][-1]
        state = f"{last['state_bytes'] / 1024:,.0f} KiB ({last['tokens']:,} tokens)"
        lines.append("| " + " | ".join([m["model"], m["layers"], f"{m['params']:,}", *accs, state]) + " |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    """Recall against test length, one line per model (needs matplotlib: pip install 'ovq[plot]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ValueError("--plot needs matplotlib: pip install 'ovq[plot]' (or matplotlib)") from e
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in result["models"]:
        xs = [r["tokens"] for r in m["results"]]
        (line,) = ax.plot(xs, [r["exact_match"] for r in m["results"]], marker="o", label=f"{m['layers']}")
        ax.plot(xs, [r["token_accuracy"] for r in m["results"]], linestyle="--", color=line.get_color())
    ax.set_xscale("log", base=2)
    ax.set_xlabel("test length (tokens)")
    ax.set_ylabel("recall (solid: exact match, dashed: answer tokens)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{result['task']}@{result['preset']}, {result['examples']} examples per length")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""`ovq eval compare`: several models on one task at several test lengths, side by side.

For each model and each length (by default the task's `target_chars`; any integer field of the task
config, e.g. ICL's `examples_per_function`), exact-match recall over the same fresh examples, and the
bytes of state the model holds at that length: OVQ, SWA and linear states are fixed by
configuration; a `full`/`nope` layer holds a KV cache of every token seen. Output: a dict (JSON), a
markdown table, and optionally a PNG plot (matplotlib, the `plot` extra).

Seeds: a model given as `LABEL=DIR` is labelled; models that share a label are seeds of one recipe,
and the table gains one summary row per such label (mean over seeds, min-max in brackets). Results
evaluated at different times merge with `merge` when they were run on the same examples.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from statistics import mean

from ovq.agent.eval.recall import evaluate_recall
from ovq.agent.model.attention import WindowState
from ovq.agent.model.checkpoint import load_model
from ovq.agent.tasks import make_task


def state_bytes_at(states: list, tokens: int) -> int:
    """Bytes of streaming state after `tokens` tokens, from a model's fresh layer states: a bounded
    (full-attention) layer's cache is allocated at its bound but holds min(tokens, bound) rows, so
    count those; the rest is fixed."""
    return sum(
        s.nbytes * min(tokens, s.window) // s.window if isinstance(s, WindowState) and s.bounded else s.nbytes
        for s in states
    )


def _label(m: dict) -> str:
    """A model row's label; rows written before labels existed are labelled by their directory."""
    return m.get("label", m["model"])


def _state_cell(r: dict) -> str:
    return f"{r['state_bytes'] / 1024:,.0f} KiB ({r['tokens']:,} tokens)"


def parse_model(spec: str) -> tuple[str, str]:
    """`LABEL=DIR` -> (LABEL, DIR); a bare DIR is its own label. A label holds no path separator, so
    a directory whose name contains '=' still parses as a bare DIR."""
    label, sep, path = spec.partition("=")
    if sep and label and os.sep not in label:
        if not path:
            raise ValueError(f"model {spec!r}: LABEL=DIR needs a directory after '='")
        return label, path
    return spec, spec


def compare(
    models: Sequence[str],
    task: str,
    preset: str,
    lengths: Sequence[int],
    n: int = 10,
    seed: int = 10**6,
    length_field: str = "target_chars",
) -> dict:
    """Recall of each model (a directory, or `LABEL=DIR`) at each length (values of `length_field`);
    the same examples for all models."""
    if not models:
        raise ValueError("give at least one model directory")
    if not lengths or min(lengths) < 1:
        raise ValueError(f"lengths must be positive integers, got {list(lengths)}")
    make_task(task, preset, **{length_field: lengths[0]})  # a task without that field fails here, named
    rows = []
    for spec in models:
        label, path = parse_model(spec)
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
                "label": label,
                "layers": cfg.layers,
                "params": model.num_params(),
                "fingerprint": loaded.fingerprint,
                "results": results,
            }
        )
    result = {
        "task": task, "preset": preset, "examples": n, "seed": seed, "length_field": length_field,
        "lengths": list(lengths), "models": rows,
    }  # fmt: skip
    return {**result, "groups": groups(result)}


_SAME_EXAMPLES = ("task", "preset", "examples", "seed", "length_field", "lengths")


def merge(results: Sequence[dict]) -> dict:
    """One comparison from several run on the same examples (task, preset, n, seed and lengths
    equal); models keep their order. Results written before labels existed label each model by its
    directory."""
    if not results:
        raise ValueError("nothing to merge")
    results = [{"length_field": "target_chars", **r} for r in results]  # older files lack the field
    first = results[0]
    for i, r in enumerate(results[1:], start=2):
        for key in _SAME_EXAMPLES:
            if r.get(key) != first.get(key):
                raise ValueError(
                    f"result {i} was evaluated with {key}={r.get(key)!r}, result 1 with "
                    f"{key}={first.get(key)!r}: only results on the same examples merge"
                )
    rows = [{**m, "label": _label(m)} for r in results for m in r["models"]]
    merged = {**{k: first[k] for k in _SAME_EXAMPLES if k in first}, "models": rows}
    return {**merged, "groups": groups(merged)}


def groups(result: dict) -> list[dict]:
    """Per label shared by two or more models (seeds of one recipe): mean, min and max over the
    seeds of exact match and answer-token accuracy at each length, and the largest state."""
    by_label: dict[str, list[dict]] = {}
    for m in result["models"]:
        by_label.setdefault(_label(m), []).append(m)
    out = []
    for label, members in by_label.items():
        if len(members) < 2:
            continue
        per_length = []
        for i, length in enumerate(result["lengths"]):
            em = [m["results"][i]["exact_match"] for m in members]
            ta = [m["results"][i]["token_accuracy"] for m in members]
            per_length.append(
                {
                    "length": length,
                    "exact_match_mean": mean(em), "exact_match_min": min(em), "exact_match_max": max(em),
                    "token_accuracy_mean": mean(ta),
                    "state_bytes": max(m["results"][i]["state_bytes"] for m in members),
                    "tokens": members[0]["results"][i]["tokens"],
                }
            )  # fmt: skip
        layers = " / ".join(sorted({m["layers"] for m in members}))
        out.append({"label": label, "seeds": len(members), "layers": layers, "results": per_length})
    return out


def to_markdown(result: dict) -> str:
    """One row per model: exact match (and, in brackets, answer-token accuracy) at each length; then,
    for labels shared by several models, one row per label: the mean over its seeds and, in
    brackets, the lowest and highest seed."""
    lengths = result["lengths"]
    unit = "ch" if result.get("length_field", "target_chars") == "target_chars" else result["length_field"]
    head = ["model", "layers", "params"] + [f"{c:,} {unit}" for c in lengths] + ["state at longest"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for m in result["models"]:
        accs = [f"{r['exact_match']:.1%} ({r['token_accuracy']:.0%})" for r in m["results"]]
        name = m["model"] if _label(m) == m["model"] else f"{m['label']}: {m['model']}"
        cells = [name, m["layers"], f"{m['params']:,}", *accs, _state_cell(m["results"][-1])]
        lines.append("| " + " | ".join(cells) + " |")
    summary = result.get("groups") or groups(result)
    if summary:
        head = ["recipe", "layers", "seeds"] + [f"{c:,} {unit}" for c in lengths] + ["state at longest"]
        lines += ["", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for g in summary:
            accs = [
                f"{r['exact_match_mean']:.1%} ({r['exact_match_min']:.1%}-{r['exact_match_max']:.1%})"
                for r in g["results"]
            ]
            cells = [g["label"], g["layers"], str(g["seeds"]), *accs, _state_cell(g["results"][-1])]
            lines.append("| " + " | ".join(cells) + " |")
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
        (line,) = ax.plot(xs, [r["exact_match"] for r in m["results"]], marker="o", label=_label(m))
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

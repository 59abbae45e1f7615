"""The `ovq` command line."""

from __future__ import annotations

import argparse
import sys

from agent import __version__


def _chat(args: argparse.Namespace) -> int:
    print(
        "ovq chat: not available yet. The terminal chat needs the hybrid model and its shipped default\n"
        "weights (agent/), the Session runtime and the Textual app (tui/), which are not built yet.\n"
        "What works today: the OVQ memory layer (`import memory`) and `ovq bench memory`.",
        file=sys.stderr,
    )
    return 2


def _train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from agent.train import TrainConfig, train

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    try:
        config = TrainConfig(**values)
    except ValueError as e:
        print(f"ovq train: {e}", file=sys.stderr)
        return 2
    out = train(config)
    print(f"model written to {out}")
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from dataclasses import MISSING, fields

    from agent.train import TrainConfig

    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=f"(default {f.default})"
            )
            continue
        kind = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
        default = None if f.default is MISSING else f.default
        p.add_argument(flag, dest=f.name, type=kind, default=None, help=f"(default {default})")


def _eval(args: argparse.Namespace) -> int:
    import json

    from agent.checkpoint import load_model
    from agent.evaluate import evaluate_recall

    if args.model is None:
        print(
            "ovq eval: no default model is shipped yet; pass --model DIR (a directory from `ovq train`)",
            file=sys.stderr,
        )
        return 2
    try:
        loaded = load_model(args.model)
        result = evaluate_recall(loaded.model, loaded.tokenizer, args.task, args.preset, args.n, args.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"ovq eval: {e}", file=sys.stderr)
        return 2
    text = json.dumps({"model": str(loaded.path), "fingerprint": loaded.fingerprint, **result}, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


def _probe(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from agent.probes import load_suite
    from agent.session import Runtime

    try:
        suite = load_suite(args.suite)
        runtime = Runtime.load(args.model, args.store)
        session = runtime.session(args.session)
    except (FileNotFoundError, ValueError) as e:
        print(f"ovq probe: {e}", file=sys.stderr)
        return 2
    report = session.probe(suite)
    table = Table(title=f"{report.suite}: {report.accuracy:.0%} (threshold {report.threshold:.0%})")
    for col in ("fact", "distance", "expected", "answered", "hit"):
        table.add_column(col, overflow="fold")
    for r in report.results:
        table.add_row(r.fact, str(r.distance), r.expected, r.answered, "yes" if r.hit else "no")
    Console(stderr=bool(args.json == "-")).print(table)
    if args.json:
        text = json.dumps(report.to_dict(), indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0 if report.passed else 1


def _bench(args: argparse.Namespace) -> int:
    if args.suite == "memory":
        from memory import bench
    else:
        from kernels import bench
    bench.main(args.rest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ovq",
        description="Streaming continual-memory runtime: a hybrid SWA + OVQ model with bounded memory.",
    )
    p.add_argument("--version", action="version", version=f"ovq {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    chat = sub.add_parser("chat", help="chat in the terminal (Textual UI) on the default model")
    chat.add_argument("--session", default="default", help="session name (resumed if it exists)")
    chat.add_argument("--model", help="model directory (default: the shipped model)")
    chat.add_argument("--store", help="snapshot store path (default: the user data directory)")
    chat.set_defaults(func=_chat)

    train = sub.add_parser(
        "train",
        help="train a hybrid model on the task mix (resumes if OUT holds a checkpoint)",
        description="Train a model; run under `torchrun --nproc-per-node N` for several GPUs or processes.",
    )
    _add_train_args(train)
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="evaluate a model: exact-match recall by distance in tokens")
    ev.add_argument("what", choices=["recall"], help="recall: answers of fresh task examples")
    ev.add_argument("--model", help="model directory (from `ovq train`)")
    ev.add_argument("--task", default="memory_dialogue", help="icr | positional_icr | icl | memory_dialogue")
    ev.add_argument("--preset", default="default", help="task preset (e.g. default, train_4k, test_64k)")
    ev.add_argument("--n", type=int, default=20, help="examples")
    ev.add_argument("--seed", type=int, default=10**6, help="first example seed (training uses others)")
    ev.add_argument("--json", help="also write the result to this file")
    ev.set_defaults(func=_eval)

    probe = sub.add_parser(
        "probe",
        help="run a recall probe suite on a fork of a session (exit 1 below the suite's threshold)",
    )
    probe.add_argument("suite", help="a suite TOML file, or a shipped suite name (e.g. basic)")
    probe.add_argument("--model", help="model directory (default: the shipped model)")
    probe.add_argument("--session", default="default", help="session to fork (a fresh one if new)")
    probe.add_argument("--store", help="snapshot store (default: $OVQ_STORE or the user data directory)")
    probe.add_argument("--json", help="write the report as JSON to this file ('-' for stdout)")
    probe.set_defaults(func=_probe)

    bench = sub.add_parser("bench", help="benchmarks, printed as JSON")
    bench.add_argument(
        "suite",
        choices=["memory", "kernels"],
        help="memory: the OVQ op vs full attention; kernels: chunk read vs SDPA, fold share of a chunk step",
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the suite (see its --help)")
    bench.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

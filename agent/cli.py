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


def _bench(args: argparse.Namespace) -> int:
    if args.suite == "memory":
        from memory import bench

        bench.main(args.rest)
        return 0
    raise AssertionError(args.suite)  # argparse restricts choices


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

    bench = sub.add_parser("bench", help="benchmarks, printed as JSON")
    bench.add_argument("suite", choices=["memory"], help="memory: the OVQ op vs full attention")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the suite (see its --help)")
    bench.set_defaults(func=_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

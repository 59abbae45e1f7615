"""Options shared by several verbs, declared once.

`--model`, `--store` and `--session` are accepted before the verb (`ovq --store D snapshots list`),
between a verb and its action (`ovq snapshots --store D list`) and after the action
(`ovq snapshots list --store D`), with the same meaning: each place declares them with a suppressed
default, so a later place overrides an earlier one only when the user typed it, and `finish` fills in
the verb's defaults afterwards.
"""

from __future__ import annotations

import argparse

COMMON_HELP = {
    "model": "model: a directory from `ovq train`, or a shipped model's name (default: the shipped model)",
    "store": "snapshot store path (default: $OVQ_STORE or the user data directory)",
    "session": "session name (resumed if it exists)",
}


def add_common(parser: argparse.ArgumentParser, defaults: dict[str, object], **help: str) -> None:
    """Declare the common options named in `defaults` on `parser` (a verb or an action) and remember
    the verb's default for each; `help` overrides the generic text of an option."""
    for name in defaults:
        parser.add_argument(f"--{name}", default=argparse.SUPPRESS, help=help.get(name, COMMON_HELP[name]))
    parser.set_defaults(_common=defaults)


def add_global(parser: argparse.ArgumentParser) -> None:
    """The same options before the verb."""
    for name, text in COMMON_HELP.items():
        parser.add_argument(
            f"--{name}", default=argparse.SUPPRESS, help=text + " (also accepted after the verb)"
        )


def finish(parser: argparse.ArgumentParser, args: argparse.Namespace, verb: str) -> argparse.Namespace:
    """Fill in the defaults of the common options the verb takes; refuse one it does not take."""
    takes: dict[str, object] = getattr(args, "_common", {})
    for name in COMMON_HELP:
        if name not in takes and hasattr(args, name):
            parser.error(f"ovq {verb} does not take --{name}")
    for name, default in takes.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    return args


def add_capacity_option(parser: argparse.ArgumentParser) -> None:
    """--capacity, for every command that loads a model (here and in `ovq bench`)."""
    parser.add_argument(
        "--capacity",
        type=int,
        help="OVQ dictionary slots per head, replacing the model's own (more: longer recall, bigger state; "
        "sessions resume only at the N that saved them)",
    )


def add_retrofit_option(parser: argparse.ArgumentParser) -> None:
    """--retrofit, for every command that loads a model (pretrained checkpoints only)."""
    parser.add_argument(
        "--retrofit",
        help="a pretrained model's bounded memory: memory (default), streaming (sinks + window only), full "
        "(no bound, up to its context), or key=value,... over the default (e.g. window=1024,capacity=4096)",
    )


def with_example(text: str) -> dict:
    """Keyword arguments for a parser whose help ends with a realistic example."""
    return {"epilog": f"example:\n  {text}", "formatter_class": argparse.RawDescriptionHelpFormatter}

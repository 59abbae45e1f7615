"""The `ovq` command line."""

from __future__ import annotations

import argparse
import os
import sys

from ovq import __version__
from ovq.agent.cli.options import (
    add_capacity_option,
    add_common,
    add_global,
    add_retrofit_option,
    finish,
    with_example,
)


def _chat(args: argparse.Namespace) -> int:
    from ovq.tui.app import run

    try:
        return run(
            args.model,
            args.store,
            args.session,
            capacity=args.capacity,
            retrofit=args.retrofit,
            autosave_tokens=args.autosave_tokens,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            **({} if args.repeat_penalty is None else {"repeat_penalty": args.repeat_penalty}),
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"ovq chat: {e}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from ovq.agent.train.config import TrainConfig
    from ovq.agent.train.trainer import train

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    try:  # options, a shape the model refuses, or a run whose saved state disagrees: one line, exit 2
        out = train(TrainConfig(**values))
    except (FileNotFoundError, ValueError) as e:
        print(f"ovq train: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns here
        print(f"model written to {out}")
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from dataclasses import MISSING, fields

    from ovq.agent.train.config import HELP, TrainConfig  # torch-free: every `ovq` command builds this parser

    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{HELP[f.name]} (default {f.default})",
            )
            continue
        kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
        default = None if f.default is MISSING else f.default
        p.add_argument(flag, dest=f.name, type=kind, default=None, help=f"{HELP[f.name]} (default {default})")


def _eval(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ovq.agent.eval.recall import evaluate_recall
    from ovq.agent.model.checkpoint import load_model

    # flags shared with the ladder, whose defaults differ: None unless typed
    for name, default in (LADDER_DEFAULTS if args.what == "ladder" else EVAL_DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    try:
        n, seed = _int_list("--n", args.n), _int_list("--seed", args.seed)
        if min(n) < 1:
            raise ValueError(f"--n must be >= 1, got {args.n}")
        if args.what == "chat":
            args.n, args.seed = n[0], seed[0]
            return _eval_chat(args)
        if args.what == "ladder":
            if len(n) > 1 or len(seed) > 1:
                raise ValueError("ladder takes one --n and one --seed")
            args.n, args.seed = n[0], seed[0]
            return _eval_ladder(args)
        if args.what == "compare":
            if len(n) > 1 or len(seed) > 1:
                raise ValueError("compare takes one --n and one --seed")
            if args.capacity is not None:
                raise ValueError("--capacity applies to recall's --model, not to compare's --models")
            args.n, args.seed = n[0], seed[0]
            return _eval_compare(args)
        loaded = load_model(args.model, capacity=args.capacity)
        console = Console(stderr=True)  # stdout carries the JSON
        columns = (TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
            task = bar.add_task("eval", total=None)
            result = evaluate_recall(
                loaded.model, loaded.tokenizer, args.task, args.preset, n[0] if len(n) == 1 else n, seed,
                on_example=lambda done, total: bar.update(task, completed=done, total=total),
            )  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        print(f"ovq eval: {e}", file=sys.stderr)
        return 2
    text = json.dumps({"model": str(loaded.path), "fingerprint": loaded.fingerprint, **result}, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


def _eval_compare(args: argparse.Namespace) -> int:

    from ovq.agent.eval.compare import compare, merge, plot, to_markdown

    try:
        if not (args.models or args.merge):
            raise ValueError("compare needs --models DIR,DIR,... and --lengths N,N,... (or --merge FILE,...)")
        earlier = [_read_compare_json(f.strip()) for f in (args.merge or "").split(",") if f.strip()]
        results = []
        if args.models:
            if not args.lengths:
                raise ValueError("compare needs --lengths N,N,... with --models")
            try:
                lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
            except ValueError:
                raise ValueError(
                    f"--lengths must be comma-separated integers, got {args.lengths!r}"
                ) from None
            models = [m.strip() for m in args.models.split(",") if m.strip()]
            results.append(
                compare(models, args.task, args.preset, lengths, args.n, args.seed, args.length_field)
            )
        result = merge(earlier + results) if earlier else results[0]
        if args.plot:
            plot(result, args.plot)
    except (FileNotFoundError, ValueError) as e:
        print(f"ovq eval: {e}", file=sys.stderr)
        return 2
    return _report(args, result, to_markdown(result))


def _report(args: argparse.Namespace, result: dict, table: str) -> int:
    """A side-by-side result: JSON to --json, the markdown table to --markdown and to stdout."""
    import json

    if args.json:
        with open(args.json, "w") as f:
            f.write(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    print(table, end="")
    return 0


def _eval_chat(args: argparse.Namespace) -> int:
    """Chat recall of one model under several memory settings, side by side (agent/eval/chat_recall.py)."""
    import tempfile

    from ovq.agent.eval.chat_recall import load_fact_set, plot, run_recall, to_markdown
    from ovq.agent.eval.long_stream import agreement, greedy_replies, long_text, perplexity_by_position
    from ovq.agent.eval.long_stream import to_markdown as long_markdown
    from ovq.agent.model.names import resolve_model_path
    from ovq.agent.model.pretrained.memory_read import is_adapter_dir
    from ovq.agent.runtime.session import Runtime, Session

    try:  # a tuned memory reading is measured with the settings it was tuned for ('tuned')
        tuned = is_adapter_dir(resolve_model_path(args.model))
        default = "full;streaming;tuned" if tuned else "full;streaming;memory"
        retrofits = [r.strip() for r in (args.retrofits or default).split(";") if r.strip()]
        distances = _int_list("--distances", args.distances)
        facts = load_fact_set(args.set)
        results = {}
        with tempfile.TemporaryDirectory() as store:
            for spec in retrofits:
                own = tuned and spec == "tuned"  # None: the adapter's own settings
                runtime = Runtime.load(args.model, store, retrofit=None if own else spec)
                tok = runtime.tokenizer
                plans = getattr(runtime.model.config, "plans", None)
                full = plans is not None and plans[0].kind == "full"
                context = runtime.model.config.llama.max_context if full else None

                def fresh(runtime=runtime):  # a stream of its own, kept by nothing once its bucket is done
                    return Session(runtime, "eval", persist=False)

                def progress(p: dict, spec=spec) -> None:
                    if not args.quiet:
                        print(f"[{spec}] {p}", file=sys.stderr, flush=True)

                results[spec] = run_recall(
                    fresh, lambda text, tok=tok: len(tok.encode(text)), facts, distances,
                    facts_per_distance=args.n, seed=args.seed, max_tokens=args.max_tokens,
                    on_progress=progress, max_context=context, acknowledge=False, filler=args.filler,
                    one_per_stream=args.one_per_stream,
                )  # fmt: skip
                results[spec]["state_bytes"] = fresh().state.nbytes
                if args.perplexity:  # full attention reads at most its context, less a system prompt
                    # (long_text measures the text as it is fed: tokenised whole, apart from the prompt)
                    room = context - len(tok.encode(runtime.model.config.chat.preamble)) if context else None
                    tokens = min(args.perplexity, room) if room else args.perplexity
                    text = long_text(lambda t, tok=tok: len(tok.encode(t)), tokens, args.seed)
                    results[spec]["perplexity"] = perplexity_by_position(fresh(), text)
                    progress({"perplexity": results[spec]["perplexity"]})
                if args.agreement:
                    results[spec]["replies"] = greedy_replies(fresh)
            if args.agreement and "full" in results:
                for r in results.values():
                    r["agreement"] = agreement(r["replies"], results["full"]["replies"])
        if args.plot:
            plot(results, args.plot)
    except (FileNotFoundError, ValueError) as e:
        print(f"ovq eval chat: {e}", file=sys.stderr)
        return 2
    return _report(args, results, to_markdown(results) + "\n" + long_markdown(results))


EVAL_DEFAULTS = {"n": "20", "distances": "512,2048,7168,32768", "max_tokens": 32}
LADDER_DEFAULTS = {"n": "40", "distances": "0,2048,4096,7168,16384,32768,102400", "max_tokens": 24}
LADDER_SETTINGS = "smollm2:full;smollm2:streaming;smollm2:memory;smollm2-tuned:tuned;smollm2-recall:tuned"


def _eval_ladder(args: argparse.Namespace) -> int:
    """The recall ladder: easy facts at rungs from 0 to 100k tokens and the hard tier, for MODEL:RETROFIT
    settings side by side (agent/eval/ladder.py). Each setting's model loads when its turn comes."""
    import tempfile

    from ovq.agent.eval.ladder import LadderConfig, Setting, plot, run_ladder, to_markdown
    from ovq.agent.model.tokenizer import MARKERS
    from ovq.agent.runtime.session import Runtime, Session

    def progress(label: str, event: dict) -> None:
        if not args.quiet:
            print(f"[{label}] {event}", file=sys.stderr, flush=True)

    try:
        if args.model is not None or args.capacity is not None:
            raise ValueError(
                "ladder names its models in --settings (MODEL:RETROFIT), not --model or --capacity"
            )
        settings = _ladder_settings(args.settings or LADDER_SETTINGS)
        tiers = tuple(t.strip() for t in args.tiers.split(",") if t.strip())
        rungs = tuple(_int_list("--distances", args.distances))
        config = LadderConfig(tiers, rungs, n=args.n, seed=args.seed, max_tokens=args.max_tokens)
        with tempfile.TemporaryDirectory() as store:

            def loader(model: str, retrofit: str | None):
                def load() -> Setting:
                    runtime = Runtime.load(model, store, retrofit=retrofit)
                    tok, chat = runtime.tokenizer, runtime.model.config.chat
                    plans = getattr(runtime.model.config, "plans", None)
                    full = plans is not None and plans[0].kind == "full"

                    def fresh() -> Session:  # kept by nothing once its stream or episode is done
                        return Session(runtime, "eval", persist=False)

                    return Setting(
                        fresh,
                        lambda role, text: len(tok.encode(chat.turn(f"<|{role}|>", text))),
                        lambda text: len(tok.encode(text)),
                        max_context=runtime.model.config.llama.max_context if full else None,
                        preamble_tokens=len(tok.encode(chat.preamble)) if chat.preamble else 0,
                        template=(tok.fingerprint, chat.preamble, *(chat.turn(m, "") for m in MARKERS)),
                        state_bytes=fresh().state.nbytes,
                    )

                return load

            loaders = {label: loader(model, retrofit) for label, (model, retrofit) in settings.items()}
            result = run_ladder(loaders, config, progress)
            quality = (
                _ladder_quality(settings, store, args, result) if args.perplexity or args.agreement else ""
            )
        if args.plot:
            plot(result, args.plot)
    except (FileNotFoundError, ValueError) as e:
        print(f"ovq eval ladder: {e}", file=sys.stderr)
        return 2
    return _report(args, result, to_markdown(result) + quality)


def _ladder_quality(settings: dict, store: str, args: argparse.Namespace, result: dict) -> str:
    """What remembering must not cost, per setting: perplexity of long text by position (--perplexity)
    and greedy replies to ordinary messages (--agreement), compared word for word and by per-token KL
    with the first full-attention setting's (the base model), which runs first. Adds "perplexity",
    "replies", "agreement" and "reply_kl" to each setting's result; returns a markdown table."""
    from ovq.agent.eval.long_stream import (
        MESSAGES,
        agreement,
        greedy_replies,
        long_text,
        perplexity_by_position,
        reply_kl,
    )
    from ovq.agent.eval.long_stream import to_markdown as long_markdown
    from ovq.agent.runtime.session import Runtime, Session

    order = sorted(settings, key=lambda label: settings[label][1] != "full")  # the reference first
    reference = None
    for label in order:
        model, retrofit = settings[label]
        runtime = Runtime.load(model, store, retrofit=retrofit)
        tok, chat = runtime.tokenizer, runtime.model.config.chat
        full = runtime.model.config.plans[0].kind == "full"
        entry = result["settings"][label]

        def fresh(runtime=runtime) -> Session:
            return Session(runtime, "eval", persist=False)

        if args.perplexity:  # full attention reads at most its context, less the system prompt
            room = runtime.model.config.llama.max_context - len(tok.encode(chat.preamble)) if full else None
            tokens = min(args.perplexity, room) if room else args.perplexity
            text = long_text(lambda t, tok=tok: len(tok.encode(t)), tokens, args.seed)
            entry["perplexity"] = perplexity_by_position(fresh(), text)
        if args.agreement:
            entry["replies"] = greedy_replies(fresh)
            if reference is None and full:
                reference = (label, runtime.model, entry["replies"])
            if reference is not None:
                entry["agreement"] = {**agreement(entry["replies"], reference[2]), "with": reference[0]}
                entry["reply_kl"] = {
                    **reply_kl(runtime.model, reference[1], tok, chat, MESSAGES, reference[2]),
                    "with": reference[0],
                }
    table = long_markdown(result["settings"])
    kl = [
        f"{label}: {r['reply_kl']['kl_per_token']}"
        for label, r in result["settings"].items()
        if "reply_kl" in r
    ]
    if kl:
        table += f"\nPer-token KL from {reference[0]} on its own replies (nats): " + ", ".join(kl) + "\n"
    return "\n" + table


def _ladder_settings(text: str) -> dict[str, tuple[str, str | None]]:
    """--settings: label -> (model, retrofit), the retrofit None for a tuned model's own ('tuned').
    Checked before any model loads: a typo in the last setting must not cost the first ones' runs."""
    from ovq.agent.model.names import resolve_model_path
    from ovq.agent.model.pretrained.memory_read import is_adapter_dir
    from ovq.agent.model.pretrained.retrofit import parse_retrofit

    settings: dict[str, tuple[str, str | None]] = {}
    for spec in filter(None, (s.strip() for s in text.split(";"))):
        # split at the last ':': a model's path may hold one, a retrofit value never does
        model, sep, retrofit = (x.strip() for x in spec.rpartition(":"))
        if not sep or not model or not retrofit:
            raise ValueError(
                f"--settings: each setting is MODEL:RETROFIT (e.g. smollm2:memory), got {spec!r}"
            )
        path = resolve_model_path(model)
        if not path.exists():
            raise ValueError(f"--settings: no model {model!r} (a shipped model's name or a path)")
        if retrofit == "tuned":
            if not is_adapter_dir(path):
                raise ValueError(
                    f"--settings: {spec!r}: 'tuned' is a tuned model's own settings; {model} is not one"
                )
            retrofit = None
        else:
            parse_retrofit(retrofit)
        if spec in settings:
            raise ValueError(f"--settings: {spec!r} is given twice")
        settings[spec] = (model, retrofit)
    if not settings:
        raise ValueError("--settings: no setting given (MODEL:RETROFIT;...)")
    return settings


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"{flag} must be an integer or comma-separated integers, got {text!r}")
    return values


def _read_compare_json(path: str) -> dict:
    import json

    try:
        with open(path) as f:
            result = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"--merge: no such file {path!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"--merge: {path} is not JSON ({e})") from None
    if not isinstance(result, dict) or not {"models", "lengths", "task"} <= result.keys():
        raise ValueError(f"--merge: {path} is not a result of `ovq eval compare --json`")
    return result


def _probe(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from ovq.agent.eval.probes import load_suite
    from ovq.agent.runtime.session import Runtime

    try:
        suite = load_suite(args.suite)
        runtime = Runtime.load(args.model, args.store, capacity=args.capacity, retrofit=args.retrofit)
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


FEED_BLOCK_CHARS = 16_384  # read at a time: the progress bar's byte count moves at least this often


def _feed(args: argparse.Namespace) -> int:
    import io
    import os

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TransferSpeedColumn

    from ovq.agent.runtime.session import Runtime

    if args.save_every < 1:
        print(f"ovq feed: --save-every must be >= 1, got {args.save_every}", file=sys.stderr)
        return 2
    try:
        runtime = Runtime.load(args.model, args.store, capacity=args.capacity, retrofit=args.retrofit)
        session = runtime.session(args.session)
        raw = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"ovq feed: {e}", file=sys.stderr)
        return 2
    size = None if args.file == "-" else os.path.getsize(args.file)
    # invalid UTF-8 is replaced, never fatal; reading in blocks keeps memory constant for any input
    text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
    columns = (
        TextColumn("feed"),
        BarColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[tokens]:,} tokens"),
    )
    fed = 0  # tokens fed by the blocks before the current one
    last_save = session.tokens_seen
    # stderr: stdout carries the result line; one line per save tells where a killed feed can resume
    with raw, Progress(*columns, console=Console(stderr=True), disable=args.quiet) as bar:
        task = bar.add_task("feed", total=size, tokens=0)

        def after_forward(n: int) -> None:  # n: tokens of the current block fed so far
            nonlocal last_save
            bar.update(task, tokens=fed + n)
            if session.tokens_seen - last_save >= args.save_every:  # within one forward of the interval
                info = session.save()
                last_save = session.tokens_seen
                if not args.quiet:
                    bar.console.print(f"saved snapshot {info.id} at {last_save} tokens")

        while block := text.read(FEED_BLOCK_CHARS):
            fed += session.feed(block, role=args.role, on_forward=after_forward)
            bar.update(task, completed=raw.tell() if size else None, tokens=fed)
    if fed == 0:
        print("ovq feed: the input was empty; nothing was fed", file=sys.stderr)
        return 2
    if session.tokens_seen != last_save or args.label or session.snapshot_id is None:
        session.save(label=args.label)
    total = session.tokens_seen
    print(f"fed {fed:,} tokens into {session.name!r} ({total:,} in all); snapshot {session.snapshot_id}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import ipaddress
    from pathlib import Path

    from ovq.agent.model.names import DEFAULT_MODEL
    from ovq.agent.runtime.session import Runtime
    from ovq.agent.server.app import ServeConfig, serve

    key = args.api_key if args.api_key is not None else os.environ.get("OVQ_API_KEY") or None
    try:
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must lie in [0, 65535], got {args.port}")
        config = ServeConfig(
            api_key=key,
            max_concurrent=args.max_concurrent,
            max_body_bytes=args.max_body_mib << 20,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
            model_id=Path(args.model or DEFAULT_MODEL).name,
        )
        runtime = Runtime.load(args.model, args.store, capacity=args.capacity, retrofit=args.retrofit)
    except (FileNotFoundError, ValueError) as e:
        print(f"ovq serve: {e}", file=sys.stderr)
        return 2
    try:
        loopback = args.host == "localhost" or ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if key is None and not loopback:
        print(f"ovq serve: warning: {args.host} without --api-key: whoever reaches this port can read and "
              "write every session", file=sys.stderr)  # fmt: skip
    print(f"ovq serve: model {config.model_id}, sessions in {runtime.store.path} (a request's `user` "
          "names its session)", file=sys.stderr)  # fmt: skip
    serve(runtime, config, args.host, args.port)
    return 0


def _snapshots(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from ovq.agent.runtime.persist import default_store_path
    from ovq.snapshots import SnapshotError
    from ovq.snapshots.store import SnapshotStore

    store = SnapshotStore(args.store or default_store_path())
    try:
        if args.action == "list":
            rows = store.list(args.session)
            for info in rows:
                label = f"  [{info.label}]" if info.label else ""
                size = f"{info.tokens_seen:>12,} tokens  {info.nbytes:>12,} B"
                print(f"{info.id:>6}  {info.session:<24} {size}{label}")
            if not rows:
                print("no snapshots", file=sys.stderr)
        elif args.action == "show":
            print(json.dumps(asdict(store.show(args.id)), indent=2, default=str))
        elif args.action == "export":
            print(store.export(args.id, args.path))
        elif args.action == "import":
            info = store.import_(args.path, session=args.session)
            print(f"imported as snapshot {info.id} of session {info.session!r}")
        elif args.action == "rm":
            store.delete(args.id)
            freed = store.gc()
            print(
                f"deleted snapshot {args.id}; freed {freed.blobs_removed} blobs ({freed.bytes_freed:,} bytes)"
            )
    except (SnapshotError, KeyError, OSError) as e:
        print(f"ovq snapshots: {e}", file=sys.stderr)
        return 2
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.suite == "serve":
        from ovq.agent.server import bench as serve_bench

        try:
            serve_bench.main(args.rest)
        except (FileNotFoundError, ValueError) as e:
            print(f"ovq bench serve: {e}", file=sys.stderr)
            return 2
        return 0
    if args.suite in ("session", "snapshots", "speed"):
        from ovq.agent.cli import bench as runtime_bench

        try:
            runtime_bench.main(args.suite, args.rest)
        except (FileNotFoundError, ValueError) as e:
            print(f"ovq bench {args.suite}: {e}", file=sys.stderr)
            return 2
        return 0
    if args.suite == "memory":
        from ovq.memory import bench
    else:
        from ovq.kernels import bench
    bench.main(args.rest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ovq",
        description="Streaming continual-memory runtime: a hybrid SWA + OVQ model with bounded memory.",
        **with_example("ovq chat --session trip-planning"),
    )
    p.add_argument("--version", action="version", version=f"ovq {__version__}")
    add_global(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    session = {"model": None, "store": None, "session": "default"}

    chat = sub.add_parser(
        "chat",
        help="chat in the terminal (Textual UI); default model: SmolLM2-135M-Instruct, bounded memory",
        **with_example("ovq chat --session trip-planning --temperature 0.7"),
    )
    add_common(chat, session)
    add_capacity_option(chat)
    add_retrofit_option(chat)
    chat.add_argument(
        "--autosave-tokens", type=int, default=4096, help="also save every this many tokens (0: only on quit)"
    )
    chat.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    chat.add_argument("--max-tokens", type=int, default=256, help="longest reply in tokens")
    chat.add_argument(
        "--repeat-penalty",
        type=float,
        help="make tokens among the reply's last 64 less likely (1: off; default 1.1, which breaks most of a "
        "small model's loops)",
    )
    chat.set_defaults(func=_chat)

    train = sub.add_parser(
        "train",
        help="train a hybrid model on the task mix (resumes if OUT holds a checkpoint)",
        description="Train a model; run under `torchrun --nproc-per-node N` for several GPUs or processes.",
        **with_example("ovq train --preset small --out runs/small --steps 2000"),
    )
    _add_train_args(train)
    train.set_defaults(func=_train)

    ev = sub.add_parser(
        "eval",
        help="evaluate models: exact-match recall by distance, or side by side",
        **with_example("ovq eval recall --preset test_2k_16k --n 40 --json recall.json"),
    )
    ev.add_argument(
        "what",
        choices=["recall", "compare", "chat", "ladder"],
        help="recall: one model on fresh task examples; compare: --models at each of --lengths; chat: a "
        "pretrained model's recall of facts told in a chat, under several --retrofits side by side; ladder: "
        "easy facts asked 0 to 100k tokens later and the hard tier (chat's held-out set), per --settings",
    )
    add_common(ev, {"model": None})
    add_capacity_option(ev)
    ev.add_argument(
        "--models",
        help="compare: comma-separated model directories; LABEL=DIR labels one, and models sharing a label "
        "are seeds of one recipe (summarised: mean, min-max)",
    )
    ev.add_argument(
        "--merge",
        help="compare: comma-separated JSON files of earlier compare runs on the same examples to include",
    )
    ev.add_argument(
        "--lengths", help="compare: comma-separated test lengths (values of --length-field: characters)"
    )
    ev.add_argument(
        "--length-field",
        default="target_chars",
        help="compare: the task config field --lengths sets (icl: examples_per_function)",
    )
    ev.add_argument("--markdown", help="compare: also write the markdown table to this file")
    ev.add_argument(
        "--plot", help="compare, chat, ladder: also write a PNG plot to this file (needs matplotlib)"
    )
    ev.add_argument("--task", default="memory_dialogue", help="icr | positional_icr | icl | memory_dialogue")
    ev.add_argument("--preset", default="default", help="task preset (e.g. default, train_4k, test_64k)")
    ev.add_argument(
        "--n",
        help="examples (default 20); recall: one count per --seed (comma-separated) or one for all; ladder: "
        "easy facts (default 40)",
    )
    ev.add_argument(
        "--seed",
        default=str(10**6),
        help="first example seed (training uses others); recall: several, comma-separated, pool their "
        "examples into one result",
    )
    ev.add_argument("--json", help="also write the result to this file")
    ev.add_argument(
        "--retrofits",
        help="chat: memory settings to compare, separated by ';' (default: full;streaming;memory, and "
        "full;streaming;tuned for a tuned reading such as the default model: tuned is the settings it was "
        "tuned for), e.g. "
        "'full;streaming;capacity=256;capacity=1024;capacity=4096'",
    )
    ev.add_argument(
        "--set", default="tuning", help="chat: fact set, tuning (design) or heldout (the final table)"
    )
    ev.add_argument(
        "--distances",
        help="chat: tokens between fact and question (default 512,2048,7168,32768); ladder: the easy tier's "
        "rungs (default 0,2048,4096,7168,16384,32768,102400)",
    )
    ev.add_argument("--max-tokens", type=int, help="chat, ladder: longest answer (default 32; ladder: 24)")
    ev.add_argument(
        "--settings",
        help=f"ladder: MODEL:RETROFIT settings separated by ';', RETROFIT a --retrofit value or tuned (a "
        f"tuned model's own settings) (default {LADDER_SETTINGS})",
    )
    ev.add_argument("--tiers", default="easy,hard", help="ladder: easy, hard or both (default easy,hard)")
    ev.add_argument(
        "--filler",
        choices=["chat", "passages"],
        default="chat",
        help="chat: what lies between fact and question: generated small talk and observations, or "
        "passages of CPython's help texts the user pastes",
    )
    ev.add_argument("--quiet", action="store_true", help="chat, ladder: no progress lines")
    ev.add_argument(
        "--one-per-stream", action="store_true", help="chat: each fact alone in a stream of its own (slower)"
    )
    ev.add_argument(
        "--perplexity",
        type=int,
        default=0,
        metavar="TOKENS",
        help="chat, ladder: also the perplexity of this many tokens of long text per setting, by stream "
        "position (full attention: up to its context)",
    )
    ev.add_argument(
        "--agreement",
        action="store_true",
        help="chat, ladder: also greedy replies to ordinary messages, compared word for word with 'full' "
        "(ladder: the first full-attention setting, and by per-token KL on its replies)",
    )
    ev.set_defaults(func=_eval)

    probe = sub.add_parser(
        "probe",
        help="run a recall probe suite on a fork of a session (exit 1 below the suite's threshold)",
        **with_example("ovq probe basic --session trip-planning --json report.json"),
    )
    probe.add_argument("suite", help="a suite TOML file, or a shipped suite name (e.g. basic)")
    add_common(probe, session, session="session to fork (a fresh one if new)")
    add_capacity_option(probe)
    add_retrofit_option(probe)
    probe.add_argument("--json", help="write the report as JSON to this file ('-' for stdout)")
    probe.set_defaults(func=_probe)

    feed = sub.add_parser(
        "feed",
        help="stream a file (or - for stdin) of any size into a session, then save",
        **with_example("ovq feed meeting-notes.txt --session work --role observation --save-every 20000"),
    )
    feed.add_argument("file", help="text file, or - for standard input")
    add_common(feed, session)
    add_capacity_option(feed)
    add_retrofit_option(feed)
    feed.add_argument(
        "--role",
        choices=["user", "observation"],
        help=f"wrap each block of {FEED_BLOCK_CHARS:,} characters as a turn of this role",
    )
    feed.add_argument("--label", help="label of the final snapshot (kept by retention)")
    feed.add_argument(
        "--save-every",
        type=int,
        default=100_000,
        help="also save every this many tokens (checked after each forward of at most 2,048 tokens)",
    )
    feed.add_argument("--quiet", action="store_true", help="no progress bar and no save lines")
    feed.set_defaults(func=_feed)

    srv = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP API in which each conversation (`user`) is a persistent session",
        description="Serve /v1/chat/completions and /v1/models in OpenAI's format. A request's `user`\n"
        "names its session (default: default); it feeds only the messages the session does not hold\n"
        "yet, so a client may send just the newest one. More: the README's 'Serving an OpenAI-\n"
        "compatible API'.",
        **with_example("ovq serve --model tiny --port 8000 --api-key sk-local-7f3a"),
    )
    add_common(srv, {"model": None, "store": None})
    add_capacity_option(srv)
    add_retrofit_option(srv)
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    srv.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free one)")
    srv.add_argument(
        "--api-key",
        help="require 'Authorization: Bearer KEY' on every request (default: $OVQ_API_KEY if set, else none)",
    )
    srv.add_argument(
        "--max-concurrent",
        type=int,
        default=4,
        help="sessions replying at once; more requests wait their turn",
    )
    srv.add_argument("--max-body-mib", type=int, default=8, help="largest request body (MiB); larger: 413")
    srv.add_argument(
        "--temperature", type=float, default=0.0, help="for requests that give none (0: greedy, as ovq chat)"
    )
    srv.add_argument("--max-tokens", type=int, default=256, help="longest reply for requests that give none")
    srv.set_defaults(func=_serve)

    snaps = sub.add_parser(
        "snapshots",
        help="list, show, export, import or remove snapshots",
        **with_example("ovq snapshots list --session trip-planning"),
    )
    add_common(snaps, {"store": None})
    acts = snaps.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = acts.add_parser(
        "list",
        help="snapshots, newest last",
        **with_example("ovq snapshots list --session work --store ~/ovq"),
    )
    add_common(ls, {"store": None, "session": None}, session="only this session")
    show = acts.add_parser("show", help="one snapshot's record", **with_example("ovq snapshots show 42"))
    show.add_argument("id", type=int)
    add_common(show, {"store": None})
    ex = acts.add_parser(
        "export",
        help="write one snapshot as a single portable file",
        **with_example("ovq snapshots export 42 work-2026-12-03.ovqs"),
    )
    ex.add_argument("id", type=int)
    ex.add_argument("path")
    add_common(ex, {"store": None})
    im = acts.add_parser(
        "import",
        help="import a portable file as a new snapshot",
        **with_example("ovq snapshots import work-2026-12-03.ovqs --session work-copy"),
    )
    im.add_argument("path")
    add_common(
        im, {"store": None, "session": None}, session="session to import into (default: the exported one)"
    )
    rm = acts.add_parser(
        "rm", help="delete a snapshot and free unreferenced blobs", **with_example("ovq snapshots rm 42")
    )
    rm.add_argument("id", type=int)
    add_common(rm, {"store": None})
    snaps.set_defaults(func=_snapshots)

    bench = sub.add_parser(
        "bench",
        help="benchmarks, printed as JSON",
        **with_example("ovq bench speed --tokens 8192 --generate 128"),
    )
    bench.add_argument(
        "suite",
        choices=["memory", "kernels", "session", "snapshots", "speed", "serve"],
        help="memory: the OVQ op vs full attention; kernels: chunk read vs SDPA and the fold's share; "
        "session: a 1M-token soak; snapshots: save/restore vs raw LMDB; speed: prefill and generation tok/s; "
        "serve: what the HTTP layer of ovq serve adds to a chat turn",
    )
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options passed to the suite (see its --help)")
    bench.set_defaults(func=_bench, _common={})
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line as the verb sees it: common options gathered from wherever they were typed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":  # its suites parse their own options: hand them the ones given before
        args.rest = _forward_common(parser, args)
    return finish(parser, args, args.command)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return args.func(args)


def _forward_common(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    given = [name for name in ("model", "store", "session") if hasattr(args, name)]
    if given and args.suite in ("memory", "kernels"):
        parser.error(f"ovq bench {args.suite} does not take --{given[0]}")
    if "session" in given:
        parser.error("ovq bench does not take --session (each suite uses a temporary session)")
    forwarded = [x for name in given for x in (f"--{name}", getattr(args, name))]
    for name in given:
        delattr(args, name)
    return forwarded + args.rest


if __name__ == "__main__":
    sys.exit(main())

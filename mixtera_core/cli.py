"""The ``mixtera`` command: register, inspect and query a catalog from the shell.

The catalog directory comes from ``--db DIR`` or the ``MIXTERA_DB`` environment variable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .errors import MixteraError

DEFAULT_DEMO_DIR = "mixtera_demo"


def _client(args: argparse.Namespace) -> Any:
    from .client import MixteraClient

    db = args.db or os.environ.get("MIXTERA_DB")
    if not db:
        raise SystemExit("mixtera: no catalog; pass --db DIR or set MIXTERA_DB")
    return MixteraClient.local(db)


def _parse_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if args.options:
        try:
            options.update(json.loads(args.options))
        except json.JSONDecodeError as e:
            raise SystemExit(f"mixtera: --options is not valid JSON: {e}") from None
    for item in args.field or []:
        if "=" not in item:
            raise SystemExit(f"mixtera: --field wants PROPERTY=PATH, got {item!r}")
        prop, path = item.split("=", 1)
        options[prop.strip()] = path.strip()
    return options


def _progress_bar(total_hint: str) -> Any:
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def update(path: str, done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, unit="file", desc=total_hint, file=sys.stderr)
        bar["bar"].update(done - bar["bar"].n)
        if done == total:
            bar["bar"].close()

    return update


def cmd_register(args: argparse.Namespace) -> int:
    with _client(args) as client:
        report = client.register_dataset(
            args.name,
            args.location,
            format=args.format,
            parser=args.parser,
            parser_options=_parse_options(args),
            on_error=args.on_error,
            replace=args.replace,
            workers=args.workers,
            progress=None if args.quiet else _progress_bar(f"register {args.name}"),
        )
        print(report)
        for path, n in sorted(report.skipped_by_file.items()):
            print(f"  skipped {n} in {path}")
    return 0


def _tokenizer_arg(value: str) -> tuple[str, str]:
    name, sep, source = value.partition(":")
    if not sep or not name or not source:
        raise SystemExit("mixtera: --tokenizer wants PLUGIN:SOURCE, e.g. 'hf:tokenizer.json'")
    return name, source


def _tokenize_progress() -> Any:
    """A progress bar on stderr over the samples, with files done / total."""
    from tqdm import tqdm

    state: dict[str, Any] = {}

    def update(p: Any) -> None:
        bar = state.get("bar")
        if bar is None:
            bar = state["bar"] = tqdm(
                total=p.samples_total, unit="doc", desc="tokenize", file=sys.stderr, unit_scale=True
            )
        bar.set_postfix_str(f"{p.files_done}/{p.files_total} files, {p.tokens:,} tokens", refresh=False)
        bar.update(p.samples_done - bar.n)
        if p.files_done == p.files_total:
            bar.close()

    return update


def cmd_tokenize(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {}
    if args.tokenizer_options:
        try:
            options = json.loads(args.tokenizer_options)
        except json.JSONDecodeError as e:
            raise SystemExit(f"mixtera: --tokenizer-options is not valid JSON: {e}") from None
        if not isinstance(options, dict):
            raise SystemExit("mixtera: --tokenizer-options must be a JSON object")
    with _client(args) as client:
        report = client.tokenize(
            args.datasets,
            _tokenizer_arg(args.tokenizer),
            tokenizer_options=options,
            add_bos=args.add_bos,
            add_eos=not args.no_eos,
            text_field=args.text_field,
            workers=args.workers,
            progress=None if args.quiet else _tokenize_progress(),
        )
    print(report)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    with _client(args) as client:
        datasets = client.list_datasets()
        if args.json:
            print(json.dumps([d.__dict__ for d in datasets], indent=2))
        elif not datasets:
            print("no datasets registered")
        for d in [] if args.json else datasets:
            skipped = f", {d.num_skipped} skipped" if d.num_skipped else ""
            print(
                f"{d.name}: {d.num_files} files, {d.num_samples} samples{skipped} ({d.format}, {d.parser}) {d.location}"
            )
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.remove_dataset(args.name)
        print(f"removed {args.name!r}")
    return 0


def cmd_properties(args: argparse.Namespace) -> int:
    with _client(args) as client:
        props = client.properties()
    if args.json:
        print(json.dumps({p: {str(k): v for k, v in vals.items()} for p, vals in props.items()}, indent=2))
        return 0
    for prop, values in props.items():
        print(f"{prop}:")
        for value, n in values.items():
            print(f"  {value}: {n}")
    return 0


def _query(args: argparse.Namespace) -> Any:
    from .query import Query, parse_condition

    q = Query.for_job(args.job)
    if args.where:
        q = q.select(*[parse_condition(w) for w in args.where])
    for alt in args.or_where or []:
        q = q.select(*[parse_condition(w) for w in alt.split(" and ")])
    return q


def _mixture(items: list[str] | None) -> dict[str, float] | None:
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, weight = item.rpartition(":")
        if not sep:
            raise SystemExit(f"mixtera: --mixture wants KEY:WEIGHT, e.g. 'language=python:0.5', got {item!r}")
        try:
            out[key] = float(weight)
        except ValueError:
            raise SystemExit(f"mixtera: weight {weight!r} of {key!r} is not a number") from None
    return out


def cmd_explain(args: argparse.Namespace) -> int:
    props = [p.strip() for p in args.by.split(",") if p.strip()] if args.by else None
    tokenizer = None
    if args.tokenizer:
        name, sep, source = args.tokenizer.partition(":")
        if not sep:
            raise SystemExit("mixtera: --tokenizer wants PLUGIN:SOURCE, e.g. 'hf:tokenizer.json'")
        tokenizer = (name, source)
    mixture = _mixture(args.mixture)
    with _client(args) as client:
        if mixture is None:
            print(client.explain(_query(args), properties=props))
        else:
            print(
                client.explain(
                    _query(args),
                    mixture,
                    samples=args.samples,
                    tokens=args.tokens,
                    per_step=args.per_step,
                    tokenizer=tokenizer,
                )
            )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    with _client(args) as client:
        report = client.report(args.job)
    print(report)
    if args.plot:
        print(f"plot written to {report.plot(args.plot)}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import get_plugin_manager

    for kind, items in get_plugin_manager().describe().items():
        print(f"{kind}s:")
        if not items:
            print("  (none installed)")
        for name, provider in items:
            print(f"  {name:<16} from {provider}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo_run import run_demo

    run_demo(args.out, db_dir=args.db, max_samples_per_domain=args.max_samples)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixtera", description="Mixtera: index, mix and stream training data.")
    p.add_argument("--db", help="catalog directory (default: $MIXTERA_DB)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("register", help="index a dataset (file, directory or glob)")
    r.add_argument("name")
    r.add_argument("location", nargs="+")
    r.add_argument("--format", default="jsonl", help="format plugin (see `mixtera plugins`)")
    r.add_argument("--parser", default="fields", help="metadata parser plugin")
    r.add_argument("--options", help='parser options as JSON, e.g. \'{"language": "meta.language"}\'')
    r.add_argument("--field", action="append", help="PROPERTY=PATH for the fields parser (repeatable)")
    r.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    r.add_argument("--replace", action="store_true", help="re-register a dataset of the same name")
    r.add_argument("--workers", type=int, help="parallel file scans (default: cores)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_register)

    t = sub.add_parser(
        "tokenize",
        help="tokenize datasets once into the token index (DB_DIR/tokens); resumable",
        description="Tokenize every sample of the datasets once (BOS/EOS as a token-mode job adds "
        "them) and store the token ids beside the catalog; token-mode jobs with the same tokenizer "
        "and settings read them instead of tokenizing. Rerun to resume after an interruption.",
    )
    t.add_argument("datasets", nargs="+", metavar="DATASET")
    t.add_argument("--tokenizer", required=True, help="PLUGIN:SOURCE, e.g. 'hf:tokenizer.json'")
    t.add_argument("--tokenizer-options", help='tokenizer options as JSON, e.g. \'{"eos_token": "</s>"}\'')
    t.add_argument("--add-bos", action="store_true", help="put BOS before each document")
    t.add_argument("--no-eos", action="store_true", help="no EOS after each document")
    t.add_argument("--text-field", default="text", help="field holding the text (dotted path; default text)")
    t.add_argument("--workers", type=int, help="files tokenized at once (default: cores)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_tokenize)

    d = sub.add_parser("datasets", help="list registered datasets")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_datasets)

    rm = sub.add_parser("remove", help="remove a dataset from the catalog (files are untouched)")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_remove)

    pr = sub.add_parser("properties", help="property -> value -> sample count")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_properties)

    e = sub.add_parser("explain", help="samples per component for a query")
    e.add_argument(
        "--where", action="append", help="condition, ANDed: 'language==python', 'license in mit,psf'"
    )
    e.add_argument("--or-where", action="append", help="another set of conditions (joined by ' and '), ORed")
    e.add_argument("--by", help="comma-separated properties that define components (default: all)")
    e.add_argument("--mixture", action="append", help="KEY:WEIGHT, repeatable, e.g. 'language=python:0.7'")
    e.add_argument("--samples", type=int, help="sample budget (with --mixture): epochs per component")
    e.add_argument("--tokens", type=int, help="token budget (with --mixture and --tokenizer)")
    e.add_argument("--per-step", type=int, help="samples (or tokens) per training step: when each runs dry")
    e.add_argument("--tokenizer", help="PLUGIN:SOURCE to estimate tokens, e.g. 'hf:tokenizer.json'")
    e.add_argument("--job", default="explain", help=argparse.SUPPRESS)
    e.set_defaults(func=cmd_explain)

    rp = sub.add_parser("report", help="target vs delivered share per key of a job")
    rp.add_argument("job")
    rp.add_argument("--plot", help="also write a PNG bar chart here (needs matplotlib)")
    rp.set_defaults(func=cmd_report)

    pl = sub.add_parser("plugins", help="installed formats, parsers, tokenizers, algorithms, adapters")
    pl.set_defaults(func=cmd_plugins)

    dm = sub.add_parser("demo", help="build a demo corpus from Python's own sources, register, query, read")
    dm.add_argument(
        "--out",
        default=DEFAULT_DEMO_DIR,
        help=f"where to write corpus and catalog (default: {DEFAULT_DEMO_DIR})",
    )
    dm.add_argument("--max-samples", type=int, default=None, help="cap per domain (default: built-in size)")
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MixteraError as e:
        print(f"mixtera: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

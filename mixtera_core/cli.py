"""The ``mixtera`` command: register, inspect and query a catalog from the shell.

Every command works on an embedded catalog (``--db DIR`` or the ``MIXTERA_DB`` environment
variable) or on the catalog a running ``mixtera-server`` holds (``--server HOST:PORT``, with
``--token-file`` and ``--tls-ca`` when the server asks for them); these options go before or
after the command. DuckDB lets one process open a catalog, so a catalog that a server or a
training job holds open is reached through its server.

Start-up is kept short: this module imports only the standard library, and each command
imports what it uses (``mixtera --help`` loads neither DuckDB nor pyarrow; no command but the
ones that stream or fit loads torch or scipy, and only ``--server`` loads grpc).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from . import __version__
from .errors import CatalogLockedError, MixteraError, RegistrationWarning

DEFAULT_DEMO_DIR = "mixtera_demo"
#: retries of a remote call that found no server: a command should fail fast, not wait ~15 s
CLI_RETRIES = 2
#: per-call deadline over --server (seconds); long registrations and tokenizations are streams
CLI_TIMEOUT = 600.0

# API wording in error messages -> what a CLI user types instead (longest first)
_CLI_WORDING = (
    ("register_dataset(..., replace=True) / mixtera register --replace", "mixtera register --replace"),
    ("register_dataset(..., replace=True)", "mixtera register --replace"),
    ("pass replace=True to re-register it", "add --replace to re-register it"),
    ("register with on_error='skip'", "register with --on-error skip"),
    ("e.g. parser_options={'language': 'meta.language'}", "e.g. --field language=meta.language"),
    ("create it with execute()", "`mixtera jobs` lists the jobs"),
    ("list_jobs() names the jobs there", "`mixtera jobs` lists them"),
)


def cli_wording(message: str) -> str:
    """An error message of the core with its API advice put as CLI flags and commands."""
    for api, cli in _CLI_WORDING:
        message = message.replace(api, cli)
    return message


# ---------------------------------------------------------------------- the catalog to talk to


def _server_address(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"mixtera: --server wants HOST:PORT, e.g. 127.0.0.1:7878, got {text!r}")
    return host, int(port)


def _read_token(path: str) -> str:
    try:
        with open(path) as fh:
            token = fh.read().strip()
    except OSError as e:
        raise SystemExit(f"mixtera: cannot read --token-file {path}: {e.strerror or e}") from None
    if not token:
        raise SystemExit(f"mixtera: --token-file {path} is empty; it holds the server's token")
    return token


def _check_catalog(db: str) -> None:
    """A command that reads a catalog must not create an empty one where --db has a typo."""
    from .catalog import CATALOG_FILE

    path = os.path.abspath(db)
    if os.path.isfile(os.path.join(path, CATALOG_FILE)):
        return
    if not os.path.exists(path):
        what = "does not exist"
    elif not os.path.isdir(path):
        what = "is not a directory"
    else:
        what = f"holds no catalog (no {CATALOG_FILE})"
    raise SystemExit(
        f"mixtera: {path} {what}. Check --db (or MIXTERA_DB); a new catalog is made by "
        f"`mixtera --db DIR register NAME LOCATION...`"
    )


def _client(args: argparse.Namespace, *, create: bool = False, follower: bool = False) -> Any:
    """The client for the catalog the options name.

    ``create``: the command may make a new catalog (register). ``follower``: the command only
    reads saved jobs (``DB_DIR/jobs``), which needs no DuckDB connection, so it also works
    while a trainer or a server holds the catalog open (a client of rank > 0 never opens it).
    """
    if args.server:
        if args.db:
            raise SystemExit("mixtera: --db and --server name two catalogs; pass one of them")
        from .client import MixteraClient

        host, port = _server_address(args.server)
        return MixteraClient.remote(
            host,
            port,
            _read_token(args.token_file) if args.token_file else None,
            tls_ca=args.tls_ca,
            retries=CLI_RETRIES,
            timeout=CLI_TIMEOUT,
        )
    for flag, given in (("--token-file", args.token_file), ("--tls-ca", args.tls_ca)):
        if given:
            raise SystemExit(f"mixtera: {flag} goes with --server HOST:PORT")
    db = args.db or os.environ.get("MIXTERA_DB")
    if not db:
        raise SystemExit(
            "mixtera: no catalog; pass --db DIR (or set MIXTERA_DB), or --server HOST:PORT of a "
            "running mixtera-server"
        )
    if not create:
        _check_catalog(db)
    from .client import MixteraClient

    try:
        # rank given explicitly: a RANK variable in the shell must not change what the CLI opens
        return MixteraClient.local(db, rank=1 if follower else 0)
    except CatalogLockedError:
        raise SystemExit(
            f"mixtera: the catalog {os.path.abspath(db)} is open in another process (a mixtera-server, "
            f"or rank 0 of a training job); DuckDB lets one process open it. If a server holds it, pass "
            f"--server HOST:PORT instead of --db; otherwise run this once that process has finished"
        ) from None


def _on_server(args: argparse.Namespace, path: str) -> str:
    """A relative path the user typed, made absolute when it exists here: over --server the
    server resolves paths, and its working directory is not the user's."""
    local = not os.path.isabs(path) and not path.startswith("~")
    if args.server and local and (os.path.exists(path) or glob.glob(path)):
        return os.path.abspath(path)
    return path


def _finite(obj: Any) -> Any:
    """JSON has no infinity or NaN: such floats (e.g. 'never runs dry') become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _print_json(obj: Any) -> None:
    print(json.dumps(_finite(obj), indent=2, default=str))


# ---------------------------------------------------------------------- commands


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


def _storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    if not args.storage_options:
        return None
    if args.server:
        raise SystemExit(
            "mixtera: --storage-options goes with --db: a server reads object storage with its own "
            "configuration (for S3 the AWS_* variables or a profile in mixtera-server's environment)"
        )
    try:
        options = json.loads(args.storage_options)
    except json.JSONDecodeError as e:
        raise SystemExit(f"mixtera: --storage-options is not valid JSON: {e}") from None
    if not isinstance(options, dict):
        raise SystemExit("mixtera: --storage-options must be a JSON object")
    return options


def _executor(args: argparse.Namespace) -> Any:
    """``--executor`` / ``--ray-address`` as the client's ``executor`` argument."""
    if args.executor == "local":
        if args.ray_address:
            raise SystemExit("mixtera: --ray-address goes with --executor ray")
        return "local"
    if args.server:
        raise SystemExit(
            "mixtera: --executor ray goes with --db: a server scans with its own threads; run the "
            "registration where the catalog is"
        )
    if not args.ray_address:
        return "ray"
    from .ray_executor import RayExecutor

    return RayExecutor(address=args.ray_address)


def _executor_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help=f"where files are {what}: this machine's cores (default) or Ray tasks (pip install 'mixtera[ray]')",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="the Ray cluster for --executor ray (default: RAY_ADDRESS, else a local Ray instance)",
    )


def cmd_register(args: argparse.Namespace) -> int:
    options = _parse_options(args)
    storage_options = _storage_options(args)
    executor = _executor(args)
    with _client(args, create=True) as client, warnings.catch_warnings():
        warnings.simplefilter("ignore", RegistrationWarning)  # printed with the report below
        report = client.register_dataset(
            args.name,
            [_on_server(args, loc) for loc in args.location],
            format=args.format,
            parser=args.parser,
            parser_options=options,
            on_error=args.on_error,
            replace=args.replace,
            workers=args.workers,
            progress=None if args.quiet or args.json else _progress_bar(f"register {args.name}"),
            **({"storage_options": storage_options} if storage_options else {}),
            **({"executor": executor} if executor != "local" else {}),
        )
    if args.json:
        _print_json(dataclasses.asdict(report))
        return 0
    print(report)
    if not args.quiet and report.scan_seconds > 0 and report.files > report.resumed:
        rate = report.samples / report.scan_seconds
        print(
            f"scanned in {report.scan_seconds:.1f} s ({rate:,.0f} samples/s, {report.executor})",
            file=sys.stderr,
        )
    for path, n in sorted(report.skipped_by_file.items()):
        print(f"  skipped {n} in {path}")
    return 0


def _tokenizer_arg(args: argparse.Namespace, value: str) -> tuple[str, str]:
    name, sep, source = value.partition(":")
    if not sep or not name or not source:
        raise SystemExit("mixtera: --tokenizer wants PLUGIN:SOURCE, e.g. 'hf:tokenizer.json'")
    return name, _on_server(args, source)


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
    tokenizer = _tokenizer_arg(args, args.tokenizer)
    executor = _executor(args)
    with _client(args) as client:
        report = client.tokenize(
            args.datasets,
            tokenizer,
            tokenizer_options=options,
            add_bos=args.add_bos,
            add_eos=not args.no_eos,
            text_field=args.text_field,
            workers=args.workers,
            progress=None if args.quiet or args.json else _tokenize_progress(),
            **({"executor": executor} if executor != "local" else {}),
        )
    if args.json:
        _print_json(dataclasses.asdict(report))
    else:
        print(report)
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    with _client(args) as client:
        datasets = client.list_datasets()
    if args.json:
        _print_json([dataclasses.asdict(d) for d in datasets])
        return 0
    if not datasets:
        print("no datasets registered")
    for d in datasets:
        skipped = f", {d.num_skipped} skipped" if d.num_skipped else ""
        print(
            f"{d.name}: {d.num_files} files, {d.num_samples} samples{skipped} ({d.format}, {d.parser}) {d.location}"
        )
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.remove_dataset(args.name)
    if args.json:
        _print_json({"removed": args.name})
    else:
        print(f"removed {args.name!r}")
    return 0


def cmd_properties(args: argparse.Namespace) -> int:
    with _client(args) as client:
        props = client.properties()
    if args.json:
        _print_json({p: {str(k): v for k, v in vals.items()} for p, vals in props.items()})
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
    tokenizer = _tokenizer_arg(args, args.tokenizer) if args.tokenizer else None
    mixture = _mixture(args.mixture)
    with _client(args) as client:
        if mixture is None:
            explanation = client.explain(_query(args), properties=props)
        else:
            explanation = client.explain(
                _query(args),
                mixture,
                samples=args.samples,
                tokens=args.tokens,
                per_step=args.per_step,
                tokenizer=tokenizer,
            )
    if args.json:
        _print_json(explanation.to_json())
    else:
        print(explanation)
    return 0


def _report_json(report: Any) -> dict[str, Any]:
    return {**dataclasses.asdict(report), "delivered_share": report.delivered_share}


def cmd_report(args: argparse.Namespace) -> int:
    with _client(args, follower=True) as client:
        report = client.report(args.job)
    if args.json:
        _print_json(_report_json(report))
    else:
        print(report)
    if args.plot:
        written = report.plot(args.plot)
        print(f"plot written to {written}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with _client(args, follower=True) as client:
        jobs = client.list_jobs()
    if args.json:
        _print_json([j.to_json() for j in jobs])
        return 0
    if not jobs:
        print("no jobs saved in this catalog")
    for info in jobs:
        print(info.summary())
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with _client(args, follower=True) as client:
        info = client.job_info(args.job)
        report = client.report(args.job) if info.problem is None else None
        history = client.mixture_history(args.job) if info.problem is None else []
    if args.json:
        _print_json(
            {
                "info": info.to_json(),
                "report": None if report is None else _report_json(report),
                "mixture_history": [[chunk, weights] for chunk, weights in history],
            }
        )
        return 0
    print(info.summary())
    spec = dict(info.spec)
    query, mixture = spec.pop("query", None), spec.pop("mixture", None)
    print(f"query: {json.dumps(query)}")
    print(f"mixture: {json.dumps(mixture)}")
    print("spec: " + ", ".join(f"{k}={v}" for k, v in spec.items() if k != "job_id" and v is not None))
    if report is not None:
        print(report)
    if len(history) > 1:
        print("mixture history (first chunk: weights per key):")
        for chunk, weights in history:
            print(f"  {chunk}: " + ", ".join(f"{k} {w:.2%}" for k, w in weights.items()))
    return 0


def cmd_jobs_delete(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.delete_job(args.job)
    if args.json:
        _print_json({"deleted": args.job})
    else:
        print(f"deleted job {args.job!r}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import get_plugin_manager

    if args.server:
        print(
            f"(the plugins installed with this mixtera; the server at {args.server} may have others)",
            file=sys.stderr,
        )
    described = get_plugin_manager().describe()
    if args.json:
        _print_json(
            {kind: [{"name": n, "provider": p} for n, p in items] for kind, items in described.items()}
        )
        return 0
    for kind, items in described.items():
        print(f"{kind}s:")
        if not items:
            print("  (none installed)")
        for name, provider in items:
            print(f"  {name:<16} from {provider}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo_run import run_demo

    if args.server:
        client = _client(args)
        target = f"--server {args.server}" + (f" --token-file {args.token_file}" if args.token_file else "")
        run_demo(args.out, max_samples_per_domain=args.max_samples, client=client, target=target)
    else:
        run_demo(args.out, db_dir=args.db, max_samples_per_domain=args.max_samples)
    return 0


# ---------------------------------------------------------------------- the parser


def _catalog_options(p: argparse.ArgumentParser, default: Any) -> None:
    g = p.add_argument_group("catalog (before or after the command)")
    g.add_argument("--db", metavar="DIR", default=default, help="catalog directory (default: $MIXTERA_DB)")
    g.add_argument(
        "--server",
        metavar="HOST:PORT",
        default=default,
        help="use the catalog of a running mixtera-server instead of --db",
    )
    g.add_argument("--token-file", metavar="F", default=default, help="the server's token (with --server)")
    g.add_argument(
        "--tls-ca",
        metavar="PEM",
        default=default,
        help="certificate that signed the server's (with --server)",
    )


def _json_flag(p: argparse.ArgumentParser, default: Any = False) -> None:
    p.add_argument("--json", action="store_true", default=default, help="print the result as JSON")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mixtera", description="Mixtera: index, mix and stream training data.")
    p.add_argument("--version", action="version", version=f"mixtera {__version__}")
    _catalog_options(p, None)
    # the same options after the command; SUPPRESS keeps a value given before it
    common = argparse.ArgumentParser(add_help=False)
    _catalog_options(common, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    r = command("register", help="index a dataset (file, directory or glob)")
    r.add_argument("name")
    r.add_argument(
        "location", nargs="+", help="file, directory, glob or URL (s3://..., any fsspec filesystem)"
    )
    r.add_argument("--format", default="jsonl", help="format plugin (see `mixtera plugins`)")
    r.add_argument("--parser", default="fields", help="metadata parser plugin")
    r.add_argument("--options", help='parser options as JSON, e.g. \'{"language": "meta.language"}\'')
    r.add_argument("--field", action="append", help="PROPERTY=PATH for the fields parser (repeatable)")
    r.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    r.add_argument("--replace", action="store_true", help="re-register a dataset of the same name")
    r.add_argument("--workers", type=int, help="parallel file scans (default: cores)")
    _executor_options(r, "scanned")
    r.add_argument(
        "--storage-options",
        metavar="JSON",
        help='fsspec options for URL locations, e.g. \'{"endpoint_url": "http://..."}\' (secrets are '
        "used, never stored)",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    _json_flag(r)
    r.set_defaults(func=cmd_register)

    t = command(
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
    _executor_options(t, "tokenized")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _json_flag(t)
    t.set_defaults(func=cmd_tokenize)

    d = command("datasets", help="list registered datasets")
    _json_flag(d)
    d.set_defaults(func=cmd_datasets)

    rm = command("remove", help="remove a dataset from the catalog (files are untouched)")
    rm.add_argument("name")
    _json_flag(rm)
    rm.set_defaults(func=cmd_remove)

    pr = command("properties", help="property -> value -> sample count")
    _json_flag(pr)
    pr.set_defaults(func=cmd_properties)

    e = command("explain", help="samples per component for a query")
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
    _json_flag(e)
    e.set_defaults(func=cmd_explain)

    rp = command("report", help="target vs delivered share per key of a job")
    rp.add_argument("job")
    rp.add_argument("--plot", help="also write a PNG bar chart here (needs matplotlib)")
    _json_flag(rp)
    rp.set_defaults(func=cmd_report)

    j = command(
        "jobs",
        help="the jobs saved in the catalog: list (default), show JOB, delete JOB",
        description="Jobs are saved under DB_DIR/jobs by the process that executes them. Listing and "
        "showing read those files only, so they also work while a trainer holds the catalog.",
    )
    _json_flag(j)
    j.set_defaults(func=cmd_jobs_list)
    jobs = j.add_subparsers(dest="jobs_command", metavar="ACTION")
    jl = jobs.add_parser("list", parents=[common], help="one line per job (the default)")
    _json_flag(jl, argparse.SUPPRESS)  # `jobs --json ACTION` too
    jl.set_defaults(func=cmd_jobs_list)
    js = jobs.add_parser("show", parents=[common], help="a job's spec, delivered shares and mixture history")
    js.add_argument("job")
    _json_flag(js, argparse.SUPPRESS)  # `jobs --json ACTION` too
    js.set_defaults(func=cmd_jobs_show)
    jd = jobs.add_parser(
        "delete",
        parents=[common],
        help="remove a job and its saved state (its running streams fail; data and catalog are untouched)",
    )
    jd.add_argument("job")
    _json_flag(jd, argparse.SUPPRESS)  # `jobs --json ACTION` too
    jd.set_defaults(func=cmd_jobs_delete)

    pl = command("plugins", help="installed formats, parsers, tokenizers, algorithms, adapters")
    _json_flag(pl)
    pl.set_defaults(func=cmd_plugins)

    dm = command("demo", help="build a demo corpus from Python's own sources, register, query, read")
    dm.add_argument(
        "--out",
        default=DEFAULT_DEMO_DIR,
        help=f"where to write corpus and catalog (default: {DEFAULT_DEMO_DIR})",
    )
    dm.add_argument("--max-samples", type=int, default=None, help="cap per domain (default: built-in size)")
    dm.set_defaults(func=cmd_demo)
    return p


def _hint(e: MixteraError, args: argparse.Namespace) -> str:
    """What to do about an error that only the CLI's context explains."""
    from_server = args.server and getattr(e, "grpc_code", None) is not None
    name = type(e).__name__
    if name == "ServerUnavailableError":
        tls = "" if args.tls_ca else "; if it serves TLS, pass --tls-ca with its certificate"
        return (
            f"Is mixtera-server running at {args.server}? (start one with "
            f"`mixtera-server DB_DIR --port PORT`{tls})"
        )
    if name == "AuthenticationError":
        return "Pass the server's token with --token-file F."
    if name == "PermissionDeniedError" and from_server:
        return "The server reads only files under its --allowed-root directories."
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MixteraError as e:
        message = cli_wording(str(e)).rstrip()
        hint = _hint(e, args)
        if hint:
            message += (" " if message.endswith((".", "?", "!")) else ". ") + hint
        print(f"mixtera: error: {type(e).__name__}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

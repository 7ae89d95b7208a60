"""``mixtera-server DB_DIR``: serve one Mixtera catalog over gRPC.

Prints ``mixtera-server listening on HOST:PORT`` once it accepts calls (``--port 0`` picks
a free port and prints it) and shuts down cleanly on SIGTERM / SIGINT: running calls get a
grace period, acknowledged feedback is applied, and the catalog is closed (jobs, mixture
logs, algorithm state and delivery counts are already persisted under ``DB_DIR/jobs``).

``--metrics-port P`` also serves Prometheus metrics at ``http://127.0.0.1:P/metrics``
(``--metrics-host`` to bind elsewhere) and prints ``mixtera-server metrics on URL`` right after
the line above; see :mod:`mixtera_core.server.metrics`.

Binding to an address other machines can reach (``--host`` not loopback) needs an explicit
``--allowed-root`` and ``--token-file``, or ``--insecure`` spelled out; without
``--allowed-root`` the working directory is the default root, which must not be ``/`` or a
home directory.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import threading
from typing import Any

from ..errors import MixteraError
from .auth import read_token
from .metrics import serve_metrics
from .service import (
    DEFAULT_MAX_MESSAGE,
    MAX_CALLS,
    RESERVED_THREADS,
    MixteraService,
    serve,
    unsafe_default_root,
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    name = host.strip().strip("[]").lower()
    if name in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to may be reachable


GRACE_SECONDS = 5.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mixtera-server",
        description="Serve one Mixtera catalog (DB_DIR) over gRPC to remote clients "
        "(MixteraClient.remote(host, port)).",
    )
    p.add_argument("db_dir", metavar="DB_DIR", help="the catalog directory (created if needed)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=7878, help="port (0: pick a free one and print it)")
    p.add_argument(
        "--token-file",
        metavar="F",
        help="require 'authorization: Bearer <token>' on every call; the token is F's content (stripped)",
    )
    p.add_argument("--tls-cert", metavar="C", help="serve TLS with this PEM certificate (chain)")
    p.add_argument("--tls-key", metavar="K", help="the PEM private key of --tls-cert")
    p.add_argument(
        "--allowed-root",
        action="append",
        default=[],
        metavar="DIR",
        help="only register and read files under DIR (symlinks resolved), or objects under a URL prefix "
        "such as s3://bucket/prefix (repeatable). Default: the "
        "server's working directory plus the directories of the datasets registered at start",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --host without --token-file and --allowed-root (anyone who can "
        "reach the port can then read files under the roots and change jobs)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=MAX_CALLS + RESERVED_THREADS,
        help=f"threads serving calls (default {MAX_CALLS + RESERVED_THREADS}; {RESERVED_THREADS} of them are "
        f"kept for health checks, ListDatasets and JobStatus)",
    )
    p.add_argument(
        "--max-message-mb",
        type=float,
        default=DEFAULT_MAX_MESSAGE / (1 << 20),
        help="largest request accepted, in MiB (larger: RESOURCE_EXHAUSTED; default 64)",
    )
    p.add_argument(
        "--refit-processes",
        type=int,
        default=1,
        help="processes for mixing-algorithm refits, off the serving process's GIL (0: in-process)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="P",
        help="serve Prometheus metrics at http://HOST:P/metrics (0: a free port, printed); off by default",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the metrics endpoint (default 127.0.0.1; it needs no token, and shows job ids)",
    )
    p.add_argument("--log-level", default="INFO", help="logging level on stderr (default INFO)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if (args.tls_cert is None) != (args.tls_key is None):
        print("mixtera-server: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if (
        args.port < 0
        or args.port > 65535
        or args.workers < 1
        or args.max_message_mb <= 0
        or args.refit_processes < 0
        or (args.metrics_port is not None and not 0 <= args.metrics_port <= 65535)
    ):
        print(
            "mixtera-server: --port and --metrics-port must be in [0, 65535], --workers and "
            "--max-message-mb positive, --refit-processes >= 0",
            file=sys.stderr,
        )
        return 2
    if not is_loopback(args.host) and not args.insecure:
        missing = [
            flag
            for flag, given in (
                ("--allowed-root DIR", args.allowed_root),
                ("--token-file F", args.token_file),
            )
            if not given
        ]
        if missing:
            print(
                f"mixtera-server: --host {args.host} can be reached from other machines; it needs "
                f"{' and '.join(missing)} (or --insecure, to serve without them on purpose)",
                file=sys.stderr,
            )
            return 2
    if not args.allowed_root:
        why = unsafe_default_root()
        if why is not None:
            print(
                f"mixtera-server: the working directory {os.getcwd()} is {why}; the default allowed root "
                f"would expose every file under it: name the directories to serve with --allowed-root DIR",
                file=sys.stderr,
            )
            return 2
    try:
        token = read_token(args.token_file) if args.token_file else None
        service = MixteraService(
            args.db_dir, allowed_roots=args.allowed_root or None, refit_processes=args.refit_processes
        )
    except Exception as e:  # e.g. the catalog is open in another process
        print(f"mixtera-server: cannot open {args.db_dir}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    try:
        server, port = serve(
            service,
            args.host,
            args.port,
            token=token,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            workers=args.workers,
            max_message_bytes=int(args.max_message_mb * (1 << 20)),
        )
    except (MixteraError, OSError) as e:
        service.close()
        print(f"mixtera-server: {e}", file=sys.stderr)
        return 1
    metrics_server = None
    if args.metrics_port is not None:
        try:
            metrics_server, metrics_port = serve_metrics(
                service.metrics, args.metrics_host, args.metrics_port
            )
        except OSError as e:
            server.stop(0)
            service.close()
            print(
                f"mixtera-server: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {e}",
                file=sys.stderr,
            )
            return 1
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    logger = logging.getLogger("mixtera.server")
    logger.info(
        "serving %s (allowed roots: %s%s%s)",
        service.engine.catalog.db_dir,
        ", ".join(service.roots.roots),
        ", token required" if token else "",
        ", TLS" if args.tls_cert else "",
    )
    if not is_loopback(args.host) and not args.tls_cert:
        logger.warning(
            "serving %s without TLS: the token and all data cross the network in the clear", args.host
        )
    print(f"mixtera-server listening on {shown}:{port}", flush=True)
    if metrics_server is not None:
        host = f"[{args.metrics_host}]" if ":" in args.metrics_host else args.metrics_host
        print(f"mixtera-server metrics on http://{host}:{metrics_port}/metrics", flush=True)
    while not stop.wait(0.5):
        pass
    logger.info("shutting down")
    if service.health is not None:
        service.health.enter_graceful_shutdown()
    server.stop(GRACE_SECONDS).wait()
    if metrics_server is not None:
        metrics_server.shutdown()
    service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

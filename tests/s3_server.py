"""A real S3-compatible server on 127.0.0.1 for tests and benchmarks, and a proxy in front of it.

:class:`MotoServer` runs moto's standalone server (``moto_server``, from ``moto[server]``) in
a process of its own, the way s3fs tests itself: the client library talks HTTP to it exactly
as to S3. :class:`Proxy` forwards a port to it, counts the bytes the server sends back (so a
test can show that a cache saved requests) and can hold every request for ``latency``
seconds (what a far-away store costs; ``benchmarks/remote.py`` measures prefetching with it).
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class MotoServer:
    """``moto_server`` on a free loopback port; ``env`` are the AWS variables that point a
    client at it. ``auth=True`` makes it check credentials (moto's IAM emulation): requests
    signed with keys it does not know are denied."""

    def __init__(self, auth: bool = False) -> None:
        exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
        self.port = free_port()
        env = dict(os.environ)
        if auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self.proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            _wait_port(self.port, self.proc)
        except BaseException:
            self.stop()
            raise
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self, endpoint: str | None = None) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def upload_tree(self, root: Path, bucket: str, prefix: str = "") -> None:
        """Every file under ``root`` as ``s3://bucket/prefix/<relative path>`` (bucket created)."""
        c = self.client()
        with contextlib.suppress(Exception):
            c.create_bucket(Bucket=bucket)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            key = "/".join(x for x in (prefix, path.relative_to(root).as_posix()) if x)
            c.upload_file(str(path), bucket, key)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Proxy:
    """A TCP proxy from a free loopback port to ``target_port``.

    ``latency`` seconds are added before each request is forwarded (a request is what a
    client sends after it has received a reply, or first on a connection): the round trip
    of a distant store, paid once per range request. ``received`` counts the bytes the
    server sent back through the proxy."""

    def __init__(self, target_port: int, latency: float = 0.0) -> None:
        self.target_port = target_port
        self.latency = latency
        #: connections still to be cut right after their first request arrives (a flaky network)
        self.cut_next = 0
        self.received = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = int(self._sock.getsockname()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="s3-proxy").start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        awaiting_request = True  # the next bytes from the client start a request
        with client, server:
            socks = [client, server]
            while not self._stop.is_set():
                ready, _, _ = select.select(socks, [], [], 0.5)
                for s in ready:
                    try:
                        data = s.recv(1 << 16)
                    except OSError:
                        return
                    if not data:
                        return
                    if s is client:
                        with self._lock:
                            cut, self.cut_next = self.cut_next > 0, max(0, self.cut_next - 1)
                        if cut:
                            return  # the request is lost and the connection reset
                        if awaiting_request and self.latency:
                            time.sleep(self.latency)
                        awaiting_request = False
                        server.sendall(data)
                    else:
                        awaiting_request = True
                        with self._lock:
                            self.received += len(data)
                        client.sendall(data)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


class ProxyProcess:
    """A :class:`Proxy` in a process of its own (``python s3_server.py PORT LATENCY``), so that
    forwarding bytes never competes for the GIL of the process being measured."""

    def __init__(self, target_port: int, latency: float = 0.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(target_port), str(latency)], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.proc.kill()
            raise RuntimeError(f"the proxy did not start: {line!r}")
        self.port = int(line.split()[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


if __name__ == "__main__":
    proxy = Proxy(int(sys.argv[1]), float(sys.argv[2]))
    print(f"port {proxy.port}", flush=True)
    threading.Event().wait()

"""Signed planner snapshots: a client can hand back only planner states the server handed out.

Every ``GetChunk`` reply carries the planner state before the chunk (``before_json``); clients
keep it in their stream state and send it back so that the server can regenerate chunks it no
longer caches, also after a restart. The server signs each such snapshot with HMAC-SHA256
under a secret of its own and refuses any snapshot whose signature does not verify, so a
client cannot steer the job's shared planner with a state it made up.

- The signature travels inside the snapshot, under the reserved key ``"mac"``; the planner
  ignores keys it does not know, so stream states, checkpoints and reshards carry it along.
- It covers the job (its id and a digest of its spec and catalog version) and a canonical
  form of every other key (numbers by value, so ``0`` and ``0.0`` sign alike: a checkpoint
  written by another JSON library still verifies).
- The secret is 32 random bytes in ``DB_DIR/server_secret`` (mode 0600), created on the first
  start and kept, so a snapshot checkpointed before a restart verifies after it. Deleting the
  file invalidates every snapshot handed out so far (streams then start over from their
  beginning or fail with a clear message).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import numbers
import os
import stat
from typing import Any

from ..errors import MixteraError, PlannerStateError, SnapshotSignatureError

SECRET_FILE = "server_secret"
MAC_KEY = "mac"
_SECRET_BYTES = 32
_DOMAIN = b"mixtera planner snapshot v1\n"


def load_secret(db_dir: str | os.PathLike[str]) -> bytes:
    """The server's secret in ``db_dir``, created (mode 0600) if there is none yet."""
    path = os.path.join(os.fspath(db_dir), SECRET_FILE)
    os.makedirs(os.fspath(db_dir), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(_SECRET_BYTES).hex().encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        os.chmod(path, 0o600)  # readable by others: whoever can read it can forge snapshots
    with open(path, "rb") as fh:
        text = fh.read().strip()
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        secret = b""
    if len(secret) < 16:
        raise MixteraError(
            f"{path} does not hold a secret (at least 16 bytes in hex); delete it to have a new one "
            f"made (planner snapshots in clients' checkpoints then no longer verify)"
        )
    return secret


def _canonical(value: Any, depth: int = 0) -> str:
    if depth > 8:
        raise PlannerStateError("a planner snapshot nests too deeply")
    if value is None:
        return "null"
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        f = float(value)
        if not math.isfinite(f):
            raise PlannerStateError("a planner snapshot holds a number that is not finite")
        if f.is_integer() and abs(f) < 2**53:
            return str(int(f))
        return repr(f)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_canonical(v, depth + 1) for v in value) + "]"
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise PlannerStateError("a planner snapshot's keys are strings")
        items = sorted(value.items())
        return "{" + ",".join(json.dumps(k) + ":" + _canonical(v, depth + 1) for k, v in items) + "}"
    raise PlannerStateError(f"a planner snapshot cannot hold a {type(value).__name__}")


class SnapshotSigner:
    """Signs the planner snapshots a server hands out and checks those clients send back."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the snapshot secret needs at least 16 bytes")
        self._secret = bytes(secret)

    @classmethod
    def for_db(cls, db_dir: str | os.PathLike[str]) -> SnapshotSigner:
        return cls(load_secret(db_dir))

    def _mac(self, job_key: str, snapshot: dict[str, Any]) -> str:
        body = {k: v for k, v in snapshot.items() if k != MAC_KEY}
        message = _DOMAIN + job_key.encode() + b"\n" + _canonical(body).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, job_key: str, snapshot: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``snapshot`` with its signature under ``"mac"``."""
        out = {k: v for k, v in snapshot.items() if k != MAC_KEY}
        out[MAC_KEY] = self._mac(job_key, out)
        return out

    def verify(self, job_key: str, snapshot: dict[str, Any]) -> dict[str, Any]:
        """``snapshot`` without its signature, if the signature is this server's for this job;
        else :class:`~mixtera_core.errors.SnapshotSignatureError`."""
        mac = snapshot.get(MAC_KEY)
        if not isinstance(mac, str):
            raise SnapshotSignatureError(
                "the planner snapshot is not signed: a server accepts only the snapshots it handed out "
                "(a stream state's 'snapshot' from this server, unchanged)"
            )
        if not hmac.compare_digest(mac.encode(), self._mac(job_key, snapshot).encode()):
            raise SnapshotSignatureError(
                "the planner snapshot's signature does not verify: it was changed, is for another job, "
                f"or was handed out by another server (or before DB_DIR/{SECRET_FILE} was replaced); "
                "send a stream state's 'snapshot' from this server unchanged"
            )
        return {k: v for k, v in snapshot.items() if k != MAC_KEY}


def job_key(job_id: str, spec_json: dict[str, Any], catalog_version: Any) -> str:
    """What a snapshot's signature binds it to: the job id and a digest of its spec and catalog."""
    digest = hashlib.sha256(
        json.dumps([spec_json, catalog_version], sort_keys=True, default=str).encode()
    ).hexdigest()
    return f"{job_id}\n{digest}"

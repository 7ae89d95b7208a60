"""Helper processes of ``mixtera-server`` that never outlive it.

The refit processes (``--refit-processes``) run :func:`watch_parent` as their pool
initializer: a daemon thread that ends the process as soon as its parent, the server, is
gone, however the server died (``SIGKILL`` included, when no cleanup of the server runs).
A dead parent is seen by the process being re-parented (``os.getppid()`` changes), checked
every ``POLL_SECONDS``.
"""

from __future__ import annotations

import os
import threading
import time

POLL_SECONDS = 0.5


def _parent_gone(parent: int) -> bool:
    return os.getppid() != parent


def _watch(parent: int, interval: float) -> None:
    while True:
        if _parent_gone(parent):
            os._exit(0)  # no cleanup: the work it would finish has no one to go to
        time.sleep(interval)


def watch_parent(parent: int, interval: float = POLL_SECONDS) -> None:
    """Exit this process soon after process ``parent`` (its parent) has died."""
    if _parent_gone(parent):
        os._exit(0)
    threading.Thread(target=_watch, args=(parent, interval), name="mixtera-parent-watch", daemon=True).start()

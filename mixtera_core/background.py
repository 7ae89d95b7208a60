"""Run an iterator in a background thread, a bounded number of items ahead of its consumer.

Used wherever producing an item releases the GIL (decompression, file reads, Rust/C++
tokenizers, pyarrow): the next item is made while the consumer works on this one.
Exceptions of the producer are raised in the consumer; closing the consumer (breaking
out of its loop) stops the producer at its next item.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_END = object()


def _feed(items: Iterable[Any], q: queue.Queue[Any], stop: threading.Event, name: str) -> threading.Thread:
    """A daemon thread putting ``items`` into ``q``, then ``_END`` (or the exception raised);
    it gives up as soon as ``stop`` is set."""

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer
            put(e)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def prefetch(items: Iterable[T], depth: int = 2, name: str = "mixtera-prefetch") -> Generator[T, None, None]:
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    thread = _feed(items, q, stop, name)
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def parallel_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int = 2,
    depth: int = 2,
    name: str = "mixtera-read",
) -> Generator[R, None, None]:
    """``fn`` over ``items`` on ``workers`` threads, results in the order of ``items``.

    ``items`` is iterated by a feeder thread one item ahead (so producing an item, e.g.
    planning or requesting the next chunk, stays off the consumer), and at most
    ``depth + workers`` results are pending (so every worker has work while the consumer
    takes ``depth`` finished ones): items are produced at most ``depth + workers + 1`` ahead
    of the one the consumer holds. A finished result is handed over even while the feeder
    waits for its next item (a planner may wait for feedback that this very result leads
    to). Worth it where ``fn`` releases the GIL for much of its work (decompression, pyarrow
    parsing): two chunks are then read at once on two cores. The order, and so the stream,
    does not depend on which thread finishes first.
    """
    if workers <= 1:
        yield from prefetch((fn(x) for x in items), depth, name)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    window = max(1, depth) + workers
    pending: deque[Future[R]] = deque()
    feed: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    feeder = _feed(items, feed, stop, name + "-feed")
    ended = False
    try:
        while not ended or pending:
            while pending and pending[0].done():
                yield pending.popleft().result()
            if ended or len(pending) >= window:
                if pending:
                    yield pending.popleft().result()
                continue
            try:
                item = feed.get(timeout=0.005) if pending else feed.get()
            except queue.Empty:
                continue
            if item is _END:
                ended = True
            elif isinstance(item, BaseException):
                raise item
            else:
                pending.append(pool.submit(fn, item))
    finally:
        stop.set()
        for f in pending:
            f.cancel()
        feeder.join()
        pool.shutdown(wait=True)

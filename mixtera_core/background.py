"""Run an iterator in a background thread, a bounded number of items ahead of its consumer.

Used wherever producing an item releases the GIL (decompression, file reads, Rust/C++
tokenizers, pyarrow): the next item is made while the consumer works on this one.
Exceptions of the producer are raised in the consumer; closing the consumer (breaking
out of its loop) stops the producer at its next item.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
_END = object()


def prefetch(items: Iterable[T], depth: int = 2, name: str = "mixtera-prefetch") -> Generator[T, None, None]:
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

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

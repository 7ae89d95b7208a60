"""The background helpers: ordered parallel reads, errors and early stops."""

from __future__ import annotations

import random
import threading
import time

import pytest

from mixtera_core.background import parallel_map, prefetch


def slow_square(x: int) -> int:
    time.sleep(random.Random(x).random() * 0.004)  # finish out of order
    return x * x


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_come_in_input_order_whatever_finishes_first(workers):
    assert list(parallel_map(slow_square, range(60), workers=workers, depth=2)) == [x * x for x in range(60)]


def test_work_runs_on_several_threads_at_once():
    seen: set[str] = set()
    both = threading.Barrier(2, timeout=5)

    def work(x: int) -> int:
        seen.add(threading.current_thread().name)
        if x < 2:
            both.wait()  # only passes when two items are being worked on at the same time
        return x

    assert list(parallel_map(work, range(8), workers=2, depth=1)) == list(range(8))
    assert len(seen) == 2


def test_errors_of_the_work_and_of_the_items_reach_the_consumer():
    def boom(x: int) -> int:
        if x == 5:
            raise ValueError("item 5 is bad")
        return x

    got = []
    with pytest.raises(ValueError, match="item 5 is bad"):
        for v in parallel_map(boom, range(10), workers=2):
            got.append(v)
    assert got == [0, 1, 2, 3, 4]

    def items():
        yield 1
        raise OSError("planning failed")

    with pytest.raises(OSError, match="planning failed"):
        list(parallel_map(lambda x: x, items(), workers=2))


def test_closing_early_stops_the_threads_and_bounds_the_work():
    done: list[int] = []

    def work(x: int) -> int:
        done.append(x)
        return x

    before = threading.active_count()
    it = parallel_map(work, range(10_000), workers=2, depth=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    assert threading.active_count() == before
    assert len(done) < 20  # a bounded window ahead, not the whole input


def test_prefetch_hands_over_in_order_and_raises():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))

    def bad():
        yield 1
        raise KeyError("x")

    with pytest.raises(KeyError):
        list(prefetch(bad()))


@pytest.mark.parametrize(("workers", "depth"), [(2, 2), (2, 3), (3, 1)])
def test_items_are_produced_a_bounded_number_ahead_of_the_consumer(workers, depth):
    """Feedback-driven mixture changes land a fixed number of chunks ahead of the consumed
    one; that is only replayable when planning never runs further ahead than this bound."""
    produced = 0

    def items():
        nonlocal produced
        for i in range(40):
            produced += 1
            yield i

    bound = depth + workers + 1
    worst = 0
    for held, _ in enumerate(parallel_map(lambda x: x, items(), workers=workers, depth=depth)):
        time.sleep(0.002)  # a slow consumer: the producers run ahead as far as they may
        worst = max(worst, produced - (held + 1))
    assert 0 < worst <= bound

"""GrowingPool: threads start only when submitted work finds none free, never more than the limit."""

from __future__ import annotations

import threading

import pytest

from dispatcher.growing_pool import GrowingPool
from tests.conftest import wait_until


class Gate:
    """A handler that blocks every item until released, counting what runs at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.done: list[int] = []

    def __call__(self, item: int) -> bool:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.release.wait(10)
        with self.lock:
            self.running -= 1
            self.done.append(item)
        return True


def test_no_thread_starts_before_work_arrives() -> None:
    """A pool with nothing submitted has started no thread."""
    pool: GrowingPool[int] = GrowingPool(Gate(), 8)
    assert pool.started == 0
    pool.close()


def test_items_one_after_another_reuse_one_thread() -> None:
    """An item submitted while a started thread is free goes to that thread instead of a new one."""
    gate = Gate()
    gate.release.set()
    pool: GrowingPool[int] = GrowingPool(gate, 8)
    for i in range(5):
        pool.submit(i)
        wait_until(lambda: pool.idle == 1)
    pool.close()
    assert pool.started == 1
    assert gate.done == [0, 1, 2, 3, 4]


def test_concurrent_items_start_threads_up_to_the_limit_and_the_rest_wait() -> None:
    """Blocked items each get a thread until the limit; later items wait and still all run."""
    gate = Gate()
    pool: GrowingPool[int] = GrowingPool(gate, 3)
    for i in range(7):
        pool.submit(i)
    wait_until(lambda: gate.running == 3)
    assert pool.started == 3
    gate.release.set()
    wait_until(lambda: len(gate.done) == 7)
    pool.close()
    assert gate.most == 3
    assert sorted(gate.done) == list(range(7))


def test_close_finishes_items_already_submitted() -> None:
    """close() returns only after every submitted item has been handled."""
    gate = Gate()
    pool: GrowingPool[int] = GrowingPool(gate, 2)
    for i in range(4):
        pool.submit(i)
    gate.release.set()
    pool.close()
    assert sorted(gate.done) == [0, 1, 2, 3]


def test_a_limit_below_one_is_refused() -> None:
    """A pool that could never run anything is a ValueError naming the value."""
    with pytest.raises(ValueError, match="0"):
        GrowingPool(Gate(), 0)

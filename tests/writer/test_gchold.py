"""The writer's hold on the cyclic garbage collector: shared by nested and concurrent holds."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from writer import gchold


@pytest.fixture(autouse=True)
def _collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_nested_holds_release_once_the_outer_one_ends() -> None:
    with gchold.gc_held():
        assert not gc.isenabled()
        with gchold.gc_held():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_hold_ends_on_an_exception() -> None:
    with pytest.raises(RuntimeError), gchold.gc_held():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_switched_off_before_stays_off() -> None:
    gc.disable()
    with gchold.gc_held():
        pass
    assert not gc.isenabled()


def test_two_threads_share_one_hold() -> None:
    entered, leave = threading.Event(), threading.Event()

    def other() -> None:
        with gchold.gc_held():
            entered.set()
            leave.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    assert entered.wait(5)
    with gchold.gc_held():
        pass
    assert not gc.isenabled()  # the other thread still holds it
    leave.set()
    thread.join(5)
    assert gc.isenabled()


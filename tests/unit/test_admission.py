"""InFlightLimit with real threads: the bound holds, nobody is lost, an
exception inside gives the slot back."""
import threading
import time

import pytest

from chalicelib.domain.in_flight import InFlightLimit


def test_never_more_than_limit_inside_and_every_thread_gets_through():
    limit = InFlightLimit(3)
    inside, peak, done = [0], [0], []
    lock = threading.Lock()

    def work(i):
        with limit:
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.005)
            with lock:
                inside[0] -= 1
        done.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(done) == list(range(60))
    assert peak[0] == 3


def test_a_failure_inside_releases_its_slot():
    limit = InFlightLimit(1)
    with pytest.raises(RuntimeError):
        with limit:
            raise RuntimeError("boom")
    entered = threading.Event()

    def enter():
        with limit:
            entered.set()

    t = threading.Thread(target=enter)
    t.start()
    assert entered.wait(5)
    t.join()


def test_a_waiter_sleeps_until_a_slot_is_released():
    limit = InFlightLimit(1)
    entered = threading.Event()
    with limit:
        t = threading.Thread(target=lambda: (limit.__enter__(), entered.set(), limit.__exit__(None, None, None)))
        t.start()
        assert not entered.wait(0.2)
    assert entered.wait(5)
    t.join()


def test_limit_must_be_positive():
    with pytest.raises(ValueError):
        InFlightLimit(0)

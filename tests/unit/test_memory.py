"""fedhive.common.runtime.memory: start-up without cyclic GC, then frozen."""

from __future__ import annotations

import gc
import weakref

import pytest

from fedhive.common.runtime.memory import startup_gc


class Probe:
    def __init__(self, cycle: list[object]) -> None:
        self.cycle = cycle
        cycle.append(self)


@pytest.fixture(autouse=True)
def _unfreeze():
    yield
    gc.unfreeze()  # this test process must not keep its objects frozen
    gc.enable()


def test_startup_runs_without_gc_then_freezes_what_it_built():
    gc.unfreeze()
    built: list[object] = []

    with startup_gc():
        enabled_inside = gc.isenabled()
        built.append({"model": [1, 2, 3]})
    frozen = gc.get_freeze_count()

    assert not enabled_inside
    assert gc.isenabled()
    assert frozen > 0


def test_startup_garbage_cycles_are_collected_not_frozen():
    gc.unfreeze()
    survivors: list[object] = []

    with startup_gc():
        cycle: list[object] = []
        cycle.append(cycle)  # garbage once the block ends, reachable only from itself
        probe = weakref.ref(Probe(cycle))
        del cycle
    survivors.append(probe())

    assert survivors == [None]


def test_gc_stays_disabled_if_it_was_and_start_up_errors_still_freeze():
    gc.unfreeze()
    gc.disable()

    with pytest.raises(RuntimeError), startup_gc():
        raise RuntimeError("task failed to load")

    assert not gc.isenabled()
    assert gc.get_freeze_count() > 0

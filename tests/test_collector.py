"""ui/collector.py: after the freeze, the collection after each run is cheap and still frees new garbage;
what was frozen and later became garbage is freed by the idle-time whole collection."""

from __future__ import annotations

import gc
import time
import weakref

import pytest

from ui import collector


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture
def unfrozen():
    """Each test starts and ends with nothing frozen (the test process's objects are not the server's)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_the_freeze_makes_the_per_run_collection_cheap_and_it_still_frees_new_garbage(unfrozen):
    ballast = [[i] for i in range(300_000)]  # long-lived objects, as a server's modules are
    start = time.perf_counter()
    gc.collect()
    before_ms = 1000 * (time.perf_counter() - start)
    c = collector.Collector()
    assert c.freeze() and not c.freeze()  # once
    assert gc.get_freeze_count() >= len(ballast)
    start = time.perf_counter()
    gc.collect()
    frozen_ms = 1000 * (time.perf_counter() - start)
    # 300,000 more objects to walk cost several ms on any CPU; a frozen heap is walked in well under that.
    assert frozen_ms < before_ms / 3, (before_ms, frozen_ms)
    new = weakref.ref(Node())  # garbage made after the freeze: freed at the next collection
    gc.collect()
    assert new() is None
    del ballast


def test_a_frozen_object_that_becomes_garbage_is_freed_by_the_whole_collection(unfrozen):
    node = Node()
    ref = weakref.ref(node)
    c = collector.Collector()
    c.freeze()
    del node
    gc.collect()  # what Streamlit runs after each script run
    assert ref() is not None, "frozen: the per-run collection does not walk it"
    c.full_collection()
    assert ref() is None
    assert gc.get_freeze_count() > 0, "what is still alive is frozen again"


def test_a_whole_collection_waits_for_quiet_and_comes_at_least_every_period():
    clock = Clock()
    c = collector.Collector(clock=clock)
    assert not c.due()  # just started
    c.note_run()
    clock.now += collector.IDLE_S - 1
    assert not c.due(), "a run less than IDLE_S ago"
    clock.now += 2
    assert c.due(), "quiet after activity"
    c.runs_since_full = False
    c.last_full = clock.now
    assert not c.due(), "nothing ran since the last one"
    clock.now += collector.PERIOD_S
    assert c.due(), "a quiet server still does one every PERIOD_S"


def test_outside_a_server_after_imports_freezes_nothing(unfrozen, monkeypatch):
    fresh = collector.Collector()
    monkeypatch.setattr(collector, "COLLECTOR", fresh)
    collector.after_imports()  # no Streamlit runtime in this process (as under AppTest)
    assert not fresh.frozen and gc.get_freeze_count() == 0
    assert fresh.runs_since_full


def test_each_run_start_freezes_what_survived_and_frees_what_did_not(unfrozen):
    """note_run (every run's start, once frozen): garbage made since the last run is collected, what lives
    is frozen, so the collection after the run (Streamlit's) walks only that run's objects."""
    c = collector.Collector()
    c.freeze()
    frozen = gc.get_freeze_count()
    alive = [[i] for i in range(5000)]  # made by a run and kept (a session's figure, a module imported late)
    dead = weakref.ref(Node())  # a garbage cycle made since the last run (the last run's ScriptRunner)
    c.note_run()
    assert dead() is None, "collected before the freeze, not frozen with the living"
    assert gc.get_freeze_count() >= frozen + len(alive)
    assert c.frozen_since_full >= len(alive), "counted towards the next whole collection"
    assert len(gc.get_objects(generation=2)) < len(alive), "the collection after the run no longer walks them"
    del alive


def test_a_whole_collection_comes_once_the_frozen_objects_grew_by_a_quarter():
    clock = Clock()
    c = collector.Collector(clock=clock)
    c.frozen, c.frozen_at_full, c.runs_since_full = True, 400_000, False
    c.last_full = c.last_run = clock.now
    c.frozen_since_full = 99_000
    clock.now += collector.QUIET_S + 0.1
    assert not c.due(), "under a quarter more"
    c.frozen_since_full = 100_000
    assert c.due(), "a quarter more, and no run for QUIET_S"
    c.last_run = clock.now
    assert not c.due(), "a run just now: wait for a quiet moment"
    c.frozen_since_full = 200_000
    assert c.due(), "half as many again: at once"

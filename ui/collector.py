"""Garbage collection that does not stall a click.

Streamlit collects every generation after each script run (`runner.postScriptGC`), to give memory back
at once. A whole collection walks every object the process tracks, and a dashboard process holds about
400,000 that never die (the modules, classes and functions of PyTorch, NumPy, Plotly and Streamlit):
measured 220-350 ms of one core after every rerun, holding the interpreter, so the images of a new map
could not even be served until it ended (benchmarks/interaction.py; README, "Interaction latency").

`after_imports`, called by app.py on every run, moves what is alive at the server's first run into the
permanent generation (`gc.freeze`), once per process: the collection after each run then walks only
what was made since (a few ms) and still frees that garbage at once. The cost: an object alive at the
freeze that later becomes part of a garbage cycle (the first visitor's session, when it ends) is never
freed by those collections. So a background thread does a whole collection (unfreeze, collect, freeze
again) once the server has had no run for IDLE_S seconds after some activity, and at least every
PERIOD_S seconds of quiet: what a frozen session held comes back within minutes, at a moment nobody
is waiting for a page.

Only in a real server (a Streamlit runtime exists): tests that run app.py in their own process
(streamlit.testing's AppTest) keep their interpreter's usual collector.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

IDLE_S = 30.0  # no run for this long: a good moment for a whole collection
PERIOD_S = 600.0  # a quiet server still does one this often (a frozen, closed session's memory)
CHECK_S = 5.0

log = logging.getLogger(__name__)


class Collector:
    """The freeze and the idle-time whole collections of one process (`COLLECTOR`)."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self.frozen = False
        self.last_run = clock()
        self.last_full = clock()
        self.runs_since_full = False

    def note_run(self) -> None:
        """A script run (or a fragment's) started now."""
        self.last_run = self._clock()
        self.runs_since_full = True

    def freeze(self) -> bool:
        """Collect, then freeze what is alive, once; True the first time."""
        with self._lock:
            if self.frozen:
                return False
            self.frozen = True
        gc.collect()
        gc.freeze()
        self.last_full = self._clock()
        log.info("froze %d long-lived objects out of the collections after each run", gc.get_freeze_count())
        return True

    def due(self) -> bool:
        """Whether a whole collection should run now: quiet for IDLE_S after activity, or PERIOD_S since the last."""
        now = self._clock()
        if now - self.last_run < IDLE_S:
            return False
        return self.runs_since_full or now - self.last_full >= PERIOD_S

    def full_collection(self) -> None:
        """Collect every object, the frozen ones too, then freeze what is still alive."""
        start = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        self.last_full = self._clock()
        self.runs_since_full = False
        ms = 1000 * (time.perf_counter() - start)
        log.info("whole collection while idle: %d objects freed in %.0f ms", freed, ms)

    def watch(self) -> None:  # the background thread's loop
        while True:
            time.sleep(CHECK_S)
            if self.due():
                self.full_collection()


COLLECTOR = Collector()


def after_imports() -> None:
    """app.py, on every run once its imports are done: note the run; the first run in a server freezes
    what is alive and starts the idle-time collections (see the module's docstring)."""
    from streamlit import runtime

    COLLECTOR.note_run()
    if runtime.exists() and COLLECTOR.freeze():
        threading.Thread(target=COLLECTOR.watch, name="idle-gc", daemon=True).start()


def note_fragment_run() -> None:
    """A fragment's rerun (app.py does not run): the server is not idle."""
    COLLECTOR.note_run()

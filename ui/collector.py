"""Garbage collection that does not stall a click.

Streamlit collects every generation after each script run (`runner.postScriptGC`), to give memory back
at once. A whole collection walks every object the process tracks, and a dashboard process holds about
400,000 that never die (the modules, classes and functions of PyTorch, NumPy, Plotly and Streamlit):
measured 220-350 ms of one core after every rerun, holding the interpreter, so the images of a new map
could not even be served until it ended (benchmarks/interaction.py; README, "Interaction latency").

`after_imports`, called by app.py on every run, moves what is alive at the server's first run into the
permanent generation (`gc.freeze`), once per process: the collection after each run then walks only
what was made since and still frees that garbage at once. What is made later and lives on would be
walked again after every run: the modules a page imports on its first visit (pandas, Plotly's figure
classes: 44,000 objects after an R50 session's first clicks), a model, the figures a session keeps.
Measured on the 2-core Xeon with R50: 40-300 ms per run (one core, holding the interpreter while the
browser fetches the new map's images), plus the interpreter's own whole collections on the event
loop. So every run's start (`note_run`) collects what is not frozen (about one run's objects: under
1 ms) and freezes what survives: each collection walks only one run's objects.

The cost: an object alive at a freeze that later becomes part of a garbage cycle (a replaced figure,
a visitor's session when it ends) is not freed by those collections. So a background thread does a
whole collection (unfreeze, collect, freeze again) once the server has had no run for IDLE_S seconds
after some activity, at least every PERIOD_S seconds of quiet, and whenever the frozen objects have
grown by GROWTH since the last whole collection (the interpreter's own rule for its oldest
generation, 25%), at a quiet moment (QUIET_S without a run) if one comes, and at 2 x GROWTH in any
case: what frozen garbage can hold stays in proportion to what is alive, as without the freezes.

Closed sessions: Streamlit keeps a closed session (its state: the photo, the analysis) for
server.disconnectedSessionTTL seconds in case its tab reconnects, in a TTL cache that drops expired
entries only when it is next written, i.e. when another session closes. The last visitor to leave
would keep their session, and everything it holds, until the next one leaves (issue #12: three
closed sessions held 275 MB of decoded photos after every visitor had gone). The same thread reaps
expired closed sessions every REAP_EVERY x CHECK_S seconds (`reap_closed_sessions`, on the server's event loop):
shuts each down (its uploaded files) and clears its state, then does a whole collection at once (a
session's objects are in cycles).

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
GROWTH = 0.25  # the frozen objects grew by this share since the last whole collection: one is due
QUIET_S = 1.0  # ... at a moment without a run for this long (at 2 x GROWTH: at once)
CHECK_S = 1.0
REAP_EVERY = 5  # checks between looks for expired closed sessions

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
        self.frozen_at_full = 0  # gc.get_freeze_count() after the last whole collection
        self.frozen_since_full = 0  # about how many objects `note_run` froze since

    def note_run(self) -> None:
        """A script run (or a fragment's) started now: once frozen, collect and freeze what survives, so
        the collection after this run (Streamlit's) walks only this run's objects."""
        self.last_run = self._clock()
        self.runs_since_full = True
        if self.frozen:
            # What became garbage since the last run's collection (the last run's ScriptRunner: about 200
            # objects in cycles) goes first: a collection of what is not frozen, i.e. of about one run's
            # objects (under 1 ms). Counting the survivors costs one list of them (gc.get_freeze_count()
            # walks every frozen object: 43 ms).
            gc.collect()
            self.frozen_since_full += len(gc.get_objects(generation=2))
            gc.freeze()

    def freeze(self) -> bool:
        """Collect, then freeze what is alive, once; True the first time."""
        with self._lock:
            if self.frozen:
                return False
            self.frozen = True
        gc.collect()
        gc.freeze()
        self.last_full = self._clock()
        self.frozen_at_full, self.frozen_since_full = gc.get_freeze_count(), 0
        log.info("froze %d long-lived objects out of the collections after each run", self.frozen_at_full)
        return True

    def due(self) -> bool:
        """Whether a whole collection should run now: the frozen objects grew by GROWTH (and QUIET_S without a
        run) or by 2 x GROWTH; quiet for IDLE_S after activity; or PERIOD_S since the last."""
        now = self._clock()
        grown = self.frozen_since_full
        if self.frozen and grown >= 2 * GROWTH * self.frozen_at_full:
            return True
        if self.frozen and grown >= GROWTH * self.frozen_at_full and now - self.last_run >= QUIET_S:
            return True
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
        self.frozen_at_full, self.frozen_since_full = gc.get_freeze_count(), 0
        self.runs_since_full = False
        ms = 1000 * (time.perf_counter() - start)
        log.info("whole collection while idle: %d objects freed in %.0f ms", freed, ms)

    def watch(self) -> None:  # the background thread's loop
        checks = 0
        while True:
            time.sleep(CHECK_S)
            checks += 1
            reaped = reap_closed_sessions() if checks % REAP_EVERY == 0 else 0
            if reaped:
                log.info("forgot %d closed session(s) whose time to reconnect had passed", reaped)
            if reaped or self.due():
                self.full_collection()


def reap_closed_sessions(timeout_s: float = 5.0) -> int:
    """Drop the closed sessions whose time to reconnect has passed from Streamlit's session storage (which
    would drop them only at its next write), shut each down and clear its state; returns how many. Runs
    on the server's event loop (Streamlit's runtime is not thread-safe) and waits for it.

    There is no public call for this: it reads the runtime's private attributes (Streamlit 1.4x-1.6x:
    `Runtime._session_mgr._session_storage._cache`, a TTLCache, and `Runtime._get_async_objs().eventloop`).
    Where they are not found (another Streamlit), it logs that once and reaps nothing: sessions are then
    forgotten when the next one closes, as before. tests/test_browser_deploy.py checks they are found
    (the last visitor's photo leaves the server's memory)."""
    found = session_store()
    if found is None:
        return 0
    expire, loop = found
    done = threading.Event()
    reaped: list[int] = [0]

    def on_loop() -> None:
        try:
            for _, info in expire():
                # What a session closed for good gets: its uploads and media files go (the storage's own
                # expiry skips this), and its state goes too, since Streamlit's flush loop keeps a reference
                # to the last session it served (a loop variable) until the next visitor arrives.
                info.session.shutdown()
                info.session.session_state.clear()
                reaped[0] += 1
        finally:
            done.set()

    try:
        loop.call_soon_threadsafe(on_loop)
    except RuntimeError:  # the loop is closed: the server is stopping
        return 0
    done.wait(timeout_s)
    return reaped[0]


_warned: list[bool] = []


def session_store():
    """(the closed sessions' TTL cache's `expire`, the server's event loop), or None (no runtime, or a
    Streamlit whose internals differ; see `reap_closed_sessions`)."""
    from streamlit import runtime

    if not runtime.exists():
        return None
    instance = runtime.get_instance()
    try:
        expire = instance._session_mgr._session_storage._cache.expire
        loop = instance._get_async_objs().eventloop
    except RuntimeError:  # the runtime has not started its event loop yet
        return None
    except AttributeError:
        if not _warned:
            _warned.append(True)
            log.warning("Streamlit's session storage not found: a closed session is forgotten when the next closes")
        return None
    return expire, loop


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

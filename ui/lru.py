"""A small process-wide LRU cache bounded by entries AND bytes, safe to share between threads.

`BoundedLRU.get_or_compute(key, compute)` returns the cached value of `key`, or runs `compute()`
once and keeps its result. Streamlit runs every session's script in its own thread, so:

- callers asking for the same missing key at once wait on one per-key lock: `compute` runs once
  and every waiter gets its result (even one too big to keep);
- callers of different keys compute in parallel (no lock is held while `compute` runs, except
  that key's own);
- an exception from `compute` is not cached: it propagates to the caller, and the next caller of
  that key tries again;
- after each insertion the least recently used entries are evicted until both bounds hold
  (`len <= max_entries`, `nbytes <= max_bytes`); a single value bigger than `max_bytes` is returned
  but not kept (it would evict everything and still not fit).

Sizes are measured once, when a value is stored (`sizeof(value)`, bytes). Values are shared, never
copied: callers must treat them as read-only.

With `while_referenced=True` the cache also finds a value it no longer keeps (evicted, or too big
to keep) as long as something else still references it: every computed value is remembered weakly
(`weakref.WeakValueDictionary`), and such a find is a hit, not a new `compute`. The bounds then say
how much the cache alone keeps alive; a value its callers still hold costs nothing more to find.
The decoded images use it: a session's current view holds its own image, so its reruns never decode
it again, while the memory of an image nobody holds any more goes back.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger("detr_explorer")

V = TypeVar("V")

MB = 1 << 20


@dataclass
class _InFlight:
    """A key being computed: its lock, how many callers hold or wait for it, and the result once done."""

    lock: threading.Lock
    users: int = 0
    done: bool = False
    value: Any = None


class BoundedLRU(Generic[V]):
    """LRU cache of at most `max_entries` values whose `sizeof` sum is at most `max_bytes`."""

    def __init__(self, name: str, max_entries: int, max_bytes: int, sizeof: Callable[[V], int],
                 while_referenced: bool = False):  # fmt: skip
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be positive")
        self.name = name
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._sizeof = sizeof
        # key -> value, for every computed value still referenced somewhere (None: not remembered)
        self._referenced: weakref.WeakValueDictionary | None = None
        if while_referenced:
            self._referenced = weakref.WeakValueDictionary()
        self._lock = threading.Lock()  # guards everything below; never held while computing
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()  # key -> (value, bytes); LRU first
        self._nbytes = 0
        self._in_flight: dict[Hashable, _InFlight] = {}
        self.hits = 0
        self.misses = 0  # calls that ran `compute` (successfully or not)

    # -- reading -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    @property
    def nbytes(self) -> int:
        """Bytes held by the kept values (as measured when each was stored)."""
        with self._lock:
            return self._nbytes

    def keys(self) -> list[Hashable]:
        """The kept keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def _hit(self, key: Hashable) -> tuple[bool, V | None]:
        """(True, value) and mark it most recently used, or (False, None). Call with self._lock held.
        A value no longer kept but still referenced elsewhere (`while_referenced`) is kept again."""
        entry = self._entries.get(key)
        if entry is None:
            value = self._referenced.get(key) if self._referenced is not None else None
            if value is None:
                return False, None
            self._store(key, value, int(self._sizeof(value)), quiet=True)
            self.hits += 1
            return True, value
        self._entries.move_to_end(key)
        self.hits += 1
        return True, entry[0]

    # -- computing ---------------------------------------------------------------------------------

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The value of `key`: cached, or `compute()` run once for all concurrent callers of `key`."""
        with self._lock:
            found, value = self._hit(key)
            if found:
                return value  # type: ignore[return-value]
            flight = self._in_flight.get(key)
            if flight is None:
                flight = self._in_flight[key] = _InFlight(threading.Lock())
            flight.users += 1
        try:
            with flight.lock:  # one caller of this key at a time; other keys are not blocked
                with self._lock:
                    if flight.done:  # computed by the caller we waited for (kept or too big to keep)
                        self.hits += 1
                        return flight.value
                    found, value = self._hit(key)
                    if found:
                        return value  # type: ignore[return-value]
                    self.misses += 1
                value = compute()  # an exception propagates and nothing is cached
                size = int(self._sizeof(value))
                with self._lock:
                    flight.done, flight.value = True, value
                    self._store(key, value, size)
                return value
        finally:
            with self._lock:
                flight.users -= 1
                if flight.users == 0 and self._in_flight.get(key) is flight:
                    del self._in_flight[key]  # the last one out drops the in-flight record (and its value)

    def _store(self, key: Hashable, value: V, size: int, quiet: bool = False) -> None:
        """Keep `value` as the most recent entry and evict LRU entries until both bounds hold (lock held)."""
        if self._referenced is not None:
            self._referenced[key] = value
        if size > self.max_bytes:
            if not quiet:
                log.log(
                    logging.INFO if self._referenced is not None else logging.WARNING,
                    "%s cache: an entry of %.1f MB is larger than the whole cache (%.1f MB): returned, not kept%s",
                    self.name,
                    size / MB,
                    self.max_bytes / MB,
                    " (found again while something references it)" if self._referenced is not None else "",
                )
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._nbytes -= old[1]
        self._entries[key] = (value, size)
        self._nbytes += size
        while len(self._entries) > self.max_entries or self._nbytes > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._nbytes -= evicted

    def clear(self) -> None:
        """Forget every kept value (computations in flight finish and are stored as usual)."""
        with self._lock:
            self._entries.clear()
            self._nbytes = 0
            if self._referenced is not None:
                self._referenced.clear()

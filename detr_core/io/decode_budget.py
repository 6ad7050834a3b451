"""Run a decoder on untrusted bytes under a budget it cannot outrun: a worker process with limits.

`run_budgeted(fn, data)` sends `data` to one of a small pool of worker processes ('forkserver'
start method: the parent has torch threads), which calls `fn(data) -> (meta, payload_bytes)` with
an address-space ceiling (RLIMIT_AS) and a CPU limit (RLIMIT_CPU) set in the worker, while the
parent waits at most a wall-clock deadline. A worker that runs past either is killed and replaced;
the caller gets `ImageError` saying which budget was spent. A worker that produced a large result
is retired afterwards, so the memory its decoder grew leaves with it.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import resource
import sys
import threading
import types
from collections.abc import Callable
from multiprocessing import shared_memory

from ..errors import ImageError

__all__ = ["CPU_SECONDS", "MEMORY_BYTES", "WALL_SECONDS", "run_budgeted", "warm_up"]

CPU_SECONDS = 3  # of one core, per decode
WALL_SECONDS = 10.0  # per decode, waiting included (a shared 2-core machine)
MEMORY_BYTES = 1_536 * 2**20  # address space a decode may add to the worker
POOL_SIZE = 2
_RETIRE_AFTER_BYTES = 64 * 2**20  # a worker that returned more than this is replaced
_RETIRE_AFTER_JOBS = 200

_ctx = mp.get_context("forkserver")
_ctx.set_forkserver_preload([__name__])


def _vm_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _serve(conn, memory_bytes: int) -> None:  # runs in the worker
    resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + memory_bytes, resource.RLIM_INFINITY))
    while True:
        try:
            fn, cpu_seconds = conn.recv()
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(used.ru_utime + used.ru_stime)
        resource.setrlimit(resource.RLIMIT_CPU, (spent + cpu_seconds + 1, resource.RLIM_INFINITY))
        try:
            meta, payload = fn(data)
        except ImageError as e:
            conn.send(("error", str(e)))
            continue
        except MemoryError:
            conn.send(("memory", None))
            continue
        except Exception as e:  # a decoder bug is still an answer about this file
            conn.send(("error", f"the image could not be decoded ({type(e).__name__}: {e})"))
            continue
        finally:
            del data
        view = memoryview(payload).cast("B")
        try:
            shm = shared_memory.SharedMemory(create=True, size=max(len(view), 1))
        except (MemoryError, OSError):
            conn.send(("memory", None))
            continue
        shm.buf[: len(view)] = view
        conn.send(("ok", (meta, shm.name, len(view))))
        del view, payload
        shm.close()
        conn.recv()  # the parent has copied it out (and unlinked it)


_start_lock = threading.Lock()


@contextlib.contextmanager
def _no_main_module():
    """Hide the parent's `__main__` while a worker (and the forkserver) starts.

    multiprocessing re-imports the parent's main module in the child by its file. Under a Streamlit
    server or its AppTest, `__main__` can be the app script, whose import would run the app in the
    worker (seen: the worker died at start, "connection reset"). The worker needs only this module,
    which it imports by name when it unpickles `_serve`.
    """
    with _start_lock:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


class _Worker:
    def __init__(self) -> None:
        self.conn, child = _ctx.Pipe()
        self.proc = _ctx.Process(target=_serve, args=(child, MEMORY_BYTES), daemon=True, name="detr-decode")
        with _no_main_module():
            self.proc.start()
        child.close()
        self.jobs = 0

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(timeout=2)
        finally:
            self.conn.close()


_idle: queue.LifoQueue[_Worker | None] = queue.LifoQueue()
_slots = threading.BoundedSemaphore(POOL_SIZE)
_owner_pid = os.getpid()


def _take() -> _Worker:
    global _owner_pid
    if _owner_pid != os.getpid():  # forked after use: the parent's workers are not ours
        while not _idle.empty():
            _idle.get_nowait()
        _owner_pid = os.getpid()
    try:
        worker = _idle.get_nowait()
    except queue.Empty:
        worker = None
    if worker is None or not worker.proc.is_alive():
        worker = _Worker()
    return worker


def warm_up() -> None:
    """Start the pool's workers now (the first start imports the library in the forkserver, seconds),
    so that the first upload's deadline is spent decoding, not starting."""
    workers = [_take() for _ in range(POOL_SIZE)]
    for worker in workers:
        worker.conn.send((_noop, 1))
        worker.conn.send_bytes(b"")
    for worker in workers:
        if not worker.conn.poll(60):
            worker.kill()
            continue
        _kind, (_meta, name, size) = worker.conn.recv()
        _copy_out(name, size)
        worker.conn.send(True)
        _idle.put(worker)


def _noop(data: bytes) -> tuple[None, bytes]:
    return None, b""


def _copy_out(name: str, size: int) -> bytearray:
    shm = shared_memory.SharedMemory(name=name)
    try:
        out = bytearray(size)
        out[:] = shm.buf[:size]
        return out
    finally:
        shm.close()
        shm.unlink()


def run_budgeted(
    fn: Callable[[bytes], tuple[object, bytes]],
    data: bytes,
    cpu_seconds: int = CPU_SECONDS,
    wall_seconds: float = WALL_SECONDS,
) -> tuple[object, bytes]:
    """`fn(data)` in a worker under the budget -> its (meta, payload); `ImageError` when refused.

    `fn` must be a module-level function (it is pickled by reference). Its own `ImageError`s
    come back with their messages; any other exception becomes an `ImageError` too.
    """
    if not _slots.acquire(timeout=wall_seconds):
        raise ImageError(f"the server is busy decoding other images; try again in a few seconds ({wall_seconds:.0f} s)")
    worker = None
    try:
        worker = _take()
        worker.conn.send((fn, cpu_seconds))
        worker.conn.send_bytes(data)
        if not worker.conn.poll(wall_seconds):
            worker.kill()
            worker = None
            raise ImageError(f"decoding this image took longer than {wall_seconds:.0f} s, the limit; it was stopped")
        try:
            kind, meta = worker.conn.recv()
            payload = b""
            if kind == "ok":
                meta, name, size = meta
                payload = _copy_out(name, size)
                worker.conn.send(True)
        except (EOFError, OSError):
            worker.kill()
            worker = None
            raise ImageError(
                f"decoding this image needed more than {cpu_seconds} s of CPU or "
                f"{MEMORY_BYTES // 2**20} MB of memory, the limits; it was stopped"
            ) from None
        if kind == "memory":
            worker.kill()
            worker = None
            raise ImageError(f"decoding this image needs more than {MEMORY_BYTES // 2**20} MB of memory, the limit")
        if kind == "error":
            raise ImageError(meta)
        worker.jobs += 1
        if len(payload) > _RETIRE_AFTER_BYTES or worker.jobs >= _RETIRE_AFTER_JOBS:
            worker.kill()
            worker = None
        return meta, payload
    finally:
        if worker is not None:
            _idle.put(worker)
        _slots.release()

"""Run a decoder on untrusted bytes under a budget it cannot outrun: a worker process with limits.

`run_budgeted(fn, data)` sends `data` to one of a small pool of worker processes ('forkserver'
start method: the parent has torch threads), which calls `fn(data) -> (meta, payload)` with an
address-space ceiling (RLIMIT_AS) and a CPU limit (RLIMIT_CPU) set in the worker, while the parent
waits at most a wall-clock deadline. A worker that runs past either is killed and replaced; the
caller gets `ImageError` saying which budget was spent.

The payload comes back through shared memory, not the pipe: the worker puts each result in an
anonymous memory file (memfd), `fn` writing straight into it (`output_buffer(n)`: a decoder decodes
into it) or returning bytes the worker copies there, and passes the file to the parent, which maps
it read-only and returns a memoryview of it: no copy, and the memory is the kernel's to take back as
soon as the last view of it goes (a killed worker's half-written result goes with the worker).
After a result the worker allocates the memory for the next one of that size (`_Spare`), between
jobs; it gives that back after `_SPARE_IDLE_S` without work.

The workers import only what the forkserver preloaded: this module and `detr_core.io.image`, which
import PIL and numpy but not torch (`tests/test_decode_budget.py` checks), so a worker starts in
tens of milliseconds, not the seconds torch costs. `warm_up()` starts the pool ahead of the first
decode; a worker killed or retired is replaced in the background. A worker whose resident memory
grew past `_RETIRE_ABOVE_RSS` (a large decode, freed but kept by malloc) is retired after its job,
so the memory its decoder grew leaves with it.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing as mp
import os
import queue
import resource
import sys
import tempfile
import threading
import types
from collections.abc import Callable
from multiprocessing import reduction

from ..errors import ImageError

__all__ = ["CPU_SECONDS", "MEMORY_BYTES", "WALL_SECONDS", "output_buffer", "run_budgeted", "warm_up"]

CPU_SECONDS = 3  # of one core, per decode
WALL_SECONDS = 10.0  # per decode, waiting included (a shared 2-core machine)
MEMORY_BYTES = 1_536 * 2**20  # address space a decode may add to the worker
POOL_SIZE = 2
_RETIRE_ABOVE_RSS = 192 * 2**20  # a worker resident in more than this after a job is replaced
_RETIRE_AFTER_JOBS = 200
# What the forkserver imports once, and every worker inherits: the decoder, never torch.
PRELOAD = [__name__, "detr_core.io.image"]

_ctx = mp.get_context("forkserver")
_ctx.set_forkserver_preload(PRELOAD)


def _statm(field: int) -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[field]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _memory_file(size: int = 0) -> int:
    """An anonymous file in memory of `size` bytes (Linux memfd; elsewhere an unlinked temporary file)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("detr-decode", os.MFD_CLOEXEC)
    else:
        fd, path = tempfile.mkstemp(prefix="detr-decode-")
        os.unlink(path)
    if size:
        os.ftruncate(fd, size)
    return fd


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # allocate (or map) every page now, in one go


class _Spare:
    """A memory file whose pages are already allocated, for the worker's next result.

    Fresh shared-memory pages cost about 30 ms per 48 MB on the development machine (the kernel
    zeroes them, 4 kB at a time): a 12-megapixel decode into a fresh file would pay that on top of
    the decode. After each result the worker allocates a file of the same size while the parent
    goes on, so the next photo of that size is decoded into memory that is ready. It stays mapped
    (its pages count in the worker's resident memory, as they should) and is dropped when the
    worker has been idle for `_SPARE_IDLE_S`.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.fd = _memory_file(size)
        self.map = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED | _POPULATE)

    def take(self, nbytes: int) -> int | None:
        """Its fd, cut to `nbytes`, if it is large enough (else None); the spare is used up either way."""
        self.map.close()
        if nbytes > self.size:
            os.close(self.fd)
            return None
        os.ftruncate(self.fd, nbytes)
        return self.fd

    def drop(self) -> None:
        self.map.close()
        os.close(self.fd)


_SPARE_MAX = 128 * 2**20  # no spare for results larger than this (a 32-megapixel photo)
_SPARE_IDLE_S = 30.0


class _Output:
    """The worker's memory file for one job's result: `output_buffer(n)` makes and maps it."""

    def __init__(self, spare: _Spare | None) -> None:
        self.spare, self.fd, self.map, self.view = spare, -1, None, None

    def _file(self, nbytes: int) -> int:
        spare, self.spare = self.spare, None
        fd = spare.take(nbytes) if spare is not None else None
        return fd if fd is not None else _memory_file(nbytes)

    def buffer(self, nbytes: int) -> memoryview:
        if self.fd >= 0:
            raise RuntimeError("output_buffer() was already called for this job")
        self.fd = self._file(nbytes)
        if nbytes == 0:
            self.view = memoryview(bytearray())
        else:
            self.map = mmap.mmap(self.fd, nbytes, flags=mmap.MAP_SHARED | _POPULATE)
            self.view = memoryview(self.map)
        return self.view

    def finish(self, payload) -> tuple[int, int]:
        """The result in the file ((fd, size)): copied there unless it is the output buffer."""
        if self.view is not None and isinstance(payload, memoryview) and payload.obj is self.view.obj:
            size = len(self.view)
        else:
            data = memoryview(payload).cast("B")
            size = len(data)
            self.close()
            if self.fd < 0:
                self.fd = self._file(size)
            os.ftruncate(self.fd, size)
            written = 0
            while written < size:
                written += os.pwrite(self.fd, data[written:], written)
        self.close()
        fd, self.fd = self.fd, -1
        return fd, size

    def close(self) -> None:
        # A decoder that raised may still hold the buffer (its image, in the exception's traceback):
        # then the mapping goes when that does, a moment later, and closing it now would raise.
        with contextlib.suppress(BufferError):
            if self.view is not None:
                self.view.release()
            if self.map is not None:
                self.map.close()
        self.view = self.map = None

    def discard(self) -> None:
        self.close()
        for fd in (self.fd, *([self.spare.fd] if self.spare is not None else [])):
            if fd >= 0:
                os.close(fd)
        if self.spare is not None:
            self.spare.map.close()
        self.fd, self.spare = -1, None


_job: _Output | None = None  # in a worker: the running job's output


def output_buffer(nbytes: int) -> memoryview:
    """In a worker, while `fn` runs: a writable buffer of `nbytes` in the memory the parent reads
    the result from; `fn` returns it (or a view of all of it) as its payload, and nothing is copied."""
    if _job is None:
        raise RuntimeError("output_buffer() is only available inside run_budgeted's worker")
    return _job.buffer(nbytes)


def _serve(conn, memory_bytes: int) -> None:  # runs in the worker
    global _job
    resource.setrlimit(resource.RLIMIT_AS, (_statm(0) + memory_bytes, resource.RLIM_INFINITY))
    spare: _Spare | None = None
    while True:
        try:
            if spare is not None and not conn.poll(_SPARE_IDLE_S):
                spare.drop()  # idle: the memory goes back
                spare = None
            fn, cpu_seconds = conn.recv()
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(used.ru_utime + used.ru_stime)
        resource.setrlimit(resource.RLIMIT_CPU, (spent + cpu_seconds + 1, resource.RLIM_INFINITY))
        _job, spare = _Output(spare), None
        try:
            try:
                meta, payload = fn(data)
                fd, size = _job.finish(payload)
                del payload
            finally:
                del data
                _job.discard()
                _job = None
        except ImageError as e:
            conn.send(("error", str(e)))
            continue
        except MemoryError:
            conn.send(("memory", None))
            continue
        except Exception as e:  # a decoder bug is still an answer about this file
            conn.send(("error", f"the image could not be decoded ({type(e).__name__}: {e})"))
            continue
        try:
            conn.send(("ok", (meta, size, _statm(1))))
            reduction.send_handle(conn, fd, os.getppid())
        except (EOFError, OSError):
            return
        finally:
            os.close(fd)
        if 0 < size <= _SPARE_MAX:
            with contextlib.suppress(OSError, MemoryError):
                spare = _Spare(size)


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


def _put_idle(worker: _Worker) -> None:
    if _idle.qsize() >= POOL_SIZE:  # a replacement started while this one was busy: one too many
        worker.kill()
    else:
        _idle.put(worker)


def _replace_in_background() -> None:
    """Start a worker for the one just killed, off the caller's path (the next decode finds it warm)."""

    def start() -> None:
        with contextlib.suppress(Exception):  # the next decode starts one itself
            _put_idle(_Worker())

    threading.Thread(target=start, daemon=True, name="detr-decode-start").start()


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
    """Start the pool's workers now (the first start also starts the forkserver, which imports the
    decoder: about half a second), so that the first upload's deadline is spent decoding."""
    workers = [_take() for _ in range(POOL_SIZE)]
    for worker in workers:
        try:
            worker.conn.send((_noop, 1))
            worker.conn.send_bytes(b"")
            if not worker.conn.poll(60):
                raise OSError("the worker did not answer")
            worker.conn.recv()
            os.close(reduction.recv_handle(worker.conn))
        except (EOFError, OSError):
            worker.kill()
            continue
        _put_idle(worker)


def _noop(data: bytes) -> tuple[None, bytes]:
    return None, b""


def _map_result(fd: int, size: int) -> memoryview | bytes:
    """The worker's result in `fd`, mapped read-only (no copy); `fd` may be closed afterwards."""
    if size == 0:
        return b""
    if os.fstat(fd).st_size < size:  # not what the worker said: mapping it would fault later
        raise OSError("the result is shorter than announced")
    flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # its pages are resident: map them now
    return memoryview(mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ))


def run_budgeted(
    fn: Callable[[bytes], tuple[object, object]],
    data: bytes,
    cpu_seconds: int = CPU_SECONDS,
    wall_seconds: float = WALL_SECONDS,
) -> tuple[object, memoryview | bytes]:
    """`fn(data)` in a worker under the budget -> its (meta, payload); `ImageError` when refused.

    `fn` must be a module-level function (it is pickled by reference) of a module the worker can
    import. Its payload is any bytes-like object, or `output_buffer(n)` which it filled; it comes
    back as a read-only memoryview of shared memory (b"" when empty), which stays valid as long as
    it (or an object made on it, e.g. `PIL.Image.frombuffer`) is referenced. Its own `ImageError`s
    come back with their messages; any other exception becomes an `ImageError` too.
    """
    if not _slots.acquire(timeout=wall_seconds):
        raise ImageError(f"the server is busy decoding other images; try again in a few seconds ({wall_seconds:.0f} s)")
    worker = None
    fd = -1
    try:
        worker = _take()
        try:
            worker.conn.send((fn, cpu_seconds))
            worker.conn.send_bytes(data)
            answered = worker.conn.poll(wall_seconds)
        except (EOFError, OSError):  # it died between jobs (killed from outside): one more try
            worker.kill()
            worker = None
            raise ImageError("the decoding worker stopped unexpectedly; try again") from None
        if not answered:
            worker.kill()
            worker = None
            raise ImageError(f"decoding this image took longer than {wall_seconds:.0f} s, the limit; it was stopped")
        try:
            kind, meta = worker.conn.recv()
            payload: memoryview | bytes = b""
            rss = 0
            if kind == "ok":
                meta, size, rss = meta
                fd = reduction.recv_handle(worker.conn)
                payload = _map_result(fd, size)
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
        if rss > _RETIRE_ABOVE_RSS or worker.jobs >= _RETIRE_AFTER_JOBS:
            worker.kill()
            worker = None
        return meta, payload
    finally:
        if fd >= 0:
            os.close(fd)
        if worker is not None:
            _put_idle(worker)
        else:
            _replace_in_background()
        _slots.release()

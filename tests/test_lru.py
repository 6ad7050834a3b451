"""ui/lru.py: the process-wide cache of analyses and decoded images, bounded by entries and bytes.

The cache is what keeps a long-running server's memory flat (tests/test_load.py measures it), and
what makes concurrent sessions asking for the same image run the model once.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from ui.lru import BoundedLRU  # noqa: E402


def blob_cache(max_entries: int = 100, max_bytes: int = 100) -> BoundedLRU[bytes]:
    """A cache of byte strings, each as big as its length."""
    return BoundedLRU("test", max_entries, max_bytes, sizeof=len)


class Counter:
    """compute() functions that count their calls (thread-safe)."""

    def __init__(self):
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, key: str, value, sleep: float = 0.0):
        def compute():
            with self._lock:
                self.calls[key] = self.calls.get(key, 0) + 1
            if sleep:
                time.sleep(sleep)
            return value

        return compute


def test_the_byte_bound_evicts_the_least_recently_used_entries():
    cache, count = blob_cache(max_entries=100, max_bytes=100), Counter()
    for key in "abc":  # 3 x 30 bytes: all fit
        cache.get_or_compute(key, count(key, b"x" * 30))
    assert cache.get_or_compute("a", count("a", b"?")) == b"x" * 30  # a hit: "a" is now the most recent
    cache.get_or_compute("d", count("d", b"y" * 50))  # 140 bytes: "b", then "c" must go (LRU first)
    assert cache.keys() == ["a", "d"]
    assert cache.nbytes == 80 <= cache.max_bytes
    assert count.calls == {"a": 1, "b": 1, "c": 1, "d": 1}
    cache.get_or_compute("b", count("b", b"z" * 30))  # evicted: computed again; 110 bytes: "a" goes
    assert count.calls["b"] == 2
    assert cache.keys() == ["d", "b"] and cache.nbytes == 80


def test_the_entry_bound_evicts_the_least_recently_used_entry():
    cache, count = blob_cache(max_entries=2, max_bytes=10**9), Counter()
    cache.get_or_compute("a", count("a", b"1"))
    cache.get_or_compute("b", count("b", b"2"))
    cache.get_or_compute("a", count("a", b"?"))  # hit
    cache.get_or_compute("c", count("c", b"3"))  # 3 entries > 2: "b" is the least recently used
    assert cache.keys() == ["a", "c"] and len(cache) == 2
    assert "b" not in cache and cache.nbytes == 2
    assert count.calls == {"a": 1, "b": 1, "c": 1}


def test_an_entry_bigger_than_the_whole_budget_is_returned_but_not_kept():
    cache, count = blob_cache(max_bytes=100), Counter()
    cache.get_or_compute("small", count("small", b"s" * 40))
    big = b"B" * 101
    assert cache.get_or_compute("big", count("big", big)) is big
    assert "big" not in cache
    assert cache.keys() == ["small"] and cache.nbytes == 40  # nothing was evicted for it
    cache.get_or_compute("big", count("big", big))
    assert count.calls["big"] == 2  # not cached: computed again


def test_an_exception_is_not_cached_and_propagates():
    cache, calls = blob_cache(), []

    def failing():
        calls.append("fail")
        raise ValueError("bad image")

    with pytest.raises(ValueError, match="bad image"):
        cache.get_or_compute("k", failing)
    assert "k" not in cache and len(cache) == 0 and cache.nbytes == 0
    with pytest.raises(ValueError):
        cache.get_or_compute("k", failing)
    assert calls == ["fail", "fail"]  # tried again, not a cached failure
    assert cache.get_or_compute("k", lambda: b"good") == b"good"
    assert cache.keys() == ["k"]


@pytest.mark.parametrize("size", [10, 1000], ids=["kept", "too big to keep"])
def test_eight_threads_asking_for_the_same_key_at_once_compute_it_once(size):
    cache, count = blob_cache(max_bytes=100), Counter()
    value = b"v" * size
    barrier = threading.Barrier(8)
    results, errors = [], []

    def ask():
        try:
            barrier.wait(timeout=30)
            results.append(cache.get_or_compute("same", count("same", value, sleep=1.0)))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert count.calls == {"same": 1}
    assert len(results) == 8 and all(r is value for r in results)  # the one computed object, shared


def test_different_keys_compute_in_parallel():
    """Four computations of four keys must all be running at the same time: each waits inside
    compute() for the other three (a barrier). A cache that computed one key at a time would break
    the barrier after its timeout."""
    cache = blob_cache(max_entries=10, max_bytes=10**6)
    inside = threading.Barrier(4, timeout=20)
    results, errors = {}, []

    def ask(key: str):
        def compute():
            inside.wait()  # raises BrokenBarrierError unless all four are computing at once
            return key.encode()

        try:
            results[key] = cache.get_or_compute(key, compute)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(k,)) for k in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert results == {k: k.encode() for k in "abcd"}
    assert sorted(cache.keys()) == list("abcd")


def test_a_waiter_for_a_failed_computation_computes_it_itself():
    cache = blob_cache()
    started, release = threading.Event(), threading.Event()
    outcomes = []

    def failing():
        started.set()
        release.wait(timeout=20)
        raise RuntimeError("first try fails")

    def first():
        try:
            cache.get_or_compute("k", failing)
        except RuntimeError as e:
            outcomes.append(str(e))

    t = threading.Thread(target=first)
    t.start()
    assert started.wait(timeout=20)
    second = threading.Thread(target=lambda: outcomes.append(cache.get_or_compute("k", lambda: b"ok")))
    second.start()
    time.sleep(0.1)  # the second caller now waits on the key's lock
    release.set()
    t.join(timeout=20)
    second.join(timeout=20)
    assert outcomes == ["first try fails", b"ok"]
    assert cache.keys() == ["k"]


class Blob:
    """A value that can be referenced weakly (bytes cannot)."""

    def __init__(self, data: bytes):
        self.data = data


def blob_sizeof(blob: Blob) -> int:
    return len(blob.data)


@pytest.mark.parametrize("size", [30, 101], ids=["evicted", "too big to keep"])
def test_a_value_still_referenced_elsewhere_is_found_again_and_not_computed(size):
    """while_referenced: a value the cache dropped (evicted, or bigger than its budget) is found
    while a caller still holds it; once nobody does, it is computed again (the cache kept nothing)."""
    import gc

    cache, count = BoundedLRU("test", 100, 100, sizeof=blob_sizeof, while_referenced=True), Counter()
    held = cache.get_or_compute("k", count("k", Blob(b"x" * size)))
    for other in "abcd":  # 4 x 30 bytes: "k" is evicted (when it was kept at all)
        cache.get_or_compute(other, count(other, Blob(b"o" * 30)))
    assert "k" not in cache and cache.nbytes <= cache.max_bytes
    assert cache.get_or_compute("k", count("k", Blob(b"?"))) is held  # found through the reference
    assert count.calls["k"] == 1
    assert cache.nbytes <= cache.max_bytes
    del held
    gc.collect()
    for other in "efgh":  # "k" (kept again when it fit) is evicted again; nothing else holds it
        cache.get_or_compute(other, count(other, Blob(b"o" * 30)))
    assert cache.get_or_compute("k", count("k", Blob(b"new"))).data == b"new"
    assert count.calls["k"] == 2


def test_without_while_referenced_a_dropped_value_is_computed_again():
    cache, count = BoundedLRU("test", 1, 100, sizeof=blob_sizeof), Counter()
    held = cache.get_or_compute("k", count("k", Blob(b"x")))
    cache.get_or_compute("a", count("a", Blob(b"a")))
    assert cache.get_or_compute("k", count("k", Blob(b"y"))) is not held
    assert count.calls["k"] == 2


def test_clear_forgets_everything():
    cache = blob_cache()
    cache.get_or_compute("a", lambda: b"aa")
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0 and "a" not in cache


def test_the_bounds_must_be_positive():
    with pytest.raises(ValueError):
        BoundedLRU("x", 0, 10, sizeof=len)
    with pytest.raises(ValueError):
        BoundedLRU("x", 10, 0, sizeof=len)


# ------------------------------------------------------------------------------------------------
# The dashboard's caches


def test_the_dashboard_runs_the_model_once_for_concurrent_sessions_asking_for_one_image():
    """ui.caches: four sessions (threads) ask for the analysis of the same new image at once: one
    forward pass (MODEL_RUNS + 1), one shared Analysis; asking again runs nothing."""
    from detr_core import MODELS
    from ui import caches as state

    spec = MODELS[state.SHAPES]
    image_bytes = state.scene_png(17)
    image_hash = hashlib.sha256(image_bytes).hexdigest()
    key = state.AnalysisKey(state.SHAPES, spec.checkpoint.filename, image_hash, spec.min_size, spec.max_size)
    image = state.decoded_image(image_hash, image_bytes)
    state.get_model(state.SHAPES, spec.checkpoint.filename)  # loaded before the clock starts
    state.ANALYSES.clear()
    runs = state.model_runs()
    barrier = threading.Barrier(4)
    results = []

    def session():
        barrier.wait(timeout=30)
        results.append(state.cached_analysis(key, image))

    threads = [threading.Thread(target=session) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 4 and all(r is results[0] for r in results)
    assert state.model_runs() == runs + 1
    assert state.cached_analysis(key, image) is results[0]
    assert state.model_runs() == runs + 1
    assert state.ANALYSES.nbytes >= results[0].nbytes() > 0
    image = state.decoded_image(image_hash, image_bytes)
    assert state.decoded_image(image_hash, image_bytes) is image
    assert state.IMAGES.nbytes >= image.width * image.height * 4  # Pillow keeps RGB as RGBX
    state.clear_caches()
    assert len(state.ANALYSES) == 0 and len(state.IMAGES) == 0


def test_the_dashboard_caches_are_bounded_by_bytes():
    from ui import caches as state

    assert state.ANALYSES.max_bytes == state.ANALYSIS_CACHE_BYTES and state.ANALYSES.max_entries == 16
    assert state.IMAGES.max_bytes == state.IMAGE_CACHE_BYTES and state.IMAGES.max_entries == 16
    # an R50-DC5 analysis at 800x1333 is about 80 MB and a decoded 24-megapixel photo 96 MB: 16 of
    # either would not fit, so the byte bounds, not the entry bounds, decide there
    assert state.ANALYSIS_CACHE_BYTES < 16 * 80e6 and state.IMAGE_CACHE_BYTES < 16 * 96e6
    # what stays after every visitor left (issue #12's burst): no decoded 24-megapixel photo at all
    assert state.IMAGE_CACHE_BYTES < 6000 * 4000 * 4


def test_a_decoded_image_too_big_to_keep_is_decoded_once_while_held_and_unmapped_when_dropped(monkeypatch):
    """A photo larger than IMAGE_CACHE_BYTES: IMAGES does not keep it, yet a session that holds it
    (its view) gets the same object on every rerun without a second decode; once nobody holds it,
    the decode worker's shared memory is unmapped (the memory is the system's again)."""
    import gc
    import io

    from PIL import Image

    from detr_core.io.image import budget_on
    from ui import caches as state

    if not budget_on():
        pytest.skip("the decode budget is off ($DETR_DECODE_BUDGET=0): no shared memory to check")
    side = 4200  # 4200 x 4200 x 4 bytes = 67 MB > 64 MB
    assert side * side * 4 > state.IMAGE_CACHE_BYTES
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (40, 90, 200)).save(buf, "PNG")
    data = buf.getvalue()
    image_hash = hashlib.sha256(data).hexdigest()
    decodes, load_image = [], state.load_image

    def counted(source):
        decodes.append(1)
        return load_image(source)

    monkeypatch.setattr(state, "load_image", counted)
    gc.collect()
    before = memory_maps()
    held = state.decoded_image(image_hash, data)
    assert held.size == (side, side) and image_hash not in state.IMAGES  # not kept by the cache
    assert memory_maps() == before + 1
    assert state.decoded_image(image_hash, data) is held and len(decodes) == 1  # a rerun: no decode
    del held
    gc.collect()
    assert memory_maps() == before  # nothing keeps the 67 MB mapping
    again = state.decoded_image(image_hash, data)
    assert len(decodes) == 2 and again.getpixel((side - 1, side - 1)) == (40, 90, 200)


def memory_maps() -> int:
    """Mappings of the decode workers' results in this process (/proc/self/maps)."""
    with open("/proc/self/maps") as f:
        return sum("detr-decode" in line for line in f)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_freed_memory_gives_back_what_malloc_kept_after_large_frees():
    """Pillow's 16 MB blocks freed in a script thread's arena stay resident (glibc keeps them once
    its mmap threshold has risen past 16 MB); `release_freed_memory` returns them (the burst of the
    load test: 346 MB)."""
    import platform

    from PIL import Image

    from ui import caches as state

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc: nothing to trim")
    held = []

    def work():
        Image.new("RGB", (2000, 2000))  # one 16 MB block, freed: the mmap threshold rises past it
        images = [Image.new("RGB", (2000, 2000), (i, 0, 0)) for i in range(12)]
        held.extend(images[1::2])  # every other one stays: the freed ones are holes malloc keeps
        del images

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    kept = rss_anon_mb()
    state.release_freed_memory()
    assert rss_anon_mb() < kept - 60  # six 16 MB holes: about 96 MB back
    assert len(held) == 6


def rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


@pytest.mark.parametrize(("mode", "per_pixel"), [("RGB", 4), ("RGBA", 4), ("L", 1), ("I;16", 2), ("F", 4)])
def test_a_decoded_image_counts_the_bytes_pillow_holds(mode, per_pixel):
    from PIL import Image

    from ui import caches as state

    assert state.image_nbytes(Image.new(mode, (30, 20))) == 30 * 20 * per_pixel

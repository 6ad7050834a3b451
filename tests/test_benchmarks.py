"""benchmarks/floor_app.py, the "Streamlit alone" column of benchmarks/interaction.py: it runs, and it has
the widgets (by the labels the benchmark drives) and the captions the benchmark waits for; the benchmark's
CPU accounting counts what a process used."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parent.parent


def test_the_floor_app_has_what_the_benchmark_drives():
    at = AppTest.from_file(str(REPO / "benchmarks" / "floor_app.py"), default_timeout=60).run()
    assert not at.exception
    assert [r.label for r in at.radio] == ["Direction"]
    assert [s.label for s in at.selectbox] == ["Detection"]
    assert [s.label for s in at.segmented_control] == ["Encoder layer", "Head"]
    text = " ".join(m.value for m in at.markdown)
    assert "Selected cell: **(12, 17)** · where this location looks · layer 6 · head mean" in text
    assert "Selected detection: query 7 " in text
    at.segmented_control[1].set_value("3").run()
    at.selectbox[0].select("query 42: class 0").run()
    text = " ".join(m.value for m in at.markdown)
    assert "· head 3" in text and "Selected detection: query 42 " in text


def test_the_cpu_accounting_counts_what_the_watched_process_used():
    """interaction.cpu_ms, watching this process as the server: 0.3 s of busy loop shows as about that much
    (ticks are 10 ms, the loop's own thread is all that runs), 0.3 s of sleep as next to nothing."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import interaction

    interaction.SERVER_PID[:] = [os.getpid()]
    try:
        start, _ = interaction.cpu_ms()
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            pass
        busy, _ = interaction.cpu_ms()
        time.sleep(0.3)
        idle, browsers = interaction.cpu_ms()
    finally:
        interaction.SERVER_PID.clear()
    assert 280 <= busy - start <= 400
    first = interaction.stolen_ms()  # the host's steal counter: a count that only grows
    assert 0 <= first <= interaction.stolen_ms()
    assert idle - busy <= 30
    assert all(used >= 0 for used in browsers.values())

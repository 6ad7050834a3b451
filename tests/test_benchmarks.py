"""benchmarks/floor_app.py, the "Streamlit alone" column of benchmarks/interaction.py: it runs, and it has
the widgets (by the labels the benchmark drives) and the captions the benchmark waits for."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parent.parent


def test_the_floor_app_has_what_the_benchmark_drives():
    at = AppTest.from_file(str(REPO / "benchmarks" / "floor_app.py"), default_timeout=60).run()
    assert not at.exception
    assert [r.label for r in at.radio] == ["Direction"]
    assert [s.label for s in at.selectbox] == ["Head", "Detection"]
    text = " ".join(m.value for m in at.markdown)
    assert "Selected cell: **(12, 17)** · where this location looks · layer 6 · head mean" in text
    assert "Selected detection: query 7 " in text
    at.selectbox[0].select("3").run()
    at.selectbox[1].select("query 42: class 0").run()
    text = " ".join(m.value for m in at.markdown)
    assert "· head 3" in text and "Selected detection: query 42 " in text

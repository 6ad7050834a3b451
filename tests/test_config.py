"""The settings a safe deployment relies on (README, "Team demo"): loopback only unless opened on
purpose, XSRF protection on, no error details in the browser, the upload limit. Read from the file
and through Streamlit's own config loader (so a key Streamlit does not know, or reads differently,
fails too)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / ".streamlit" / "config.toml"

EXPECTED = {
    ("server", "address"): "127.0.0.1",
    ("server", "enableXsrfProtection"): True,
    ("server", "maxUploadSize"): 25,
    ("client", "showErrorDetails"): "none",
    ("browser", "gatherUsageStats"): False,
}


def test_the_file_says_what_the_team_demo_section_relies_on():
    data = tomllib.loads(CONFIG.read_text())
    for (section, key), value in EXPECTED.items():
        assert data.get(section, {}).get(key) == value, f"{section}.{key} is {data.get(section, {}).get(key)!r}"
    # CORS stays on (Streamlit's default) unless someone turns it off here
    assert data["server"].get("enableCORS", True) is True


def test_streamlit_reads_the_same_values(monkeypatch):
    from streamlit import config

    monkeypatch.chdir(ROOT)
    for name in list(os.environ):
        if name.startswith("STREAMLIT_"):  # the environment would override the file
            monkeypatch.delenv(name)
    config.get_config_options(force_reparse=True)
    try:
        for (section, key), value in EXPECTED.items():
            assert config.get_option(f"{section}.{key}") == value, f"{section}.{key}"
            assert config.get_where_defined(f"{section}.{key}") == str(CONFIG)
    finally:
        config.get_config_options(force_reparse=True)

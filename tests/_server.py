"""Helpers for the browser tests: run the real Streamlit server on a free port, and launch Debian's
Chromium through Playwright (never `playwright install`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip


def browser_marks(timeout_s: int) -> list:
    """A browser test module's `pytestmark`: marked browser and slow, skipped without Debian's
    Chromium, each test bounded by `timeout_s`."""
    import pytest  # (benchmarks import this module without pytest)

    return [
        pytest.mark.browser,
        pytest.mark.slow,
        pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
        pytest.mark.timeout(timeout_s),
    ]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StreamlitServer:
    """`python -m streamlit run app.py` on 127.0.0.1:<free port>, its output in a log file."""

    def __init__(
        self,
        log_path: Path,
        env: dict[str, str] | None = None,
        startup_timeout: float = 180.0,
        server_args: list[str] | None = None,
        app_args: list[str] | None = None,
        script: str = "app.py",
    ):
        """`server_args`: more Streamlit options (``--server.maxUploadSize 200``); `app_args`: the app's
        own options, given after ``--`` (``--allow-checkpoint-upload``); `script`: the app to run (a path
        from the repository's root)."""
        self.script = script
        self.server_args = list(server_args or [])
        self.app_args = list(app_args or [])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> StreamlitServer:
        cmd = [
            sys.executable, "-m", "streamlit", "run", self.script, "--server.port", str(self.port),
            "--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none",
            "--browser.gatherUsageStats", "false", *self.server_args,
        ]  # fmt: skip
        if self.app_args:
            cmd += ["--", *self.app_args]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=5) as r:
                    if r.read().decode().strip() == "ok":
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"no answer from /_stcore/health within {self.startup_timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)

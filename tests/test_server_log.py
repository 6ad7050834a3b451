"""ui/server_log.py: an upload cut short by the client is one warning line, every other error keeps its
traceback (the real server is checked in tests/test_browser_deploy.py)."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from starlette.requests import ClientDisconnect  # noqa: E402

from ui import server_log  # noqa: E402


def _log_with(exc: BaseException) -> str:
    logger = logging.getLogger(server_log.LOGGER)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        server_log.quiet_client_disconnects()
        server_log.quiet_client_disconnects()  # idempotent: one filter
        assert sum(isinstance(f, server_log.ClientDisconnectFilter) for f in logger.filters) == 1
        try:
            raise exc
        except BaseException as e:  # logged as uvicorn does
            logger.error("Exception in ASGI application\n", exc_info=e)
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_a_client_disconnect_is_one_line():
    text = _log_with(ClientDisconnect())
    assert "Traceback" not in text and text.strip() == f"WARNING {server_log.LINE}", text


def test_a_wrapped_disconnect_is_one_line_too():
    try:
        raise ClientDisconnect()
    except ClientDisconnect as inner:
        outer = RuntimeError("while parsing the form")
        outer.__cause__ = inner
    assert "Traceback" not in _log_with(outer)


def test_other_errors_keep_their_traceback():
    text = _log_with(ValueError("a real bug"))
    assert "Traceback" in text and "ValueError: a real bug" in text and text.startswith("ERROR")

"""The server log: one line, not a traceback, for a client that goes away during an upload.

A browser tab closed (or a connection dropped) while a large file is being sent makes Starlette's
multipart parser raise `starlette.requests.ClientDisconnect` inside Streamlit's upload handler
(``/_stcore/upload_file``); uvicorn then logs "Exception in ASGI application" with a 40-line
traceback on the ``uvicorn.error`` logger. Nothing is wrong with the server, so
`quiet_client_disconnects` installs a filter there that turns such a record into one warning line.
Every other error keeps its traceback.
"""

from __future__ import annotations

import logging

__all__ = ["ClientDisconnectFilter", "quiet_client_disconnects"]

LOGGER = "uvicorn.error"
LINE = "a client disconnected before its request was complete (an upload cut short); nothing was stored"


def _is_disconnect(exc: BaseException | None) -> bool:
    try:
        from starlette.requests import ClientDisconnect
    except ImportError:  # pragma: no cover - Streamlit without Starlette
        return False
    seen = 0
    while exc is not None and seen < 10:  # the disconnect may be wrapped (an ExceptionGroup, a `raise ... from`)
        if isinstance(exc, ClientDisconnect):
            return True
        group = getattr(exc, "exceptions", None)
        if group and all(_is_disconnect(e) for e in group):
            return True
        exc = exc.__cause__  # not __context__: an error raised while handling one is a real error
        seen += 1
    return False


class ClientDisconnectFilter(logging.Filter):
    """Rewrites a record whose exception is a ClientDisconnect into `LINE` (no traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _is_disconnect(record.exc_info[1]):
            record.msg, record.args = LINE, ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def quiet_client_disconnects() -> None:
    """Install the filter on uvicorn's error logger, once per process."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, ClientDisconnectFilter) for f in logger.filters):
        logger.addFilter(ClientDisconnectFilter())

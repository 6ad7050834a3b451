"""The frame around every page: running a page safely, callbacks that never show a traceback, and
messages about one attempt.

Visitors never see a stack trace, a server path or a user name: `run_safely` and `safe_callback`
log the details on the server and show one short line. Messages about one attempt (a model that
could not be loaded, a failed action) are `notify`-ed: shown in the page (not only the sidebar, which a
phone hides), at most three lines, with a Dismiss button, and gone as soon as the view changes
(the next action) -- they belong to the attempt, not to the session.
"""

from __future__ import annotations

import functools
import logging
import re
import runpy
import threading
from collections.abc import Callable, Hashable
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from detr_core import DETRError

log = logging.getLogger("detr_explorer")

ROOT = Path(__file__).resolve().parent.parent
_NOTES = "_attempt_messages"  # session key: [{"id", "kind", "text", "view"}]
MAX_LINES = 3
_PATHLIKE = re.compile(r"(?<![\w:/])(?:[A-Za-z]:)?(?:[\\/][\w.~@+-]+){2,}[\\/]?")  # not a URL's path


def visitor_text(text: str) -> str:
    """`text` fit for any visitor: a server path's folders replaced by "…" (the file name stays), at
    most MAX_LINES lines."""
    text = _PATHLIKE.sub(lambda m: "…/" + m.group(0).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1], text)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[:MAX_LINES])


# ------------------------------------------------------------------------------------------------
# Messages about one attempt


def notify(text: str, kind: str = "error") -> None:
    """Show `text` (made visitor-safe) until the view changes or the visitor dismisses it."""
    notes = st.session_state.setdefault(_NOTES, [])
    ident = max((n["id"] for n in notes), default=0) + 1
    notes.append({"id": ident, "kind": kind, "text": visitor_text(text), "view": None})


def _dismiss(ident: int) -> None:
    notes = st.session_state.get(_NOTES, [])
    st.session_state[_NOTES] = [n for n in notes if n["id"] != ident]


def show_notes(area, view: Hashable) -> None:
    """Draw the pending messages in `area`; a message seen with another view than `view` is dropped."""
    notes = [n for n in st.session_state.get(_NOTES, []) if n["view"] is None or n["view"] == view]
    for note in notes:
        note["view"] = view
        box = area.container()
        getattr(box, note["kind"])(note["text"])
        box.button("Dismiss", key=f"dismiss_note_{note['id']}", on_click=_dismiss, args=(note["id"],))
    st.session_state[_NOTES] = notes


def notes_view(params: dict[str, str], image_hash: str | None) -> Hashable:
    """The view messages are tied to: what the URL says and the image (app.py, `fragment_done`)."""
    return (tuple(sorted(params.items())), image_hash)


def notes_outdated(view: Hashable) -> bool:
    """Whether a message is new or was shown with another view than `view` (a whole run redraws them)."""
    return any(n["view"] != view for n in st.session_state.get(_NOTES, []))


def pending_notes() -> list[str]:
    return [n["text"] for n in st.session_state.get(_NOTES, [])]


# ------------------------------------------------------------------------------------------------
# Running pages and callbacks

_frame = threading.local()


@contextmanager
def page_frame():
    """app.py runs the navigation's page inside this: the page knows the sidebar and view exist."""
    _frame.active = True
    try:
        yield
    finally:
        _frame.active = False


def in_page_frame() -> bool:
    """True while app.py runs the page; False in a fragment's own rerun (app.py does not run then)."""
    return getattr(_frame, "active", False)


def page_main(render: Callable[[], None], what: str) -> None:
    """The body of every script in pages/: render the page, inside the frame app.py builds.

    Streamlit 1.67 still treats a folder named pages/ as an old-style multipage app until the first
    run that calls st.navigation (every run, under AppTest), and then runs pages/<name>.py directly
    for a URL naming it, without app.py: no sidebar, no model, no image. Such a direct run executes
    app.py instead, which calls st.navigation (switching that mode off) and runs this page through it.
    """
    if in_page_frame():
        run_safely(render, what)
    else:
        runpy.run_path(str(ROOT / "app.py"), run_name="__main__")


def safe_callback(callback: Callable[..., None]) -> Callable[..., None]:
    """A widget callback that never shows a traceback: an error is logged and shown on the next run."""

    @functools.wraps(callback)
    def wrapper(*args, **kwargs) -> None:
        try:
            callback(*args, **kwargs)
        except Exception:
            log.exception("callback %s failed", callback.__name__)
            notify("That action failed; the details were logged on the server.")

    return wrapper


def run_safely(body: Callable[[], None], what: str) -> None:
    """Run `body`; a DETRError becomes its message, anything else a friendly error (traceback logged)."""
    try:
        body()
    except DETRError as e:
        log.info("%s: %s", what, e)
        st.error(visitor_text(str(e)))
    except Exception:
        log.exception("%s failed", what)
        st.error(
            f"Something went wrong while drawing {what}. The details were logged on the server; "
            "try another image or setting, or reload the page."
        )

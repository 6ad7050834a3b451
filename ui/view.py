"""The view: everything that decides what is shown, as typed fields, read from and written to the URL here.

Every control that changes what is shown is a `Field`: its URL parameter, the session-state key
that holds its value (the widget's key), how to parse the URL's text (a bad value raises
ValueError and is ignored) and how to write it back. The sidebar declares the shared fields (model,
image, threshold, preprocessing); each page declares its own at the top of its script::

    LAYER = view.field("enc_layer", key="p_enc_layer", parse=str, page="encoder")

so a page adds a URL field without editing shared code. `ViewState` is one snapshot of all of
them (the page and every field's value): `current(page)` reads it from the session,
`ViewState.params()` is what the URL says, and `sync_url(page)` writes it (the only place that writes
`st.query_params`). `begin_session()` keeps the URL a session opened with; a field takes its value
from it the first time the field is declared in that session (`adopt`), so a link reaches fields of a
page that has not run yet.

Fields marked `per_image` (clicked points, the picked query) belong to one image and model: they
are dropped when those change (`bind_to_image`), except that a link's value is kept for the first
image the session shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

__all__ = ["FIELDS", "Field", "ViewState", "begin_session", "bind_to_image", "current", "field", "sync_url"]

_URL = "_url_at_start"  # session key: the query params the session opened with
_STARTED = "_initialized"
_FIRST_IMAGE = "_url_image"  # session key: the (model, image hash) a link's per-image fields belong to
MAX_VALUE_CHARS = 2000


@dataclass(frozen=True)
class Field:
    """One URL parameter and the session-state key that holds its value."""

    name: str  # the URL parameter
    key: str  # the session-state key (usually the widget's key)
    parse: Callable[[str], Any]  # URL text -> value; raises ValueError (or TypeError) for a bad one
    fmt: Callable[[Any], str] = str  # value -> URL text
    page: str | None = None  # the page that declares it (None: the sidebar, every page)
    per_image: bool = False  # belongs to one image and model (see bind_to_image)

    def value(self) -> Any:
        """The field's value in this session (None when it has none yet)."""
        return st.session_state.get(self.key)

    def from_text(self, text: str | None) -> Any:
        """The parsed value of URL text, or None when it is missing or bad."""
        if text is None or len(text) > MAX_VALUE_CHARS:
            return None
        try:
            return self.parse(text)
        except (ValueError, TypeError, KeyError):
            return None


FIELDS: dict[str, Field] = {}


def field(
    name: str,
    *,
    key: str,
    parse: Callable[[str], Any],
    fmt: Callable[[Any], str] = str,
    page: str | None = None,
    per_image: bool = False,
) -> Field:
    """Declare (or re-declare: page scripts run on every rerun) a URL field and adopt a link's value for it."""
    new = Field(name, key, parse, fmt, page, per_image)
    old = FIELDS.get(name)
    if old is not None and old.key != key:
        raise ValueError(f"URL field {name!r} is already bound to {old.key!r}")
    FIELDS[name] = new
    if get_script_run_ctx(suppress_warning=True) is not None:  # declared during a script run
        adopt(new)
    return new


def choice(options: Mapping[str, Any] | Sequence[str]) -> Callable[[str], Any]:
    """A parser that accepts only `options` (a sequence, or a mapping from URL text to value)."""
    table = dict(options) if isinstance(options, Mapping) else {o: o for o in options}

    def parse(text: str) -> Any:
        if text not in table:
            raise ValueError(text)
        return table[text]

    return parse


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.lstrip("-").isdigit() or len(text) > 12:
            raise ValueError(text)
        number = int(text)
        if not low <= number <= high:
            raise ValueError(text)
        return number

    return parse


def bounded_float(low: float, high: float, digits: int = 2) -> Callable[[str], float]:
    def parse(text: str) -> float:
        number = float(text)
        if not low <= number <= high:  # also refuses nan
            raise ValueError(text)
        return round(number, digits)

    return parse


# ------------------------------------------------------------------------------------------------
# The session's link


def begin_session(page_slugs: Sequence[str]) -> str | None:
    """On a session's first run keep the URL it opened with; returns the page the URL names (or None)."""
    ss = st.session_state
    if ss.get(_STARTED):
        return None
    ss[_STARTED] = True
    ss[_URL] = {k: v for k, v in st.query_params.to_dict().items() if isinstance(v, str)}
    page = ss[_URL].get("page")
    return page if page in page_slugs else None


def link_value(name: str) -> str | None:
    """What the session's opening URL said for `name` (None if nothing)."""
    return st.session_state.get(_URL, {}).get(name)


def adopt(f: Field) -> None:
    """Give `f` its value from the session's opening URL, the first time, if the URL has a good one."""
    ss = st.session_state
    if f.key in ss:
        return
    value = f.from_text(link_value(f.name))
    if value is None:
        return
    if f.per_image:
        first = ss.get(_FIRST_IMAGE)
        if first is not None and first != ss.get("_image_ident"):
            return  # the link's image is no longer shown: its points or query mean nothing here
        ss[f"{f.key}_for"] = first
    ss[f.key] = value


def adopt_all() -> None:
    for f in list(FIELDS.values()):
        adopt(f)


def bind_to_image(ident: tuple[str, str | None]) -> None:
    """The shown (model, image hash) is `ident`: drop per-image values that belong to another one."""
    ss = st.session_state
    ss["_image_ident"] = ident
    ss.setdefault(_FIRST_IMAGE, ident)
    for f in list(FIELDS.values()):  # a copy: another session's page may declare a field meanwhile
        if not f.per_image:
            continue
        tag = f"{f.key}_for"
        owner = ss.get(tag, ident)
        if owner is None:  # a link's value: accept it for the first image shown
            ss[tag] = ident
        elif owner != ident:
            ss[f.key] = None
            ss[tag] = ident
        else:
            ss[tag] = ident


# ------------------------------------------------------------------------------------------------
# One snapshot of the view


@dataclass(frozen=True)
class ViewState:
    """What is shown: the page and every declared field's value (None: not set, the page's default)."""

    page: str
    values: Mapping[str, Any] = dc_field(default_factory=dict)

    def params(self) -> dict[str, str]:
        """The URL's query parameters for this view."""
        out = {"page": self.page}
        for name, value in self.values.items():
            f = FIELDS.get(name)
            if f is not None and value is not None:
                text = f.fmt(value)
                if text and len(text) <= MAX_VALUE_CHARS:
                    out[name] = text
        return out

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> ViewState:
        """The view a URL describes (fields with a missing or bad value are left out)."""
        values = {}
        for name, f in list(FIELDS.items()):
            value = f.from_text(params.get(name))
            if value is not None:
                values[name] = value
        return cls(params.get("page", ""), values)


def current(page: str, skip: Callable[[Field], bool] | None = None) -> ViewState:
    """This session's view. Fields for which `skip(field)` holds are left out (e.g. another image source's)."""
    values = {}
    for name, f in list(FIELDS.items()):
        if skip is not None and skip(f):
            continue
        value = f.value()
        if value is None and f.key not in st.session_state:
            value = f.from_text(link_value(name))  # a link's value for a page not shown yet
        if value is not None:
            values[name] = value
    return ViewState(page, values)


def sync_url(state: ViewState) -> dict[str, str]:
    """Write `state` into the URL (only when it changed, so the browser's history is not flooded)."""
    params = state.params()
    if st.query_params.to_dict() != params:
        st.query_params.from_dict(params)
    return params

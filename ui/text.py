"""Text from users (upload names, model and class names they bring) shown as plain text.

Streamlit renders the strings given to st.markdown, st.caption, st.error, st.info, st.spinner ...
as Markdown with its own additions: `:red[...]` colours, `:material/...:` icons and `:emoji:`
shortcodes, `$...$` LaTeX. A file named `![b](http://host/b.png).png` in such a string makes every
viewer's browser fetch that address; `**bold**` renders bold. `plain(name)` escapes with a backslash
every punctuation character that can start such a construct (CommonMark shows an escaped character
literally, and Streamlit's directives and math start with `:`, `[` and `$`), and turns line breaks and other
control characters into spaces, so the name reads exactly as it is spelled. Streamlit also turns
anything that looks like an address (`http://...`, `www.`..., `a@b.c`) into a link after escapes and
entities are decoded (checked in Chromium): an invisible WORD JOINER (U+2060) after `http`, `https`,
`ftp`, `mailto` and `www` and before `@` keeps those as text.

Plotly reads its labels (hover text, annotations, trace names, tick labels) as a small HTML subset
(`<a href>`, `<b>`, `<br>`, `<span style>`) and decodes entities only in the text between tags:
`plotly_text(name)` writes `&`, `<` and `>` as entities, so a class name shows exactly as spelled.
"""

from __future__ import annotations

import html
import re

__all__ = ["JOINER", "plain", "plotly_text"]

JOINER = "\u2060"  # WORD JOINER: zero width, breaks Streamlit's link detection
# Characters that start Markdown, GFM or Streamlit constructs anywhere in a line: emphasis, code,
# links and pictures, raw HTML and autolinks, tables, strikethrough, directives and emoji, math,
# entities, headings. `.`, `,`, `(`, `)`, `-` and `+` are left alone (they matter only at the start
# of a line, handled below), so ordinary names stay readable in the Markdown source.
_ALWAYS = {ord(c): "\\" + c for c in "\\`*[]<>!|~:$&#"}
_ALWAYS.update({c: " " for c in range(32)})
_ALWAYS[127] = " "
_LINKISH = re.compile(r"(?i)(https?|ftp|mailto|www)(?=[:.])")
_LOOSE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")  # intraword `_` is never emphasis
_LINE_START = re.compile(r"^(\s*)([-+=]|\d+[.)])")  # a list item, a rule or a setext underline


def plain(text: object) -> str:
    """`text` escaped for any Streamlit call that renders Markdown: it shows literally."""
    unlinked = _LINKISH.sub(lambda m: m.group(1) + JOINER, str(text)).replace("@", JOINER + "@")
    escaped = _LOOSE_UNDERSCORE.sub(r"\\_", unlinked.translate(_ALWAYS))
    return _LINE_START.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], escaped)


def plotly_text(text: object) -> str:
    """`text` for a Plotly label: its HTML subset shows literally."""
    return html.escape(str(text), quote=False)

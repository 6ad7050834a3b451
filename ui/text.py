"""Text from users (upload names, model and class names they bring) shown as plain text.

Streamlit renders the strings given to st.markdown, st.caption, st.error, st.info, st.spinner ...
as Markdown with its own additions: `:red[...]` colours, `:material/...:` icons and `:emoji:`
shortcodes, `$...$` LaTeX. A file named `![b](http://host/b.png).png` in such a string makes every
viewer's browser fetch that address; `**bold**` renders bold. `plain(name)` escapes every ASCII
punctuation character with a backslash (CommonMark shows an escaped character literally, and
Streamlit's directives and math start with `:`, `[` and `$`), and turns line breaks and other
control characters into spaces, so the name reads exactly as it is spelled. Streamlit also turns
anything that looks like an address (`http://...`, `www.`..., `a@b.c`) into a link after escapes and
entities are decoded (checked in Chromium): an invisible WORD JOINER (U+2060) after `http`, `https`,
`ftp`, `mailto` and `www` and before `@` keeps those as text.
"""

from __future__ import annotations

import re
import string

__all__ = ["plain"]

_ESCAPED = {ord(c): "\\" + c for c in string.punctuation}
_ESCAPED.update({c: " " for c in range(32)})
_ESCAPED[127] = " "
JOINER = "\u2060"  # WORD JOINER: zero width, breaks Streamlit's link detection
_LINKISH = re.compile(r"(?i)(https?|ftp|mailto|www)(?=[:.])")


def plain(text: object) -> str:
    """`text` escaped for any Streamlit call that renders Markdown: it shows literally."""
    unlinked = _LINKISH.sub(lambda m: m.group(1) + JOINER, str(text)).replace("@", JOINER + "@")
    return unlinked.translate(_ESCAPED)

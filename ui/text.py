"""Text from users (upload names, model and class names they bring) shown as plain text.

Streamlit renders the strings given to st.markdown, st.caption, st.error, st.info, st.spinner ...
as Markdown with its own additions: `:red[...]` colours, `:material/...:` icons and `:emoji:`
shortcodes, `$...$` LaTeX. A file named `![b](http://host/b.png).png` in such a string makes every
viewer's browser fetch that address; `**bold**` renders bold. `plain(name)` escapes every ASCII
punctuation character with a backslash (CommonMark shows an escaped character literally, and
Streamlit's directives and math start with `:`, `[` and `$`), and turns line breaks and other
control characters into spaces, so the name reads exactly as it is spelled.
"""

from __future__ import annotations

import string

__all__ = ["plain"]

_ESCAPED = {ord(c): "\\" + c for c in string.punctuation}
_ESCAPED.update({c: " " for c in range(32)})
_ESCAPED[127] = " "


def plain(text: object) -> str:
    """`text` escaped for any Streamlit call that renders Markdown: it shows literally."""
    return str(text).translate(_ESCAPED)

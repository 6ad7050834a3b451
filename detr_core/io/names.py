"""Names that come from users (file names, class names): printable, and safe as a file name.

`printable` escapes what a terminal or a log would act on instead of showing (carriage returns,
escape sequences such as ``\\x1b[2J``, other control and invisible characters), the way `repr`
writes them, and leaves everything else, letters of any script included, as it is.

`safe_name` turns a name into one folder or file name that stays where it is put: no path
separators, never ``.`` or ``..`` or a hidden name, and at most `NAME_MAX_BYTES` bytes in UTF-8
(the limit of ext4, XFS, APFS, ...) including any de-duplication suffix.
"""

from __future__ import annotations

__all__ = ["NAME_MAX_BYTES", "printable", "safe_name"]

NAME_MAX_BYTES = 255  # bytes per path component on the usual file systems


def _escape(ch: str) -> str:
    if ch.isprintable():
        return ch
    return repr(ch)[1:-1]  # '\r' -> \r, '\x1b' -> \x1b, '\u200b' -> \u200b


def printable(text: object) -> str:
    """`text` (or its str) with every non-printable character escaped as `repr` writes it."""
    return "".join(_escape(ch) for ch in str(text))


def _clip(text: str, limit: int) -> str:
    """The longest prefix of `text` of at most `limit` bytes in UTF-8 (never half a character)."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def safe_name(name: str, used: set[str] | None = None, *, fallback: str = "image", limit: int = NAME_MAX_BYTES) -> str:
    """`name` as one safe file-system name, distinct from those in `used` (which it is added to).

    Letters, digits, ``-``, ``_`` and ``.`` are kept, anything else becomes ``_``; leading dots
    become ``_`` (so ``..`` cannot climb out of a folder and nothing is hidden). Names are compared
    case-insensitively (macOS and Windows file systems are), and a repeated one gets ``_2``, ``_3``,
    ... with the name shortened so that the whole stays within `limit` bytes.
    """
    clean = "".join(c if (c.isalnum() or c in "-_.") and c.isprintable() else "_" for c in name)
    stripped = clean.lstrip(".")
    clean = "_" * (len(clean) - len(stripped)) + stripped
    clean = _clip(clean, limit) or fallback
    taken = {u.casefold() for u in used} if used is not None else set()
    candidate, k = clean, 2
    while candidate.casefold() in taken:
        suffix = f"_{k}"
        candidate, k = _clip(clean, limit - len(suffix)) + suffix, k + 1
    if used is not None:
        used.add(candidate)
    return candidate

"""Text from a remote server or a user file, made safe to print: no control characters or
escape sequences reach the terminal raw, long text is cut, userinfo is never shown."""

from __future__ import annotations

import re

_AUTHORITY = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?([^/]*)(.*)$", re.S)


def escape(text: str, limit: int = 200) -> str:
    """``text`` with non-printable characters as ``\\xNN``-style escapes, cut at ``limit``."""
    cut = text[:limit]
    out = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                  for ch in cut)
    return out + ("..." if len(text) > limit else "")


def redact(text: str) -> str:
    """A reference or URL without the ``user:password@`` part of its authority."""
    match = _AUTHORITY.match(text)
    assert match is not None  # the pattern matches every string
    scheme, authority, rest = match.groups()
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme or ''}{authority}{rest}"


def safe(text: str, limit: int = 200) -> str:
    """:func:`redact` then :func:`escape`: how user-given references appear in errors."""
    return escape(redact(text), limit)

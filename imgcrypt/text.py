"""Text that reaches a terminal: control characters in values from images, properties and
certificates are shown escaped, never interpreted.

Header strings (LUKS1 uuid and cipher fields, LUKS2 JSON strings), property values and
certificate subjects are written by strangers; an escape sequence among them could rewrite what
the terminal shows (a failed check made to look like "valid ... signed by CN=release").
"""

from __future__ import annotations


def _escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(value: object) -> str:
    """``str(value)`` with every control or invisible formatting character escaped."""
    text = str(value)
    if text.isprintable():
        return text
    # Not printable: controls (C0, DEL, C1), format characters (bidi overrides, zero-width),
    # line and paragraph separators, unusual spaces, surrogates, private-use and unassigned.
    return "".join(c if c.isprintable() else _escape_char(c) for c in text)


def escape_lines(text: str) -> str:
    """Human output of several lines: each line escaped, the line breaks kept."""
    return "\n".join(escape(line) for line in text.split("\n"))

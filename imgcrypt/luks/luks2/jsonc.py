"""The LUKS2 JSON area read as json-c reads it, turned into strict JSON text.

cryptsetup parses the JSON area with json-c's tokener in its default mode, which takes more
than RFC 8259: ``/* */`` and ``//`` comments wherever whitespace may stand, a trailing comma
before ``}`` or ``]``, strings (and keys) in single quotes, raw control characters and bytes that
are not UTF-8 inside strings, ``true``/``false``/``null``/``NaN``/``Infinity`` in
any letter case, and numbers such as ``007``, ``1.``, ``-.5`` or ``1e+`` (read as ``1``).
Everything else it refuses, and so does :func:`strict_text`. It rewrites the area into
strict JSON that ``json.loads`` reads to the values json-c builds, and returns where json-c
stops reading, so the caller can apply cryptsetup's "only NUL bytes follow" rule.

One pass over the bytes with an explicit stack: linear time and memory, no recursion.
Strict JSON comes out with the same meaning (a property test holds it to ``json.loads``).
"""

from __future__ import annotations

import json
import re

__all__ = ["MAX_DEPTH", "JsonCError", "strict_text"]

# json-c's default depth: a container at depth 31 (the top-level object is depth 0) may be
# empty but may hold no value.
MAX_DEPTH = 32

_WS = re.compile(rb"[ \t\n\r]*")
_STRING_RUN = {ord('"'): re.compile(rb'[^"\\]*'), ord("'"): re.compile(rb"[^'\\]*")}
_HEX4 = re.compile(rb"[0-9A-Fa-f]{4}")
_STRICT_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")
# Characters kept as escapes: control characters, the double quote (single-quoted strings may
# hold it raw) and the lone surrogates that stand for undecodable bytes (surrogateescape).
_ESCAPES = {c: f"\\u{c:04x}" for c in [*range(0x20), 0x22, *range(0xDC80, 0xDD00)]}
_LITERALS = {b"true": "true", b"false": "false", b"null": "null", b"nan": "NaN",
             b"infinity": "Infinity"}


class JsonCError(ValueError):
    """json-c (default mode) would not parse this text; the message says where and why."""


def _number(raw: bytes, pos: int) -> tuple[str, int]:
    """The number json-c reads at ``pos`` as strict JSON text, and where it stops.

    json-c's number scanner takes digits, one '.', one exponent letter, and a sign first,
    after '.' or after the exponent letter; a double then loses trailing 'e', 'E', '+', '-'
    and goes to strtod, an integer to strtoll/strtoull (both ignore leading zeros).
    """
    start, end = pos, pos
    is_double = is_exponent = False
    neg_ok, pos_ok = True, False
    while end < len(raw):
        c = raw[end]
        if 0x30 <= c <= 0x39:
            neg_ok = pos_ok = False
        elif c in b"eE" and not is_exponent:
            is_exponent = is_double = True
            neg_ok = pos_ok = True
        elif c == 0x2E and not is_double:
            is_double = True
            neg_ok = pos_ok = True
        elif (c == 0x2D and neg_ok) or (c == 0x2B and pos_ok):
            neg_ok = pos_ok = False
        else:
            break
        end += 1
    token = raw[start:end].decode("ascii")
    if raw[start:end] == b"-" and end < len(raw) and raw[end] in b"iI":
        return "", start  # "-Infinity": the caller reads the word
    if end < len(raw) and raw[end] not in b",]}/ \t\n\r":
        raise JsonCError(f"bad number at byte {start}")
    if is_double:
        while len(token) > 1 and token[-1] in "eE+-":
            token = token[:-1]
        if _STRICT_NUMBER.match(token) and any(ch in token for ch in ".eE"):
            return token, end
        try:
            return json.dumps(float(token)), end
        except ValueError:
            raise JsonCError(f"bad number at byte {start}") from None
    try:
        return str(int(token)), end
    except ValueError:
        raise JsonCError(f"bad number at byte {start}") from None


def _string(raw: bytes, pos: int) -> tuple[str, int]:
    """The string whose opening quote is at ``pos``, as a double-quoted JSON string."""
    quote = raw[pos]
    run = _STRING_RUN[quote]
    out: list[str] = []
    i = pos + 1
    while True:
        m = run.match(raw, i)
        assert m is not None  # the pattern matches the empty string
        if b"\0" in m.group():  # json-c 0.16 under cryptsetup refuses a NUL in a string
            raise JsonCError(f"NUL in the string at byte {pos}")
        # Bytes that are not UTF-8 become lone surrogates (json-c keeps the bytes), written
        # as \udcXX escapes so the text stays valid Unicode; a run never splits a UTF-8
        # sequence, since it ends only at an ASCII quote or backslash.
        out.append(m.group().decode("utf-8", "surrogateescape").translate(_ESCAPES))
        i = m.end()
        if i >= len(raw):
            raise JsonCError(f"unterminated string at byte {pos}")
        if raw[i] == quote:
            break
        # A backslash: json-c knows only these escapes, in either kind of quotes.
        nxt = raw[i + 1:i + 2]
        if nxt and nxt in b'"\\/bfnrt':
            out.append(raw[i:i + 2].decode("ascii"))
            i += 2
        elif nxt == b"u" and _HEX4.match(raw, i + 2):
            out.append(raw[i:i + 6].decode("ascii"))
            i += 6
        else:
            raise JsonCError(f"bad escape at byte {i}")
    text = "".join(out)
    return f'"{text}"', i + 1


def _no_nul(raw: bytes, start: int, end: int) -> int:
    """``end``, unless a NUL lies in raw[start:end]: cryptsetup's json-c ends its input there."""
    if raw.find(b"\0", start, end) >= 0:
        raise JsonCError(f"NUL in a comment at byte {start}")
    return end


def _skip(raw: bytes, pos: int) -> int:
    """Past whitespace and comments, as json-c's eat-whitespace state."""
    while True:
        pos = _WS.match(raw, pos).end()  # type: ignore[union-attr]
        if raw[pos:pos + 1] != b"/":
            return pos
        kind = raw[pos + 1:pos + 2]
        if kind == b"*":
            close = raw.find(b"*/", pos + 2)
            if close < 0:
                raise JsonCError(f"unterminated comment at byte {pos}")
            pos = _no_nul(raw, pos, close + 2)
        elif kind == b"/":
            close = raw.find(b"\n", pos + 2)
            if close < 0:
                raise JsonCError(f"unterminated comment at byte {pos}")
            pos = _no_nul(raw, pos, close + 1)
        else:
            raise JsonCError(f"bad comment at byte {pos}")


def _word(raw: bytes, pos: int) -> tuple[str, int]:
    """true, false, null, NaN or Infinity in any case; '-' before Infinity."""
    negative = raw[pos:pos + 1] == b"-"
    start = pos + 1 if negative else pos
    for word, text in _LITERALS.items():
        if raw[start:start + len(word)].lower() == word and (not negative or
                                                              text == "Infinity"):
            return ("-" if negative else "") + text, start + len(word)
    raise JsonCError(f"unexpected byte at {pos}")


def strict_text(raw: bytes) -> tuple[str, int]:
    """(strict JSON text, offset where json-c stops) for the top-level value in ``raw``.

    ``raw`` is the whole JSON area. json-c stops at the first byte after the top-level value
    and any whitespace or comments that follow it; a NUL inside a string or comment is an
    error (checked against cryptsetup 2.6.1 with json-c 0.16).
    """
    out: list[str] = []
    stack: list[int] = []  # open containers: ord('{') or ord('[')
    pos = 0
    expect = "value"  # value | key | colon | after
    while True:
        c = raw[pos] if pos < len(raw) else 0
        if expect == "value":
            if len(stack) >= MAX_DEPTH:
                raise JsonCError(f"nested deeper than json-c reads at byte {pos}")
            if c in (0x7B, 0x5B):  # { [
                stack.append(c)
                out.append(chr(c))
                pos = _skip(raw, pos + 1)
                closer = 0x7D if c == 0x7B else 0x5D
                if raw[pos:pos + 1] == bytes([closer]):
                    stack.pop()
                    out.append(chr(closer))
                    pos = _skip(raw, pos + 1)
                    expect = "after"
                else:
                    expect = "key" if c == 0x7B else "value"
                continue
            if c in (0x22, 0x27):
                text, pos = _string(raw, pos)
            elif 0x30 <= c <= 0x39 or c == 0x2D:
                text, pos = _number(raw, pos)
                if not text:
                    text, pos = _word(raw, pos)
            else:
                text, pos = _word(raw, pos)
            out.append(text)
            pos = _skip(raw, pos)
            expect = "after"
        elif expect == "key":
            if c not in (0x22, 0x27):
                raise JsonCError(f"expected a quoted key at byte {pos}")
            text, pos = _string(raw, pos)
            out.append(text)
            pos = _skip(raw, pos)
            expect = "colon"
        elif expect == "colon":
            if c != 0x3A:
                raise JsonCError(f"expected ':' at byte {pos}")
            out.append(":")
            pos = _skip(raw, pos + 1)
            expect = "value"
        else:  # after a value
            if not stack:
                return "".join(out), pos
            closer = 0x7D if stack[-1] == 0x7B else 0x5D
            if c == closer:
                stack.pop()
                out.append(chr(c))
                pos = _skip(raw, pos + 1)
            elif c == 0x2C:
                pos = _skip(raw, pos + 1)
                if raw[pos:pos + 1] == bytes([closer]):  # json-c's trailing comma
                    stack.pop()
                    out.append(chr(closer))
                    pos = _skip(raw, pos + 1)
                    continue
                out.append(",")
                expect = "key" if stack[-1] == 0x7B else "value"
            else:
                raise JsonCError(f"expected ',' or a closing bracket at byte {pos}")

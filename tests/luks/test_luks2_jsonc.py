"""The JSON area read as json-c reads it (imgcrypt.luks.luks2.jsonc).

cryptsetup's own verdicts on these forms are in tests/luks/test_header_rules.py (JSON_C_LENIENCY);
here: strict JSON means what ``json.loads`` says, and the lenient forms mean what json-c's
tokener builds from them (json-c 0.16, json_tokener.c).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgcrypt.luks.luks2.jsonc import JsonCError, strict_text

_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
            | st.text())
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                       max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=5), _VALUES, max_size=5), st.booleans(),
       st.sampled_from([None, 0, 2]), st.integers(min_value=1, max_value=8))
def test_strict_json_reads_as_json_loads(doc: dict[str, Any], ascii_only: bool,
                                         indent: int | None, nuls: int) -> None:
    text = json.dumps(doc, ensure_ascii=ascii_only, indent=indent)
    raw = text.encode("utf-8", "surrogatepass")
    if not ascii_only and any("\ud800" <= ch <= "\udfff" for ch in text):
        raw = json.dumps(doc, indent=indent).encode()  # lone surrogates: only as escapes
    strict, end = strict_text(raw + bytes(nuls))
    assert end == len(raw)
    assert json.loads(strict) == json.loads(raw)


@pytest.mark.parametrize(("lenient", "value"), [
    (b'{"a":007}', {"a": 7}),
    (b'{"a":-0}', {"a": 0}),
    (b'{"a":1.}', {"a": 1.0}),
    (b'{"a":-.5}', {"a": -0.5}),
    (b'{"a":1e+}', {"a": 1.0}),
    (b'{"a":2.5E-}', {"a": 2.5}),
    (b'{"a":[TRUE,fAlSe,NULL]}', {"a": [True, False, None]}),
    (b'{"a":[-INFINITY,iNfInItY]}', {"a": [-math.inf, math.inf]}),
    (b"{'a':'x\"y\\'z'}".replace(b"\\'", b"'"), None),  # an unescaped quote ends the string
    (b"{'a':'x\"y'}", {"a": 'x"y'}),
    (b'{"a":"\\/\\t"}', {"a": "/\t"}),
    (b'{"a":"\x01\n"}', {"a": "\x01\n"}),
    (b'{"a":"\xff\xc3("}', {"a": "\udcff\udcc3("}),
    (b'{/*x*/"a"/**/://y\n1,/***/}', {"a": 1}),
    (b'{"a":[1,],}', {"a": [1]}),
])
def test_lenient_forms_read_as_json_c(lenient: bytes, value: dict[str, Any] | None) -> None:
    if value is None:
        with pytest.raises(JsonCError):
            strict_text(lenient + b"\0")
        return
    strict, end = strict_text(lenient + b"\0")
    assert end == len(lenient)
    assert json.loads(strict) == value
    strict.encode("utf-8")  # the text stays writable: undecodable bytes become escapes


@pytest.mark.parametrize("refused", [
    b'{"a":1,,}', b'{,}', b'{"a":[,]}', b"{a:1}", b'{"a":"\\q"}', b"{'a\\'':1}",
    b'{"a":1x}', b'{"a":1.2.3}', b'{"a":1e5-}', b'{"a":-}', b'{"a":nul}', b'{"a":tru}',
    b'{"a":"x\0"}', b'{/*\0*/}', b"{//\0\n}", b"{/*", b"{/ }", b'{"a":"\\u12"}',
    b'{"a":' + b"[" * 32 + b"]" * 32 + b"}", b'{"a":"unterminated',
])
def test_what_json_c_refuses_is_refused(refused: bytes) -> None:
    with pytest.raises(JsonCError):
        strict_text(refused + b"\0" * 4)


def test_deep_nesting_is_refused_without_recursion() -> None:
    with pytest.raises(JsonCError):
        strict_text(b"{" + b'"a":[' * 2_000_000 + b"\0")

"""Property documents: a flat JSON object of strings, read strictly, written canonically."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from imgcrypt.errors import VerificationError, VerificationFault
from imgcrypt.jsonkeys import unique_keys

MAX_DOCUMENT_BYTES = 4 << 20


_no_duplicates = unique_keys(
    lambda key: VerificationError(f"property {key[:64]!r} appears more than once",
                                  reason=VerificationFault.DUPLICATE_PROPERTY)
)


def load_document(data: bytes) -> dict[str, Any]:
    """A JSON object, read strictly: bounded, UTF-8, no name twice. Every reader of property
    documents (sign --bind, verify --properties, upload --properties) starts here."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise VerificationError(f"property document larger than {MAX_DOCUMENT_BYTES} bytes",
                                reason=VerificationFault.MALFORMED_PROPERTIES)
    try:
        document = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, and
        # the ValueError of an integer literal longer than Python converts
        raise VerificationError(
            f"not a JSON property document: {type(exc).__name__}",
            reason=VerificationFault.MALFORMED_PROPERTIES,
        ) from None
    if not isinstance(document, dict):
        raise VerificationError("a property document must be a JSON object",
                                reason=VerificationFault.MALFORMED_PROPERTIES)
    return document


def parse_properties(data: bytes) -> dict[str, str]:
    """A property document, refusing duplicates, nesting and non-string values."""
    result: dict[str, str] = {}
    for key, value in load_document(data).items():
        if not isinstance(value, str):
            raise VerificationError(f"property {key!r} is not a string",
                                    reason=VerificationFault.MALFORMED_PROPERTIES)
        result[key] = value
    return result


def dump_properties(properties: Mapping[str, str]) -> bytes:
    """A property document as 'imgcrypt sign' writes it: a JSON object of strings, sorted."""
    return (json.dumps(dict(properties), sort_keys=True, indent=2) + "\n").encode("utf-8")


__all__ = ["dump_properties", "load_document", "parse_properties"]

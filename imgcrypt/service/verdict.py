"""``imgcrypt_verdict``: what imgcrypt_verify recorded about an image, and what it means now.

Glance runs import plugins on the staged data *before* it stores it, and no later step of the
import runs plugin code. So the plugin cannot write "accepted, and stored": it writes what it
knows. Its values:

``pending``
    The staged data passed every check. ``imgcrypt_verified`` names the data it checked
    (``<os_hash_algo>:<hex digest>``, the multihash Glance computes again while storing) and
    ``imgcrypt_verified_at`` when. The verdict becomes *accepted* only once Glance has stored
    that data: the image is ``active`` and its ``os_hash_algo``/``os_hash_value`` equal
    ``imgcrypt_verified``. An image whose import died half-way (a killed worker) keeps
    ``pending`` and a status other than ``active``: nobody can mistake it for a verified,
    stored image.
``refused: <reason>``
    The image failed a check (signature, key, format); the import failed with the reason.
``unchecked: <reason>``
    The checks could not run (the key manager was unreachable, the user's token expired);
    nothing is known about the image, and importing it again once the cause is gone may pass.

:func:`effective_verdict` is the one reading of these values (``imgcrypt upload`` and
``download`` use it); a consumer that reads the properties itself applies the same rule.
"""

from __future__ import annotations

from collections.abc import Mapping

VERDICT_PROPERTY = "imgcrypt_verdict"
VERIFIED_PROPERTY = "imgcrypt_verified"
VERIFIED_AT_PROPERTY = "imgcrypt_verified_at"
# What a failed import's revert could not undo (a consumer, a key), and what to run about it.
LEFTOVER_PROPERTY = "imgcrypt_leftover"
PENDING = "pending"
ACCEPTED = "accepted"
REFUSED = "refused"
UNCHECKED = "unchecked"
# Glance documents image property values as at most 255 characters.
MAX_PROPERTY = 255


def pending_properties(os_hash_algo: str, os_hash_value: str, checked_at: str
                       ) -> dict[str, str]:
    """What imgcrypt_verify writes when the staged data passed: pending until stored."""
    return {VERDICT_PROPERTY: PENDING,
            VERIFIED_PROPERTY: f"{os_hash_algo}:{os_hash_value}"[:MAX_PROPERTY],
            VERIFIED_AT_PROPERTY: checked_at}


def refusal_properties(message: str) -> dict[str, str]:
    return {VERDICT_PROPERTY: f"{REFUSED}: {message}"[:MAX_PROPERTY]}


def unchecked_properties(message: str) -> dict[str, str]:
    return {VERDICT_PROPERTY: f"{UNCHECKED}: {message}"[:MAX_PROPERTY]}


def effective_verdict(status: str, properties: Mapping[str, object]) -> str | None:
    """``accepted`` for an active image whose stored data is the data imgcrypt_verify passed;
    otherwise the recorded verdict, with a pending one saying why it is not final (None where
    imgcrypt_verify left no verdict)."""
    recorded = properties.get(VERDICT_PROPERTY)
    if not isinstance(recorded, str):
        return None
    if recorded != PENDING:
        return recorded
    if status != "active":
        return f"{PENDING}: checked before storing, but the image is {status}, not stored"
    stored = f"{properties.get('os_hash_algo')}:{properties.get('os_hash_value')}"
    if properties.get(VERIFIED_PROPERTY) != stored:
        return f"{PENDING}: the stored data is not the data imgcrypt_verify checked"
    return ACCEPTED


def is_unchecked(verdict: object) -> bool:
    return isinstance(verdict, str) and verdict.startswith(f"{UNCHECKED}:")


__all__ = ["ACCEPTED", "LEFTOVER_PROPERTY", "MAX_PROPERTY", "PENDING", "REFUSED", "UNCHECKED",
           "VERDICT_PROPERTY", "VERIFIED_AT_PROPERTY", "VERIFIED_PROPERTY", "effective_verdict",
           "is_unchecked", "pending_properties", "refusal_properties", "unchecked_properties"]

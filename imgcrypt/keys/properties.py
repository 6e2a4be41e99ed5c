"""The image properties that tell a cloud which key opens an encrypted image.

Two generations exist and consumers read either, so both are written: Cinder's
``cinder_encryption_key_*`` (works today) and the proposed ``os_encrypt_*`` /
``os_decrypt_*`` standard.
"""

from __future__ import annotations

from imgcrypt.errors import FormatError, UsageError
from imgcrypt.keys.manager import require_uuid
from imgcrypt.keys.rules import DEFAULT_DELETION_POLICY, parse_deletion_policy

_FORMATS = {"luks": 1, "luks1": 1, "luksv1": 1, "luks2": 2, "luksv2": 2}


def encryption_properties(
    key_id: str,
    luks_version: int,
    decrypt_size: int,
    deletion_policy: str = DEFAULT_DELETION_POLICY,
) -> dict[str, str]:
    """The properties to attach to an image encrypted with LUKS ``luks_version``."""
    key_id = require_uuid(key_id)
    if luks_version not in (1, 2) or isinstance(luks_version, bool):
        raise UsageError(f"LUKS version must be 1 or 2, not {luks_version!r}")
    if isinstance(decrypt_size, bool) or not isinstance(decrypt_size, int) or decrypt_size < 0:
        raise UsageError("decrypt size must be a non-negative number of bytes")
    policy = parse_deletion_policy(deletion_policy)
    return {
        "cinder_encryption_key_id": key_id,
        "cinder_encryption_key_deletion_policy": policy,
        "os_encrypt_format": f"LUKSv{luks_version}",
        "os_encrypt_key_id": key_id,
        "os_encrypt_key_deletion_policy": policy,
        "os_decrypt_size": str(decrypt_size),
        "os_decrypt_container_format": "bare",
    }


def parse_encrypt_format(value: str) -> int:
    """LUKS version from an ``os_encrypt_format`` value (``luks``, ``luks1``, ``LUKSv2`` ...)."""
    if not isinstance(value, str):
        raise FormatError("os_encrypt_format is not a string")
    version = _FORMATS.get(value.strip().lower())
    if version is None:
        # The value comes from image metadata anyone can set: keep the message short.
        shown = repr(value[:32])[:80] + ("..." if len(value) > 32 else "")
        raise FormatError(
            f"os_encrypt_format {shown} is not one of luks, luks1, LUKSv1, luks2, LUKSv2"
        )
    return version

"""What an image's properties claim about its encryption, parsed once and validated."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from imgcrypt.errors import FormatError, FormatFault
from imgcrypt.keys.manager import require_uuid
from imgcrypt.keys.properties import parse_encrypt_format
from imgcrypt.keys.rules import DEFAULT_DELETION_POLICY, parse_deletion_policy

KEY_ID_PROPERTIES = ("os_encrypt_key_id", "cinder_encryption_key_id")
POLICY_PROPERTIES = ("os_encrypt_key_deletion_policy", "cinder_encryption_key_deletion_policy")
MAX_DECRYPT_SIZE = 1 << 60


@dataclass(frozen=True)
class EncryptionClaim:
    """``version`` is None when the properties name a key but no format (Cinder's style)."""

    key_id: str
    version: int | None
    deletion_policy: str
    decrypt_size: int | None


def claims_encryption(properties: Mapping[str, str]) -> bool:
    """Whether the properties claim an encrypted image (a key id, a format, disk_format luks)."""
    return (
        any(properties.get(name) for name in (*KEY_ID_PROPERTIES, "os_encrypt_format"))
        or str(properties.get("disk_format", "")).lower() == "luks"
    )


def encryption_claim(properties: Mapping[str, str]) -> EncryptionClaim | None:
    """The encryption the properties declare, or None if they declare none."""
    if not claims_encryption(properties):
        return None
    ids = {require_uuid(str(properties[name])) for name in KEY_ID_PROPERTIES
           if properties.get(name)}
    if not ids:
        raise FormatError("the image claims encryption but names no key id",
                          reason=FormatFault.ENCRYPTION_CLAIM)
    if len(ids) > 1:
        raise FormatError("os_encrypt_key_id and cinder_encryption_key_id disagree",
                          reason=FormatFault.ENCRYPTION_CLAIM)
    version = None
    if properties.get("os_encrypt_format"):
        version = parse_encrypt_format(str(properties["os_encrypt_format"]))
    policies = {parse_deletion_policy(str(properties[name])) for name in POLICY_PROPERTIES
                if properties.get(name)}
    if len(policies) > 1:
        raise FormatError("the two key deletion policy properties disagree",
                          reason=FormatFault.ENCRYPTION_CLAIM)
    size = None
    raw_size = properties.get("os_decrypt_size")
    if raw_size not in (None, ""):
        text = str(raw_size)
        if not re.fullmatch(r"[0-9]{1,19}", text) or int(text) > MAX_DECRYPT_SIZE:
            raise FormatError("os_decrypt_size is not a byte count",
                              reason=FormatFault.ENCRYPTION_CLAIM)
        size = int(text)
    return EncryptionClaim(ids.pop(), version, policies.pop() if policies else
                           DEFAULT_DELETION_POLICY, size)

"""LUKS1, beside :mod:`imgcrypt.luks.luks2` as cryptsetup's ``lib/luks1/`` is beside ``lib/luks2/``.

- :mod:`.rules`: cryptsetup's validity rules for the binary header (the one validator);
- :mod:`.header`: the 592-byte header and its eight keyslots as :class:`Luks1Header`, unlock,
  keyslot changes, and a new header (:func:`format_region`).
"""

from __future__ import annotations

from imgcrypt.luks.base import MAGIC
from imgcrypt.luks.luks1.header import (
    DIGEST_SIZE,
    HEADER_LAYOUT,
    HEADER_SIZE,
    KEYSLOT_ACTIVE,
    KEYSLOT_INACTIVE,
    KEYSLOT_LAYOUT,
    MAX_REGION,
    NUM_KEYSLOTS,
    SECTOR,
    STRIPES,
    Keyslot,
    Luks1Header,
    format_region,
    keyslot_area_sectors,
)

__all__ = [
    "DIGEST_SIZE",
    "HEADER_LAYOUT",
    "HEADER_SIZE",
    "KEYSLOT_ACTIVE",
    "KEYSLOT_INACTIVE",
    "KEYSLOT_LAYOUT",
    "MAGIC",
    "MAX_REGION",
    "NUM_KEYSLOTS",
    "SECTOR",
    "STRIPES",
    "Keyslot",
    "Luks1Header",
    "format_region",
    "keyslot_area_sectors",
]

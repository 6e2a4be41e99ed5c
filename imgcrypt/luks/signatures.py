"""Foreign signatures cryptsetup's blkid probe would see where a LUKS2 copy should be.

cryptsetup will not recover a damaged or stale LUKS2 copy from the other one while blkid finds
another signature on the device: the image may have been reused by something else (LVM2,
a filesystem) and rewriting the copy would destroy it. ``imgcrypt repair`` overrides this, as
``cryptsetup repair`` does. Only signatures imgcrypt can recognise exactly are probed.
"""

from __future__ import annotations

import zlib

from imgcrypt.luks.base import SECTOR

# blkid probes no RAID-class signature (LVM2 among them) on a device this small ("tiny").
TINY_DEVICE = 1440 * 1024
_LVM2_ID = b"LABELONE"
_LVM2_TYPE = b"LVM2 001"
_LVM2_CRC_INIT = 0xF597A6CF


def _lvm2_crc(data: bytes) -> int:
    """LVM2's label CRC: CRC-32 (reflected 0xEDB88320) from 0xf597a6cf, no final inversion."""
    return zlib.crc32(data, _LVM2_CRC_INIT ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def lvm2_label(data: bytes) -> int | None:
    """The sector (0..3) holding a valid LVM2 physical-volume label, as blkid checks it (id,
    sector number, type and CRC): the one LVM2 detector, which :mod:`imgcrypt.devices` uses too."""
    for sector in range(4):
        label = data[sector * SECTOR : (sector + 1) * SECTOR]
        if len(label) < SECTOR or label[:8] != _LVM2_ID or label[24:32] != _LVM2_TYPE:
            continue
        if int.from_bytes(label[8:16], "little") != sector:
            continue
        if int.from_bytes(label[16:20], "little") == _lvm2_crc(label[20:]):
            return sector
    return None


def foreign_signature(data: bytes, image_size: int | None = None) -> str | None:
    """A description of a foreign signature in the image's first bytes, or None.

    ``image_size`` (None: unknown, e.g. a pipe) matters as it does to blkid: on an image of
    at most 1440 KiB it probes no LVM2 label.
    """
    if image_size is not None and image_size <= TINY_DEVICE:
        return None
    sector = lvm2_label(data)
    if sector is not None:
        return f"LVM2 label at sector {sector}"
    return None

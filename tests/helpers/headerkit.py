"""A broken-header generator of the tests' own: LUKS1 and LUKS2 headers edited field by field.

Independent of imgcrypt's writers: it edits images cryptsetup made, with ``struct`` and
``hashlib`` only, and recomputes LUKS2 checksums itself. ``cryptsetup_verdict`` asks
``cryptsetup luksDump`` about a COPY, because cryptsetup repairs headers in place.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgcrypt.errors import FormatError
from imgcrypt.luks.luks1 import Luks1Header
from imgcrypt.luks.luks1 import rules as luks1_rules
from imgcrypt.luks.rules import HeaderRuleError
from imgcrypt.luks.unlock import read_header

PASSPHRASE = b"header rules"
LUKS1_KEYSLOT = 208
LUKS1_SLOT_SIZE = 48


# -- making base images with cryptsetup ------------------------------------------------------


def make_luks1(cryptsetup: str, path: Path, key: Path) -> bytes:
    path.write_bytes(bytes(2 << 20))
    subprocess.run([cryptsetup, "luksFormat", "-q", "--type", "luks1", "--key-file", str(key),
                    "--pbkdf-force-iterations", "1000", "--key-size", "256", str(path)],
                   check=True, capture_output=True)
    return path.read_bytes()[: (4096 + 1) * 512]


def make_luks2(cryptsetup: str, path: Path, key: Path) -> bytes:
    path.write_bytes(bytes(320 * 512 + 8192))
    subprocess.run([cryptsetup, "luksFormat", "-q", "--type", "luks2", "--key-file", str(key),
                    "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-size", "256",
                    "--luks2-metadata-size", "16k", "--luks2-keyslots-size", "128k",
                    "--offset", "320", "--sector-size", "512", str(path)],
                   check=True, capture_output=True)
    return path.read_bytes()


# -- verdicts ----------------------------------------------------------------------------------


def cryptsetup_verdict(cryptsetup: str, image: bytes, workdir: Path) -> bool:
    """Does ``cryptsetup luksDump`` load this image? Asked about a copy it may repair."""
    copy = workdir / "verdict.img"
    copy.write_bytes(image)
    proc = subprocess.run([cryptsetup, "luksDump", str(copy)], capture_output=True, timeout=60)
    return proc.returncode == 0


def imgcrypt_verdict(image: bytes, workdir: Path) -> tuple[bool, str | None]:
    """(valid, rule name if a rule was broken) from imgcrypt's reading of a file: its verdict
    on what cryptsetup loads, including the headers imgcrypt opens as qemu does but reports
    cryptsetup refusing."""
    path = workdir / "imgcrypt.img"
    path.write_bytes(image)
    try:
        with path.open("rb") as f:
            header, _ = read_header(f)
        info = header.describe()
    except HeaderRuleError as err:
        return False, err.rule.name
    except FormatError:
        return False, None
    if isinstance(header, Luks1Header):
        refusal = luks1_rules.cryptsetup_refusal(header)
        if refusal is not None:
            assert info["cryptsetup_refuses"] == str(refusal)
            return False, refusal.rule.name
    return True, None


def copy_tool(cryptsetup: str) -> str:
    found = shutil.which(cryptsetup)
    assert found
    return found


# -- LUKS1 edits -------------------------------------------------------------------------------


def luks1_field(image: bytes, offset: int, fmt: str, value: Any) -> bytes:
    out = bytearray(image)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def luks1_slot(image: bytes, slot: int, field: str, value: int) -> bytes:
    """Set one big-endian u32 field of a keyslot: active, iterations, offset or stripes."""
    at = LUKS1_KEYSLOT + slot * LUKS1_SLOT_SIZE + {
        "active": 0, "iterations": 4, "offset": 40, "stripes": 44}[field]
    return luks1_field(image, at, ">I", value)


def luks1_text(image: bytes, offset: int, text: str) -> bytes:
    out = bytearray(image)
    out[offset : offset + 32] = text.encode().ljust(32, b"\0")
    return bytes(out)


def luks1_get_slot(image: bytes, slot: int, field: str) -> int:
    at = LUKS1_KEYSLOT + slot * LUKS1_SLOT_SIZE + {
        "active": 0, "iterations": 4, "offset": 40, "stripes": 44}[field]
    return int(struct.unpack_from(">I", image, at)[0])


# -- LUKS2 edits -------------------------------------------------------------------------------


def hdr_size(image: bytes) -> int:
    return int(struct.unpack_from(">Q", image, 8)[0])


def luks2_json(image: bytes, copy: int = 0) -> dict[str, Any]:
    size = hdr_size(image)
    area = image[copy * size + 4096 : (copy + 1) * size]
    obj: dict[str, Any] = json.loads(area.split(b"\0", 1)[0])
    return obj


def summed(image: bytes, copies: tuple[int, ...] = (0, 1)) -> bytes:
    """The image with the checksum of each named copy recomputed (sha256, as cryptsetup)."""
    out = bytearray(image)
    size = hdr_size(image)
    for copy in copies:
        start = copy * size
        out[start + 0x1C0 : start + 0x200] = bytes(64)
        digest = hashlib.sha256(bytes(out[start : start + size])).digest()
        out[start + 0x1C0 : start + 0x1C0 + 32] = digest
    return bytes(out)


def with_area(image: bytes, area_text: bytes, copies: tuple[int, ...] = (0, 1)) -> bytes:
    """Both (or the named) JSON areas replaced by ``area_text`` NUL-padded, checksums fixed."""
    out = bytearray(image)
    size = hdr_size(image)
    assert len(area_text) <= size - 4096
    for copy in copies:
        start = copy * size + 4096
        out[start : start + size - 4096] = area_text.ljust(size - 4096, b"\0")
    return summed(bytes(out), copies)


def with_json(image: bytes, edit: Callable[[dict[str, Any]], Any],
              copies: tuple[int, ...] = (0, 1)) -> bytes:
    obj = luks2_json(image)
    edit(obj)
    return with_area(image, json.dumps(obj, separators=(",", ":")).encode(), copies)


def with_binary(image: bytes, offset: int, raw: bytes, copies: tuple[int, ...] = (0, 1),
                fix: bool = True) -> bytes:
    out = bytearray(image)
    size = hdr_size(image)
    for copy in copies:
        out[copy * size + offset : copy * size + offset + len(raw)] = raw
    return summed(bytes(out), copies) if fix else bytes(out)


def lvm2_label(sector: int = 1) -> bytes:
    """An LVM2 physical-volume label as LVM writes it (id, sector, CRC, offset, type)."""
    label = bytearray(512)
    label[0:8] = b"LABELONE"
    label[8:16] = sector.to_bytes(8, "little")
    label[20:24] = (32).to_bytes(4, "little")
    label[24:32] = b"LVM2 001"
    label[32:64] = b"Xq3sGXz3aD2hMdyr6bDAgWyBRHnAFsvN"
    crc = zlib.crc32(bytes(label[20:]), 0xF597A6CF ^ 0xFFFFFFFF) ^ 0xFFFFFFFF
    label[16:20] = crc.to_bytes(4, "little")
    return bytes(label)


def put(image: bytes, offset: int, raw: bytes) -> bytes:
    out = bytearray(image)
    out[offset : offset + len(raw)] = raw
    return bytes(out)


def set_path(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(obj: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        for p in parents:
            obj = obj[p]
        obj[last] = value
    return edit


def drop_path(path: str) -> Callable[[dict[str, Any]], None]:
    def edit(obj: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        for p in parents:
            obj = obj[p]
        del obj[last]
    return edit


def with_json_text(image: bytes) -> bytes:
    """The primary copy's JSON text, as stored."""
    size = hdr_size(image)
    return image[4096:size].split(b"\0", 1)[0]

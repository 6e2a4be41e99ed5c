"""Building and tampering with LUKS2 regions for the LUKS2 tests."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from imgcrypt.crypto.kdf import Argon2, Kdf, Pbkdf2
from imgcrypt.crypto.sectors import CipherSpec
from imgcrypt.luks import luks2
from imgcrypt.luks.luks2.disk import BINARY_SIZE, BinaryHeader, pack_copy

XTS = CipherSpec.parse("aes-xts-plain64")
PASS = b"luks2 passphrase \xe2\x9c\x93"
# Small keyslots area so regions stay 1 MiB instead of cryptsetup's 16 MiB default.
SMALL_KEYSLOTS = (1 << 20) - 2 * 16384


def cheap_kdf(name: str = "pbkdf2") -> Kdf:
    if name == "pbkdf2":
        return Pbkdf2("sha256", 1000, b"")
    return Argon2(name, 4, 32 * 1024, 1, b"")


def make_region(master_key: bytes | None = None, passphrase: bytes = PASS, *,
                kdf: str = "pbkdf2", sector_size: int = 512, metadata_size: int = 16384,
                keyslots_size: int | None = SMALL_KEYSLOTS, **kw: Any) -> tuple[bytes, bytes]:
    mk = master_key if master_key is not None else os.urandom(64)
    region = luks2.format_region(
        mk, passphrase, cipher=XTS, kdf=cheap_kdf(kdf), sector_size=sector_size,
        digest_iterations=1000, metadata_size=metadata_size, keyslots_size=keyslots_size, **kw,
    )
    return region, mk


def rewrite_json(region: bytes, edit: Callable[[dict[str, Any]], Any] | None = None, *,
                 text: Callable[[str], str] | None = None, which: tuple[int, ...] = (0, 1),
                 seqid_delta: int = 0, nul: bool = True) -> bytes:
    """``region`` with the JSON of the chosen copies edited and their checksums made valid."""
    out = bytearray(region)
    hdr_size = int.from_bytes(region[8:16], "big")
    for index in which:
        offset = index * hdr_size
        binary = BinaryHeader.unpack(region, offset)
        area = region[offset + BINARY_SIZE : offset + hdr_size]
        js = area[: area.index(b"\0")].decode()
        if edit is not None:
            obj = json.loads(js)
            edit(obj)
            js = json.dumps(obj, separators=(",", ":"))
        if text is not None:
            js = text(js)
        binary = BinaryHeader(**{**binary.__dict__, "seqid": binary.seqid + seqid_delta})
        if nul:
            copy = pack_copy(binary, js)
        else:
            raw = js.encode().ljust(hdr_size - BINARY_SIZE, b" ")[: hdr_size - BINARY_SIZE]
            copy = _checksummed(binary, raw)
        out[offset : offset + hdr_size] = copy
    return bytes(out)


def _checksummed(binary: BinaryHeader, json_area: bytes) -> bytes:
    from imgcrypt.luks.luks2.disk import checksum

    plain = BinaryHeader(**{**binary.__dict__, "csum": bytes(64)}).pack()
    csum = checksum(plain, json_area, "sha256")
    return BinaryHeader(**{**binary.__dict__, "csum": csum}).pack() + json_area


def apply_steps(old: bytes, new: bytes, steps: tuple[tuple[int, int], ...], done: int,
                torn: bool) -> bytes:
    """The disk after ``done`` steps, and half of the next one if ``torn``."""
    out = bytearray(old)
    for start, end in steps[:done]:
        out[start:end] = new[start:end]
    if torn and done < len(steps):
        start, end = steps[done]
        mid = start + (end - start) // 2
        out[start:mid] = new[start:mid]
    return bytes(out)

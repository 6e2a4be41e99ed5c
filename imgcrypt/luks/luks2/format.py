"""Making a new LUKS2 header: both copies, keyslot 0, zero padding up to the payload."""

from __future__ import annotations

import hashlib
import os
import uuid as uuidlib

from imgcrypt.crypto import af
from imgcrypt.crypto.kdf import Kdf, Pbkdf2, pbkdf2_iterations_for
from imgcrypt.crypto.sectors import SECTOR_SIZES, CipherSpec
from imgcrypt.errors import UsageError
from imgcrypt.luks.base import MAGIC, PAYLOAD_ALIGN, SECTOR
from imgcrypt.luks.keyslot import KEYSLOT_ALIGN, MasterKeyDigest, area_size
from imgcrypt.luks.luks2.disk import SALT_SIZE, BinaryHeader, text_field
from imgcrypt.luks.luks2.header import Luks2Header
from imgcrypt.luks.luks2.keyslots import round_up
from imgcrypt.luks.luks2.metadata import (
    crypt_segment_entry,
    digest_entry,
    dump_json,
    new_document,
    validate,
)
from imgcrypt.luks.luks2.rules import BINARY_SIZE, HDR_SIZES, MAX_KEYSLOTS_SIZE

# cryptsetup's LUKS2_DEFAULT_HDR_SIZE: metadata plus keyslots fill the first 16 MiB by default.
DEFAULT_REGION = 16 << 20
DIGEST_MS = 100


def format_region(master_key: bytes, passphrase: bytes, *, cipher: CipherSpec, kdf: Kdf,
                  sector_size: int = SECTOR, digest_iterations: int | None = None,
                  uuid: str | None = None, label: str = "", metadata_size: int = HDR_SIZES[0],
                  keyslots_size: int | None = None, payload_align: int = PAYLOAD_ALIGN,
                  slot: int = 0) -> bytes:
    """A complete LUKS2 region: both copies, keyslot ``slot``, zero padding up to the payload.

    Segment 0 is a ``dynamic`` crypt segment with iv_tweak 0; the pbkdf2 digest uses the
    keyslot's hash for a pbkdf2 ``kdf`` and sha256 otherwise, as cryptsetup does.
    """
    cipher.check_key_size(len(master_key))
    if sector_size not in SECTOR_SIZES:
        raise UsageError(f"sector size must be one of {SECTOR_SIZES}")
    if metadata_size not in HDR_SIZES:
        raise UsageError("metadata size must be a power of two from 16 KiB to 4 MiB")
    if keyslots_size is None:
        keyslots_size = DEFAULT_REGION - 2 * metadata_size
    area = area_size(len(master_key))
    if keyslots_size % KEYSLOT_ALIGN or not area <= keyslots_size <= MAX_KEYSLOTS_SIZE:
        raise UsageError(f"keyslots size must be a multiple of 4096 from {area} to 128 MiB")
    if payload_align <= 0 or payload_align % sector_size or payload_align % 512:
        raise UsageError("payload alignment must be a positive multiple of the sector size")
    if len(label.encode("utf-8")) > 47 or "\0" in label:
        raise UsageError("label must be at most 47 bytes of UTF-8 without NUL")
    try:
        uuid = str(uuidlib.UUID(uuid)) if uuid is not None else str(uuidlib.uuid4())
    except ValueError:
        raise UsageError("uuid is not a UUID") from None
    digest_hash = kdf.hash if isinstance(kdf, Pbkdf2) else "sha256"
    digest_len = hashlib.new(af.check_hash(digest_hash)).digest_size
    if digest_iterations is None:
        digest_iterations = pbkdf2_iterations_for(digest_hash, digest_len, DIGEST_MS)
    digest = MasterKeyDigest.of(master_key, digest_hash, digest_iterations, digest_len)
    payload_offset = round_up(2 * metadata_size + keyslots_size, payload_align)

    obj = new_document(
        segment=crypt_segment_entry(offset=payload_offset, cipher=str(cipher),
                                    sector_size=sector_size),
        digest=digest_entry(digest, keyslots=[], segments=["0"]),
        json_size=metadata_size - BINARY_SIZE, keyslots_size=keyslots_size,
    )
    binary = BinaryHeader(
        magic=MAGIC, version=2, hdr_size=metadata_size, seqid=0,
        label=text_field(label, 48, "label"), checksum_alg=text_field("sha256", 32, "checksum"),
        salt=bytes(SALT_SIZE), uuid=text_field(uuid, 40, "uuid"),
        subsystem=bytes(48), hdr_offset=0, csum=bytes(64),
    )
    empty = Luks2Header(binary, dump_json(obj), validate(obj, metadata_size),
                        salts=(os.urandom(SALT_SIZE), os.urandom(SALT_SIZE)))
    region = bytes(payload_offset)
    return empty.add_first_keyslot(region, master_key, passphrase, kdf, slot).region

"""Header-only changes: which passphrases open an image, rewritten in place under a lock.

Each change is a :class:`~imgcrypt.luks.container.RegionUpdate` whose ranges are written and
synced in the order that keeps the image openable after a crash at any point.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from dataclasses import dataclass

from imgcrypt.crypto.kdf import DEFAULT_LIMITS, Kdf, KdfLimits
from imgcrypt.errors import UsageError
from imgcrypt.luks.container import LuksHeader, RegionUpdate, parse_header
from imgcrypt.luks.options import FormatOptions, KdfOptions
from imgcrypt.luks.unlock import read_header


def _apply(fd: int, update: RegionUpdate) -> None:
    for start, end in update.steps:
        os.pwrite(fd, update.region[start:end], start)
        os.fsync(fd)


@dataclass(frozen=True)
class RekeyResult:
    opened_slot: int
    added_slot: int | None
    removed_slot: int | None


def rekey_file(path: str, passphrase: bytes, *, new_passphrase: bytes | None = None,
               remove_old: bool = False, remove_slot: int | None = None,
               kdf: Kdf | KdfOptions | None = None, limits: KdfLimits = DEFAULT_LIMITS,
               opened_slot: int | None = None, new_slot: int | None = None,
               remove_others: bool = False) -> RekeyResult:
    """Change which passphrases open the image at ``path`` by rewriting its header only.

    With ``new_passphrase``, a keyslot for it is added (``kdf`` gives its parameters); with
    ``remove_old`` the keyslot ``passphrase`` opened is then removed, so a crash between the two
    steps leaves both passphrases valid, never neither. ``remove_slot`` removes that slot.
    ``kdf`` as :class:`KdfOptions` is completed from the image's header (:func:`kdf_for`) before
    the passphrase is tried.
    ``opened_slot`` restricts which keyslot ``passphrase`` may open, ``new_slot`` chooses the
    new keyslot's number (cryptsetup's ``--key-slot`` for luksChangeKey and luksAddKey).
    ``remove_others`` removes every keyslot but the new one (or, without ``new_passphrase``, the
    one ``passphrase`` opened), each disabled in the header (both LUKS2 copies) before its
    material is overwritten, so that passphrase alone opens the image.
    The file is locked for the whole change so two re-keys cannot interleave.
    """
    if remove_old and new_passphrase is None:
        raise UsageError("changing a passphrase needs the new one")
    with open(path, "r+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        header, region = read_header(f, limits)
        if isinstance(kdf, KdfOptions):
            kdf = kdf_for(header, kdf.format_options()) if new_passphrase is not None else None
        slot, master_key = header.unlock(region, passphrase, limits, slot=opened_slot)
        added = removed = None
        if new_passphrase is not None:
            if kdf is None:
                raise UsageError("adding a keyslot needs KDF parameters")
            update = header.add_keyslot(region, master_key, new_passphrase, kdf, slot=new_slot)
            _apply(f.fileno(), update)
            added = update.slot
            region = update.region
            header = parse_header(region, limits)
        target = slot if remove_old else remove_slot
        if target is not None:
            if target == added:
                raise UsageError("refusing to remove the keyslot just added")
            if remaining_after(header, target) == 0:
                raise UsageError("refusing to remove the last keyslot")
            update = header.remove_keyslot(region, target)
            _apply(f.fileno(), update)
            region = update.region
            header = parse_header(region, limits)
            removed = target
        if remove_others:
            keep = added if added is not None else slot
            for other in header.active_keyslots():
                if other == keep:
                    continue
                update = header.remove_keyslot(region, other)
                _apply(f.fileno(), update)
                region = update.region
                header = parse_header(region, limits)
                removed = slot if removed is None else removed
        return RekeyResult(slot, added, removed)


def remaining_after(header: LuksHeader, slot: int) -> int:
    """How many keyslots stay active once ``slot`` is removed."""
    return len([s for s in header.active_keyslots() if s != slot])


def kdf_for(header: LuksHeader, options: FormatOptions) -> Kdf:
    """KDF parameters for a new keyslot in ``header``: its version decides the default KDF."""
    hash_name = header.af_hash if header.version == 1 else options.hash
    return dataclasses.replace(
        options, version=header.version, hash=hash_name, key_size=header.key_bytes * 8,
        cipher=str(header.cipher),
    ).keyslot_kdf()

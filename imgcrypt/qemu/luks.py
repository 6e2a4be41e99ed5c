"""qcow2 images with qemu's built-in LUKS encryption: inspect, decrypt, re-key and write them.

The one module for them: the command line and library callers both come here.

The LUKS header lives inside the qcow2 file (found through the qcow2 crypto header extension,
:mod:`imgcrypt.qemu.qcow2`), and the encrypted guest data in qcow2 clusters. imgcrypt reads the
header itself (``inspect`` needs no qemu-img and no passphrase); everything that touches guest
data or rewrites keyslots goes through qemu-img, which owns the qcow2 metadata:

* decrypt: ``qemu-img convert`` of a ``json:`` spec with ``encrypt.key-secret`` to raw;
* write: ``qemu-img convert -O qcow2 -o encrypt.format=luks,...`` (an empty disk:
  ``qemu-img create`` with the same options);
* re-key: ``qemu-img amend -o encrypt.state=active,encrypt.new-secret=...`` to add a keyslot,
  ``encrypt.state=inactive`` with ``encrypt.old-secret`` or ``encrypt.keyslot`` to remove one.

Passphrases reach qemu-img only as ``--object secret,id=...,file=PATH`` (0600 files in a
private directory, removed afterwards). Every function running qemu-img takes the
:class:`~imgcrypt.qemu.tool.QemuImg` to run as ``qemu_img=``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from imgcrypt.crypto.kdfparams import PBKDF2
from imgcrypt.crypto.sectors import CipherSpec
from imgcrypt.errors import ToolError, UnsupportedError, UsageError
from imgcrypt.fileio import atomic_file
from imgcrypt.luks.base import SECTOR
from imgcrypt.luks.container import LuksHeader
from imgcrypt.luks.options import FormatOptions, KdfOptions
from imgcrypt.luks.rekey import RekeyResult, rekey_file
from imgcrypt.luks.unlock import read_header
from imgcrypt.qemu import qcow2
from imgcrypt.qemu.info import MAX_INFO_JSON, MAX_SIZE, ImageInfo
from imgcrypt.qemu.source import (
    INFO_TIMEOUT,
    SourceFile,
    bomb_note,
    image_info,
    open_source,
    require_convertible,
    shown,
    source_spec,
)
from imgcrypt.qemu.tool import DEFAULT_QEMU_IMG, INFO_LIMITS, QemuImg, secret_object

# Hashes qemu's LUKS writes that imgcrypt computes (crypto/backend.py) and cryptsetup's LUKS1
# rules accept: not md5, whose 16 bytes are below the LUKS1 digest's 20.
QEMU_HASHES = ("sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160")


@dataclass(frozen=True)
class Qcow2Luks:
    """A qcow2 image's header and the LUKS header stored inside it."""

    qcow2: qcow2.Qcow2Header
    luks: LuksHeader
    region: bytes = field(repr=False)

    def describe(self) -> dict[str, Any]:
        info = self.luks.describe()
        # The LUKS payload offset means nothing here: the data lives in qcow2 clusters.
        info.pop("payload_offset", None)
        assert self.qcow2.crypt_header is not None
        return {
            "container": "qcow2", "virtual_size": self.qcow2.virtual_size,
            "cluster_size": self.qcow2.cluster_size,
            "luks_header_offset": self.qcow2.crypt_header.offset,
            "luks_header_length": self.qcow2.crypt_header.length, **info,
        }


def is_qcow2_file(path: str | SourceFile) -> bool:
    """True if ``path`` is a regular file starting with the qcow2 magic."""
    if path == "-" or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return qcow2.is_qcow2(f.read(4))


def read_qcow2_luks(path: str | SourceFile) -> Qcow2Luks:
    """The qcow2 header of ``path`` and its LUKS header, validated; no passphrase needed.

    A qcow2 without encryption, or with qemu's legacy AES scheme, raises
    :class:`UnsupportedError`.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = qcow2.parse_header(f.read(qcow2.MAX_HEADER_READ), size)
        where = head.crypt_header
        if where is None:
            state = "not encrypted" if head.encryption is None \
                else f"encrypted with qemu's legacy {head.encryption!r} scheme, not LUKS"
            raise UnsupportedError(f"{shown(path)} is a qcow2 image {state}")
        f.seek(where.offset)
        region = f.read(where.length)
    luks, parsed = read_header(io.BytesIO(region))
    return Qcow2Luks(head, luks, parsed)


def decrypt(path: str | SourceFile, passphrase: bytes, target: str, *, force: bool = False,
            mode: int = 0o600, max_size: int | None = None,
            qemu_img: QemuImg = DEFAULT_QEMU_IMG) -> int:
    """Write the guest content of the LUKS-encrypted qcow2 ``path`` as raw at ``target``
    (plaintext: ``mode`` 0600 unless asked); returns the bytes written (the virtual size).

    The image is opened once: the header read, ``qemu-img info`` and the conversion all reach
    that open file; qemu-img writes into the output file imgcrypt created (by handle), after
    the virtual size was checked against ``max_size`` and the free space."""
    with open_source(path) as src:
        read_qcow2_luks(src)  # a clear refusal before qemu-img for anything but qcow2 + LUKS
        info = _checked_info(src, qemu_img)
        with _secrets(qemu_img, passphrase) as secrets, \
                atomic_file(target, force=force, source=shown(path), mode=mode,
                            size=info.virtual_size, max_size=max_size) as out:
            spec = source_spec(src, "qcow2", options={"encrypt": {"key-secret": "s0"}})
            qemu_img.run(["convert", *secrets, "-O", "raw", spec, out.path], what="convert")
    return info.virtual_size


def decrypt_to(path: str | SourceFile, passphrase: bytes, stream: BinaryIO, *,
               max_size: int | None = None, qemu_img: QemuImg = DEFAULT_QEMU_IMG) -> int:
    """Write the guest content of the LUKS-encrypted qcow2 ``path`` as raw to ``stream`` (a pipe
    or standard output); returns the bytes written (the virtual size).

    qemu-img cannot write to a pipe: it converts into a private directory (0700, the raw file
    0600) removed afterwards, and the result is copied out.
    """
    with tempfile.TemporaryDirectory(prefix="imgcrypt-raw-") as directory:
        raw = os.path.join(directory, "guest.raw")
        written = decrypt(path, passphrase, raw, max_size=max_size, qemu_img=qemu_img)
        with open(raw, "rb") as f:
            shutil.copyfileobj(f, stream, 1 << 20)
        stream.flush()
    return written


def _checked_info(path: str | SourceFile, qemu_img: QemuImg) -> ImageInfo:
    info = image_info(path, source_format="qcow2", qemu_img=qemu_img)
    if info.encryption_format != "luks":
        raise UnsupportedError(f"{shown(path)}: qemu-img does not see LUKS encryption in it")
    return info


def qemu_encrypt_options(options: FormatOptions) -> str:
    """``-o`` options for qemu's LUKS encryption matching ``options``; what qemu cannot make
    (LUKS2, other sector sizes, argon2, exact iteration counts) is a :class:`UsageError`."""
    spec = options.validate()
    if options.version != 1:
        raise UsageError("qemu's qcow2 encryption writes LUKS1 only: drop --format luks2")
    if options.sector_size not in (None, SECTOR) or options.pbkdf not in (None, PBKDF2):
        raise UsageError("qemu's qcow2 encryption uses 512-byte sectors and pbkdf2")
    if options.iterations is not None:
        raise UsageError("qemu-img takes a time budget, not iterations: use --iter-time")
    if options.key_slot != 0:
        raise UsageError("qemu-img puts the first passphrase in keyslot 0: drop --key-slot")
    _check_iter_time(options.iter_time_ms)
    if options.hash.lower() not in QEMU_HASHES:
        # also keeps anything but a plain name out of qemu's comma-separated option string
        raise UsageError(f"qemu's LUKS takes --hash {', '.join(QEMU_HASHES)}")
    return ",".join(["encrypt.format=luks", "encrypt.key-secret=s0", *_cipher_options(spec,
                     options.key_size), f"encrypt.hash-alg={options.hash.lower()}",
                     f"encrypt.iter-time={options.iter_time_ms}"])


def qemu_iter_time(kdf: KdfOptions) -> int:
    """The time budget ``qemu-img amend`` takes for a new keyslot; the rest of ``kdf`` is
    imgcrypt's own and refused here."""
    if kdf.iterations is not None or kdf.pbkdf not in (None, PBKDF2) \
            or kdf.pbkdf_memory_kib is not None or kdf.pbkdf_parallel is not None:
        raise UsageError("qemu's qcow2 encryption takes --iter-time only (pbkdf2, LUKS1)")
    return kdf.iter_time_ms


def _cipher_options(spec: CipherSpec, key_bits: int) -> list[str]:
    # qemu names the AES key length, which for XTS is half the whole key.
    aes_bits = key_bits // 2 if spec.chaining == "xts" else key_bits
    ivgen, _, ivhash = spec.iv_scheme.partition(":")
    out = [f"encrypt.cipher-alg=aes-{aes_bits}", f"encrypt.cipher-mode={spec.chaining}",
           f"encrypt.ivgen-alg={ivgen}"]
    if ivhash:
        out.append(f"encrypt.ivgen-hash-alg={ivhash}")
    return out


def encrypt(source: str, target: str, passphrase: bytes, options: FormatOptions, *,
            source_format: str, force: bool = False, mode: int = 0o600,
            max_size: int | None = None, note: Callable[[str], None] | None = None,
            qemu_img: QemuImg = DEFAULT_QEMU_IMG) -> ImageInfo:
    """Write ``source``'s guest content (format ``source_format``) as a qcow2 with qemu's
    built-in LUKS at ``target``; returns qemu-img's view of the new image.

    The planned size (``qemu-img measure``: the data the source holds, and qcow2's metadata)
    is checked against ``max_size`` and the free space before qemu-img writes; ``note`` is
    told when the source declares a disk far beyond its file."""
    qemu_options = qemu_encrypt_options(options)
    with open_source(source) as src, ExitStack() as stack:
        # checked and converted through one open file; written into one imgcrypt created
        info = image_info(src, source_format=source_format, qemu_img=qemu_img)
        require_convertible(info, src)
        if note is not None and info.format != "raw":
            bomb_note(source, info.virtual_size, note)
        planned = _measure(src, info, qemu_img) + QCOW2_LUKS_HEADER
        secrets = stack.enter_context(_secrets(qemu_img, passphrase))
        out = stack.enter_context(atomic_file(target, force=force, source=source, mode=mode,
                                              size=planned, max_size=max_size))
        qemu_img.run(["convert", *secrets, "-O", "qcow2", "-o", qemu_options,
                      source_spec(src, info.format), out.path], what="convert")
        written = image_info(out.path, source_format="qcow2", qemu_img=qemu_img)
    return written


# qemu's LUKS1 header and keyslots inside the qcow2 (about 2 MiB), on top of its measure.
QCOW2_LUKS_HEADER = 4 << 20


def _measure(src: SourceFile, info: ImageInfo, qemu_img: QemuImg) -> int:
    """``qemu-img measure``'s required size of ``src`` as a qcow2: allocated data plus
    metadata (unencrypted: qemu-img would benchmark the KDF to measure an encrypted one)."""
    proc = qemu_img.run(["measure", "--output=json", "-O", "qcow2",
                         source_spec(src, info.format)], what="measure", timeout=INFO_TIMEOUT,
                        limits=INFO_LIMITS)
    try:
        required = json.loads(proc.stdout[:MAX_INFO_JSON])["required"]
    except (ValueError, KeyError, TypeError):
        raise ToolError("qemu-img measure gave no required size") from None
    if isinstance(required, bool) or not isinstance(required, int) or \
            not 0 <= required <= MAX_SIZE:
        raise ToolError("qemu-img measure gave no required size")
    return required


def create(target: str, virtual_size: int, passphrase: bytes, options: FormatOptions, *,
           force: bool = False, mode: int = 0o600,
           qemu_img: QemuImg = DEFAULT_QEMU_IMG) -> ImageInfo:
    """Create an empty qcow2 of ``virtual_size`` bytes with qemu's built-in LUKS at ``target``;
    returns qemu-img's view of the new image."""
    if isinstance(virtual_size, bool) or not 0 < virtual_size <= MAX_SIZE:
        raise UsageError(f"invalid virtual size {virtual_size!r}")
    qemu_options = qemu_encrypt_options(options)
    with _secrets(qemu_img, passphrase) as secrets, \
            atomic_file(target, force=force, mode=mode) as out:
        qemu_img.run(["create", "-q", *secrets, "-f", "qcow2", "-o", qemu_options,
                      out.path, str(virtual_size)], what="create")
        created = image_info(out.path, source_format="qcow2", qemu_img=qemu_img)
    return created


def _check_iter_time(iter_time_ms: int) -> None:
    if not 1 <= iter_time_ms <= 600_000:
        raise UsageError(f"iter-time {iter_time_ms} out of range 1..600000")


@contextmanager
def _secrets(qemu_img: QemuImg, *passphrases: bytes) -> Iterator[list[str]]:
    with ExitStack() as stack:
        args: list[str] = []
        for i, passphrase in enumerate(passphrases):
            args += secret_object(stack.enter_context(qemu_img.secret_file(passphrase)), f"s{i}")
        yield args


def _amend(path: str | SourceFile, opener: str, secrets: list[str], options: str,
           qemu_img: QemuImg) -> None:
    spec = source_spec(path, "qcow2", options={"encrypt": {"key-secret": opener}})
    qemu_img.run(["amend", *secrets, spec, "-o", options], what="amend")


def _active(found: Qcow2Luks) -> set[int]:
    return set(found.luks.active_keyslots())


def rekey(path: str, passphrase: bytes, *, new_passphrase: bytes | None = None,
          remove_old: bool = False, remove_slot: int | None = None,
          iter_time_ms: int = 2000, kdf: KdfOptions | None = None,
          qemu_img: QemuImg = DEFAULT_QEMU_IMG) -> RekeyResult:
    """Add, change or remove a passphrase of the LUKS-encrypted qcow2 ``path`` in place,
    through ``qemu-img amend`` (qemu rewrites the header inside the qcow2).

    ``kdf``, when given, replaces ``iter_time_ms``: qemu takes a time budget only, so anything
    else it asks for (iterations, argon2, memory, lanes) is a :class:`UsageError`.
    """
    if kdf is not None:
        iter_time_ms = qemu_iter_time(kdf)
    if (new_passphrase is None) == (remove_slot is None):
        raise UsageError("give a new passphrase or a keyslot to remove")
    if new_passphrase is not None and new_passphrase == passphrase:
        raise UsageError("the new passphrase is the current one")
    _check_iter_time(iter_time_ms)
    with open_source(path) as src:
        # checked, unlocked and amended through one open file (qemu-img reopens the inode)
        return _rekey(src, passphrase, new_passphrase, remove_old, remove_slot,
                      iter_time_ms, qemu_img)


def _rekey(path: SourceFile, passphrase: bytes, new_passphrase: bytes | None,
           remove_old: bool, remove_slot: int | None, iter_time_ms: int,
           qemu_img: QemuImg) -> RekeyResult:
    found = read_qcow2_luks(path)
    before = _active(found)
    _checked_info(path, qemu_img)
    # imgcrypt's own unlock names the keyslot the passphrase opens (and a wrong passphrase
    # fails here, before qemu-img is asked to change anything)
    opened, _ = found.luks.unlock(found.region, passphrase)
    if remove_slot is not None:
        if remove_slot not in before:
            raise UsageError(f"keyslot {remove_slot} is not active")
        with _secrets(qemu_img, passphrase) as secrets:
            _amend(path, "s0", secrets,
                   f"encrypt.state=inactive,encrypt.keyslot={remove_slot}", qemu_img)
        return RekeyResult(opened_slot=opened, added_slot=None, removed_slot=remove_slot)
    assert new_passphrase is not None
    with _secrets(qemu_img, passphrase, new_passphrase) as secrets:
        _amend(path, "s0", secrets, "encrypt.state=active,encrypt.new-secret=s1,"
               f"encrypt.iter-time={iter_time_ms}", qemu_img)
        added = _active(read_qcow2_luks(path)) - before
        if len(added) != 1:
            raise ToolError(f"qemu-img amend added {len(added)} keyslots, expected one")
        if remove_old:
            # opened with the new passphrase: the old one's keyslot is not needed to open it
            _amend(path, "s1", secrets, f"encrypt.state=inactive,encrypt.keyslot={opened}",
                   qemu_img)
    return RekeyResult(opened_slot=opened, added_slot=added.pop(),
                       removed_slot=opened if remove_old else None)


def rekey_image(path: str, passphrase: bytes, *, new_passphrase: bytes | None = None,
                remove_old: bool = False, remove_slot: int | None = None,
                kdf: KdfOptions | None = None, opened_slot: int | None = None,
                new_slot: int | None = None,
                qemu_img: QemuImg = DEFAULT_QEMU_IMG) -> RekeyResult:
    """Add, change or remove a passphrase of the image at ``path``, a LUKS container
    (:func:`imgcrypt.luks.rekey.rekey_file`) or a qcow2 with qemu's built-in LUKS
    (:func:`rekey`, by its magic): the header only, in place. ``kdf`` describes the new
    keyslot (default :class:`KdfOptions`); qemu-img amend picks a qcow2's keyslots itself, so
    ``opened_slot`` and ``new_slot`` are for LUKS images only."""
    kdf = KdfOptions() if kdf is None else kdf
    if is_qcow2_file(path):
        if opened_slot is not None or new_slot is not None:
            raise UsageError("--key-slot is for LUKS images; qemu-img amend picks the keyslot "
                             "of a qcow2")
        return rekey(path, passphrase, new_passphrase=new_passphrase, remove_old=remove_old,
                     remove_slot=remove_slot, kdf=kdf, qemu_img=qemu_img)
    return rekey_file(path, passphrase, new_passphrase=new_passphrase, remove_old=remove_old,
                      remove_slot=remove_slot, kdf=kdf, opened_slot=opened_slot,
                      new_slot=new_slot)


__all__ = ["Qcow2Luks", "create", "decrypt", "decrypt_to", "encrypt", "is_qcow2_file",
           "qemu_encrypt_options", "qemu_iter_time", "read_qcow2_luks", "rekey", "rekey_image"]

"""The recipes: one call per job, for each of imgcrypt's three users.

A person at a terminal (or a script)
    :func:`encrypt_image` (under a new key, an existing key or a passphrase, with the image
    properties to attach), :func:`decrypt_image`, :func:`rekey_image`, :func:`sign_image`,
    :func:`verify_image`.
An image service
    :class:`UploadInspector` / :func:`inspect_upload` while an upload streams,
    :func:`download_hook`, :func:`delete_hook`.
A volume service
    :func:`create_volume_from_image`, :func:`upload_volume_as_image`.

Every recipe that obtains a key does so through a :class:`~imgcrypt.keys.lease.KeyLease`: a
key made for a job that fails is deleted again, and the image is registered as the key's
consumer only when the job succeeded. The primitives the recipes are built from (headers, KDFs,
the sector engine, signature schemes) are in :mod:`imgcrypt.hazmat`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from imgcrypt.errors import UsageError
from imgcrypt.fileio import atomic_output
from imgcrypt.keys.consumers import (
    file_consumer_for,
    release_file_elsewhere,
    unregister_file_consumer,
)
from imgcrypt.keys.lease import KeyLease
from imgcrypt.keys.manager import KeyManager, KeyOrder
from imgcrypt.keys.properties import encryption_properties
from imgcrypt.keys.rules import DEFAULT_DELETION_POLICY
from imgcrypt.luks.engine import Progress, Source
from imgcrypt.luks.options import FormatOptions, KdfOptions
from imgcrypt.luks.transfer import EncryptResult, decrypt_payload, encrypt_stream
from imgcrypt.luks.unlock import Unlocked, unlock_stream

if TYPE_CHECKING:
    from imgcrypt.service.flows import (
        VolumeImage,
        VolumeResult,
        create_volume_from_image,
        delete_hook,
        download_hook,
        upload_volume_as_image,
    )
    from imgcrypt.service.upload import (
        UploadInspector,
        UploadPolicy,
        UploadVerdict,
        inspect_upload,
    )
    from imgcrypt.signing.verify import CertificateSources, VerificationResult

# The services' recipes and the signature values live in their own modules and are imported
# from here on first use (PEP 562), so that a person's recipes (and the commands built on them)
# do not load the image service, the volume flows or the signing stack.
_ELSEWHERE = {
    **dict.fromkeys(("VolumeImage", "VolumeResult", "create_volume_from_image", "delete_hook",
                     "download_hook", "upload_volume_as_image"), "imgcrypt.service.flows"),
    **dict.fromkeys(("UploadInspector", "UploadPolicy", "UploadVerdict", "inspect_upload"),
                    "imgcrypt.service.upload"),
    **dict.fromkeys(("CertificateSources", "VerificationResult"), "imgcrypt.signing.verify"),
}


def __getattr__(name: str) -> Any:
    from imgcrypt import lazy_exports

    return lazy_exports(__name__, _ELSEWHERE, globals())(name)

#: The key ``encrypt_image(new_key=...)`` orders unless told otherwise: what ``imgcrypt encrypt
#: --new-key`` makes (a symmetric AES-512-XTS secret, whose hex opens the keyslot).
DEFAULT_KEY_ORDER = KeyOrder()


@dataclass(frozen=True)
class EncryptedImage:
    """What :func:`encrypt_image` wrote."""

    target: str
    luks_version: int
    decrypt_size: int  # bytes of plaintext: the image's os_decrypt_size, exact
    image_size: int  # bytes of the LUKS image
    key_id: str | None  # the key-manager secret that opens it (None: a passphrase did)
    key_created: bool
    properties: tuple[tuple[str, str], ...]  # the image properties to attach (none without a key)

    def property_dict(self) -> dict[str, str]:
        return dict(self.properties)


@dataclass(frozen=True)
class DecryptedImage:
    target: str
    size: int  # bytes written
    luks_version: int | None = None
    keyslot: int | None = None  # the keyslot that opened it (None: qemu-img opened a qcow2)
    container: str = "luks"  # "luks", or "qcow2" (qemu's built-in LUKS)


class OpenedImage:
    """A LUKS image unlocked by :func:`unlock_image`, its payload not read yet: for a caller
    that opens the target itself (and learns the output size before creating it)."""

    def __init__(self, unlocked: Unlocked, key_id: str | None) -> None:
        self._unlocked = unlocked
        self.key_id = key_id

    def __repr__(self) -> str:  # never the master key
        return f"OpenedImage(luks_version={self.luks_version}, keyslot={self.keyslot})"

    @property
    def luks_version(self) -> int:
        return self._unlocked.header.version

    @property
    def keyslot(self) -> int:
        return self._unlocked.slot

    def output_size(self, size: int | None, image_size: int | None) -> int | None:
        """The bytes :meth:`decrypt` will write (``size``: os_decrypt_size), when known."""
        return self._unlocked.output_size(size, image_size)

    def decrypt(self, source: BinaryIO, target: BinaryIO, *, size: int | None = None,
                progress: Progress | None = None) -> int:
        """Decrypt the payload, read on from ``source``, into ``target``; the bytes written.
        ``size`` (os_decrypt_size) trims the padding; without it the whole payload is
        written."""
        return decrypt_payload(self._unlocked, source, target, size=size, progress=progress)


def unlock_image(source: BinaryIO, *, key_manager: KeyManager | None = None,
                 key_id: str | None = None, passphrase: bytes | None = None,
                 slot: int | None = None) -> OpenedImage:
    """Unlock the LUKS image read from ``source`` with the secret ``key_id`` or with
    ``passphrase`` (trying keyslot ``slot`` only, if given) before any output exists: a wrong
    key is a :class:`~imgcrypt.errors.WrongPassphraseError` and nothing is written."""
    lease = _key_for(key_manager, key_id, None, passphrase)
    secret = lease.passphrase if lease is not None else passphrase
    assert secret is not None
    return OpenedImage(unlock_stream(source, secret, slot=slot), lease.key_id if lease else None)


@dataclass(frozen=True)
class RekeyedImage:
    path: str
    key_id: str | None  # the new secret that opens the image (None: a new passphrase does)
    key_created: bool
    opened_slot: int | None = None  # the keyslot the old secret opened
    added_slot: int | None = None
    removed_slot: int | None = None


@dataclass(frozen=True)
class Signature:
    mode: str  # "glance" or "imgcrypt"
    properties: tuple[tuple[str, str], ...]  # the signature properties to attach

    def property_dict(self) -> dict[str, str]:
        return dict(self.properties)


def _key_for(key_manager: KeyManager | None, key_id: str | None, new_key: KeyOrder | None,
             passphrase: bytes | None) -> KeyLease | None:
    """The lease for the key named, or None when a passphrase is given instead."""
    given = [name for name, value in (("key_id", key_id), ("new_key", new_key),
                                      ("passphrase", passphrase)) if value is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of key_id, new_key and passphrase")
    if passphrase is not None:
        return None
    if key_manager is None:
        raise UsageError(f"{given[0]} needs a key_manager")
    if new_key is not None:
        return KeyLease.new(key_manager, new_key)
    assert key_id is not None
    return KeyLease.existing(key_manager, key_id)


class EncryptionJob:
    """The key side of one encryption, for a caller that opens the source and the target itself
    (a command line reading a pipe or a qcow2 through qemu-nbd, say): made by
    :func:`encrypting`, it hands out the keyslot passphrase, runs the encryption or is told
    what another writer made, and gives the :class:`EncryptedImage` when the block is over."""

    def __init__(self, target: str, lease: KeyLease | None, passphrase: bytes,
                 deletion_policy: str) -> None:
        self.target = target
        self.lease = lease
        self._passphrase = passphrase
        self._deletion_policy = deletion_policy
        self._made: EncryptedImage | None = None
        self._finished = False

    def __repr__(self) -> str:  # never the passphrase
        return f"EncryptionJob(target={self.target!r}, lease={self.lease!r})"

    @property
    def passphrase(self) -> bytes:
        """The keyslot passphrase: the key's (the one rule), or the one given."""
        return self._passphrase

    @property
    def key_id(self) -> str | None:
        return self.lease.key_id if self.lease is not None else None

    @property
    def key_created(self) -> bool:
        return bool(self.lease and self.lease.created)

    def encrypt(self, source: BinaryIO | Source, target: BinaryIO,
                options: FormatOptions | None = None, *,
                progress: Progress | None = None) -> EncryptResult:
        """Encrypt ``source`` into ``target`` (the open file that becomes :attr:`target`)."""
        result = encrypt_stream(source, target, self._passphrase, options or FormatOptions(),
                                progress=progress)
        self.written(result.header.version, result.payload_size, result.image_size)
        return result

    def written(self, luks_version: int, decrypt_size: int, image_size: int) -> None:
        """Another writer (qemu-img) made the image: its LUKS version, plaintext and file
        sizes. The properties are worked out here, inside the lease, so a key they cannot name
        is rolled back with the image."""
        properties: dict[str, str] = {}
        if self.lease is not None:
            properties = encryption_properties(self.lease.key_id, luks_version, decrypt_size,
                                               self._deletion_policy)
        self._made = EncryptedImage(self.target, luks_version, decrypt_size, image_size,
                                    self.key_id, self.key_created,
                                    tuple(sorted(properties.items())))

    @property
    def image(self) -> EncryptedImage:
        """What was written; only once the ``with encrypting(...)`` block has succeeded."""
        if self._made is None or not self._finished:
            raise UsageError("the image is known once the encryption block has succeeded")
        return self._made


@contextlib.contextmanager
def encrypting(target: str, *, key_manager: KeyManager | None = None, key_id: str | None = None,
               new_key: KeyOrder | None = None, passphrase: bytes | None = None,
               deletion_policy: str = DEFAULT_DELETION_POLICY) -> Iterator[EncryptionJob]:
    """The key lifecycle around encrypting an image to ``target`` (:func:`encrypt_image` is this
    with the files opened for you)::

        with encrypting("disk.luks", key_manager=keys, new_key=DEFAULT_KEY_ORDER) as job:
            with open("disk.raw", "rb") as src, my_output("disk.luks") as dst:
                job.encrypt(src, dst)
        job.image.properties

    Exactly one of ``key_id``, ``new_key`` and ``passphrase`` opens the keyslot. The key is
    ordered (or read) on entry, before any output exists; if the block fails, a new key is
    deleted again (what cannot be is noted on the exception, :class:`KeyLease`); if it succeeds,
    the local keystore records ``target`` as the key's consumer and forgets it on other keys
    (``target`` was replaced).
    """
    lease = _key_for(key_manager, key_id, new_key, passphrase)
    if lease is None:
        assert passphrase is not None
        job = EncryptionJob(target, None, passphrase, deletion_policy)
        yield job
        job._finished = True
        return
    with lease:
        job = EncryptionJob(target, lease, lease.passphrase, deletion_policy)
        lease.consume_as(file_consumer_for(lease.manager, target))
        yield job
        if job._made is None:
            raise UsageError("the encryption block wrote no image (call job.encrypt or "
                             "job.written)")
    release_file_elsewhere(lease.manager, lease.key_id, target)
    job._finished = True


def encrypt_image(source: str, target: str, *, key_manager: KeyManager | None = None,
                  key_id: str | None = None, new_key: KeyOrder | None = None,
                  passphrase: bytes | None = None, options: FormatOptions | None = None,
                  deletion_policy: str = DEFAULT_DELETION_POLICY,
                  force: bool = False) -> EncryptedImage:
    """Encrypt the raw image file ``source`` into a LUKS container at ``target`` (written
    beside it and renamed, so a failure leaves no target).

    The keyslot opens with exactly one of: the existing secret ``key_id``, a secret ordered
    now as ``new_key`` (e.g. :data:`DEFAULT_KEY_ORDER`; deleted again if encryption fails), or
    ``passphrase``. With a key, the result carries the image properties that name it, with
    ``os_decrypt_size`` the exact plaintext size; the local keystore records ``target`` as
    the key's consumer. ``options`` default to LUKS1, aes-xts-plain64, as ``imgcrypt
    encrypt`` makes.
    """
    with encrypting(target, key_manager=key_manager, key_id=key_id, new_key=new_key,
                    passphrase=passphrase, deletion_policy=deletion_policy) as job, \
            open(source, "rb") as src, \
            atomic_output(target, force=force, source=source) as dst:
        job.encrypt(src, dst, options)
    return job.image


def image_passphrase(*, key_manager: KeyManager | None = None, key_id: str | None = None,
                     passphrase: bytes | None = None) -> bytes:
    """The keyslot passphrase the secret ``key_id`` stands for (the one rule), or
    ``passphrase`` as given: for a writer that takes the passphrase itself (qemu-img)."""
    lease = _key_for(key_manager, key_id, None, passphrase)
    secret = lease.passphrase if lease is not None else passphrase
    assert secret is not None
    return secret


def decrypt_image(source: str, target: str, *, key_manager: KeyManager | None = None,
                  key_id: str | None = None, passphrase: bytes | None = None,
                  size: int | None = None, force: bool = False) -> DecryptedImage:
    """Decrypt the image file ``source`` to the raw image ``target``, opened by the secret
    ``key_id`` or by ``passphrase``: a LUKS container (``size``, the image's
    ``os_decrypt_size``, trims the padding; without it the whole payload, in whole sectors, is
    written) or a qcow2 with qemu's built-in LUKS (through qemu-img: its guest disk). The key
    is checked before ``target`` is created."""
    from imgcrypt.qemu.luks import is_qcow2_file

    if is_qcow2_file(source):
        from imgcrypt.qemu import luks as qemu_luks

        if size is not None:
            raise UsageError("size applies to LUKS containers; a qcow2 knows its virtual size")
        secret = image_passphrase(key_manager=key_manager, key_id=key_id, passphrase=passphrase)
        version = qemu_luks.read_qcow2_luks(source).luks.version
        written = qemu_luks.decrypt(source, secret, target, force=force)
        return DecryptedImage(target, written, version, None, "qcow2")
    with open(source, "rb") as src:
        opened = unlock_image(src, key_manager=key_manager, key_id=key_id,
                              passphrase=passphrase)
        with atomic_output(target, force=force, source=source) as dst:
            written = opened.decrypt(src, dst, size=size)
    return DecryptedImage(target, written, opened.luks_version, opened.keyslot)


def rekey_image(path: str, *, key_manager: KeyManager | None = None, key_id: str | None = None,
                passphrase: bytes | None = None, new_key_id: str | None = None,
                new_key: KeyOrder | None = None, new_passphrase: bytes | None = None,
                keep_old: bool = False, remove_slot: int | None = None,
                kdf: KdfOptions | None = None, opened_slot: int | None = None,
                new_slot: int | None = None) -> RekeyedImage:
    """Change which secret opens the image at ``path`` (a LUKS container, or a qcow2 with
    qemu's built-in LUKS), header only, in place.

    The image opens now with the secret ``key_id`` or with ``passphrase``. It is made to open
    with another: the secret ``new_key_id``, one ordered now as ``new_key`` (deleted again if
    the re-key fails), or ``new_passphrase``; the old keyslot is removed unless ``keep_old``.
    Without a new secret, ``remove_slot`` removes that keyslot instead. The local keystore's
    record of the file moves to the new key. ``kdf`` describes the new keyslot;
    ``opened_slot`` and ``new_slot`` pick keyslots of a LUKS image as cryptsetup's
    ``--key-slot`` does.
    """
    from imgcrypt.qemu.luks import rekey_image as rekey_header

    news = [v for v in (new_key_id, new_key, new_passphrase) if v is not None]
    if len(news) > 1 or (not news and remove_slot is None) or (news and remove_slot is not None):
        raise UsageError("give exactly one of new_key_id, new_key and new_passphrase, or "
                         "remove_slot alone")
    old = _key_for(key_manager, key_id, None, passphrase)
    old_passphrase = old.passphrase if old is not None else passphrase
    assert old_passphrase is not None
    lease = None
    if new_key_id is not None or new_key is not None:
        lease = _key_for(key_manager, new_key_id, new_key, None)
    with lease if lease is not None else contextlib.nullcontext():
        if lease is not None:
            lease.consume_as(file_consumer_for(lease.manager, path))
        result = rekey_header(path, old_passphrase,
                              new_passphrase=lease.passphrase if lease else new_passphrase,
                              remove_old=bool(news) and not keep_old, remove_slot=remove_slot,
                              kdf=kdf or KdfOptions(), opened_slot=opened_slot,
                              new_slot=new_slot)
    moved = news and not keep_old and old is not None
    if moved and old is not None and (lease is None or lease.key_id != old.key_id) \
            and file_consumer_for(old.manager, path) is not None:
        with contextlib.suppress(Exception):  # the image no longer opens with it: tidy only
            unregister_file_consumer(old.manager, old.key_id, path)
    return RekeyedImage(path, lease.key_id if lease else None, bool(lease and lease.created),
                        result.opened_slot, result.added_slot, result.removed_slot)


def _feed(consumer: Any, image: str | BinaryIO) -> Any:
    """Every byte of ``image`` (a path, or a binary stream read to its end) into ``consumer``."""
    from imgcrypt.signing.stream import CHUNK_SIZE, feed_file

    if isinstance(image, str):
        return feed_file(consumer, image)
    while chunk := image.read(CHUNK_SIZE):
        consumer.update(chunk)
    return consumer.finalize()


def sign_image(image: str | BinaryIO, private_key: Any, *, mode: str = "imgcrypt",
               certificate_uuid: str | None = None, hash_name: str | None = None,
               bind: dict[str, str] | None = None, max_value_length: int | None = None,
               algorithm: str | None = None) -> Signature:
    """Sign the image file at ``image`` (or the bytes of an open binary stream):
    ``mode="glance"`` gives cursive's ``img_signature*`` properties (``certificate_uuid``, the
    certificate's id in the key manager, is required); ``mode="imgcrypt"`` imgcrypt's manifest
    signature, binding the properties in ``bind`` (e.g. :attr:`EncryptedImage.properties`).
    ``max_value_length`` bounds every property value written; ``algorithm`` picks an
    imgcrypt-mode algorithm other than the key's default."""
    from imgcrypt.signing.signer import make_signer

    signer = make_signer(private_key, mode=mode, hash_name=hash_name,
                         certificate_uuid=certificate_uuid, properties=bind,
                         max_value_length=max_value_length, algorithm=algorithm)
    return Signature(mode, tuple(sorted(_feed(signer, image).items())))


def verify_image(image: str | BinaryIO, properties: dict[str, str], *,
                 certificates: CertificateSources | None = None,
                 key_manager: KeyManager | Callable[[], KeyManager] | None = None,
                 clock: Callable[[], dt.datetime] | None = None,
                 allow_legacy: bool = False) -> VerificationResult:
    """Verify every signature ``properties`` carry over the image file at ``image`` (or the
    bytes of an open binary stream); raises a :class:`~imgcrypt.errors.VerificationError`
    when anything is wrong. ``certificates`` says where the certificates come from (files,
    key-manager ids, trusted CAs); by default the signing certificate is the one the
    properties name, from ``key_manager`` (or from the one a function given instead makes,
    called only when a certificate is in the key manager). ``clock`` gives the time the
    certificates' dates are checked at (now by default); ``allow_legacy`` accepts DSA and
    MD5/SHA-1 certificate signatures."""
    from imgcrypt.signing.certs import utc_now
    from imgcrypt.signing.verify import CertificateSources, open_verifier

    def manager() -> Any:
        if key_manager is None:
            raise UsageError("the certificate is in the key manager: give key_manager")
        return key_manager() if callable(key_manager) else key_manager

    verifier = open_verifier(properties, certificates or CertificateSources(),
                             key_manager=manager, clock=clock or utc_now,
                             allow_legacy=allow_legacy)
    return _feed(verifier, image)  # type: ignore[no-any-return]


__all__ = [
    "DEFAULT_KEY_ORDER",
    "CertificateSources",
    "DecryptedImage",
    "EncryptedImage",
    "EncryptionJob",
    "OpenedImage",
    "RekeyedImage",
    "Signature",
    "UploadInspector",
    "UploadPolicy",
    "UploadVerdict",
    "VerificationResult",
    "VolumeImage",
    "VolumeResult",
    "create_volume_from_image",
    "decrypt_image",
    "delete_hook",
    "download_hook",
    "encrypt_image",
    "encrypting",
    "image_passphrase",
    "inspect_upload",
    "rekey_image",
    "sign_image",
    "unlock_image",
    "upload_volume_as_image",
    "verify_image",
]

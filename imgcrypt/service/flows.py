"""Download, create-volume-from-image, upload-volume-as-image and delete flows.

Each takes the image as an iterator of chunks and its properties as a mapping, the way an
image or volume service holds them, and reaches the key manager through the
:class:`~imgcrypt.keys.manager.KeyManager` protocol.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

from imgcrypt.crypto.kdf import DEFAULT_LIMITS, Kdf, KdfLimits, Pbkdf2
from imgcrypt.errors import UsageError, UsageFault
from imgcrypt.fileio import ChunkReader, atomic_output
from imgcrypt.keys.consumers import image_consumer
from imgcrypt.keys.lease import KeyLease
from imgcrypt.keys.manager import KeyManager, KeyOrder
from imgcrypt.keys.properties import encryption_properties
from imgcrypt.keys.rules import (
    DEFAULT_DELETION_POLICY,
    DeletionReport,
    apply_deletion_policy,
    check_secret,
    passphrase_for,
)
from imgcrypt.keys.secret import EncryptionSpec
from imgcrypt.luks.container import payload_span
from imgcrypt.luks.engine import CHUNK_SIZE
from imgcrypt.luks.options import FormatOptions
from imgcrypt.luks.rekey import kdf_for, rekey_file
from imgcrypt.luks.transfer import decrypt_payload, encrypt_stream, iter_payload
from imgcrypt.luks.unlock import read_header, unlock_stream
from imgcrypt.service.claims import encryption_claim
from imgcrypt.service.upload import UploadInspector, UploadPolicy, UploadVerdict
from imgcrypt.signing.verify import schemes_present


def download_hook(chunks: Iterable[bytes], properties: Mapping[str, str],
                  key_manager: KeyManager, *,
                  limits: KdfLimits = DEFAULT_LIMITS) -> Iterator[bytes]:
    """Decrypted payload chunks of an encrypted image, streaming; honours ``os_decrypt_size``."""
    claim = encryption_claim(properties)
    if claim is None:
        raise UsageError("the image is not encrypted: nothing to decrypt")
    passphrase = passphrase_for(key_manager.get(claim.key_id))
    reader = io.BufferedReader(ChunkReader(chunks), buffer_size=CHUNK_SIZE)
    opened = unlock_stream(reader, passphrase, limits)
    yield from iter_payload(opened, reader, size=claim.decrypt_size)


def delete_hook(properties: Mapping[str, str], key_manager: KeyManager, *,
                image_id: str | None = None,
                other_references: Iterable[str] = ()) -> DeletionReport | None:
    """Apply the image's key-deletion policy; None when the image names no key.

    The key is deleted only if the image was a registered consumer of it (the upload hook
    registers one after the key opened the image's header) and no other consumer remains:
    the properties alone can name any key.
    """
    claim = encryption_claim(properties)
    if claim is None:
        return None
    consumer = image_consumer(image_id) if image_id else None
    return apply_deletion_policy(key_manager, claim.key_id, claim.deletion_policy,
                                 consumer=consumer, other_references=other_references,
                                 require_consumer=True)


@dataclass(frozen=True)
class VolumeResult:
    target: str
    mode: str  # "copy" (LUKS block for block), "decrypt", "encrypt" or "reencrypt"
    bytes_written: int
    key_id: str | None  # the secret that now opens the volume
    key_created: bool
    verdict: UploadVerdict


def _order_for(spec: EncryptionSpec) -> KeyOrder:
    return KeyOrder(algorithm=spec.algorithm.upper(), bit_length=spec.key_size,
                    mode=spec.mode.upper())


def _is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def _open_target(target: str, required_size: int | None) -> Iterator[BinaryIO]:
    """A block device is checked and written in place; a file is written atomically."""
    if _is_block_device(target):
        from imgcrypt.devices import check_target_device

        check_target_device(target, required_size=required_size or 0)
        with open(target, "r+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        return
    with atomic_output(target, force=True, mode=0o600) as f:
        yield f


def create_volume_from_image(
    chunks: Iterable[bytes], properties: Mapping[str, str], target: str, *,
    spec: EncryptionSpec | None, key_manager: KeyManager, volume_key: str = "new",
    decrypt: bool = False, policy: UploadPolicy | None = None,
    kdf: Kdf | None = None, limits: KdfLimits = DEFAULT_LIMITS, master_key: str = "image",
) -> VolumeResult:
    """Create a volume at ``target`` from an image.

    An encrypted image into an encrypted volume type is copied block for block (no decrypt,
    no re-encrypt) and then, with ``volume_key="new"``, given a secret of its own by
    re-keying the header only; ``volume_key="clone"`` stores a copy of the image's secret
    under a new id instead. An encrypted image into an unencrypted type is refused unless
    ``decrypt`` is set. An unencrypted image into an encrypted type is encrypted on the way.
    Every secret is checked against ``spec`` before anything is written. ``kdf`` sets the new
    keyslot's KDF; by default it is benchmarked like cryptsetup's (2 seconds).

    With ``volume_key="new"`` every keyslot of the image but the volume's own is removed and
    its material overwritten, so no passphrase of the image's author opens the volume (with
    ``"clone"``, every keyslot but the one the cloned secret opens). The
    master key stays the image's, which its author knows; ``master_key="new"`` decrypts the
    image and encrypts it again under a fresh master key on the way in, so that nothing the
    author holds (not even the image's master key) opens the volume.

    The volume's key is held by a :class:`~imgcrypt.keys.lease.KeyLease`: if anything fails,
    the key made for the volume is deleted again.
    """
    _check_volume_choices(volume_key, master_key)
    claim = encryption_claim(properties)
    policy = policy or UploadPolicy(allowed_luks_versions=frozenset({1, 2}),
                                    register_consumer=False)
    if claim is not None and spec is None and not decrypt:
        raise UsageError(
            "the image is encrypted and the volume type is not: refusing to write LUKS bytes "
            "into an unencrypted volume (ask for an explicit decrypt)",
            reason=UsageFault.VOLUME_TYPE_MISMATCH,
        )
    size_text = str(properties.get("size", ""))
    required = int(size_text) if re.fullmatch(r"[0-9]{1,19}", size_text) else None
    image_key = KeyLease.existing(key_manager, claim.key_id) if claim is not None else None
    image_pass = image_key.passphrase if image_key is not None else None
    volume_lease = _volume_lease(key_manager, spec, volume_key, image_key)
    if spec is None:
        mode = "decrypt" if claim is not None else "copy"
    elif claim is None:
        mode = "encrypt"
    else:
        mode = "reencrypt" if master_key == "new" else "copy"
    inspector = UploadInspector(properties, key_manager=key_manager, policy=policy)
    with volume_lease if volume_lease is not None else contextlib.nullcontext():
        volume_pass = None
        if volume_lease is not None and spec is not None:
            check_secret(volume_lease.secret, spec)
            volume_pass = volume_lease.passphrase
        if required is not None and _is_block_device(target) is False:
            _check_room(target, required)
        with _open_target(target, required) as out:
            stream = inspector.wrap(chunks)
            if mode == "decrypt":
                assert claim is not None and image_pass is not None
                written = _decrypt_into(stream, out, image_pass, claim.decrypt_size, limits)
            elif mode in ("encrypt", "reencrypt"):
                assert spec is not None and volume_pass is not None
                written = _encrypt_into(stream, out, volume_pass, spec, kdf, limits,
                                        claim.decrypt_size if claim is not None else None,
                                        image_pass)
            else:
                written = _copy_into(stream, out)
            verdict = inspector.finalize()
        if mode == "copy" and spec is not None:
            assert image_pass is not None
            _give_volume_its_key(target, image_pass, volume_pass if volume_key == "new" else None,
                                 kdf, limits)
    key_id = volume_lease.key_id if volume_lease is not None and spec is not None else None
    return VolumeResult(target, mode, written, key_id, key_id is not None, verdict)


def _check_volume_choices(volume_key: str, master_key: str) -> None:
    if volume_key not in ("new", "clone"):
        raise UsageError("volume_key is 'new' or 'clone'")
    if master_key not in ("image", "new"):
        raise UsageError("master_key is 'image' or 'new'")
    if master_key == "new" and volume_key != "new":
        raise UsageError("a volume with its own master key needs a new volume key")


def _volume_lease(manager: KeyManager, spec: EncryptionSpec | None, volume_key: str,
                  image_key: KeyLease | None) -> KeyLease | None:
    """The volume's own key: a copy of the image's secret (``clone``, checked against the
    volume type before it is stored) or a new one ordered for the type; None for an
    unencrypted volume type."""
    if spec is None:
        return None
    if volume_key == "clone" and image_key is not None:
        check_secret(image_key.secret, spec)
        return KeyLease.stored(manager, image_key.secret.copy("imgcrypt volume key (clone)"))
    return KeyLease.new(manager, _order_for(spec))


def _decrypt_into(stream: Iterable[bytes], out: BinaryIO, image_pass: bytes,
                  decrypt_size: int | None, limits: KdfLimits) -> int:
    reader = io.BufferedReader(ChunkReader(stream), buffer_size=CHUNK_SIZE)
    opened = unlock_stream(reader, image_pass, limits)
    # Through the transfer engine: a file target gets holes for zero blocks.
    written = decrypt_payload(opened, reader, out, size=decrypt_size)
    _drain(reader)
    return written


def _encrypt_into(stream: Iterable[bytes], out: BinaryIO, volume_pass: bytes,
                  spec: EncryptionSpec, kdf: Kdf | None, limits: KdfLimits,
                  decrypt_size: int | None, image_pass: bytes | None) -> int:
    """Encrypt the plaintext (the image's own, or an encrypted image's payload decrypted on the
    way) under a fresh master key; the image's LUKS version is kept."""
    clear: Iterable[bytes] = stream
    version = 1
    reader = None
    if image_pass is not None:
        reader = io.BufferedReader(ChunkReader(stream), buffer_size=CHUNK_SIZE)
        opened = unlock_stream(reader, image_pass, limits)
        version = opened.header.version
        clear = iter_payload(opened, reader, size=decrypt_size)
    options = FormatOptions(version=version, cipher=spec.cipher, key_size=spec.whole_key_bits,
                            pbkdf=kdf.name if isinstance(kdf, Pbkdf2) else None,
                            iterations=kdf.iterations if isinstance(kdf, Pbkdf2)
                            else None)  # None: cryptsetup's 2-second budget
    source = io.BufferedReader(ChunkReader(clear), buffer_size=CHUNK_SIZE)
    written = encrypt_stream(source, out, volume_pass, options).image_size
    if reader is not None:
        _drain(reader)
    return written


def _copy_into(stream: Iterable[bytes], out: BinaryIO) -> int:
    written = 0
    for chunk in stream:
        out.write(chunk)
        written += len(chunk)
    return written


def _give_volume_its_key(target: str, image_pass: bytes, volume_pass: bytes | None,
                         kdf: Kdf | None, limits: KdfLimits) -> None:
    """Re-key a block-for-block copy: a new volume key gets a keyslot of its own and every
    other keyslot goes; a clone (``volume_pass`` None) keeps the image's secret, and with it
    that keyslot only."""
    if volume_pass is None:
        rekey_file(target, image_pass, remove_others=True, limits=limits)
        return
    if kdf is None:
        # As cryptsetup would for the new keyslot: its version's KDF, a 2-second budget.
        with open(target, "rb") as f:
            header, _ = read_header(f, limits)
        kdf = kdf_for(header, FormatOptions())
    rekey_file(target, image_pass, new_passphrase=volume_pass, remove_others=True, kdf=kdf,
               limits=limits)


def _drain(reader: BinaryIO) -> None:
    """Read what the payload left (past ``os_decrypt_size``): the upload checks see it all."""
    while reader.read(CHUNK_SIZE):
        pass


def _check_room(target: str, required: int) -> None:
    directory = os.path.dirname(os.path.abspath(target))
    free = os.statvfs(directory)
    if free.f_bavail * free.f_frsize < required:
        raise UsageError(f"{directory} has less than {required} bytes free")


@dataclass
class VolumeImage:
    """An encrypted volume on its way out as an image: iterate ``chunks()``, then read
    ``properties`` (complete, signature included, once the iteration has finished)."""

    path: str
    properties: dict[str, str]
    signer: object | None = None
    finished: bool = False

    def chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        with open(self.path, "rb") as f:
            while True:
                chunk = f.read(chunk_size)
                if not chunk:
                    break
                if self.signer is not None:
                    self.signer.update(chunk)  # type: ignore[attr-defined]
                yield chunk
        if self.signer is not None:
            self.properties.update(self.signer.finalize())  # type: ignore[attr-defined]
        self.finished = True


def upload_volume_as_image(volume: str, volume_key_id: str, key_manager: KeyManager, *,
                           deletion_policy: str = DEFAULT_DELETION_POLICY,
                           signing_key: object | None = None,
                           certificate_uuid: str | None = None) -> VolumeImage:
    """Prepare an encrypted volume for upload as an image with a cloned secret of its own.

    The image gets a copy of the volume's secret under a new id, so deleting the image (and
    its key) never touches the volume's key. With ``signing_key`` the image is signed in
    imgcrypt mode, binding the encryption properties.
    """
    secret = key_manager.get(volume_key_id)
    with open(volume, "rb") as f:
        header, _ = read_header(f)
        payload = payload_span(header, image_size=f.seek(0, io.SEEK_END)).size
        assert payload is not None  # a file's size is known
        f.seek(0)
        unlock_stream(f, passphrase_for(secret))  # the secret really opens the volume
    with KeyLease.stored(key_manager, secret.copy("imgcrypt image key (clone)")) as clone:
        properties = {"disk_format": "raw", "container_format": "bare",
                      **encryption_properties(clone.key_id, header.version, payload,
                                              deletion_policy)}
        signer = None
        if signing_key is not None:
            from imgcrypt.signing import ImgcryptSigner
            from imgcrypt.signing.manifest import BOUND_PROPERTIES

            bound = {k: v for k, v in properties.items() if k in BOUND_PROPERTIES}
            signer = ImgcryptSigner(signing_key, properties=bound,  # type: ignore[arg-type]
                                    certificate_uuid=certificate_uuid)
    return VolumeImage(volume, properties, signer)


__all__ = [
    "VolumeImage",
    "VolumeResult",
    "create_volume_from_image",
    "delete_hook",
    "download_hook",
    "schemes_present",
    "upload_volume_as_image",
]

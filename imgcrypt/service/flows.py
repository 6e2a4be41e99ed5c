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

from imgcrypt.errors import UsageError, UsageFault
from imgcrypt.fileio import ChunkReader, atomic_output
from imgcrypt.keys.manager import KeyManager, KeyOrder
from imgcrypt.keys.properties import encryption_properties
from imgcrypt.keys.rules import DeletionReport, apply_deletion_policy, check_secret, passphrase_for
from imgcrypt.keys.secret import EncryptionSpec, Secret
from imgcrypt.luks.kdf import DEFAULT_LIMITS, Kdf, KdfLimits, Pbkdf2
from imgcrypt.luks.options import FormatOptions
from imgcrypt.luks.stream import (
    CHUNK_SIZE,
    decrypt_payload,
    encrypt_stream,
    iter_payload,
    kdf_for,
    read_header,
    rekey_file,
    unlock_stream,
)
from imgcrypt.service.claims import encryption_claim
from imgcrypt.service.upload import UploadInspector, UploadPolicy, UploadVerdict, image_consumer
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
    """
    if volume_key not in ("new", "clone"):
        raise UsageError("volume_key is 'new' or 'clone'")
    if master_key not in ("image", "new"):
        raise UsageError("master_key is 'image' or 'new'")
    if master_key == "new" and volume_key != "new":
        raise UsageError("a volume with its own master key needs a new volume key")
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

    image_pass = None
    created_id: str | None = None
    volume_secret: Secret | None = None
    if claim is not None:
        image_secret = key_manager.get(claim.key_id)
        image_pass = passphrase_for(image_secret)
        if spec is not None and volume_key == "clone":
            check_secret(image_secret, spec)
            volume_secret = image_secret
    if spec is not None and volume_secret is None:
        created_id = key_manager.create_key(_order_for(spec))
        volume_secret = key_manager.get(created_id)
        check_secret(volume_secret, spec)
    elif spec is not None and volume_key == "clone":
        assert volume_secret is not None
        created_id = key_manager.store(volume_secret.copy("imgcrypt volume key (clone)"))

    inspector = UploadInspector(properties, key_manager=key_manager, policy=policy)
    try:
        if required is not None and _is_block_device(target) is False:
            _check_room(target, required)
        with _open_target(target, required) as out:
            stream = inspector.wrap(chunks)
            if claim is not None and spec is None:
                mode = "decrypt"
                reader = io.BufferedReader(ChunkReader(stream), buffer_size=CHUNK_SIZE)
                assert image_pass is not None
                opened = unlock_stream(reader, image_pass, limits)
                # Through the transfer engine: a file target gets holes for zero blocks.
                written = decrypt_payload(opened, reader, out, size=claim.decrypt_size)
                _drain(reader)
            elif spec is not None and (claim is None or master_key == "new"):
                mode = "encrypt" if claim is None else "reencrypt"
                assert volume_secret is not None
                clear: Iterable[bytes] = stream
                version = 1
                if claim is not None:
                    assert image_pass is not None
                    reader = io.BufferedReader(ChunkReader(stream), buffer_size=CHUNK_SIZE)
                    opened = unlock_stream(reader, image_pass, limits)
                    version = opened.header.version
                    clear = iter_payload(opened, reader, size=claim.decrypt_size)
                options = FormatOptions(version=version, cipher=spec.cipher,
                                        key_size=spec.whole_key_bits,
                                        pbkdf="pbkdf2" if isinstance(kdf, Pbkdf2) else None,
                                        iterations=kdf.iterations if isinstance(kdf, Pbkdf2)
                                        else None)  # None: cryptsetup's 2-second budget
                source = io.BufferedReader(ChunkReader(clear), buffer_size=CHUNK_SIZE)
                result = encrypt_stream(source, out, passphrase_for(volume_secret), options)
                written = result.image_size
                if claim is not None:
                    _drain(reader)
            else:
                mode = "copy"
                written = 0
                for chunk in stream:
                    out.write(chunk)
                    written += len(chunk)
            verdict = inspector.finalize()
    except BaseException:
        if created_id is not None:
            with contextlib.suppress(Exception):
                key_manager.delete(created_id, force=True)
        raise
    if mode == "copy" and spec is not None and volume_key == "new":
        assert image_pass is not None and volume_secret is not None
        if kdf is None:
            # As cryptsetup would for the new keyslot: its version's KDF, a 2-second budget.
            with open(target, "rb") as f:
                header, _ = read_header(f, limits)
            kdf = kdf_for(header, FormatOptions())
        rekey_file(target, image_pass, new_passphrase=passphrase_for(volume_secret),
                   remove_others=True, kdf=kdf, limits=limits)
    elif mode == "copy" and spec is not None:
        # A clone keeps the image's secret, and with it that keyslot; nothing else stays.
        assert image_pass is not None
        rekey_file(target, image_pass, remove_others=True, limits=limits)
    key_id = created_id if spec is not None else None
    return VolumeResult(target, mode, written, key_id, created_id is not None, verdict)


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
                           deletion_policy: str = "on_image_deletion",
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
        payload = header.payload_size
        if payload is None:
            payload = f.seek(0, io.SEEK_END) - header.payload_offset
        f.seek(0)
        unlock_stream(f, passphrase_for(secret))  # the secret really opens the volume
    clone_id = key_manager.store(secret.copy("imgcrypt image key (clone)"))
    properties = {"disk_format": "raw", "container_format": "bare",
                  **encryption_properties(clone_id, header.version, payload, deletion_policy)}
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

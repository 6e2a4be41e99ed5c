"""An image downloaded from the image service the way a consumer should take it: the bytes are
checked as they stream (os_hash_value, the signature, the encryption claim, with the same
inspector an upload passes) and decrypted on the way unless the container is kept.

:func:`open_download` looks the image up and prepares the checks; :meth:`Download.write_to`
streams. A failed check raises before ``write_to`` returns, so a caller writing into an
atomic output never shows unchecked bytes.
"""

from __future__ import annotations

import hmac
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from imgcrypt import imageservice
from imgcrypt.digests import DEFAULT_MULTIHASH
from imgcrypt.errors import FormatError, VerificationError
from imgcrypt.fileio import ChunkReader
from imgcrypt.keys.manager import KeyManager
from imgcrypt.keys.rules import passphrase_for
from imgcrypt.luks.stream import CHUNK_SIZE, iter_payload, unlock_stream
from imgcrypt.service.claims import EncryptionClaim, encryption_claim
from imgcrypt.service.upload import HASH_ALGORITHMS, UploadInspector, UploadPolicy
from imgcrypt.signing import schemes_present
from imgcrypt.signing.verify import VerificationResult


@dataclass(frozen=True)
class DownloadResult:
    bytes_written: int
    decrypted: bool
    hash_checked: bool  # the image record had an os_hash_value, and the bytes matched it
    signature: VerificationResult | None


@dataclass(frozen=True)
class Download:
    """One image, looked up and ready to stream; ``size`` is the stored size when known."""

    image_id: str
    size: int | None
    decrypt: bool
    images: imageservice.ImageService
    inspector: UploadInspector
    properties: dict[str, str]
    claim: EncryptionClaim | None
    manager: KeyManager | None

    def write_to(self, out: BinaryIO,
                 progress: Callable[[int], None] | None = None) -> DownloadResult:
        written = 0
        stream = self.inspector.wrap(self.images.download(self.image_id))
        if self.decrypt:
            assert self.claim is not None and self.manager is not None
            reader = io.BufferedReader(ChunkReader(stream), buffer_size=CHUNK_SIZE)
            opened = unlock_stream(reader, passphrase_for(self.manager.get(self.claim.key_id)))
            chunks = iter_payload(opened, reader, size=self.claim.decrypt_size)
        else:
            chunks = stream
        for chunk in chunks:
            out.write(chunk)
            written += len(chunk)
            if progress:
                progress(len(chunk))
        if self.decrypt:
            for _ in stream:  # the padding after os_decrypt_size still counts for the hash
                pass
        verdict = self.inspector.finalize()  # a bad signature raises here
        expected = str(self.properties.get("os_hash_value") or "")
        if expected and not hmac.compare_digest(expected, verdict.os_hash_value):
            raise VerificationError(
                f"image {self.image_id}: the downloaded bytes do not match its os_hash_value")
        return DownloadResult(written, self.decrypt, bool(expected), verdict.signature)


def open_download(conn: Any, image_id: str, *, keep_encrypted: bool = False) -> Download:
    """Look image ``image_id`` up and prepare its checks; nothing is downloaded yet. The key
    manager is reached only when the image claims encryption or carries a signature."""
    images = imageservice.ImageService(conn)
    image = images.get(image_id)
    properties = imageservice.extra_properties(image)
    claim = encryption_claim(properties)
    manager = (imageservice.key_manager(conn)
               if claim is not None or schemes_present(properties) else None)
    expected_algo = str(properties.get("os_hash_algo") or DEFAULT_MULTIHASH)
    if expected_algo not in HASH_ALGORITHMS:  # the image record's value: malformed input
        raise FormatError(f"unsupported os_hash_algo {expected_algo!r}")
    inspector = UploadInspector(properties, key_manager=manager, policy=UploadPolicy(
        allowed_luks_versions=frozenset({1, 2}), register_consumer=False,
        hash_algo=expected_algo))
    size = image.properties.get("size")
    return Download(image_id, size if isinstance(size, int) else None,
                    claim is not None and not keep_encrypted, images, inspector, properties,
                    claim, manager)

"""An image downloaded from the image service the way a consumer should take it: nothing about
the transfer is trusted. Exactly the size the image record declares is read (never past it), every
hash the record carries is checked (``os_hash_value``, the legacy md5 ``checksum``, the size), the
signature, the encryption claim with the same inspector an upload passes, and the container is
decrypted on the way unless it is kept. Connect, read and total timeouts bound the transfer.

:func:`open_download` looks the image up and prepares the checks; :meth:`Download.write_to`
streams. A failed check raises before ``write_to`` returns, so a caller writing into an
atomic output never shows unchecked bytes.
"""

from __future__ import annotations

import hmac
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

from cryptography import x509

from imgcrypt import imageservice
from imgcrypt.digests import DEFAULT_MULTIHASH
from imgcrypt.errors import FormatError, UsageError, VerificationError
from imgcrypt.fileio import ChunkReader
from imgcrypt.keys.manager import KeyManager
from imgcrypt.keys.rules import passphrase_for
from imgcrypt.luks.engine import CHUNK_SIZE
from imgcrypt.luks.transfer import iter_payload
from imgcrypt.luks.unlock import unlock_stream
from imgcrypt.service.claims import EncryptionClaim, encryption_claim
from imgcrypt.service.upload import HASH_ALGORITHMS, UploadInspector, UploadPolicy
from imgcrypt.signing import schemes_present
from imgcrypt.signing.verify import VerificationResult

MD5_HEX = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class DownloadResult:
    bytes_written: int
    decrypted: bool
    hash_checked: bool  # a hash of the image record (os_hash_value or checksum) matched
    signature: VerificationResult | None
    hashes: tuple[str, ...] = ()  # which: "os_hash_value", "checksum", "size"
    trust_anchor: bool = False  # the signature's chain was checked against trusted certificates


@dataclass(frozen=True)
class Download:
    """One image, looked up and ready to stream; ``size`` is the size the record declares."""

    image_id: str
    size: int
    decrypt: bool
    images: imageservice.ImageService
    inspector: UploadInspector
    properties: dict[str, str]
    claim: EncryptionClaim | None
    manager: KeyManager | None
    trusted: bool = False

    @property
    def output_size(self) -> int:
        """The bytes :meth:`write_to` will write at most (for the size guard)."""
        if self.decrypt and self.claim is not None and self.claim.decrypt_size is not None:
            return min(self.claim.decrypt_size, self.size)
        return self.size

    def write_to(self, out: BinaryIO,
                 progress: Callable[[int], None] | None = None) -> DownloadResult:
        written = 0
        # The inspector computes the multihash and the legacy md5 checksum on threads of
        # their own, while this thread receives, decrypts and writes.
        stream = self.inspector.wrap(self.images.download(self.image_id, self.size))
        if self.decrypt:
            assert self.claim is not None and self.manager is not None
            reader = io.BufferedReader(ChunkReader(stream), buffer_size=CHUNK_SIZE)
            opened = unlock_stream(reader, passphrase_for(self.manager.get(self.claim.key_id)))
            chunks: Iterable[bytes] = iter_payload(opened, reader, size=self.claim.decrypt_size)
        else:
            chunks = stream
        for chunk in chunks:
            out.write(chunk)
            written += len(chunk)
            if progress:
                progress(len(chunk))
        if self.decrypt:
            for _ in stream:  # the padding after os_decrypt_size still counts for the hashes
                pass
        verdict = self.inspector.finalize()  # a bad signature raises here
        checked = ["size"]
        if verdict.size != self.size:
            raise VerificationError(f"image {self.image_id}: {verdict.size} bytes downloaded, "
                                    f"its record declares {self.size}")
        expected = str(self.properties.get("os_hash_value") or "")
        if expected:
            if not hmac.compare_digest(expected.lower(), verdict.os_hash_value):
                raise VerificationError(f"image {self.image_id}: the downloaded bytes do not "
                                        "match its os_hash_value")
            checked.append("os_hash_value")
        checksum = str(self.properties.get("checksum") or "")
        if checksum:
            if not hmac.compare_digest(checksum.lower(), verdict.checksum):
                raise VerificationError(f"image {self.image_id}: the downloaded bytes do not "
                                        "match its checksum (md5)")
            checked.append("checksum")
        return DownloadResult(written, self.decrypt, len(checked) > 1, verdict.signature,
                              tuple(checked), self.trusted and verdict.signature is not None)


def open_download(conn: Any, image_id: str, *, keep_encrypted: bool = False,
                  trust: tuple[x509.Certificate, ...] | None = None,
                  require_trust: bool = False,
                  timeouts: imageservice.Timeouts | None = None) -> Download:
    """Look image ``image_id`` up and prepare its checks; nothing is downloaded yet. The key
    manager is reached only when the image claims encryption or carries a signature.

    ``trust``: certificates a signature's chain must lead to (as ``verify --trust``); without
    them a signature proves only that the certificate the image names in the cloud's key
    manager signed it. ``require_trust``: refuse an image that is not signed, or a request
    without trust anchors.
    """
    if require_trust and not trust:
        raise UsageError("a trust anchor is required (--require-trust): give --trust or "
                         "--trust-id")
    images = imageservice.ImageService(conn, timeouts or imageservice.Timeouts())
    image = images.get(image_id)
    size = image.declared_size()
    properties = imageservice.extra_properties(image)
    checksum = str(properties.get("checksum") or "")
    if checksum and not MD5_HEX.fullmatch(checksum.lower()):
        raise FormatError(f"image {image_id}: its checksum is not an md5 hex digest")
    claim = encryption_claim(properties)
    manager = (imageservice.key_manager(conn)
               if claim is not None or schemes_present(properties) else None)
    expected_algo = str(properties.get("os_hash_algo") or DEFAULT_MULTIHASH)
    if expected_algo not in HASH_ALGORITHMS:  # the image record's value: malformed input
        raise FormatError(f"unsupported os_hash_algo {expected_algo!r}")
    inspector = UploadInspector(properties, key_manager=manager, policy=UploadPolicy(
        allowed_luks_versions=frozenset({1, 2}), register_consumer=False,
        hash_algo=expected_algo, trust=trust or None, require_signature=require_trust))
    return Download(image_id, size, claim is not None and not keep_encrypted, images,
                    inspector, properties, claim, manager, trusted=bool(trust))

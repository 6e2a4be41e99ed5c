"""The image service's upload hook: one pass over the bytes, a verdict when they end.

The hook never buffers the image. It passes each chunk through unchanged while computing the
multihash and the legacy md5 checksum, verifying any signature the properties carry, and
keeping the first bytes (at most :data:`MAX_HEADER_CAPTURE`) to check the encryption claims
against the LUKS header once the stream ends.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from cryptography import x509

from imgcrypt.errors import FormatError, ImgcryptError
from imgcrypt.keys.manager import Consumer, KeyManager
from imgcrypt.luks.container import (
    PROBE_SIZE,
    bytes_to_parse,
    detect_version,
    is_luks,
    parse_header,
)
from imgcrypt.service.claims import EncryptionClaim, encryption_claim
from imgcrypt.service.errors import (
    EncryptionClaimError,
    LuksVersionRefusedError,
    SignatureRequiredError,
)
from imgcrypt.signing import (
    ImageVerifier,
    VerificationResult,
    certificate_uuid,
    certificates_from_key_manager,
    check_certificate,
    schemes_present,
)
from imgcrypt.signing.certs import CertificatePolicy, CheckedCertificate, Clock, utc_now

# A LUKS2 header with the largest metadata cryptsetup allows is 2 x 4 MiB.
MAX_HEADER_CAPTURE = 8 << 20
HASH_ALGORITHMS = ("sha256", "sha384", "sha512", "sha3_256", "sha3_512")


@dataclass(frozen=True)
class UploadPolicy:
    """What a deployment accepts. The defaults are Glance's: LUKS1 only, signatures optional."""

    allowed_luks_versions: frozenset[int] = frozenset({1})
    require_signature: bool = False
    hash_algo: str = "sha512"
    trust: tuple[x509.Certificate, ...] | None = None
    register_consumer: bool = True
    certificate_policy: CertificatePolicy = field(default_factory=CertificatePolicy)


@dataclass(frozen=True)
class UploadVerdict:
    size: int
    os_hash_algo: str
    os_hash_value: str
    checksum: str
    signature: VerificationResult | None
    encryption: EncryptionClaim | None
    luks_version: int | None
    warnings: tuple[str, ...] = ()
    consumer_registered: bool = False

    def properties(self) -> dict[str, str]:
        """The properties the image service records for the upload."""
        return {"os_hash_algo": self.os_hash_algo, "os_hash_value": self.os_hash_value,
                "checksum": self.checksum, "size": str(self.size)}


class UploadInspector:
    """Checks an upload while it streams; :meth:`finalize` gives the verdict or raises.

    Checks that need no image bytes (claims parse, key exists, certificate is acceptable)
    run in the constructor, so a bad upload can be refused before its first byte is stored.
    """

    def __init__(self, properties: Mapping[str, str], *, key_manager: KeyManager | None = None,
                 policy: UploadPolicy | None = None, image_id: str | None = None,
                 clock: Clock = utc_now) -> None:
        self._properties = dict(properties)
        self._policy = policy or UploadPolicy()
        self._manager = key_manager
        self._image_id = image_id
        if self._policy.hash_algo not in HASH_ALGORITHMS:
            raise FormatError(f"unsupported os_hash_algo {self._policy.hash_algo!r}")
        self._multihash = hashlib.new(self._policy.hash_algo)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._head = bytearray()
        self._head_limit: int | None = None  # known once the first 4096 bytes are in
        self._size = 0
        self._claim = encryption_claim(self._properties)
        if self._claim is not None:
            if key_manager is None:
                raise EncryptionClaimError("an encrypted image needs a key manager to check")
            key_manager.describe(self._claim.key_id)  # SecretNotFoundError (exit 5) if absent
        self._verifier: ImageVerifier | None = None
        if schemes_present(self._properties):
            self._verifier = ImageVerifier(self._properties, self._certificate(clock),
                                           allow_legacy=self._policy.certificate_policy.allow_legacy)
        elif self._policy.require_signature:
            raise SignatureRequiredError("this deployment requires signed images")

    def _certificate(self, clock: Clock) -> CheckedCertificate:
        cert_id = certificate_uuid(self._properties)
        if cert_id is None or self._manager is None:
            raise SignatureRequiredError("the signature names no certificate in the key manager")
        certificates = certificates_from_key_manager(self._manager, cert_id)
        return check_certificate(certificates, trust=self._policy.trust, clock=clock,
                                 policy=self._policy.certificate_policy)

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._multihash.update(chunk)
        self._md5.update(chunk)
        if self._verifier is not None:
            self._verifier.update(chunk)
        self._capture(chunk)
        self._size += len(chunk)

    def _capture(self, chunk: bytes | bytearray | memoryview) -> None:
        """Keep the stream's first bytes: 4096, then as many as its LUKS header needs."""
        start = self._size  # stream offset of this chunk; the head is a prefix of the stream
        while True:
            limit = PROBE_SIZE if self._head_limit is None else self._head_limit
            have = len(self._head)
            if have < limit and start + len(chunk) > have:
                self._head += bytes(chunk[have - start : limit - start])
            if self._head_limit is not None or len(self._head) < PROBE_SIZE:
                return
            probe = bytes(self._head[:PROBE_SIZE])
            try:
                needed = bytes_to_parse(probe) if is_luks(probe) else PROBE_SIZE
            except ImgcryptError:
                needed = PROBE_SIZE  # judged at the end, from what was kept
            self._head_limit = min(MAX_HEADER_CAPTURE, max(needed, PROBE_SIZE))

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Yield ``chunks`` unchanged, inspecting each on the way."""
        for chunk in chunks:
            self.update(chunk)
            yield chunk

    def _luks_version(self) -> int | None:
        head = bytes(self._head)
        if not is_luks(head):
            return None
        version = detect_version(head)
        needed = bytes_to_parse(head[:PROBE_SIZE])
        if needed > len(head):
            raise EncryptionClaimError("the image ends inside its LUKS header")
        parse_header(head)  # a malformed header is a FormatError, whatever is claimed
        return version

    def finalize(self) -> UploadVerdict:
        signature = self._verifier.finalize() if self._verifier is not None else None
        warnings: list[str] = []
        try:
            version = self._luks_version()
        except ImgcryptError:
            if self._claim is not None:
                raise
            version = None
            warnings.append("the image starts with a damaged LUKS header")
        claim = self._claim
        registered = False
        if claim is not None:
            if version is None:
                raise EncryptionClaimError("the image claims encryption but is not a LUKS image")
            if claim.version is not None and claim.version != version:
                raise EncryptionClaimError(
                    f"the image claims LUKSv{claim.version} but is LUKSv{version}"
                )
            if version not in self._policy.allowed_luks_versions:
                allowed = ", ".join(f"LUKSv{v}" for v in sorted(self._policy.allowed_luks_versions))
                raise LuksVersionRefusedError(
                    f"LUKSv{version} images are not accepted here (allowed: {allowed})"
                )
            if claim.decrypt_size is not None and claim.decrypt_size > self._size:
                raise EncryptionClaimError("os_decrypt_size is larger than the image")
            if (self._policy.register_consumer and self._image_id is not None
                    and self._manager is not None and self._manager.supports_consumers):
                self._manager.add_consumer(claim.key_id, image_consumer(self._image_id))
                registered = True
        elif version is not None:
            warnings.append(f"the image is LUKSv{version} but its properties declare no "
                            "encryption")
        return UploadVerdict(
            size=self._size, os_hash_algo=self._policy.hash_algo,
            os_hash_value=self._multihash.hexdigest(), checksum=self._md5.hexdigest(),
            signature=signature, encryption=claim, luks_version=version,
            warnings=tuple(warnings), consumer_registered=registered,
        )


def image_consumer(image_id: str) -> Consumer:
    """How an image registers as a consumer of its key (Glance's service and resource type)."""
    return Consumer(service="image", resource_type="image", resource_id=image_id)


def inspect_upload(chunks: Iterable[bytes], properties: Mapping[str, str], *,
                   key_manager: KeyManager | None = None, policy: UploadPolicy | None = None,
                   image_id: str | None = None) -> UploadVerdict:
    """Consume ``chunks`` entirely and return the verdict (for callers that store elsewhere)."""
    inspector = UploadInspector(properties, key_manager=key_manager, policy=policy,
                                image_id=image_id)
    for _ in inspector.wrap(chunks):
        pass
    return inspector.finalize()

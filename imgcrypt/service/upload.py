"""The image service's upload hook: one pass over the bytes, a verdict when they end.

The hook never buffers the image. It passes each chunk through unchanged while computing the
multihash and the legacy md5 checksum, verifying any signature the properties carry, and
keeping the first bytes (at most :data:`MAX_HEADER_CAPTURE`) to check the encryption claims
against the LUKS header once the stream ends. The digests run on threads of their own
(:mod:`imgcrypt.service.lanes`), so the md5 costs no time beside the multihash on two cores.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from cryptography import x509

from imgcrypt.crypto.kdf import DEFAULT_LIMITS, KdfLimits
from imgcrypt.digests import DEFAULT_MULTIHASH, MULTIHASHES, new_multihash
from imgcrypt.errors import (
    FormatError,
    FormatFault,
    ImgcryptError,
    UnsupportedError,
    UsageError,
    VerificationError,
    VerificationFault,
    WrongPassphraseError,
)
from imgcrypt.keys.consumers import image_consumer
from imgcrypt.keys.lease import KeyLease
from imgcrypt.keys.manager import KeyManager
from imgcrypt.keys.rules import passphrase_for
from imgcrypt.luks.container import (
    PROBE_SIZE,
    LuksHeader,
    bytes_to_parse,
    is_luks,
    parse_header,
    payload_span,
)
from imgcrypt.service.claims import EncryptionClaim, encryption_claim
from imgcrypt.service.lanes import ParallelDigests
from imgcrypt.signing import (
    ImageVerifier,
    VerificationResult,
    certificate_uuid,
    certificates_from_key_manager,
    check_certificate,
    schemes_present,
)
from imgcrypt.signing.certs import CertificatePolicy, CheckedCertificate, Clock, utc_now
from imgcrypt.signing.verify import glance_certificate_uuid

# The header and the keyslot material the named key must open: cryptsetup's LUKS2 default
# region (16 MiB) at most; a LUKS1 header with all eight keyslots of 512-bit keys is ~2 MiB.
MAX_HEADER_CAPTURE = 16 << 20
# The os_hash_algo values imgcrypt computes: those Glance can (hashlib's guaranteed names).
HASH_ALGORITHMS = tuple(sorted(MULTIHASHES))
# The upload hook pays one unlock on every upload: half the general budget (about 24 s of one
# core here: two cryptsetup-default keyslots with their digests, or two 2-second LUKS1 keyslots
# from a machine three times as fast) and cryptsetup's default argon2 memory (1 GiB).
UPLOAD_UNLOCK_LIMITS = KdfLimits(max_unlock_cost=DEFAULT_LIMITS.max_unlock_cost // 2,
                                 max_argon2_memory_kib=1024 * 1024)


@dataclass(frozen=True)
class UploadPolicy:
    """What a deployment accepts. The defaults are Glance's: LUKS1 only, signatures optional."""

    allowed_luks_versions: frozenset[int] = frozenset({1})
    require_signature: bool = False
    hash_algo: str = DEFAULT_MULTIHASH
    trust: tuple[x509.Certificate, ...] | None = None
    register_consumer: bool = True
    # Unlock the header with the key the properties name (once per upload, within
    # ``unlock_limits``); off, the key is only required to exist.
    check_key: bool = True
    certificate_policy: CertificatePolicy = field(default_factory=CertificatePolicy)
    # KDF limits for the unlock that proves the named key opens the header (one per upload).
    unlock_limits: KdfLimits = UPLOAD_UNLOCK_LIMITS

    def __post_init__(self) -> None:
        if self.hash_algo not in HASH_ALGORITHMS:  # a deployment's setting, not an image's
            raise UsageError(f"unsupported hash_algo {self.hash_algo!r}; imgcrypt computes "
                             f"{', '.join(HASH_ALGORITHMS)}")


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
        self._multihash = new_multihash(self._policy.hash_algo)
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._head = bytearray()
        self._head_limit: int | None = None  # known once the first 4096 bytes are in
        self._head_final = False  # the header (and keyslot material) to keep is known
        self._size = 0
        self._claim = encryption_claim(self._properties)
        self._passphrase: bytes | None = None
        if self._claim is not None:
            if key_manager is None:
                raise FormatError("an encrypted image needs a key manager to check",
                                  reason=FormatFault.ENCRYPTION_CLAIM)
            # SecretNotFoundError (exit 5) if absent; KeyManagerError if the key manager (with
            # the user's token) refuses a key of another project.
            if self._policy.check_key:
                self._passphrase = passphrase_for(key_manager.get(self._claim.key_id))
            else:
                key_manager.describe(self._claim.key_id)
        self._verifier: ImageVerifier | None = None
        if schemes_present(self._properties):
            glance_id = glance_certificate_uuid(self._properties)
            self._verifier = ImageVerifier(
                self._properties, self._certificate(clock),
                allow_legacy=self._policy.certificate_policy.allow_legacy,
                glance_certificate=self._certificate(clock, glance_id) if glance_id else None,
            )
        elif self._policy.require_signature:
            raise VerificationError("this deployment requires signed images",
                                    reason=VerificationFault.SIGNATURE_REQUIRED)
        # Each digest on its own core: the sha512 and the md5 together take as long as the
        # slower of the two, not their sum.
        self._digests = ParallelDigests([self._multihash.update, self._md5.update] + (
            [self._verifier.update] if self._verifier is not None else []))

    def _certificate(self, clock: Clock, cert_id: str | None = None) -> CheckedCertificate:
        cert_id = cert_id or certificate_uuid(self._properties)
        if cert_id is None or self._manager is None:
            raise VerificationError("the signature names no certificate in the key manager",
                                    reason=VerificationFault.SIGNATURE_REQUIRED)
        certificates = certificates_from_key_manager(self._manager, cert_id)
        return check_certificate(certificates, trust=self._policy.trust, clock=clock,
                                 policy=self._policy.certificate_policy)

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._digests.update(chunk)
        self._capture(chunk)
        self._size += len(chunk)

    def _capture(self, chunk: bytes | bytearray | memoryview) -> None:
        """Keep the stream's first bytes: 4096, then the LUKS header, then its keyslot material."""
        start = self._size  # stream offset of this chunk; the head is a prefix of the stream
        while True:
            limit = PROBE_SIZE if self._head_limit is None else self._head_limit
            have = len(self._head)
            if have < start:
                return  # bytes were passed on uncaptured: the limit was final
            if have < limit and start + len(chunk) > have:
                self._head += bytes(chunk[have - start : limit - start])
            if self._head_final or len(self._head) < limit:
                return
            self._head_limit = min(MAX_HEADER_CAPTURE, max(self._next_limit(), limit))

    def _next_limit(self) -> int:
        """How much of the stream to keep, judged from what is kept so far."""
        head = bytes(self._head)
        try:
            if self._head_limit is None:
                if not is_luks(head):
                    self._head_final = True
                    return PROBE_SIZE
                return max(bytes_to_parse(head[:PROBE_SIZE]), PROBE_SIZE)
            self._head_final = True
            return unlock_extent(parse_header(head, self._policy.unlock_limits))
        except ImgcryptError:
            self._head_final = True  # judged at the end, from what was kept
            return len(head)

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Yield ``chunks`` unchanged, inspecting each on the way."""
        for chunk in chunks:
            self.update(chunk)
            yield chunk

    def _luks_header(self) -> LuksHeader | None:
        head = bytes(self._head)
        if not is_luks(head):
            return None
        needed = bytes_to_parse(head[:PROBE_SIZE])
        if needed > len(head):
            raise FormatError("the image ends inside its LUKS header",
                              reason=FormatFault.ENCRYPTION_CLAIM)
        # A malformed header is a FormatError, whatever is claimed.
        return parse_header(head, self._policy.unlock_limits)

    def _check_payload(self, header: LuksHeader, claim: EncryptionClaim) -> None:
        """The payload the header and the properties describe lies inside the image."""
        if unlock_extent(header) > len(self._head):
            raise FormatError("the image ends inside its LUKS header or keyslots",
                              reason=FormatFault.ENCRYPTION_CLAIM)
        if header.payload_offset >= self._size:
            raise FormatError(
                f"the LUKS payload starts at byte {header.payload_offset}, at or beyond the end "
                f"of the {self._size}-byte image: it holds no payload",
                reason=FormatFault.ENCRYPTION_CLAIM,
            )
        try:
            payload = payload_span(header, image_size=self._size, quiet=True).size
        except FormatError as exc:  # a LUKS2 segment that runs beyond the image
            raise FormatError(str(exc), reason=FormatFault.ENCRYPTION_CLAIM) from None
        assert payload is not None  # the image's size is known
        if claim.decrypt_size is not None and claim.decrypt_size > payload:
            raise FormatError(
                f"os_decrypt_size {claim.decrypt_size} is larger than the {payload}-byte payload",
                reason=FormatFault.ENCRYPTION_CLAIM,
            )

    def _bind_key(self, header: LuksHeader) -> None:
        """The key the properties name opens this header (header bytes only, tight limits)."""
        assert self._passphrase is not None and self._claim is not None
        region = bytes(self._head[: header.region_size])
        region += bytes(header.region_size - len(region))  # keyslot area nobody uses
        try:
            header.unlock(region, self._passphrase, self._policy.unlock_limits)
        except WrongPassphraseError:
            raise VerificationError(
                f"key {self._claim.key_id} does not open the image's LUKS header",
                reason=VerificationFault.KEY_BINDING,
            ) from None

    def finalize(self) -> UploadVerdict:
        self._digests.close()
        signature = self._verifier.finalize() if self._verifier is not None else None
        warnings: list[str] = []
        try:
            header = self._luks_header()
        except ImgcryptError:
            if self._claim is not None:
                raise
            header = None
            warnings.append("the image starts with a damaged LUKS header")
        version = header.version if header is not None else None
        claim = self._claim
        registered = False
        if claim is not None:
            if header is None or version is None:
                raise FormatError("the image claims encryption but is not a LUKS image",
                                  reason=FormatFault.ENCRYPTION_CLAIM)
            if claim.version is not None and claim.version != version:
                raise FormatError(
                    f"the image claims LUKSv{claim.version} but is LUKSv{version}",
                    reason=FormatFault.ENCRYPTION_CLAIM,
                )
            if version not in self._policy.allowed_luks_versions:
                allowed = ", ".join(f"LUKSv{v}" for v in sorted(self._policy.allowed_luks_versions))
                raise UnsupportedError(
                    f"LUKSv{version} images are not accepted here (allowed: {allowed})",
                    reason=FormatFault.LUKS_VERSION_REFUSED,
                )
            assert self._manager is not None
            # The image becomes a consumer of its key only once every check has passed.
            with KeyLease.existing(self._manager, claim.key_id) as lease:
                if self._policy.register_consumer and self._image_id is not None:
                    lease.consume_as(image_consumer(self._image_id))
                self._check_payload(header, claim)
                if self._policy.check_key:
                    self._bind_key(header)
            registered = lease.consumer_registered
        elif version is not None:
            warnings.append(f"the image is LUKSv{version} but its properties declare no "
                            "encryption")
        return UploadVerdict(
            size=self._size, os_hash_algo=self._policy.hash_algo,
            os_hash_value=self._multihash.hexdigest(), checksum=self._md5.hexdigest(),
            signature=signature, encryption=claim, luks_version=version,
            warnings=tuple(warnings), consumer_registered=registered,
        )


def unlock_extent(header: LuksHeader) -> int:
    """Bytes from the image's start that hold the header and every keyslot's material: what
    an upload must keep to prove its key opens it (the header's own answer, either version)."""
    return header.unlock_extent


def inspect_upload(chunks: Iterable[bytes], properties: Mapping[str, str], *,
                   key_manager: KeyManager | None = None, policy: UploadPolicy | None = None,
                   image_id: str | None = None) -> UploadVerdict:
    """Consume ``chunks`` entirely and return the verdict (for callers that store elsewhere)."""
    inspector = UploadInspector(properties, key_manager=key_manager, policy=policy,
                                image_id=image_id)
    for _ in inspector.wrap(chunks):
        pass
    return inspector.finalize()

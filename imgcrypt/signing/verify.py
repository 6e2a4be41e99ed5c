"""Verifying an image against its properties, whichever schemes they carry.

When both Glance and imgcrypt signature properties are present, both are verified in the
same pass and both must hold: dropping one scheme's properties must not be a way around it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography import x509

from imgcrypt.errors import UsageError, VerificationError, VerificationFault
from imgcrypt.signing import glance, imgcrypt_mode
from imgcrypt.signing.certs import (
    CertificatePolicy,
    CertificateSource,
    CheckedCertificate,
    Clock,
    certificates_from_key_manager,
    check_certificate,
    load_certificate_file,
    utc_now,
)
from imgcrypt.signing.manifest import CERT_UUID_KEY
from imgcrypt.signing.stream import SchemeResult


@dataclass(frozen=True)
class VerificationResult:
    """A successful verification: one entry a scheme, and the certificate that signed."""

    schemes: tuple[SchemeResult, ...]
    size: int
    certificate_subject: str
    certificate_fingerprint: str

    def as_dict(self) -> dict[str, object]:
        return {
            "valid": True,
            "size": self.size,
            "certificate_subject": self.certificate_subject,
            "certificate_sha256": self.certificate_fingerprint,
            "schemes": [
                {
                    "scheme": s.scheme,
                    "algorithm": s.algorithm,
                    "hash": s.hash_name,
                    "digest": s.digest.hex,
                }
                for s in self.schemes
            ],
        }


def schemes_present(properties: Mapping[str, str]) -> tuple[str, ...]:
    """The signature schemes whose properties are present: ``imgcrypt``, ``glance``, both, none."""
    found = []
    if imgcrypt_mode.present(properties):
        found.append("imgcrypt")
    if glance.present(properties):
        found.append("glance")
    return tuple(found)


def certificate_uuid(properties: Mapping[str, str]) -> str | None:
    """The key-manager id of the signing certificate named by the properties, if any."""
    return properties.get(CERT_UUID_KEY) or properties.get(glance.CERT_UUID_KEY) or None


def glance_certificate_uuid(properties: Mapping[str, str]) -> str | None:
    """The id the Glance scheme's own certificate has when both schemes are present and it is
    not the one :func:`certificate_uuid` names (so one certificate cannot vouch for both)."""
    if schemes_present(properties) != ("imgcrypt", "glance"):
        return None
    own = properties.get(glance.CERT_UUID_KEY) or None
    return own if own is not None and own != certificate_uuid(properties) else None


class ImageVerifier:
    """Streaming verifier for every signature scheme present in ``properties``."""

    def __init__(
        self,
        properties: Mapping[str, str],
        certificate: CheckedCertificate,
        *,
        allow_legacy: bool = False,
        glance_certificate: CheckedCertificate | None = None,
    ) -> None:
        """``glance_certificate`` checks the Glance scheme when it names a certificate of its
        own (see :func:`glance_certificate_uuid`); ``certificate`` checks everything else."""
        found = schemes_present(properties)
        if glance_certificate is None and glance_certificate_uuid(properties) is not None:
            raise VerificationError(
                "the Glance signature names a certificate of its own "
                f"({glance.CERT_UUID_KEY}): it needs that certificate, not the imgcrypt one",
                reason=VerificationFault.MISSING_PROPERTY,
            )
        if not found:
            raise VerificationError("the properties carry no image signature",
                                    reason=VerificationFault.MISSING_PROPERTY)
        self._verifiers: list[imgcrypt_mode.ImgcryptVerifier | glance.GlanceVerifier] = []
        if "imgcrypt" in found:
            self._verifiers.append(imgcrypt_mode.ImgcryptVerifier(properties, certificate))
        if "glance" in found:
            self._verifiers.append(
                glance.GlanceVerifier(properties, glance_certificate or certificate,
                                      allow_legacy=allow_legacy)
            )
        self._certificate = certificate
        self._size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        for verifier in self._verifiers:
            verifier.update(data)
        self._size += len(data)

    def finalize(self) -> VerificationResult:
        results = tuple(verifier.finalize() for verifier in self._verifiers)
        return VerificationResult(
            schemes=results,
            size=self._size,
            certificate_subject=self._certificate.subject,
            certificate_fingerprint=self._certificate.fingerprint_sha256,
        )


@dataclass(frozen=True)
class CertificateSources:
    """Where a verification's certificates come from, as the person named them.

    ``cert_file`` / ``cert_id`` give the signing certificate (otherwise the id the properties
    name, from the key manager); ``glance_cert_file`` / ``glance_cert_id`` the Glance
    signature's own certificate when both schemes are present; ``trust_files`` /
    ``trust_ids`` the trusted certificates (none: each certificate is checked alone).
    """

    cert_file: str | None = None
    cert_id: str | None = None
    glance_cert_file: str | None = None
    glance_cert_id: str | None = None
    trust_files: tuple[str, ...] = ()
    trust_ids: tuple[str, ...] = ()


KeyManagerFactory = Callable[[], CertificateSource]


def trusted_certificates(sources: CertificateSources,
                         key_manager: KeyManagerFactory) -> list[x509.Certificate] | None:
    """The trust anchors ``sources`` names (files and key-manager ids), or None for none."""
    return _trusted(sources, key_manager)


def _trusted(sources: CertificateSources,
             key_manager: KeyManagerFactory) -> list[x509.Certificate] | None:
    if not sources.trust_files and not sources.trust_ids:
        return None
    trusted: list[x509.Certificate] = []
    for path in sources.trust_files:
        trusted.extend(load_certificate_file(path))
    if sources.trust_ids:
        manager = key_manager()
        for secret_id in sources.trust_ids:
            trusted.extend(certificates_from_key_manager(manager, secret_id))
    return trusted


def _signing_certificates(properties: Mapping[str, str], sources: CertificateSources,
                          key_manager: KeyManagerFactory) -> list[x509.Certificate]:
    if sources.cert_file:
        return load_certificate_file(sources.cert_file)
    secret_id = sources.cert_id or certificate_uuid(properties)
    if not secret_id:
        raise UsageError("no certificate: give --cert or --cert-id")
    return certificates_from_key_manager(key_manager(), secret_id)


def _glance_certificates(properties: Mapping[str, str], sources: CertificateSources,
                         key_manager: KeyManagerFactory) -> list[x509.Certificate] | None:
    """The Glance scheme's own certificate, when both schemes are present and it may differ
    (None: the signing certificate serves both)."""
    if sources.glance_cert_file:
        return load_certificate_file(sources.glance_cert_file)
    if sources.glance_cert_id:
        return certificates_from_key_manager(key_manager(), sources.glance_cert_id)
    if schemes_present(properties) != ("imgcrypt", "glance"):
        return None
    if sources.cert_file or sources.cert_id:
        # A certificate given for the imgcrypt scheme serves the Glance one only when the
        # properties name one certificate for both.
        glance_id = properties.get(glance.CERT_UUID_KEY) or None
        if glance_id is not None and glance_id != properties.get(CERT_UUID_KEY):
            raise UsageError("both signature schemes are present and name different "
                             "certificates: give the Glance one with --glance-cert or "
                             "--glance-cert-id")
        return None
    glance_id = glance_certificate_uuid(properties)
    return certificates_from_key_manager(key_manager(), glance_id) if glance_id else None


def open_verifier(
    properties: Mapping[str, str],
    sources: CertificateSources,
    *,
    key_manager: KeyManagerFactory,
    clock: Clock = utc_now,
    allow_legacy: bool = False,
) -> ImageVerifier:
    """The verifier for ``properties`` with each scheme's certificate found and checked.

    Certificates are loaded and checked in this order: trusted ones, the signing certificate,
    the Glance scheme's own. ``key_manager`` is called only when a certificate comes from
    the key manager, so a verification from files needs none configured.
    """
    policy = CertificatePolicy(allow_legacy=allow_legacy)
    trust = _trusted(sources, key_manager)
    checked = check_certificate(_signing_certificates(properties, sources, key_manager),
                                trust=trust, clock=clock, policy=policy)
    glance_certificates = _glance_certificates(properties, sources, key_manager)
    glance_checked = None if glance_certificates is None else check_certificate(
        glance_certificates, trust=trust, clock=clock, policy=policy,
    )
    return ImageVerifier(properties, checked, allow_legacy=allow_legacy,
                         glance_certificate=glance_checked)


__all__ = [
    "CertificateSources",
    "ImageVerifier",
    "VerificationResult",
    "certificate_uuid",
    "glance_certificate_uuid",
    "open_verifier",
    "schemes_present",
]

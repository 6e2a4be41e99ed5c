"""Verifying an image against its properties, whichever schemes they carry.

When both Glance and imgcrypt signature properties are present, both are verified in the
same pass and both must hold: dropping one scheme's properties must not be a way around it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from imgcrypt.errors import VerificationError, VerificationFault
from imgcrypt.signing import glance, imgcrypt_mode
from imgcrypt.signing.certs import CheckedCertificate
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


__all__ = [
    "ImageVerifier",
    "VerificationResult",
    "certificate_uuid",
    "glance_certificate_uuid",
    "schemes_present",
]

"""Image signatures: Glance-compatible (cursive) and imgcrypt's modern, size-safe scheme.

Typical use in an upload hook, verifying while the bytes pass through::

    from imgcrypt.signing import ImageVerifier, check_certificate, load_certificates

    checked = check_certificate(load_certificates(cert_bytes), trust=trusted_cas)
    verifier = ImageVerifier(image_properties, checked)
    for chunk in upload:
        verifier.update(chunk)
    result = verifier.finalize()   # raises a VerificationError subclass when anything is wrong

and to sign::

    signer = ImgcryptSigner(private_key, properties={"disk_format": "raw"})
    properties = feed_file(signer, "image.raw")

See docs/signing.md for the property scheme.
"""

from __future__ import annotations

from imgcrypt.digests import GLANCE_HASHES, IMGCRYPT_HASHES
from imgcrypt.signing.algorithms import IMGCRYPT_ALGORITHMS
from imgcrypt.signing.certs import (
    CertificatePolicy,
    CheckedCertificate,
    certificates_from_key_manager,
    check_certificate,
    load_certificate_file,
    load_certificates,
)
from imgcrypt.signing.glance import GlanceSigner, GlanceVerifier
from imgcrypt.signing.imgcrypt_mode import ImgcryptSigner, ImgcryptVerifier
from imgcrypt.signing.keyfile import load_private_key
from imgcrypt.signing.manifest import BOUND_PROPERTIES, Manifest
from imgcrypt.signing.propfile import dump_properties, parse_properties
from imgcrypt.signing.signer import make_signer
from imgcrypt.signing.storage import DEFAULT_MAX_LENGTH, join_value, split_value
from imgcrypt.signing.stream import Digest, SchemeResult, feed_file, feed_iterable
from imgcrypt.signing.verify import (
    CertificateSources,
    ImageVerifier,
    VerificationResult,
    certificate_uuid,
    open_verifier,
    schemes_present,
)

__all__ = [
    "BOUND_PROPERTIES",
    "DEFAULT_MAX_LENGTH",
    "GLANCE_HASHES",
    "IMGCRYPT_ALGORITHMS",
    "IMGCRYPT_HASHES",
    "CertificatePolicy",
    "CertificateSources",
    "CheckedCertificate",
    "Digest",
    "GlanceSigner",
    "GlanceVerifier",
    "ImageVerifier",
    "ImgcryptSigner",
    "ImgcryptVerifier",
    "Manifest",
    "SchemeResult",
    "VerificationResult",
    "certificate_uuid",
    "certificates_from_key_manager",
    "check_certificate",
    "dump_properties",
    "feed_file",
    "feed_iterable",
    "join_value",
    "load_certificate_file",
    "load_certificates",
    "load_private_key",
    "make_signer",
    "open_verifier",
    "parse_properties",
    "schemes_present",
    "split_value",
]

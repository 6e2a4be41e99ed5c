"""Glance mode: the ``img_signature*`` properties that cursive (Glance, Nova, Cinder) verifies.

The signature covers the raw image bytes, hashed incrementally and signed as prehashed. RSA keys
sign RSA-PSS with MGF1 over the same hash and the maximum salt length; P-384 and P-521 keys sign
ECDSA. DSA is verify-only and only with legacy algorithms allowed.

``img_signature`` is written whole, on one line, because that is what cursive reads: for RSA-2048
it is 344 characters, over the 255 Glance documents (Glance stores it today regardless). Use
imgcrypt mode when every value must stay within a limit.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping

from imgcrypt.errors import (
    UnknownAlgorithmError,
    UsageError,
    VerificationError,
    VerificationFault,
    WeakAlgorithmError,
)
from imgcrypt.signing.algorithms import (
    GLANCE_SIGNING_KEY_TYPES,
    PrivateKey,
    check_key_policy,
    check_matches,
    family_named,
    glance_hash,
    glance_key_type_for,
    public_key_of,
    sign_prehashed,
    verify_prehashed,
)
from imgcrypt.signing.certs import CheckedCertificate
from imgcrypt.signing.stream import HashingConsumer, SchemeResult

#: The signature, base64 on one line.
SIGNATURE_KEY = "img_signature"
#: The hash, one of :data:`imgcrypt.digests.GLANCE_HASHES`.
HASH_METHOD_KEY = "img_signature_hash_method"
#: The key type, one of cursive's names (:data:`.algorithms.GLANCE_KEY_TYPES`).
KEY_TYPE_KEY = "img_signature_key_type"
#: The signing certificate's key-manager id.
CERT_UUID_KEY = "img_signature_certificate_uuid"
#: Every property of a Glance-mode signature.
KEYS = (SIGNATURE_KEY, HASH_METHOD_KEY, KEY_TYPE_KEY, CERT_UUID_KEY)
#: The hash a Glance-mode signer uses when none is given.
DEFAULT_HASH = "SHA-256"
MAX_SIGNATURE_CHARS = 1 << 16


def present(properties: Mapping[str, str]) -> bool:
    """Whether any of Glance's ``img_signature*`` properties is present."""
    return any(key in properties for key in KEYS)


class GlanceSigner(HashingConsumer):
    """Streaming Glance-mode signer: ``update`` with the image bytes, then ``finalize``."""

    def __init__(
        self, private_key: PrivateKey, *, certificate_uuid: str, hash_method: str = DEFAULT_HASH
    ) -> None:
        if not certificate_uuid:
            raise UsageError("Glance mode needs the certificate's key-manager id (--cert-uuid)")
        public_key = public_key_of(private_key)
        try:
            self._key_type = glance_key_type_for(public_key)
        except UnknownAlgorithmError as exc:
            raise UsageError(str(exc)) from None
        if self._key_type not in GLANCE_SIGNING_KEY_TYPES:
            raise UsageError(f"{self._key_type} is verify-only; sign with RSA, P-384 or P-521")
        try:
            check_key_policy(public_key, allow_legacy=False)
        except WeakAlgorithmError as exc:
            raise UsageError(f"refusing to sign: {exc}") from None
        super().__init__(hash_method, glance_hash(hash_method))
        self._private_key = private_key
        self._certificate_uuid = certificate_uuid

    def finalize(self) -> dict[str, str]:
        digest = self._image_digest()
        signature = sign_prehashed(self._private_key, digest.value, self._spec)
        return {
            SIGNATURE_KEY: base64.b64encode(signature).decode("ascii"),
            HASH_METHOD_KEY: self._hash_name,
            KEY_TYPE_KEY: self._key_type,
            CERT_UUID_KEY: self._certificate_uuid,
        }


def _decode_signature(text: str) -> bytes:
    if len(text) > MAX_SIGNATURE_CHARS:
        raise VerificationError(f"{SIGNATURE_KEY} is longer than {MAX_SIGNATURE_CHARS}",
                                reason=VerificationFault.MALFORMED_SIGNATURE)
    try:
        signature = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise VerificationError(f"{SIGNATURE_KEY} is not base64 on one line",
                                reason=VerificationFault.MALFORMED_SIGNATURE) from None
    if not signature:
        raise VerificationError(f"{SIGNATURE_KEY} is empty",
                                reason=VerificationFault.MALFORMED_SIGNATURE)
    return signature


class GlanceVerifier(HashingConsumer):
    """Streaming verifier of the ``img_signature*`` properties against a checked certificate."""

    def __init__(
        self,
        properties: Mapping[str, str],
        certificate: CheckedCertificate,
        *,
        allow_legacy: bool = False,
    ) -> None:
        missing = [key for key in KEYS if key not in properties]
        if missing:
            raise VerificationError(f"Glance signature property {missing[0]} is missing",
                                    reason=VerificationFault.MISSING_PROPERTY)
        key_type = properties[KEY_TYPE_KEY]
        family = family_named(key_type)
        if family is None or family.glance_name != key_type:
            raise UnknownAlgorithmError(f"unknown {KEY_TYPE_KEY} {key_type!r}")
        if family.legacy and not allow_legacy:
            raise WeakAlgorithmError(f"{key_type} is refused unless legacy algorithms are allowed")
        hash_method = properties[HASH_METHOD_KEY]
        super().__init__(hash_method, glance_hash(hash_method))
        check_matches(key_type, certificate.public_key)
        self._signature = _decode_signature(properties[SIGNATURE_KEY])
        self._key_type = key_type
        self._public_key = certificate.public_key

    def finalize(self) -> SchemeResult:
        digest = self._image_digest()
        verify_prehashed(self._public_key, self._signature, digest.value, self._spec)
        return SchemeResult("glance", self._key_type, self._hash_name, digest)


__all__ = [
    "CERT_UUID_KEY",
    "DEFAULT_HASH",
    "HASH_METHOD_KEY",
    "KEYS",
    "KEY_TYPE_KEY",
    "SIGNATURE_KEY",
    "GlanceSigner",
    "GlanceVerifier",
    "present",
]

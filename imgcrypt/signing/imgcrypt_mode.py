"""imgcrypt mode: modern algorithms, a signed manifest, size-safe ``imgcrypt_sign_*`` properties.

Properties written (every value at most ``max_value_length`` characters, 255 by default):

* ``imgcrypt_sign_version`` ``1``; ``imgcrypt_sign_algorithm`` (``ed25519``, ``ecdsa-p256``,
  ``ecdsa-p384``, ``ecdsa-p521``, ``rsa-pss``, ``ml-dsa-44``, ``ml-dsa-65``, ``ml-dsa-87``);
  ``imgcrypt_sign_hash`` (``sha256`` .. ``sha3-512``); ``imgcrypt_sign_size`` (bytes);
* ``imgcrypt_sign_bound_sha256``: an unsigned hint, so a verifier can say "a bound property
  changed" instead of "bad signature";
* ``imgcrypt_sign_certificate_uuid`` when the certificate's key-manager id is known;
* ``imgcrypt_sign_signature_count``, ``_sha256``, ``_1`` .. ``_N``: the base64 signature over
  the canonical manifest (:mod:`imgcrypt.signing.manifest`) in parts (:mod:`.storage`).

Large images are streamed through one hash and only the small manifest is signed, for every
algorithm including ML-DSA (a signed digest manifest: the verifier pays one hash pass, whatever
the algorithm, where ML-DSA's external-mu route would force SHAKE-256 over the image).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

from imgcrypt.errors import (
    BadSignatureError,
    UnknownAlgorithmError,
    UsageError,
    VerificationError,
    VerificationFault,
    WeakAlgorithmError,
)
from imgcrypt.signing import storage
from imgcrypt.signing.algorithms import (
    IMGCRYPT_ALGORITHMS,
    PrivateKey,
    check_key_policy,
    check_matches,
    imgcrypt_algorithm_for,
    imgcrypt_hash,
    public_key_of,
    sign_message,
    verify_message,
)
from imgcrypt.signing.certs import CheckedCertificate
from imgcrypt.signing.manifest import (
    ALGORITHM_KEY,
    BOUND_DIGEST_KEY,
    BOUND_PROPERTIES,
    CERT_UUID_KEY,
    HASH_KEY,
    PREFIX,
    SIGNATURE_NAME,
    SIZE_KEY,
    VERSION,
    VERSION_KEY,
    Manifest,
    bound_digest,
    bound_values,
)
from imgcrypt.signing.stream import HashingConsumer, SchemeResult

#: The hash an imgcrypt-mode signer uses when none is given.
DEFAULT_HASH = "sha256"
_SIZE = re.compile(r"0|[1-9][0-9]{0,18}")


def present(properties: Mapping[str, str]) -> bool:
    """Whether any ``imgcrypt_sign_*`` property is present (an imgcrypt-mode signature)."""
    return any(key.startswith(PREFIX) for key in properties)


class ImgcryptSigner(HashingConsumer):
    """Streaming imgcrypt-mode signer; ``finalize`` returns the properties to attach.

    ``properties`` are the image's security-relevant properties to bind (only names in
    :data:`~imgcrypt.signing.manifest.BOUND_PROPERTIES`); they are returned with the signature.
    """

    def __init__(
        self,
        private_key: PrivateKey,
        *,
        hash_name: str = DEFAULT_HASH,
        properties: Mapping[str, str] | None = None,
        certificate_uuid: str | None = None,
        max_value_length: int = storage.DEFAULT_MAX_LENGTH,
        algorithm: str | None = None,
    ) -> None:
        storage.check_max_length(max_value_length)
        public_key = public_key_of(private_key)
        try:
            check_key_policy(public_key, allow_legacy=False)
        except WeakAlgorithmError as exc:
            raise UsageError(f"refusing to sign: {exc}") from None
        try:
            actual = imgcrypt_algorithm_for(public_key)
        except UnknownAlgorithmError as exc:
            raise UsageError(str(exc)) from None
        if algorithm is not None and algorithm != actual:
            if algorithm not in IMGCRYPT_ALGORITHMS:
                raise UsageError(f"unknown algorithm {algorithm!r}")
            raise UsageError(f"--algorithm {algorithm} does not match the {actual} key")
        given = dict(properties or {})
        unbound = sorted(set(given) - set(BOUND_PROPERTIES))
        if unbound:
            raise UsageError(
                f"{unbound[0]} is not a property a signature binds; "
                f"bound properties are {', '.join(BOUND_PROPERTIES)}"
            )
        for name, value in given.items():
            if len(value) > max_value_length:
                raise UsageError(f"{name} is longer than {max_value_length} characters")
        if certificate_uuid is not None and len(certificate_uuid) > max_value_length:
            raise UsageError("the certificate id is longer than the value limit")
        self._algorithm = actual
        super().__init__(hash_name, imgcrypt_hash(hash_name))
        self._private_key = private_key
        self._given = given
        self._certificate_uuid = certificate_uuid
        self._max_value_length = max_value_length

    def finalize(self) -> dict[str, str]:
        digest = self._image_digest()
        bound = bound_values(self._given)
        manifest = Manifest(self._algorithm, self._hash_name, digest.value, digest.size, bound)
        signature = sign_message(self._private_key, manifest.to_bytes(), self._spec)
        result = dict(self._given)
        result.update(
            {
                VERSION_KEY: str(VERSION),
                ALGORITHM_KEY: self._algorithm,
                HASH_KEY: self._hash_name,
                SIZE_KEY: str(digest.size),
                BOUND_DIGEST_KEY: bound_digest(bound),
            }
        )
        if self._certificate_uuid is not None:
            result[CERT_UUID_KEY] = self._certificate_uuid
        encoded = base64.b64encode(signature).decode("ascii")
        result.update(
            storage.split_value(SIGNATURE_NAME, encoded, max_length=self._max_value_length)
        )
        return result


def _required(properties: Mapping[str, str], key: str) -> str:
    try:
        return properties[key]
    except KeyError:
        raise VerificationError(f"imgcrypt signature property {key} is missing",
                                reason=VerificationFault.MISSING_PROPERTY) from None


class ImgcryptVerifier(HashingConsumer):
    """Streaming verifier of the ``imgcrypt_sign_*`` properties against a checked certificate."""

    def __init__(self, properties: Mapping[str, str], certificate: CheckedCertificate) -> None:
        version = _required(properties, VERSION_KEY)
        if version != str(VERSION):
            raise UnknownAlgorithmError(f"unsupported imgcrypt signature version {version!r}")
        algorithm = _required(properties, ALGORITHM_KEY)
        if algorithm not in IMGCRYPT_ALGORITHMS:
            raise UnknownAlgorithmError(f"unknown {ALGORITHM_KEY} {algorithm!r}")
        check_matches(algorithm, certificate.public_key)
        hash_name = _required(properties, HASH_KEY)
        super().__init__(hash_name, imgcrypt_hash(hash_name))
        size_text = _required(properties, SIZE_KEY)
        if not _SIZE.fullmatch(size_text):
            raise VerificationError(f"{SIZE_KEY} is not a decimal byte count",
                                    reason=VerificationFault.MALFORMED_SIGNATURE)
        self._stated_size = int(size_text)
        self._stated_bound = _required(properties, BOUND_DIGEST_KEY)
        encoded = storage.join_value(SIGNATURE_NAME, properties)
        try:
            self._signature = base64.b64decode(encoded.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise VerificationError(f"{SIGNATURE_NAME} is not base64",
                                    reason=VerificationFault.MALFORMED_SIGNATURE) from None
        self._algorithm = algorithm
        self._bound = bound_values(properties)
        self._public_key = certificate.public_key

    def finalize(self) -> SchemeResult:
        digest = self._image_digest()
        manifest = Manifest(
            self._algorithm, self._hash_name, digest.value, digest.size, self._bound
        )
        try:
            verify_message(self._public_key, self._signature, manifest.to_bytes(), self._spec)
        except BadSignatureError:
            # The signature failed; the unsigned hints only choose the most useful message.
            if digest.size != self._stated_size:
                raise VerificationError(
                    f"the image is {digest.size} bytes; the signature covers {self._stated_size}",
                    reason=VerificationFault.SIGNED_SIZE_MISMATCH,
                ) from None
            if bound_digest(self._bound) != self._stated_bound:
                raise VerificationError(
                    "a signed property (one of " + ", ".join(BOUND_PROPERTIES) + ") was changed",
                    reason=VerificationFault.BOUND_PROPERTY_MISMATCH,
                ) from None
            raise
        # A valid signature with altered hints still means someone edited the properties.
        if digest.size != self._stated_size:
            raise VerificationError(f"{SIZE_KEY} does not match the signed size",
                                    reason=VerificationFault.SIGNED_SIZE_MISMATCH)
        if bound_digest(self._bound) != self._stated_bound:
            raise VerificationError(f"{BOUND_DIGEST_KEY} does not match the signed values",
                                    reason=VerificationFault.BOUND_PROPERTY_MISMATCH)
        return SchemeResult("imgcrypt", self._algorithm, self._hash_name, digest)


__all__ = ["DEFAULT_HASH", "ImgcryptSigner", "ImgcryptVerifier", "present"]

"""What imgcrypt signs and verifies with, in one table, and the policy over it.

Two vocabularies exist and never mix:

* Glance mode uses cursive's names (``RSA-PSS``, ``ECC_SECP384R1``, ``ECC_SECP521R1``, ``DSA``;
  ``SHA-224`` .. ``SHA-512``), because Nova parses those properties as fixed enums.
* imgcrypt mode uses its own lowercase names (``ed25519``, ``ecdsa-p256``, ``rsa-pss``,
  ``ml-dsa-65`` ...; ``sha256`` .. ``sha3-512``) under ``imgcrypt_`` properties.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, mldsa, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from imgcrypt.errors import (
    BadSignatureError,
    UnknownAlgorithmError,
    UsageError,
    VerificationError,
    VerificationFault,
    WeakAlgorithmError,
)

PublicKey: TypeAlias = CertificatePublicKeyTypes
PrivateKey: TypeAlias = PrivateKeyTypes

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
# Domain separation for ML-DSA: a manifest signature cannot be replayed as another protocol's.
MLDSA_CONTEXT = b"imgcrypt-manifest-v1"


@dataclass(frozen=True)
class HashSpec:
    """One hash function under both of its names."""

    hashlib_name: str
    make: Callable[[], hashes.HashAlgorithm]

    def new(self) -> Any:  # hashlib's hash object has no public type
        return hashlib.new(self.hashlib_name)


GLANCE_HASHES: dict[str, HashSpec] = {
    "SHA-224": HashSpec("sha224", hashes.SHA224),
    "SHA-256": HashSpec("sha256", hashes.SHA256),
    "SHA-384": HashSpec("sha384", hashes.SHA384),
    "SHA-512": HashSpec("sha512", hashes.SHA512),
}

IMGCRYPT_HASHES: dict[str, HashSpec] = {
    "sha256": HashSpec("sha256", hashes.SHA256),
    "sha384": HashSpec("sha384", hashes.SHA384),
    "sha512": HashSpec("sha512", hashes.SHA512),
    "sha3-256": HashSpec("sha3_256", hashes.SHA3_256),
    "sha3-384": HashSpec("sha3_384", hashes.SHA3_384),
    "sha3-512": HashSpec("sha3_512", hashes.SHA3_512),
}

GLANCE_SIGNING_KEY_TYPES = ("RSA-PSS", "ECC_SECP384R1", "ECC_SECP521R1")
GLANCE_KEY_TYPES = (*GLANCE_SIGNING_KEY_TYPES, "DSA")

IMGCRYPT_ALGORITHMS = (
    "ed25519",
    "ecdsa-p256",
    "ecdsa-p384",
    "ecdsa-p521",
    "rsa-pss",
    "ml-dsa-44",
    "ml-dsa-65",
    "ml-dsa-87",
)

_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "ecdsa-p256": ec.SECP256R1,
    "ecdsa-p384": ec.SECP384R1,
    "ecdsa-p521": ec.SECP521R1,
    "ECC_SECP384R1": ec.SECP384R1,
    "ECC_SECP521R1": ec.SECP521R1,
}

_MLDSA: dict[str, tuple[type[Any], type[Any]]] = {
    "ml-dsa-44": (mldsa.MLDSA44PublicKey, mldsa.MLDSA44PrivateKey),
    "ml-dsa-65": (mldsa.MLDSA65PublicKey, mldsa.MLDSA65PrivateKey),
    "ml-dsa-87": (mldsa.MLDSA87PublicKey, mldsa.MLDSA87PrivateKey),
}


def glance_hash(name: str) -> HashSpec:
    try:
        return GLANCE_HASHES[name]
    except KeyError:
        raise UnknownAlgorithmError(
            f"unknown img_signature_hash_method {name!r}; "
            f"expected one of {', '.join(GLANCE_HASHES)}"
        ) from None


def imgcrypt_hash(name: str) -> HashSpec:
    try:
        return IMGCRYPT_HASHES[name]
    except KeyError:
        raise UnknownAlgorithmError(
            f"unknown hash {name!r}; expected one of {', '.join(IMGCRYPT_HASHES)}"
        ) from None


def _curve_label(key: ec.EllipticCurvePublicKey, labels: dict[str, str]) -> str | None:
    return labels.get(key.curve.name)


def imgcrypt_algorithm_for(public_key: PublicKey) -> str:
    """The imgcrypt-mode algorithm name a public key signs with."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(public_key, rsa.RSAPublicKey):
        return "rsa-pss"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        labels = {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384", "secp521r1": "ecdsa-p521"}
        label = _curve_label(public_key, labels)
        if label is not None:
            return label
        raise UnknownAlgorithmError(f"curve {public_key.curve.name} is not supported")
    for name, (public_type, _) in _MLDSA.items():
        if isinstance(public_key, public_type):
            return name
    raise UnknownAlgorithmError(
        f"{describe_key(public_key)} keys are not supported in imgcrypt mode"
    )


def glance_key_type_for(public_key: PublicKey) -> str:
    """The ``img_signature_key_type`` a public key signs with in Glance mode."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA-PSS"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        labels = {"secp384r1": "ECC_SECP384R1", "secp521r1": "ECC_SECP521R1"}
        label = _curve_label(public_key, labels)
        if label is not None:
            return label
        raise UnknownAlgorithmError(
            f"cursive cannot verify {public_key.curve.name} signatures; use --mode imgcrypt"
        )
    if isinstance(public_key, dsa.DSAPublicKey):
        return "DSA"
    raise UnknownAlgorithmError(
        f"cursive cannot verify {type(public_key).__name__} signatures; use --mode imgcrypt"
    )


def check_matches(label: str, public_key: PublicKey) -> None:
    """Refuse a declared key type or algorithm that is not what the key is (algorithm confusion)."""
    if label in ("rsa-pss", "RSA-PSS"):
        ok = isinstance(public_key, rsa.RSAPublicKey)
    elif label == "DSA":
        ok = isinstance(public_key, dsa.DSAPublicKey)
    elif label == "ed25519":
        ok = isinstance(public_key, ed25519.Ed25519PublicKey)
    elif label in _CURVES:
        ok = isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
            public_key.curve, _CURVES[label]
        )
    elif label in _MLDSA:
        ok = isinstance(public_key, _MLDSA[label][0])
    else:
        raise UnknownAlgorithmError(f"unknown key type or algorithm {label!r}")
    if not ok:
        raise VerificationError(
            f"the signature claims {label} but the certificate holds "
            f"a {describe_key(public_key)} key",
            reason=VerificationFault.ALGORITHM_MISMATCH,
        )


def describe_key(public_key: PublicKey) -> str:
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA-{public_key.key_size}"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"DSA-{public_key.key_size}"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {public_key.curve.name}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    for name, (public_type, _) in _MLDSA.items():
        if isinstance(public_key, public_type):
            return name.upper()
    return type(public_key).__name__


def check_key_policy(public_key: PublicKey, *, allow_legacy: bool) -> None:
    """Refuse keys too weak to trust: RSA under 2048 bits, and DSA unless legacy is allowed."""
    if isinstance(public_key, rsa.RSAPublicKey) and public_key.key_size < MIN_RSA_BITS:
        raise WeakAlgorithmError(
            f"RSA-{public_key.key_size} is below the {MIN_RSA_BITS}-bit minimum"
        )
    if isinstance(public_key, dsa.DSAPublicKey) and not allow_legacy:
        raise WeakAlgorithmError("DSA signatures are refused unless legacy algorithms are allowed")


def check_hash_policy(algorithm: hashes.HashAlgorithm | None, *, allow_legacy: bool) -> None:
    """Refuse MD5 and SHA-1 (in certificates) unless legacy algorithms are allowed."""
    if algorithm is None or allow_legacy:
        return
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        raise WeakAlgorithmError(f"{algorithm.name.upper()} is refused")


def _pss(hash_algorithm: hashes.HashAlgorithm) -> padding.PSS:
    # Glance's verifiers and older clouds expect exactly MGF1 with the data hash and max salt.
    return padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.MAX_LENGTH)


def sign_prehashed(private_key: PrivateKey, digest: bytes, spec: HashSpec) -> bytes:
    """Glance-mode signature over a digest already computed with ``spec``."""
    algorithm = spec.make()
    if isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.sign(digest, _pss(algorithm), Prehashed(algorithm))
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(digest, ec.ECDSA(Prehashed(algorithm)))
    raise UsageError(f"Glance mode cannot sign with a {type(private_key).__name__}")


def verify_prehashed(
    public_key: PublicKey, signature: bytes, digest: bytes, spec: HashSpec
) -> None:
    algorithm = spec.make()
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, digest, _pss(algorithm), Prehashed(algorithm))
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, digest, ec.ECDSA(Prehashed(algorithm)))
        elif isinstance(public_key, dsa.DSAPublicKey):
            public_key.verify(signature, digest, Prehashed(algorithm))
        else:
            raise UnknownAlgorithmError(f"{describe_key(public_key)} keys have no Glance key type")
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        raise BadSignatureError("the signature does not match the image") from None


def sign_message(private_key: PrivateKey, message: bytes, spec: HashSpec) -> bytes:
    """imgcrypt-mode signature over a (small) manifest."""
    algorithm = spec.make()
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(message)
    if isinstance(private_key, rsa.RSAPrivateKey):
        if not MIN_RSA_BITS <= private_key.key_size <= MAX_RSA_BITS:
            raise UsageError(f"RSA keys must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits")
        return private_key.sign(message, _pss(algorithm), algorithm)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        return private_key.sign(message, ec.ECDSA(algorithm))
    for _, private_type in _MLDSA.values():
        if isinstance(private_key, private_type):
            signature: bytes = private_key.sign(message, MLDSA_CONTEXT)
            return signature
    raise UsageError(f"imgcrypt mode cannot sign with a {type(private_key).__name__}")


def verify_message(public_key: PublicKey, signature: bytes, message: bytes, spec: HashSpec) -> None:
    algorithm = spec.make()
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, message, _pss(algorithm), algorithm)
        elif isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, message, ec.ECDSA(algorithm))
        elif isinstance(
            public_key, mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey
        ):
            public_key.verify(signature, message, MLDSA_CONTEXT)
        else:
            raise UnknownAlgorithmError(f"{describe_key(public_key)} keys are not supported")
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        raise BadSignatureError("the signature does not match the signed manifest") from None


def public_key_of(private_key: PrivateKey) -> PublicKey:
    public = private_key.public_key()
    return public  # type: ignore[return-value]


__all__ = [
    "GLANCE_HASHES",
    "GLANCE_KEY_TYPES",
    "GLANCE_SIGNING_KEY_TYPES",
    "IMGCRYPT_ALGORITHMS",
    "IMGCRYPT_HASHES",
    "HashSpec",
    "PrivateKey",
    "PublicKey",
    "check_hash_policy",
    "check_key_policy",
    "check_matches",
    "describe_key",
    "glance_hash",
    "glance_key_type_for",
    "imgcrypt_algorithm_for",
    "imgcrypt_hash",
    "public_key_of",
    "sign_message",
    "sign_prehashed",
    "verify_message",
    "verify_prehashed",
]

"""What imgcrypt signs and verifies with: one record per key family, and the policy over it.

Two vocabularies exist and never mix:

* Glance mode uses cursive's names (``RSA-PSS``, ``ECC_SECP384R1``, ``ECC_SECP521R1``, ``DSA``;
  ``SHA-224`` .. ``SHA-512``), because Nova parses those properties as fixed enums.
* imgcrypt mode uses its own lowercase names (``ed25519``, ``ecdsa-p256``, ``rsa-pss``,
  ``ml-dsa-65`` ...; ``sha256`` .. ``sha3-512``) under ``imgcrypt_`` properties.

Every family takes every hash of its mode (:mod:`imgcrypt.digests` holds both lists): RSA-PSS,
ECDSA and DSA sign with it, Ed25519 and ML-DSA sign the manifest whole. :func:`family_of` is the
one place that asks what type a key object is; everything else asks the family's record.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, mldsa, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from imgcrypt.digests import GLANCE_HASHES, IMGCRYPT_HASHES, HashSpec, is_legacy
from imgcrypt.errors import (
    BadSignatureError,
    UnknownAlgorithmError,
    UsageError,
    VerificationError,
    VerificationFault,
    WeakAlgorithmError,
)
from imgcrypt.legacy import legacy_dsa

#: Any public key a certificate can hold; :func:`family_of` says which imgcrypt accepts.
PublicKey: TypeAlias = CertificatePublicKeyTypes
#: Any private key ``cryptography`` loads.
PrivateKey: TypeAlias = PrivateKeyTypes

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
# Domain separation for ML-DSA: a manifest signature cannot be replayed as another protocol's.
MLDSA_CONTEXT = b"imgcrypt-manifest-v1"

# A signature scheme's calls: (key, data, hash, prehashed) -> signature, and
# (key, signature, data, hash, prehashed) -> None or an exception from `cryptography`.
Sign: TypeAlias = Callable[[Any, bytes, hashes.HashAlgorithm, bool], bytes]
Verify: TypeAlias = Callable[[Any, bytes, bytes, hashes.HashAlgorithm, bool], None]


@functools.cache
def _dsa_types() -> tuple[type[Any], type[Any]]:
    # Imported on first use: only an image, certificate or key that might be DSA gets here.
    with legacy_dsa():
        from cryptography.hazmat.primitives.asymmetric import dsa

        return dsa.DSAPublicKey, dsa.DSAPrivateKey


def _verify_dsa(key: Any, sig: bytes, data: bytes, alg: hashes.HashAlgorithm, pre: bool) -> None:
    with legacy_dsa():
        key.verify(sig, data, _hash_mode(alg, pre))


def _hash_mode(algorithm: hashes.HashAlgorithm, prehashed: bool) -> Any:
    return Prehashed(algorithm) if prehashed else algorithm


def _pss(hash_algorithm: hashes.HashAlgorithm) -> padding.PSS:
    # Glance's verifiers and older clouds expect exactly MGF1 with the data hash and max salt.
    return padding.PSS(mgf=padding.MGF1(hash_algorithm), salt_length=padding.PSS.MAX_LENGTH)


@dataclass(frozen=True)
class Scheme:
    """How one signature algorithm signs and verifies, over a digest and/or a whole message."""

    name: str
    sign: Sign | None  # None: verify-only
    verify: Verify
    prehashed: bool  # signs a digest computed elsewhere (Glance mode)
    message: bool  # signs imgcrypt's manifest (imgcrypt mode)


RSA_PSS = Scheme(
    "RSA-PSS",
    sign=lambda key, data, alg, pre: key.sign(data, _pss(alg), _hash_mode(alg, pre)),
    verify=lambda key, sig, data, alg, pre: key.verify(sig, data, _pss(alg), _hash_mode(alg, pre)),
    prehashed=True,
    message=True,
)
ECDSA = Scheme(
    "ECDSA",
    sign=lambda key, data, alg, pre: key.sign(data, ec.ECDSA(_hash_mode(alg, pre))),
    verify=lambda key, sig, data, alg, pre: key.verify(sig, data, ec.ECDSA(_hash_mode(alg, pre))),
    prehashed=True,
    message=True,
)
DSA = Scheme(  # legacy: cursive still verifies it, imgcrypt never makes it
    "DSA",
    sign=None,
    verify=_verify_dsa,
    prehashed=True,
    message=False,
)
ED25519 = Scheme(
    "Ed25519",
    sign=lambda key, data, alg, pre: key.sign(data),
    verify=lambda key, sig, data, alg, pre: key.verify(sig, data),
    prehashed=False,
    message=True,
)
ML_DSA = Scheme(
    "ML-DSA",
    sign=lambda key, data, alg, pre: key.sign(data, MLDSA_CONTEXT),
    verify=lambda key, sig, data, alg, pre: key.verify(sig, data, MLDSA_CONTEXT),
    prehashed=False,
    message=True,
)


@dataclass(frozen=True)
class KeyFamily:
    """One kind of key: its types, its names in each mode, its limits and how it signs."""

    label: str  # how messages name it: "RSA" (-2048), "EC" (secp384r1), "Ed25519", "ML-DSA-65"
    public_type: type[Any] | None  # None: `load_types` gives both types on first use
    private_type: type[Any] | None
    scheme: Scheme | None  # None: known by name only, nothing signs or verifies with it
    imgcrypt_name: str | None = None  # imgcrypt_sign_algorithm; None: not in imgcrypt mode
    glance_name: str | None = None  # img_signature_key_type; None: cursive cannot verify it
    elliptic: bool = False  # an EC key: told apart by its curve
    curve: str | None = None  # with elliptic: this curve only (None: any other curve)
    sized: bool = False  # messages give its key size ("RSA-2048")
    min_bits: int | None = None  # smaller keys are too weak to trust
    max_sign_bits: int | None = None  # imgcrypt mode signs with keys up to this size
    legacy: bool = False  # refused unless legacy algorithms are allowed
    webpki: bool = False  # `cryptography`'s Web PKI profile takes it in a certificate chain
    load_types: Callable[[], tuple[type[Any], type[Any]]] | None = None  # deprecated families

    def key_types(self) -> tuple[type[Any], ...]:
        if self.load_types is not None:
            return self.load_types()
        return tuple(t for t in (self.public_type, self.private_type) if t is not None)

    def holds(self, key: object) -> bool:
        if not isinstance(key, self.key_types()):
            return False
        return self.curve is None or key.curve.name == self.curve

    def describe(self, key: Any) -> str:
        if self.sized:
            return f"{self.label}-{key.key_size}"
        if self.elliptic:
            return f"{self.label} {key.curve.name}"
        return self.label

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name in (self.imgcrypt_name, self.glance_name) if name)


def _ecdsa(curve: ec.EllipticCurve, imgcrypt_name: str, glance_name: str | None) -> KeyFamily:
    return KeyFamily(
        "EC", ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey, ECDSA,
        imgcrypt_name=imgcrypt_name, glance_name=glance_name, elliptic=True, curve=curve.name,
        webpki=True,
    )


def _mldsa(level: int, public_type: type[Any], private_type: type[Any]) -> KeyFamily:
    return KeyFamily(f"ML-DSA-{level}", public_type, private_type, ML_DSA,
                     imgcrypt_name=f"ml-dsa-{level}")


#: Every key family, in imgcrypt's order of preference; :func:`family_of` takes the first
#: that holds a key.
FAMILIES: tuple[KeyFamily, ...] = (
    KeyFamily("Ed25519", ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey, ED25519,
              imgcrypt_name="ed25519"),
    _ecdsa(ec.SECP256R1(), "ecdsa-p256", None),
    _ecdsa(ec.SECP384R1(), "ecdsa-p384", "ECC_SECP384R1"),
    _ecdsa(ec.SECP521R1(), "ecdsa-p521", "ECC_SECP521R1"),
    # Any other curve: imgcrypt describes it and signs with it when asked, names it nowhere.
    KeyFamily("EC", ec.EllipticCurvePublicKey, ec.EllipticCurvePrivateKey, ECDSA, elliptic=True,
              webpki=True),
    KeyFamily("RSA", rsa.RSAPublicKey, rsa.RSAPrivateKey, RSA_PSS, imgcrypt_name="rsa-pss",
              glance_name="RSA-PSS", sized=True, min_bits=MIN_RSA_BITS,
              max_sign_bits=MAX_RSA_BITS, webpki=True),
    _mldsa(44, mldsa.MLDSA44PublicKey, mldsa.MLDSA44PrivateKey),
    _mldsa(65, mldsa.MLDSA65PublicKey, mldsa.MLDSA65PrivateKey),
    _mldsa(87, mldsa.MLDSA87PublicKey, mldsa.MLDSA87PrivateKey),
    KeyFamily("DSA", None, None, DSA, glance_name="DSA", sized=True, legacy=True,
              load_types=_dsa_types),
    KeyFamily("Ed448", ed448.Ed448PublicKey, ed448.Ed448PrivateKey, None),
)

_BY_NAME = {name: family for family in FAMILIES for name in family.names}
#: The algorithm names of imgcrypt mode (``imgcrypt_sign_algorithm``), in table order.
IMGCRYPT_ALGORITHMS = tuple(f.imgcrypt_name for f in FAMILIES if f.imgcrypt_name)
#: The key types Glance mode verifies (``img_signature_key_type``), DSA included.
GLANCE_KEY_TYPES = tuple(f.glance_name for f in FAMILIES if f.glance_name)
#: The key types Glance mode signs with: DSA is verify-only.
GLANCE_SIGNING_KEY_TYPES = tuple(
    f.glance_name for f in FAMILIES if f.glance_name and f.scheme and f.scheme.sign
)


def family_of(key: object) -> KeyFamily | None:
    """The family a public or private key object belongs to; None for a key imgcrypt never uses."""
    return next((family for family in FAMILIES if family.holds(key)), None)


def family_named(name: str) -> KeyFamily | None:
    """The family an ``imgcrypt_sign_algorithm`` or ``img_signature_key_type`` value names."""
    return _BY_NAME.get(name)


def _hash_named(table: dict[str, HashSpec], name: str, what: str) -> HashSpec:
    try:
        return table[name]
    except KeyError:
        raise UnknownAlgorithmError(
            f"unknown {what} {name!r}; expected one of {', '.join(table)}"
        ) from None


def glance_hash(name: str) -> HashSpec:
    """The hash an ``img_signature_hash_method`` value names (cursive's spelling)."""
    return _hash_named(GLANCE_HASHES, name, "img_signature_hash_method")


def imgcrypt_hash(name: str) -> HashSpec:
    """The hash an ``imgcrypt_sign_hash`` value names."""
    return _hash_named(IMGCRYPT_HASHES, name, "hash")


def describe_key(public_key: PublicKey) -> str:
    """A key's family and size for messages, such as ``RSA-3072``."""
    family = family_of(public_key)
    return family.describe(public_key) if family else type(public_key).__name__


def _curve_name(family: KeyFamily | None, key: Any) -> str | None:
    """An EC key's curve, which names it in refusals better than its type does."""
    return key.curve.name if family is not None and family.elliptic else None


def imgcrypt_algorithm_for(public_key: PublicKey) -> str:
    """The imgcrypt-mode algorithm name a public key signs with."""
    family = family_of(public_key)
    if family is not None and family.imgcrypt_name is not None:
        return family.imgcrypt_name
    curve = _curve_name(family, public_key)
    if curve is not None:
        raise UnknownAlgorithmError(f"curve {curve} is not supported")
    raise UnknownAlgorithmError(
        f"{describe_key(public_key)} keys are not supported in imgcrypt mode"
    )


def glance_key_type_for(public_key: PublicKey) -> str:
    """The ``img_signature_key_type`` a public key signs with in Glance mode."""
    family = family_of(public_key)
    if family is not None and family.glance_name is not None:
        return family.glance_name
    what = _curve_name(family, public_key) or type(public_key).__name__
    raise UnknownAlgorithmError(f"cursive cannot verify {what} signatures; use --mode imgcrypt")


def check_matches(label: str, public_key: PublicKey) -> None:
    """Refuse a declared key type or algorithm that is not what the key is (algorithm confusion)."""
    claimed = family_named(label)
    if claimed is None:
        raise UnknownAlgorithmError(f"unknown key type or algorithm {label!r}")
    if family_of(public_key) is not claimed:
        raise VerificationError(
            f"the signature claims {label} but the certificate holds "
            f"a {describe_key(public_key)} key",
            reason=VerificationFault.ALGORITHM_MISMATCH,
        )


def check_key_policy(public_key: PublicKey, *, allow_legacy: bool) -> None:
    """Refuse keys too weak to trust: RSA under 2048 bits, and DSA unless legacy is allowed."""
    family = family_of(public_key)
    if family is None:
        return
    if family.min_bits is not None and public_key.key_size < family.min_bits:  # type: ignore[union-attr]
        raise WeakAlgorithmError(
            f"{family.describe(public_key)} is below the {family.min_bits}-bit minimum"
        )
    if family.legacy and not allow_legacy:
        raise WeakAlgorithmError(
            f"{family.label} signatures are refused unless legacy algorithms are allowed"
        )


def check_hash_policy(algorithm: hashes.HashAlgorithm | None, *, allow_legacy: bool) -> None:
    """Refuse MD5 and SHA-1 (in certificates) unless legacy algorithms are allowed."""
    if algorithm is None or allow_legacy:
        return
    if is_legacy(algorithm):
        raise WeakAlgorithmError(f"{algorithm.name.upper()} is refused")


def _scheme_for(key: object, *, prehashed: bool) -> tuple[KeyFamily, Scheme] | None:
    """The family of ``key`` and its scheme, if that scheme works in the mode asked for."""
    family = family_of(key)
    if family is None or family.scheme is None:
        return None
    if not (family.scheme.prehashed if prehashed else family.scheme.message):
        return None
    return family, family.scheme


def _sign(private_key: PrivateKey, data: bytes, spec: HashSpec, *, prehashed: bool) -> bytes:
    found = _scheme_for(private_key, prehashed=prehashed)
    sign = found[1].sign if found is not None else None
    if found is None or sign is None:
        mode = "Glance" if prehashed else "imgcrypt"
        raise UsageError(f"{mode} mode cannot sign with a {type(private_key).__name__}")
    family = found[0]
    if not prehashed and family.max_sign_bits is not None:
        low, high = family.min_bits or 0, family.max_sign_bits
        if not low <= private_key.key_size <= high:  # type: ignore[union-attr]
            raise UsageError(f"{family.label} keys must have {low} to {high} bits")
    return sign(private_key, data, spec.make(), prehashed)


def _verify(public_key: PublicKey, signature: bytes, data: bytes, spec: HashSpec, *,
            prehashed: bool, refusal: str, mismatch: str) -> None:
    found = _scheme_for(public_key, prehashed=prehashed)
    if found is None:
        raise UnknownAlgorithmError(f"{describe_key(public_key)} {refusal}")
    try:
        found[1].verify(public_key, signature, data, spec.make(), prehashed)
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        raise BadSignatureError(mismatch) from None


def sign_prehashed(private_key: PrivateKey, digest: bytes, spec: HashSpec) -> bytes:
    """Glance-mode signature over a digest already computed with ``spec``."""
    return _sign(private_key, digest, spec, prehashed=True)


def verify_prehashed(
    public_key: PublicKey, signature: bytes, digest: bytes, spec: HashSpec
) -> None:
    """Verify a Glance-mode signature over an image digest; raises a VerificationError subclass."""
    _verify(public_key, signature, digest, spec, prehashed=True,
            refusal="keys have no Glance key type",
            mismatch="the signature does not match the image")


def sign_message(private_key: PrivateKey, message: bytes, spec: HashSpec) -> bytes:
    """imgcrypt-mode signature over a (small) manifest."""
    return _sign(private_key, message, spec, prehashed=False)


def verify_message(public_key: PublicKey, signature: bytes, message: bytes, spec: HashSpec) -> None:
    """Verify an imgcrypt-mode signature over the manifest; raises a VerificationError subclass."""
    _verify(public_key, signature, message, spec, prehashed=False,
            refusal="keys are not supported",
            mismatch="the signature does not match the signed manifest")


def public_key_of(private_key: PrivateKey) -> PublicKey:
    """The public key of a private key."""
    public = private_key.public_key()
    return public  # type: ignore[return-value]


__all__ = [
    "FAMILIES",
    "GLANCE_KEY_TYPES",
    "GLANCE_SIGNING_KEY_TYPES",
    "IMGCRYPT_ALGORITHMS",
    "KeyFamily",
    "PrivateKey",
    "PublicKey",
    "Scheme",
    "check_hash_policy",
    "check_key_policy",
    "check_matches",
    "describe_key",
    "family_named",
    "family_of",
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

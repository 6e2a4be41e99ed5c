"""Signing certificates: loading (files, bytes, key manager) and checking them.

cursive checks nothing about the certificate during verification; imgcrypt checks, at the
verification time (a clock callers can inject):

* the validity dates of the signing certificate,
* its key usage (when the extension is present it must allow digitalSignature; RFC 5280 lets an
  absent extension mean "any usage"),
* the policy: no MD5 or SHA-1 certificate signatures, no RSA under 2048 bits, no DSA, unless
  legacy algorithms are allowed,
* its extended key usage: absent, or naming code signing (or an EKU the deployment configures
  in :class:`CertificatePolicy`); a TLS-server-only certificate signs no image,
* with a trust store, a chain up to one of its certificates: every issuer a CA (basicConstraints
  cA, keyCertSign when key usage is present, path length respected), valid at that time, its
  signature correct.

One policy for every key type: ``cryptography.x509.verification`` then checks the chain (or the
certificate alone) with its Web PKI CA profile and an end-entity profile that accounts for the
usual extensions only: name constraints, unknown critical extensions, CA extended key usage,
path lengths. Its profile forbids Ed25519 and ML-DSA keys, so a chain holding one is checked as
a *shadow*: the same certificates (names, serials, dates, every extension with its criticality)
re-issued with throw-away P-256 keys, after imgcrypt verified every real signature. The
library's verdict on the shadow is its verdict on the chain's structure; nothing of its
cryptography is replaced by imgcrypt's own.

Every refusal is a :class:`~imgcrypt.errors.CertificateError` subclass (exit 4).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from imgcrypt.errors import CertificateError, CertificateFault, UsageError, WeakAlgorithmError
from imgcrypt.legacy import legacy_dsa
from imgcrypt.signing.algorithms import (
    PrivateKey,
    PublicKey,
    check_hash_policy,
    check_key_policy,
    family_of,
    public_key_of,
)

#: What certificate checks ask for the current time (:func:`utc_now` by default).
Clock = Callable[[], dt.datetime]
MAX_CERTIFICATE_BYTES = 1 << 20
MAX_BUNDLE_CERTIFICATES = 256
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----")


def utc_now() -> dt.datetime:
    """The current time, timezone-aware in UTC: the default clock of certificate checks."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class CertificatePolicy:
    """How strict certificate checks are."""

    allow_legacy: bool = False
    max_chain_depth: int = 8
    # Extended key usages that let a certificate sign images (any one suffices when the
    # extension is present; an absent extension means any usage, as RFC 5280 says).
    extended_key_usages: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.CODE_SIGNING,)


class _StoredSecret(Protocol):
    @property
    def payload(self) -> bytes | str: ...

    @property
    def secret_type(self) -> str: ...


class CertificateSource(Protocol):
    """Anything with ``get(secret_id)``: the key manager adapters of :mod:`imgcrypt.keys`."""

    def get(self, secret_id: str, /) -> _StoredSecret: ...


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, or the one DER certificate, first one first."""
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise CertificateError(f"certificate data is larger than {MAX_CERTIFICATE_BYTES} bytes",
                               reason=CertificateFault.LOAD)
    try:
        if _PEM_BLOCK.search(data):
            if len(_PEM_BLOCK.findall(data)) > MAX_BUNDLE_CERTIFICATES:
                raise CertificateError("too many certificates in one bundle",
                                       reason=CertificateFault.LOAD)
            certificates = x509.load_pem_x509_certificates(data)
        else:
            certificates = [x509.load_der_x509_certificate(data)]
    except (ValueError, x509.InvalidVersion):
        raise CertificateError("not a PEM or DER X.509 certificate",
                               reason=CertificateFault.LOAD) from None
    if not certificates:
        raise CertificateError("no certificate found", reason=CertificateFault.LOAD)
    for certificate in certificates:
        # cryptography parses names and dates lazily: a malformed one would otherwise fail
        # later, deep inside the checks, as a bare ValueError or TypeError.
        try:
            certificate.subject.rfc4514_string()
            certificate.issuer.rfc4514_string()
            _ = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        except (ValueError, TypeError):
            raise CertificateError("a certificate has a malformed name or date",
                                   reason=CertificateFault.LOAD) from None
    return certificates


def load_certificate_file(path: str | Path) -> list[x509.Certificate]:
    """The certificates of a PEM or DER file (bounded in size), as :func:`load_certificates`."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_CERTIFICATE_BYTES + 1)
    try:
        return load_certificates(data)
    except CertificateError as exc:  # LOAD, the only fault load_certificates raises
        raise CertificateError(f"{path}: {exc}", reason=CertificateFault.LOAD) from None


def certificates_from_key_manager(
    source: CertificateSource, secret_id: str
) -> list[x509.Certificate]:
    """The certificate stored as a ``certificate`` secret with this id (PEM or DER payload)."""
    secret = source.get(secret_id)
    if secret.secret_type != "certificate":  # noqa: S105 (a type name, not a password)
        raise CertificateError(
            f"secret {secret_id} is a {secret.secret_type} secret, not a certificate",
            reason=CertificateFault.WRONG_TYPE,
        )
    payload = secret.payload
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    try:
        return load_certificates(data)
    except CertificateError as exc:  # LOAD, the only fault load_certificates raises
        raise CertificateError(f"secret {secret_id}: {exc}", reason=CertificateFault.LOAD) from None


def describe(certificate: x509.Certificate) -> str:
    """A certificate's subject for messages (RFC 4514)."""
    return certificate.subject.rfc4514_string() or "(empty subject)"


def fingerprint(certificate: x509.Certificate) -> str:
    """A certificate's SHA-256 fingerprint as lowercase hex."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def _signature_hash(certificate: x509.Certificate) -> hashes.HashAlgorithm | None:
    try:
        return certificate.signature_hash_algorithm
    except UnsupportedAlgorithm:
        raise WeakAlgorithmError(
            f"{describe(certificate)} is signed with an unsupported algorithm"
        ) from None


def _check_algorithms(certificate: x509.Certificate, policy: CertificatePolicy) -> PublicKey:
    check_hash_policy(_signature_hash(certificate), allow_legacy=policy.allow_legacy)
    try:
        with legacy_dsa():
            public_key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise WeakAlgorithmError(
            f"{describe(certificate)} holds an unsupported public key"
        ) from None
    check_key_policy(public_key, allow_legacy=policy.allow_legacy)
    return public_key


def _check_dates(certificate: x509.Certificate, at: dt.datetime, role: str) -> None:
    if at < certificate.not_valid_before_utc:
        raise CertificateError(
            f"{role} {describe(certificate)} is not valid before "
            f"{certificate.not_valid_before_utc.isoformat()}",
            reason=CertificateFault.NOT_YET_VALID,
        )
    if at > certificate.not_valid_after_utc:
        raise CertificateError(
            f"{role} {describe(certificate)} expired at "
            f"{certificate.not_valid_after_utc.isoformat()}",
            reason=CertificateFault.EXPIRED,
        )


_E = TypeVar("_E", bound=x509.ExtensionType)


def _extension(certificate: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        raise CertificateError(f"{describe(certificate)} has malformed extensions",
                               reason=CertificateFault.LOAD) from None


def check_signing_certificate(
    certificate: x509.Certificate, *, at: dt.datetime, policy: CertificatePolicy
) -> PublicKey:
    """Checks on the certificate that holds the signing key; returns that key."""
    _check_dates(certificate, at, "certificate")
    public_key = _check_algorithms(certificate, policy)
    usage = _extension(certificate, x509.KeyUsage)
    if usage is not None and not usage.digital_signature:
        raise CertificateError(
            f"certificate {describe(certificate)} does not allow digitalSignature",
            reason=CertificateFault.KEY_USAGE,
        )
    _check_leaf_eku(_extension(certificate, x509.ExtendedKeyUsage), policy,
                    describe(certificate))
    return public_key


def _check_leaf_eku(eku: x509.ExtendedKeyUsage | None, policy: CertificatePolicy,
                    what: str) -> None:
    if eku is not None and not set(eku) & set(policy.extended_key_usages):
        names = ", ".join(oid.dotted_string for oid in policy.extended_key_usages)
        raise CertificateError(f"certificate {what} has no extended key usage for signing images "
                               f"(wanted one of {names})", reason=CertificateFault.KEY_USAGE)


def _check_issuer(
    issuer: x509.Certificate, *, at: dt.datetime, below: int, policy: CertificatePolicy
) -> None:
    """``below`` counts the intermediate CA certificates between ``issuer`` and the leaf."""
    constraints = _extension(issuer, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise CertificateError(f"issuer {describe(issuer)} is not a CA",
                               reason=CertificateFault.CA_CONSTRAINT)
    if constraints.path_length is not None and below > constraints.path_length:
        raise CertificateError(
            f"issuer {describe(issuer)} allows {constraints.path_length} intermediate CAs below it",
            reason=CertificateFault.CA_CONSTRAINT,
        )
    usage = _extension(issuer, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise CertificateError(f"issuer {describe(issuer)} may not sign certificates",
                               reason=CertificateFault.CA_CONSTRAINT)
    try:
        _check_dates(issuer, at, "issuer")
    except CertificateError as exc:  # expired or not yet valid, the only faults it raises
        raise CertificateError(str(exc), reason=CertificateFault.UNTRUSTED_CHAIN) from None
    _check_algorithms(issuer, policy)


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    if child.issuer != issuer.subject:
        return False
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _walk(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    *,
    at: dt.datetime,
    policy: CertificatePolicy,
) -> list[x509.Certificate]:
    chain = [leaf]
    if leaf in anchors:
        return chain
    current = leaf
    for depth in range(policy.max_chain_depth):
        issuer = next((c for c in anchors if _issued_by(current, c)), None)
        is_anchor = issuer is not None
        if issuer is None:
            issuer = next(
                (c for c in intermediates if c not in chain and _issued_by(current, c)), None
            )
        if issuer is None:
            raise CertificateError(
                f"no trusted issuer found for {describe(current)} "
                f"(issuer {current.issuer.rfc4514_string()})",
                reason=CertificateFault.UNTRUSTED_CHAIN,
            )
        _check_issuer(issuer, at=at, below=depth, policy=policy)
        chain.append(issuer)
        if is_anchor:
            return chain
        current = issuer
    raise CertificateError(f"no trusted issuer within {policy.max_chain_depth} certificates",
                           reason=CertificateFault.UNTRUSTED_CHAIN)


def _webpki_expressible(certificates: Sequence[x509.Certificate]) -> bool:
    for certificate in certificates:
        try:
            with legacy_dsa():
                key = certificate.public_key()
        except (ValueError, UnsupportedAlgorithm):
            return False
        family = family_of(key)
        if family is None or not family.webpki:
            return False
    return True


def _policies(policy: CertificatePolicy) -> tuple[verification.ExtensionPolicy,
                                                  verification.ExtensionPolicy]:
    """The library's CA profile with the signing EKUs in place of TLS client authentication,
    and an end-entity profile that accounts for the usual extensions (others, if critical,
    are refused) and wants a signing EKU when the extension is present."""
    allowed = set(policy.extended_key_usages)

    def ca_eku(_policy: object, _certificate: x509.Certificate,
               eku: x509.ExtendedKeyUsage | None) -> None:
        if eku is not None and not set(eku) & (allowed | {ANY_EKU}):
            raise ValueError("a CA's extended key usage allows no image signing")

    def leaf_eku(_policy: object, certificate: x509.Certificate,
                 eku: x509.ExtendedKeyUsage | None) -> None:
        _check_leaf_eku(eku, policy, describe(certificate))

    agnostic = verification.Criticality.AGNOSTIC
    ca = verification.ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, agnostic, ca_eku)
    ee = verification.ExtensionPolicy.permit_all().may_be_present(
        x509.ExtendedKeyUsage, agnostic, leaf_eku)
    return ca, ee


def _library_check(leaf: x509.Certificate, intermediates: Sequence[x509.Certificate],
                   anchors: Sequence[x509.Certificate], *, at: dt.datetime,
                   policy: CertificatePolicy) -> None:
    ca_policy, ee_policy = _policies(policy)
    builder = (
        verification.PolicyBuilder()
        .store(verification.Store(list(anchors)))
        .time(at)
        .max_chain_depth(policy.max_chain_depth)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
    )
    try:
        builder.build_client_verifier().verify(leaf, list(intermediates))
    except verification.VerificationError as exc:
        raise CertificateError(f"chain of {describe(leaf)} refused: {exc}",
                               reason=CertificateFault.UNTRUSTED_CHAIN) from None


ANY_EKU = ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE
_SHADOW_ANCHOR = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME,
                                               "imgcrypt shadow anchor")])


def _shadow(chain: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """``chain`` (leaf first, anchor last) re-issued with P-256 keys, everything else kept."""
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in chain]
    copies = []
    for index, certificate in enumerate(chain):
        builder = (
            x509.CertificateBuilder()
            .subject_name(certificate.subject)
            .issuer_name(certificate.issuer)
            .public_key(keys[index].public_key())
            .serial_number(certificate.serial_number)
            .not_valid_before(certificate.not_valid_before_utc)
            .not_valid_after(certificate.not_valid_after_utc)
        )
        try:
            for extension in certificate.extensions:
                builder = builder.add_extension(extension.value, extension.critical)
            signer = keys[min(index + 1, len(chain) - 1)]
            copies.append(builder.sign(signer, hashes.SHA256()))
        except (ValueError, TypeError, x509.DuplicateExtension,
                x509.UnsupportedGeneralNameType):
            raise CertificateError(
                f"{describe(certificate)} cannot be checked: its extensions are malformed",
                reason=CertificateFault.UNTRUSTED_CHAIN,
            ) from None
    return copies


def _shadow_alone(leaf: x509.Certificate) -> list[x509.Certificate]:
    """The leaf under a synthetic CA: the library's end-entity profile on it, nothing more."""
    anchor_key = ec.generate_private_key(ec.SECP256R1())
    anchor = (
        x509.CertificateBuilder().subject_name(_SHADOW_ANCHOR).issuer_name(_SHADOW_ANCHOR)
        .public_key(anchor_key.public_key()).serial_number(1)
        .not_valid_before(leaf.not_valid_before_utc).not_valid_after(leaf.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                     False), critical=True)
        .sign(anchor_key, hashes.SHA256())
    )
    shadow = _shadow([leaf, anchor])
    leaf_copy = (
        x509.CertificateBuilder().subject_name(leaf.subject).issuer_name(_SHADOW_ANCHOR)
        .public_key(shadow[0].public_key()).serial_number(leaf.serial_number)
        .not_valid_before(leaf.not_valid_before_utc).not_valid_after(leaf.not_valid_after_utc)
    )
    for extension in shadow[0].extensions:
        if not isinstance(extension.value, x509.AuthorityKeyIdentifier):
            leaf_copy = leaf_copy.add_extension(extension.value, extension.critical)
    return [leaf_copy.sign(anchor_key, hashes.SHA256()), anchor]


def check_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trust: Sequence[x509.Certificate],
    *,
    at: dt.datetime,
    policy: CertificatePolicy,
) -> list[x509.Certificate]:
    """The chain from ``leaf`` to a certificate in ``trust``, or :class:`CertificateError`
    (``UNTRUSTED_CHAIN``)."""
    if not trust:
        raise CertificateError("the trust store is empty", reason=CertificateFault.UNTRUSTED_CHAIN)
    chain = _walk(leaf, intermediates, trust, at=at, policy=policy)
    if len(chain) == 1:
        _check_alone(leaf, at=at, policy=policy)
    elif _webpki_expressible(chain) and not policy.allow_legacy:
        _library_check(leaf, intermediates, trust, at=at, policy=policy)
    else:
        shadow = _shadow(chain)
        _library_check(shadow[0], shadow[1:-1], shadow[-1:], at=at, policy=policy)
    return chain


def _check_alone(leaf: x509.Certificate, *, at: dt.datetime, policy: CertificatePolicy) -> None:
    shadow = _shadow_alone(leaf)
    _library_check(shadow[0], [], shadow[1:], at=at, policy=policy)


@dataclass(frozen=True)
class CheckedCertificate:
    """A signing certificate that passed every check, with its chain (leaf first)."""

    certificate: x509.Certificate
    public_key: PublicKey
    chain: tuple[x509.Certificate, ...]

    @property
    def subject(self) -> str:
        return describe(self.certificate)

    @property
    def fingerprint_sha256(self) -> str:
        return fingerprint(self.certificate)


def check_certificate(
    certificates: Sequence[x509.Certificate],
    *,
    trust: Sequence[x509.Certificate] | None = None,
    clock: Clock = utc_now,
    policy: CertificatePolicy | None = None,
) -> CheckedCertificate:
    """Check the signing certificate (first of ``certificates``; the rest are intermediates)."""
    if not certificates:
        raise CertificateError("no certificate given", reason=CertificateFault.LOAD)
    policy = policy or CertificatePolicy()
    at = clock()
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    leaf, intermediates = certificates[0], list(certificates[1:])
    public_key = check_signing_certificate(leaf, at=at, policy=policy)
    if trust is None:
        chain = [leaf]
        _check_alone(leaf, at=at, policy=policy)
    else:
        chain = check_chain(leaf, intermediates, trust, at=at, policy=policy)
    return CheckedCertificate(certificate=leaf, public_key=public_key, chain=tuple(chain))


def check_key_matches(certificates: Sequence[x509.Certificate], private_key: PrivateKey) -> None:
    """Refuse to sign with a key that is not the one the (first) certificate certifies: a
    verifier would then find every signature invalid."""
    with legacy_dsa():
        certified = certificates[0].public_key()
    if certified != public_key_of(private_key):
        raise UsageError("the private key does not belong to the certificate")


__all__ = [
    "CertificatePolicy",
    "CertificateSource",
    "CheckedCertificate",
    "Clock",
    "certificates_from_key_manager",
    "check_certificate",
    "check_chain",
    "check_key_matches",
    "check_signing_certificate",
    "describe",
    "fingerprint",
    "load_certificate_file",
    "load_certificates",
    "utc_now",
]

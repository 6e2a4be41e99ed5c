"""Signing certificates: loading (files, bytes, key manager) and checking them.

cursive checks nothing about the certificate during verification; imgcrypt checks, at the
verification time (a clock callers can inject):

* the validity dates of the signing certificate,
* its key usage (when the extension is present it must allow digitalSignature; RFC 5280 lets an
  absent extension mean "any usage"),
* the policy: no MD5 or SHA-1 certificate signatures, no RSA under 2048 bits, no DSA, unless
  legacy algorithms are allowed,
* with a trust store, a chain up to one of its certificates: every issuer a CA (basicConstraints
  cA, keyCertSign when key usage is present, path length respected), valid at that time, its
  signature correct. ``cryptography.x509.verification`` then checks the chain a second time
  wherever its Web PKI profile can express the chain; it forbids Ed25519 and ML-DSA keys, so
  chains holding those are checked by imgcrypt's own walk alone.

Every refusal is a :class:`~imgcrypt.signing.errors.CertificateError` subclass (exit 4).
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
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification

from imgcrypt.signing.algorithms import PublicKey, check_hash_policy, check_key_policy
from imgcrypt.signing.errors import (
    CAConstraintError,
    CertificateExpiredError,
    CertificateLoadError,
    CertificateNotYetValidError,
    KeyUsageError,
    UntrustedChainError,
    WeakAlgorithmError,
    WrongCertificateTypeError,
)

Clock = Callable[[], dt.datetime]
MAX_CERTIFICATE_BYTES = 1 << 20
MAX_BUNDLE_CERTIFICATES = 256
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class CertificatePolicy:
    """How strict certificate checks are."""

    allow_legacy: bool = False
    max_chain_depth: int = 8


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
        raise CertificateLoadError(f"certificate data is larger than {MAX_CERTIFICATE_BYTES} bytes")
    try:
        if _PEM_BLOCK.search(data):
            if len(_PEM_BLOCK.findall(data)) > MAX_BUNDLE_CERTIFICATES:
                raise CertificateLoadError("too many certificates in one bundle")
            certificates = x509.load_pem_x509_certificates(data)
        else:
            certificates = [x509.load_der_x509_certificate(data)]
    except (ValueError, x509.InvalidVersion):
        raise CertificateLoadError("not a PEM or DER X.509 certificate") from None
    if not certificates:
        raise CertificateLoadError("no certificate found")
    for certificate in certificates:
        # cryptography parses names and dates lazily: a malformed one would otherwise fail
        # later, deep inside the checks, as a bare ValueError or TypeError.
        try:
            certificate.subject.rfc4514_string()
            certificate.issuer.rfc4514_string()
            _ = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        except (ValueError, TypeError):
            raise CertificateLoadError("a certificate has a malformed name or date") from None
    return certificates


def load_certificate_file(path: str | Path) -> list[x509.Certificate]:
    with open(path, "rb") as handle:
        data = handle.read(MAX_CERTIFICATE_BYTES + 1)
    try:
        return load_certificates(data)
    except CertificateLoadError as exc:
        raise CertificateLoadError(f"{path}: {exc}") from None


def certificates_from_key_manager(
    source: CertificateSource, secret_id: str
) -> list[x509.Certificate]:
    """The certificate stored as a ``certificate`` secret with this id (PEM or DER payload)."""
    secret = source.get(secret_id)
    if secret.secret_type != "certificate":  # noqa: S105 (a type name, not a password)
        raise WrongCertificateTypeError(
            f"secret {secret_id} is a {secret.secret_type} secret, not a certificate"
        )
    payload = secret.payload
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    try:
        return load_certificates(data)
    except CertificateLoadError as exc:
        raise CertificateLoadError(f"secret {secret_id}: {exc}") from None


def describe(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "(empty subject)"


def fingerprint(certificate: x509.Certificate) -> str:
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
        public_key = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise WeakAlgorithmError(
            f"{describe(certificate)} holds an unsupported public key"
        ) from None
    check_key_policy(public_key, allow_legacy=policy.allow_legacy)
    return public_key


def _check_dates(certificate: x509.Certificate, at: dt.datetime, role: str) -> None:
    if at < certificate.not_valid_before_utc:
        raise CertificateNotYetValidError(
            f"{role} {describe(certificate)} is not valid before "
            f"{certificate.not_valid_before_utc.isoformat()}"
        )
    if at > certificate.not_valid_after_utc:
        raise CertificateExpiredError(
            f"{role} {describe(certificate)} expired at "
            f"{certificate.not_valid_after_utc.isoformat()}"
        )


_E = TypeVar("_E", bound=x509.ExtensionType)


def _extension(certificate: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        raise CertificateLoadError(f"{describe(certificate)} has malformed extensions") from None


def check_signing_certificate(
    certificate: x509.Certificate, *, at: dt.datetime, policy: CertificatePolicy
) -> PublicKey:
    """Checks on the certificate that holds the signing key; returns that key."""
    _check_dates(certificate, at, "certificate")
    public_key = _check_algorithms(certificate, policy)
    usage = _extension(certificate, x509.KeyUsage)
    if usage is not None and not usage.digital_signature:
        raise KeyUsageError(f"certificate {describe(certificate)} does not allow digitalSignature")
    return public_key


def _check_issuer(
    issuer: x509.Certificate, *, at: dt.datetime, below: int, policy: CertificatePolicy
) -> None:
    """``below`` counts the intermediate CA certificates between ``issuer`` and the leaf."""
    constraints = _extension(issuer, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise CAConstraintError(f"issuer {describe(issuer)} is not a CA")
    if constraints.path_length is not None and below > constraints.path_length:
        raise CAConstraintError(
            f"issuer {describe(issuer)} allows {constraints.path_length} intermediate CAs below it"
        )
    usage = _extension(issuer, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise CAConstraintError(f"issuer {describe(issuer)} may not sign certificates")
    try:
        _check_dates(issuer, at, "issuer")
    except (CertificateExpiredError, CertificateNotYetValidError) as exc:
        raise UntrustedChainError(str(exc)) from None
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
            raise UntrustedChainError(
                f"no trusted issuer found for {describe(current)} "
                f"(issuer {current.issuer.rfc4514_string()})"
            )
        _check_issuer(issuer, at=at, below=depth, policy=policy)
        chain.append(issuer)
        if is_anchor:
            return chain
        current = issuer
    raise UntrustedChainError(f"no trusted issuer within {policy.max_chain_depth} certificates")


def _webpki_expressible(certificates: Sequence[x509.Certificate]) -> bool:
    for certificate in certificates:
        try:
            key = certificate.public_key()
        except (ValueError, UnsupportedAlgorithm):
            return False
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            return False
    return True


def check_chain(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate],
    trust: Sequence[x509.Certificate],
    *,
    at: dt.datetime,
    policy: CertificatePolicy,
) -> list[x509.Certificate]:
    """The chain from ``leaf`` to a certificate in ``trust``, or :class:`UntrustedChainError`."""
    if not trust:
        raise UntrustedChainError("the trust store is empty")
    chain = _walk(leaf, intermediates, trust, at=at, policy=policy)
    if len(chain) > 1 and _webpki_expressible(chain):
        builder = (
            verification.PolicyBuilder()
            .store(verification.Store(list(trust)))
            .time(at)
            .max_chain_depth(policy.max_chain_depth)
            .extension_policies(
                # The leaf's usage was checked above; Web PKI's EE profile wants TLS names.
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
        )
        try:
            builder.build_client_verifier().verify(leaf, list(intermediates))
        except verification.VerificationError as exc:
            raise UntrustedChainError(f"chain of {describe(leaf)} refused: {exc}") from None
    return chain


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
        raise CertificateLoadError("no certificate given")
    policy = policy or CertificatePolicy()
    at = clock()
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    leaf, intermediates = certificates[0], list(certificates[1:])
    public_key = check_signing_certificate(leaf, at=at, policy=policy)
    chain = (
        [leaf] if trust is None else check_chain(leaf, intermediates, trust, at=at, policy=policy)
    )
    return CheckedCertificate(certificate=leaf, public_key=public_key, chain=tuple(chain))


__all__ = [
    "CertificatePolicy",
    "CertificateSource",
    "CheckedCertificate",
    "Clock",
    "certificates_from_key_manager",
    "check_certificate",
    "check_chain",
    "check_signing_certificate",
    "describe",
    "fingerprint",
    "load_certificate_file",
    "load_certificates",
    "utc_now",
]

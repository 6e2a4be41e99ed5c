"""Keys and certificates for the signing tests, made at test time with cryptography's builders.

No private key is committed: one key of each kind per session, certificates built on demand.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, padding, rsa
from cryptography.x509.oid import NameOID

from imgcrypt.legacy import legacy_dsa

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


@functools.cache
def key(kind: str) -> Any:
    """One key of each kind a session (RSA-8192 takes seconds); ``-suffix`` makes another."""
    base = kind.split("-")[0]
    if base.startswith("rsa"):
        return rsa.generate_private_key(65537, int(base[3:]))
    if base.startswith("dsa"):
        with legacy_dsa():  # a legacy Glance image's key, deprecated by cryptography 51
            from cryptography.hazmat.primitives.asymmetric import dsa

            return dsa.generate_private_key(int(base[3:]))
    curves = {"p256": ec.SECP256R1, "p384": ec.SECP384R1, "p521": ec.SECP521R1}
    if base in curves:
        return ec.generate_private_key(curves[base]())
    if base == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    mldsa_types = {
        "mldsa44": mldsa.MLDSA44PrivateKey,
        "mldsa65": mldsa.MLDSA65PrivateKey,
        "mldsa87": mldsa.MLDSA87PrivateKey,
    }
    return mldsa_types[base].generate()


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_cert(
    subject_key: Any,
    subject: str = "signer",
    *,
    issuer_key: Any = None,
    issuer: str | None = None,
    ca: bool | None = False,
    path_length: int | None = None,
    digital_signature: bool = True,
    key_cert_sign: bool | None = None,
    key_usage: bool = True,
    not_before: dt.datetime = NOW - dt.timedelta(days=30),
    not_after: dt.datetime = NOW + dt.timedelta(days=365),
    hash_algorithm: hashes.HashAlgorithm | None = None,
    pss: bool = False,
) -> x509.Certificate:
    issuer_key = issuer_key or subject_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer or subject))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if key_usage:
        cert_sign = bool(ca) if key_cert_sign is None else key_cert_sign
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=cert_sign,
                crl_sign=cert_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    kwargs: dict[str, Any] = {}
    algorithm: hashes.HashAlgorithm | None = hash_algorithm or hashes.SHA256()
    if isinstance(issuer_key, ed25519.Ed25519PrivateKey) or _is_mldsa(issuer_key):
        algorithm = None
    if pss:
        kwargs["rsa_padding"] = padding.PSS(
            mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH
        )
    return builder.sign(issuer_key, algorithm, **kwargs)


def _is_mldsa(private_key: Any) -> bool:
    return isinstance(
        private_key, mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey
    )


def cert_pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def key_pem(private_key: Any, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )

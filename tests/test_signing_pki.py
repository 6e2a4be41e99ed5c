"""Certificate loading and checks; also the key and certificate factories the signing tests share.

Keys and certificates are generated at test time with cryptography's builders; no private key
is committed.
"""

from __future__ import annotations

import datetime as dt
import functools
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, padding, rsa
from cryptography.x509.oid import NameOID

from imgcrypt.errors import CertificateError, CertificateFault, WeakAlgorithmError
from imgcrypt.keys.secret import Secret
from imgcrypt.legacy import legacy_dsa
from imgcrypt.signing import certs

from .util import raises_fault

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


def check(chain: list[x509.Certificate], trust: list[x509.Certificate] | None = None, **kw: Any):
    return certs.check_certificate(chain, trust=trust, clock=lambda: NOW, **kw)


def pki(kind: str, *, pss: bool = False, leaf_kind: str = "p384") -> dict[str, x509.Certificate]:
    """root -> intermediate -> leaf, all with keys of ``kind`` except the leaf."""
    root_key, mid_key, leaf_key = key(kind), key(kind + "-mid"), key(leaf_kind)
    root = make_cert(root_key, "root", ca=True, pss=pss)
    mid = make_cert(mid_key, "mid", issuer_key=root_key, issuer="root", ca=True, pss=pss)
    leaf = make_cert(leaf_key, "leaf", issuer_key=mid_key, issuer="mid", pss=pss)
    return {"root": root, "mid": mid, "leaf": leaf}


# --- loading ---------------------------------------------------------------------------------


def test_load_pem_bundle_and_der() -> None:
    chain = pki("p256")
    loaded = certs.load_certificates(cert_pem(chain["leaf"], chain["mid"]))
    assert loaded == [chain["leaf"], chain["mid"]]
    der = chain["leaf"].public_bytes(serialization.Encoding.DER)
    assert certs.load_certificates(der) == [chain["leaf"]]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"\x30\x03",
    ],
)
def test_load_garbage_is_a_typed_error(data: bytes) -> None:
    with raises_fault(CertificateError, CertificateFault.LOAD):
        certs.load_certificates(data)


class _Manager:
    def __init__(self, secrets: dict[str, Secret]) -> None:
        self.secrets = secrets

    def get(self, secret_id: str) -> Secret:
        return self.secrets[secret_id]


def test_from_key_manager_pem_der_and_text() -> None:
    leaf = make_cert(key("p384"))
    der = leaf.public_bytes(serialization.Encoding.DER)
    manager = _Manager(
        {
            "der": Secret(payload=der, secret_type="certificate"),
            "pem": Secret(payload=cert_pem(leaf).decode(), secret_type="certificate"),
            "sym": Secret(payload=b"\x00" * 32, secret_type="symmetric"),
        }
    )
    assert certs.certificates_from_key_manager(manager, "der") == [leaf]
    assert certs.certificates_from_key_manager(manager, "pem") == [leaf]
    with raises_fault(CertificateError, CertificateFault.WRONG_TYPE):
        certs.certificates_from_key_manager(manager, "sym")


# --- the signing certificate -----------------------------------------------------------------


def test_valid_self_signed_certificate_passes() -> None:
    leaf = make_cert(key("p384"))
    checked = check([leaf])
    assert checked.public_key == key("p384").public_key()
    assert checked.chain == (leaf,)


def test_expired_and_not_yet_valid() -> None:
    expired = make_cert(key("p384"), not_after=NOW - dt.timedelta(seconds=1))
    future = make_cert(key("p384"), not_before=NOW + dt.timedelta(seconds=1))
    with raises_fault(CertificateError, CertificateFault.EXPIRED):
        check([expired])
    with raises_fault(CertificateError, CertificateFault.NOT_YET_VALID):
        check([future])
    # The clock decides, not the wall time: the same certificate is fine a year earlier.
    certs.check_certificate([expired], clock=lambda: NOW - dt.timedelta(days=1))


def test_key_usage_without_digital_signature() -> None:
    with raises_fault(CertificateError, CertificateFault.KEY_USAGE):
        check([make_cert(key("p384"), digital_signature=False)])
    # RFC 5280: no key usage extension at all means any usage.
    check([make_cert(key("p384"), key_usage=False)])


@pytest.mark.parametrize("digest", ["sha1", "md5"])
def test_weak_certificate_signature_hash(openssl: str, tmp_path: Path, digest: str) -> None:
    # cryptography refuses to build such certificates; the openssl command line still does.
    (tmp_path / "k.pem").write_bytes(key_pem(key("rsa2048")))
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-new",
            "-key",
            str(tmp_path / "k.pem"),
            f"-{digest}",
            "-subj",
            "/CN=weak",
            "-days",
            "30",
            "-out",
            str(tmp_path / "c.pem"),
        ],
        check=True,
        capture_output=True,
    )
    leaf = certs.load_certificate_file(tmp_path / "c.pem")
    now = leaf[0].not_valid_before_utc + dt.timedelta(days=1)
    with pytest.raises(WeakAlgorithmError):
        certs.check_certificate(leaf, clock=lambda: now)
    policy = certs.CertificatePolicy(allow_legacy=True)
    certs.check_certificate(leaf, clock=lambda: now, policy=policy)


def test_small_rsa_and_dsa_refused() -> None:
    with pytest.raises(WeakAlgorithmError):
        check([make_cert(key("rsa1024"))])
    dsa_cert = make_cert(key("dsa2048"))
    with pytest.raises(WeakAlgorithmError):
        check([dsa_cert])
    check([dsa_cert], policy=certs.CertificatePolicy(allow_legacy=True))


# --- chains ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "pss"),
    [
        ("rsa2048", False),
        ("rsa2048", True),
        ("p384", False),
        ("ed25519", False),
        ("mldsa65", False),
    ],
)
def test_chain_to_trust_store(kind: str, pss: bool) -> None:
    chain = pki(kind, pss=pss)
    checked = check([chain["leaf"], chain["mid"]], trust=[chain["root"]])
    assert checked.chain == (chain["leaf"], chain["mid"], chain["root"])
    # The intermediate may be trusted directly, too.
    check([chain["leaf"]], trust=[chain["mid"]])


def test_untrusted_chain() -> None:
    chain, other = pki("p256"), pki("p384")
    with raises_fault(CertificateError, CertificateFault.UNTRUSTED_CHAIN):
        check([chain["leaf"], chain["mid"]], trust=[other["root"]])
    # the intermediate is missing
    with raises_fault(CertificateError, CertificateFault.UNTRUSTED_CHAIN):
        check([chain["leaf"]], trust=[chain["root"]])
    # a self-signed certificate not in the store
    with raises_fault(CertificateError, CertificateFault.UNTRUSTED_CHAIN):
        check([make_cert(key("p384"))], trust=[chain["root"]])


def test_self_signed_leaf_in_trust_store() -> None:
    leaf = make_cert(key("ed25519"))
    assert check([leaf], trust=[leaf]).chain == (leaf,)


def test_issuer_that_is_not_a_ca() -> None:
    root_key, mid_key = key("p256"), key("p256-mid")
    root = make_cert(root_key, "root", ca=True)
    not_ca = make_cert(mid_key, "mid", issuer_key=root_key, issuer="root", ca=False)
    leaf = make_cert(key("p384"), "leaf", issuer_key=mid_key, issuer="mid")
    with raises_fault(CertificateError, CertificateFault.CA_CONSTRAINT):
        check([leaf, not_ca], trust=[root])


def test_issuer_without_key_cert_sign_and_path_length() -> None:
    root_key, mid_key = key("ed25519"), key("ed25519-mid")
    root = make_cert(root_key, "root", ca=True, path_length=0)
    mid = make_cert(mid_key, "mid", issuer_key=root_key, issuer="root", ca=True)
    leaf = make_cert(key("p384"), "leaf", issuer_key=mid_key, issuer="mid")
    # root allows no intermediate CA below it
    with raises_fault(CertificateError, CertificateFault.CA_CONSTRAINT):
        check([leaf, mid], trust=[root])
    root2 = make_cert(root_key, "root", ca=True, key_cert_sign=False)
    leaf2 = make_cert(key("p384"), "leaf", issuer_key=root_key, issuer="root")
    with raises_fault(CertificateError, CertificateFault.CA_CONSTRAINT):
        check([leaf2], trust=[root2])


def test_expired_intermediate_is_an_untrusted_chain() -> None:
    root_key, mid_key = key("p256"), key("p256-mid")
    root = make_cert(root_key, "root", ca=True)
    mid = make_cert(
        mid_key, "mid", issuer_key=root_key, issuer="root", ca=True, not_after=NOW - dt.timedelta(1)
    )
    leaf = make_cert(key("p384"), "leaf", issuer_key=mid_key, issuer="mid")
    with raises_fault(CertificateError, CertificateFault.UNTRUSTED_CHAIN):
        check([leaf, mid], trust=[root])

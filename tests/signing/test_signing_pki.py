"""Certificate loading and checks (the key and certificate factories are in tests/helpers/pki.py).

Keys and certificates are generated at test time with cryptography's builders; no private key
is committed.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from imgcrypt.errors import CertificateError, CertificateFault, WeakAlgorithmError
from imgcrypt.keys.secret import Secret
from imgcrypt.signing import certs
from tests.helpers.pki import NOW, cert_pem, key, key_pem, make_cert
from tests.helpers.util import raises_fault


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

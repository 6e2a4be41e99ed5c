"""Glance mode against the real verifier (cursive) and against signatures openssl makes."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509 import Certificate

from imgcrypt.errors import (
    BadSignatureError,
    UnknownAlgorithmError,
    UsageError,
    VerificationError,
    VerificationFault,
    WeakAlgorithmError,
)
from imgcrypt.signing import certs, glance
from imgcrypt.signing.stream import feed_file, feed_iterable
from tests.helpers.pki import NOW, key, key_pem, make_cert
from tests.helpers.util import raises_fault

IMAGE = os.urandom(3 * 1024 * 1024 + 17)
UUID = "4c1a3c6e-2f1e-4d8e-9a57-0a4c3e1f9b21"
GLANCE_KEYS = ["rsa2048", "rsa3072", "rsa4096", "rsa8192", "p384", "p521"]
HASHES = ["SHA-224", "SHA-256", "SHA-384", "SHA-512"]


def chunks(data: bytes, size: int = 65536) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def checked(kind: str, **kw: Any) -> certs.CheckedCertificate:
    return certs.check_certificate([make_cert(key(kind), **kw)], clock=lambda: NOW)


def sign(kind: str, hash_method: str = "SHA-256", data: bytes = IMAGE) -> dict[str, str]:
    signer = glance.GlanceSigner(key(kind), certificate_uuid=UUID, hash_method=hash_method)
    return feed_iterable(signer, chunks(data))


class _CastellanCertificate:
    """What castellan's key manager returns for an X.509 certificate secret."""

    format = "X.509"

    def __init__(self, certificate: Certificate) -> None:
        self._der = certificate.public_bytes(serialization.Encoding.DER)

    def get_encoded(self) -> bytes:
        return self._der


class _KeyManager:
    def __init__(self, store: dict[str, Certificate]) -> None:
        self.store = store

    def get(self, context: Any, managed_object_id: str) -> _CastellanCertificate:
        return _CastellanCertificate(self.store[managed_object_id])


@pytest.fixture
def cursive_with(monkeypatch: pytest.MonkeyPatch):
    """cursive's real verification, its key manager handing out our certificate."""
    from cursive import signature_utils

    def install(certificate: Certificate) -> Any:
        manager = _KeyManager({UUID: certificate})
        monkeypatch.setattr(signature_utils.key_manager, "API", lambda *a, **k: manager)
        return signature_utils

    return install


def cursive_verify(signature_utils: Any, properties: dict[str, str], data: bytes) -> None:
    verifier = signature_utils.get_verifier(
        context=None,
        img_signature_certificate_uuid=properties["img_signature_certificate_uuid"],
        img_signature_hash_method=properties["img_signature_hash_method"],
        img_signature=properties["img_signature"],
        img_signature_key_type=properties["img_signature_key_type"],
    )
    for chunk in chunks(data):
        verifier.update(chunk)
    verifier.verify()


@pytest.mark.parametrize("hash_method", HASHES)
@pytest.mark.parametrize("kind", GLANCE_KEYS)
def test_cursive_verifies_what_imgcrypt_signs(
    cursive_with: Any, kind: str, hash_method: str
) -> None:
    certificate = make_cert(key(kind))
    utils = cursive_with(certificate)
    properties = sign(kind, hash_method)
    assert set(properties) == set(glance.KEYS)
    assert "\n" not in properties["img_signature"]
    cursive_verify(utils, properties, IMAGE)
    # ... and rejects the same signature over one changed byte: the check is real.
    from cryptography.exceptions import InvalidSignature

    tampered = bytearray(IMAGE)
    tampered[12345] ^= 1
    with pytest.raises(InvalidSignature):
        cursive_verify(utils, properties, bytes(tampered))
    result = feed_iterable(glance.GlanceVerifier(properties, checked(kind)), chunks(IMAGE))
    assert result.algorithm == properties["img_signature_key_type"]


@pytest.mark.parametrize(
    ("kind", "length"), [("rsa2048", 344), ("rsa3072", 512), ("rsa4096", 684), ("rsa8192", 1368)]
)
def test_rsa_signature_lengths_are_what_glance_stores(kind: str, length: int) -> None:
    # Over 255 characters: documented, and the reason imgcrypt mode exists.
    assert len(sign(kind)["img_signature"]) == length


@pytest.mark.parametrize(("kind", "limit"), [("p384", 140), ("p521", 188)])
def test_ecdsa_signatures_fit_255(kind: str, limit: int) -> None:
    for _ in range(5):
        assert len(sign(kind)["img_signature"]) <= limit


@pytest.mark.parametrize("kind", ["p256", "ed25519", "mldsa44", "rsa1024"])
def test_glance_mode_refuses_keys_cursive_cannot_verify(kind: str) -> None:
    with pytest.raises(UsageError):
        glance.GlanceSigner(key(kind), certificate_uuid=UUID)


def test_glance_needs_certificate_uuid() -> None:
    with pytest.raises(UsageError):
        glance.GlanceSigner(key("p384"), certificate_uuid="")


def test_dsa_is_verify_only_and_legacy_only(cursive_with: Any) -> None:
    dsa_key = key("dsa2048")
    digest = hashes.Hash(hashes.SHA256())
    digest.update(IMAGE)
    signature = dsa_key.sign(digest.finalize(), Prehashed(hashes.SHA256()))
    properties = {
        "img_signature": base64.b64encode(signature).decode(),
        "img_signature_hash_method": "SHA-256",
        "img_signature_key_type": "DSA",
        "img_signature_certificate_uuid": UUID,
    }
    certificate = make_cert(dsa_key)
    cursive_verify(cursive_with(certificate), properties, IMAGE)
    legacy = certs.CertificatePolicy(allow_legacy=True)
    dsa_checked = certs.check_certificate([certificate], clock=lambda: NOW, policy=legacy)
    verifier = glance.GlanceVerifier(properties, dsa_checked, allow_legacy=True)
    feed_iterable(verifier, [IMAGE])
    with pytest.raises(WeakAlgorithmError):
        glance.GlanceVerifier(properties, dsa_checked)
    with pytest.raises(UsageError):
        glance.GlanceSigner(dsa_key, certificate_uuid=UUID)


# --- openssl signs, imgcrypt verifies --------------------------------------------------------


def openssl_sign(openssl: str, tmp_path: Path, kind: str, digest: str, *sigopts: str) -> str:
    (tmp_path / "key.pem").write_bytes(key_pem(key(kind)))
    (tmp_path / "image").write_bytes(IMAGE)
    options = [part for opt in sigopts for part in ("-sigopt", opt)]
    subprocess.run(
        [
            openssl,
            "dgst",
            f"-{digest}",
            "-sign",
            str(tmp_path / "key.pem"),
            *options,
            "-out",
            str(tmp_path / "sig"),
            str(tmp_path / "image"),
        ],
        check=True,
        capture_output=True,
    )
    return base64.b64encode((tmp_path / "sig").read_bytes()).decode()


def props(signature: str, hash_method: str, key_type: str) -> dict[str, str]:
    return {
        "img_signature": signature,
        "img_signature_hash_method": hash_method,
        "img_signature_key_type": key_type,
        "img_signature_certificate_uuid": UUID,
    }


@pytest.mark.parametrize("digest", ["sha224", "sha256", "sha384", "sha512"])
@pytest.mark.parametrize("kind", ["rsa2048", "rsa4096"])
def test_openssl_rsa_pss_max_salt(openssl: str, tmp_path: Path, kind: str, digest: str) -> None:
    signature = openssl_sign(
        openssl, tmp_path, kind, digest, "rsa_padding_mode:pss", "rsa_pss_saltlen:max"
    )
    hash_method = "SHA-" + digest[3:]
    verifier = glance.GlanceVerifier(props(signature, hash_method, "RSA-PSS"), checked(kind))
    feed_file(verifier, tmp_path / "image")


@pytest.mark.parametrize("digest", ["sha256", "sha384", "sha512"])
@pytest.mark.parametrize(
    ("kind", "key_type"), [("p384", "ECC_SECP384R1"), ("p521", "ECC_SECP521R1")]
)
def test_openssl_ecdsa(openssl: str, tmp_path: Path, kind: str, key_type: str, digest: str) -> None:
    signature = openssl_sign(openssl, tmp_path, kind, digest)
    verifier = glance.GlanceVerifier(props(signature, "SHA-" + digest[3:], key_type), checked(kind))
    feed_file(verifier, tmp_path / "image")
    (tmp_path / "image").write_bytes(IMAGE[:-1])
    verifier = glance.GlanceVerifier(props(signature, "SHA-" + digest[3:], key_type), checked(kind))
    with pytest.raises(BadSignatureError):
        feed_file(verifier, tmp_path / "image")


@pytest.mark.parametrize("saltlen", ["max", "digest", "0", "20"])
def test_salt_lengths_refused_exactly_where_cursive_refuses(
    openssl: str, tmp_path: Path, cursive_with: Any, saltlen: str
) -> None:
    from cryptography.exceptions import InvalidSignature

    signature = openssl_sign(
        openssl, tmp_path, "rsa2048", "sha256", "rsa_padding_mode:pss", f"rsa_pss_saltlen:{saltlen}"
    )
    properties = props(signature, "SHA-256", "RSA-PSS")
    try:
        cursive_verify(cursive_with(make_cert(key("rsa2048"))), properties, IMAGE)
        cursive_accepts = True
    except InvalidSignature:
        cursive_accepts = False
    try:
        feed_iterable(glance.GlanceVerifier(properties, checked("rsa2048")), [IMAGE])
        imgcrypt_accepts = True
    except BadSignatureError:
        imgcrypt_accepts = False
    assert imgcrypt_accepts == cursive_accepts
    if saltlen == "max":
        assert imgcrypt_accepts


# --- tampering -------------------------------------------------------------------------------


def verify(properties: dict[str, str], data: bytes = IMAGE, kind: str = "p384") -> None:
    feed_iterable(glance.GlanceVerifier(properties, checked(kind)), chunks(data))


def test_flipped_truncated_extended_and_swapped_certificate() -> None:
    properties = sign("p384")
    flipped = bytearray(IMAGE)
    flipped[-1] ^= 0x80
    for data in (bytes(flipped), IMAGE[:-1], IMAGE + b"\0"):
        with pytest.raises(BadSignatureError):
            verify(properties, data)
    with pytest.raises(BadSignatureError):
        verify(properties, kind="p384-other")


@pytest.mark.parametrize(
    ("change", "error", "reason"),
    [
        ({"img_signature_key_type": "ECC_SECP521R1"}, VerificationError,
         VerificationFault.ALGORITHM_MISMATCH),
        ({"img_signature_key_type": "RSA-PSS"}, VerificationError,
         VerificationFault.ALGORITHM_MISMATCH),
        ({"img_signature_key_type": "DSA"}, WeakAlgorithmError, None),
        ({"img_signature_key_type": "ECC_SECP256R1"}, UnknownAlgorithmError, None),
        ({"img_signature_hash_method": "MD5"}, UnknownAlgorithmError, None),
        ({"img_signature_hash_method": "SHA-512"}, BadSignatureError, None),
        ({"img_signature": "not base64!"}, VerificationError,
         VerificationFault.MALFORMED_SIGNATURE),
        ({"img_signature": ""}, VerificationError, VerificationFault.MALFORMED_SIGNATURE),
    ],
)
def test_property_tampering(change: dict[str, str], error: type[VerificationError],
                            reason: VerificationFault | None) -> None:
    with pytest.raises(error) as err:
        verify({**sign("p384"), **change})
    assert type(err.value) is error and err.value.reason is reason


@pytest.mark.parametrize("missing", glance.KEYS)
def test_missing_property(missing: str) -> None:
    properties = sign("p384")
    del properties[missing]
    with raises_fault(VerificationError, VerificationFault.MISSING_PROPERTY):
        verify(properties)

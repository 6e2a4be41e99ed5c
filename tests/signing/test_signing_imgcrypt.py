"""imgcrypt mode: every algorithm, size-safe values, bound properties, tampering, streaming."""

from __future__ import annotations

import base64
import itertools
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from imgcrypt.errors import (
    BadSignatureError,
    UnknownAlgorithmError,
    UsageError,
    VerificationError,
    VerificationFault,
)
from imgcrypt.signing import certs, glance, imgcrypt_mode, storage
from imgcrypt.signing.manifest import BOUND_PROPERTIES, SIGNATURE_NAME, Manifest, bound_values
from imgcrypt.signing.stream import feed_file, feed_iterable
from imgcrypt.signing.verify import ImageVerifier
from tests.helpers.pki import NOW, key, make_cert
from tests.helpers.util import raises_fault

IMAGE = os.urandom(2 * 1024 * 1024 + 3)
BOUND = {
    "disk_format": "raw",
    "container_format": "bare",
    "os_encrypt_format": "LUKSv1",
    "os_encrypt_key_id": "0b6a1a3e-3b0c-4c55-8e1a-6a3b0c7a1e11",
    "os_encrypt_key_deletion_policy": "on_image_deletion",
    "os_decrypt_size": "1073741824",
    "os_decrypt_container_format": "bare",
}
ALGORITHMS = {
    "ed25519": "ed25519",
    "p256": "ecdsa-p256",
    "p384": "ecdsa-p384",
    "p521": "ecdsa-p521",
    "rsa2048": "rsa-pss",
    "rsa3072": "rsa-pss",
    "rsa4096": "rsa-pss",
    "rsa8192": "rsa-pss",
    "mldsa44": "ml-dsa-44",
    "mldsa65": "ml-dsa-65",
    "mldsa87": "ml-dsa-87",
}
HASHES = ["sha256", "sha384", "sha512", "sha3-256", "sha3-384", "sha3-512"]


def chunks(data: bytes, size: int = 1 << 16) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def checked(kind: str) -> certs.CheckedCertificate:
    return certs.check_certificate([make_cert(key(kind))], clock=lambda: NOW)


def sign(kind: str = "p384", data: bytes = IMAGE, **kw: Any) -> dict[str, str]:
    kw.setdefault("properties", BOUND)
    signer = imgcrypt_mode.ImgcryptSigner(key(kind), **kw)
    return feed_iterable(signer, chunks(data))


def verify(properties: dict[str, str], data: bytes = IMAGE, kind: str = "p384") -> Any:
    return feed_iterable(ImageVerifier(properties, checked(kind)), chunks(data))


@pytest.mark.parametrize("limit", [storage.MIN_MAX_LENGTH, 100, 255])
@pytest.mark.parametrize("kind", list(ALGORITHMS))
def test_every_algorithm_round_trips_within_the_limit(kind: str, limit: int) -> None:
    properties = sign(kind, max_value_length=limit, certificate_uuid="c" * 36)
    assert max(len(v) for v in properties.values()) <= limit
    assert all(k.startswith("imgcrypt_sign_") or k in BOUND for k in properties)
    assert not any(k.startswith("img_signature") for k in properties)
    result = verify(properties, kind=kind)
    (scheme,) = result.schemes
    assert scheme.scheme == "imgcrypt"
    assert scheme.algorithm == ALGORITHMS[kind]
    assert scheme.digest.size == len(IMAGE)


@pytest.mark.parametrize("hash_name", HASHES)
@pytest.mark.parametrize("kind", ["ed25519", "p256", "rsa2048", "mldsa65"])
def test_every_hash(kind: str, hash_name: str) -> None:
    import hashlib

    result = verify(sign(kind, hash_name=hash_name), kind=kind)
    expected = hashlib.new(hash_name.replace("-", "_"), IMAGE).hexdigest()
    assert result.schemes[0].digest.hex == expected


def test_signature_sizes_as_documented() -> None:
    for kind, length in [("ed25519", 88), ("mldsa44", 3228), ("mldsa65", 4412), ("mldsa87", 6172)]:
        properties = sign(kind)
        joined = storage.join_value(SIGNATURE_NAME, properties)
        assert len(joined) == length


@settings(max_examples=25, deadline=None)
@given(data=st.binary(max_size=5000), cuts=st.lists(st.integers(0, 5000), max_size=8))
def test_chunking_does_not_matter(data: bytes, cuts: list[int]) -> None:
    properties = sign("ed25519", data=data)
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    pieces = [data[a:b] for a, b in itertools.pairwise(points)]
    verifier = ImageVerifier(properties, checked("ed25519"))
    assert feed_iterable(verifier, pieces).size == len(data)


def test_file_helper(tmp_path: Path) -> None:
    (tmp_path / "image").write_bytes(IMAGE)
    signer = imgcrypt_mode.ImgcryptSigner(key("p256"), properties=BOUND)
    properties = feed_file(signer, tmp_path / "image", chunk_size=10000)
    assert feed_file(ImageVerifier(properties, checked("p256")), tmp_path / "image").size == len(
        IMAGE
    )


# --- tampering -------------------------------------------------------------------------------


def test_flipped_byte() -> None:
    tampered = bytearray(IMAGE)
    tampered[len(IMAGE) // 2] ^= 4
    with pytest.raises(BadSignatureError):
        verify(sign(), bytes(tampered))


@pytest.mark.parametrize("data", [IMAGE[:-1], IMAGE + b"\0", IMAGE[: 1 << 20]])
def test_truncated_or_extended_stream(data: bytes) -> None:
    with raises_fault(VerificationError, VerificationFault.SIGNED_SIZE_MISMATCH):
        verify(sign(), data)


@pytest.mark.parametrize("name", BOUND_PROPERTIES)
def test_changed_added_or_removed_bound_property(name: str) -> None:
    properties = sign()
    for change in ("changed", "removed"):
        tampered = dict(properties)
        if change == "removed" or name not in BOUND:
            tampered.pop(name, None)
            if name not in BOUND:
                tampered[name] = "added"
        else:
            tampered[name] = tampered[name] + "x"
        with raises_fault(VerificationError, VerificationFault.BOUND_PROPERTY_MISMATCH):
            verify(tampered)


def test_swapping_the_key_id_under_a_recomputed_hint_is_still_refused() -> None:
    properties = sign()
    tampered = {**properties, "os_encrypt_key_id": "ffffffff-3b0c-4c55-8e1a-6a3b0c7a1e11"}
    from imgcrypt.signing.manifest import BOUND_DIGEST_KEY, bound_digest

    tampered[BOUND_DIGEST_KEY] = bound_digest(bound_values(tampered))
    with pytest.raises(BadSignatureError):
        verify(tampered)


def test_swapped_certificate() -> None:
    with pytest.raises(BadSignatureError):
        verify(sign("p384"), kind="p384-other")


@pytest.mark.parametrize(
    ("change", "error", "reason"),
    [
        ({"imgcrypt_sign_algorithm": "ecdsa-p256"}, VerificationError,
         VerificationFault.ALGORITHM_MISMATCH),
        ({"imgcrypt_sign_algorithm": "ed25519"}, VerificationError,
         VerificationFault.ALGORITHM_MISMATCH),
        ({"imgcrypt_sign_algorithm": "rsa-pss"}, VerificationError,
         VerificationFault.ALGORITHM_MISMATCH),
        ({"imgcrypt_sign_algorithm": "ed448"}, UnknownAlgorithmError, None),
        ({"imgcrypt_sign_hash": "sha384"}, BadSignatureError, None),
        ({"imgcrypt_sign_hash": "md5"}, UnknownAlgorithmError, None),
        ({"imgcrypt_sign_version": "2"}, UnknownAlgorithmError, None),
        ({"imgcrypt_sign_size": "-1"}, VerificationError, VerificationFault.MALFORMED_SIGNATURE),
        ({"imgcrypt_sign_size": "12"}, VerificationError, VerificationFault.SIGNED_SIZE_MISMATCH),
        ({"imgcrypt_sign_bound_sha256": "x"}, VerificationError,
         VerificationFault.BOUND_PROPERTY_MISMATCH),
    ],
)
def test_property_tampering(change: dict[str, str], error: type[VerificationError],
                            reason: VerificationFault | None) -> None:
    with pytest.raises(error) as err:
        verify({**sign(), **change})
    assert type(err.value) is error and err.value.reason is reason


@pytest.mark.parametrize(
    "missing", ["imgcrypt_sign_algorithm", "imgcrypt_sign_hash", "imgcrypt_sign_size"]
)
def test_missing_property(missing: str) -> None:
    properties = sign()
    del properties[missing]
    with raises_fault(VerificationError, VerificationFault.MISSING_PROPERTY):
        verify(properties)


def test_missing_and_reordered_signature_parts() -> None:
    properties = sign("mldsa44", max_value_length=255)
    with raises_fault(VerificationError, VerificationFault.MISSING_PART):
        verify({k: v for k, v in properties.items() if k != f"{SIGNATURE_NAME}_3"}, kind="mldsa44")
    swapped = dict(properties)
    swapped[f"{SIGNATURE_NAME}_2"], swapped[f"{SIGNATURE_NAME}_5"] = (
        properties[f"{SIGNATURE_NAME}_5"],
        properties[f"{SIGNATURE_NAME}_2"],
    )
    with raises_fault(VerificationError, VerificationFault.REORDERED_PART):
        verify(swapped, kind="mldsa44")


def test_no_signature_at_all() -> None:
    with raises_fault(VerificationError, VerificationFault.MISSING_PROPERTY):
        verify(dict(BOUND))


def test_both_schemes_are_verified() -> None:
    properties = {
        **sign("p384"),
        **feed_iterable(glance.GlanceSigner(key("p384"), certificate_uuid="u"), [IMAGE]),
    }
    result = verify(properties)
    assert [s.scheme for s in result.schemes] == ["imgcrypt", "glance"]
    broken = {**properties, "img_signature_hash_method": "SHA-512"}
    with pytest.raises(BadSignatureError):
        verify(broken)


# --- signer refusals -------------------------------------------------------------------------


def test_signer_refusals() -> None:
    with pytest.raises(UsageError):  # not a bound property
        imgcrypt_mode.ImgcryptSigner(key("p384"), properties={"hw_machine_type": "q35"})
    with pytest.raises(UsageError):  # algorithm does not match the key
        imgcrypt_mode.ImgcryptSigner(key("p384"), algorithm="ed25519")
    with pytest.raises(UsageError):
        imgcrypt_mode.ImgcryptSigner(key("rsa1024"))
    with pytest.raises(UsageError):
        imgcrypt_mode.ImgcryptSigner(key("dsa2048"))
    with pytest.raises(UnknownAlgorithmError):
        imgcrypt_mode.ImgcryptSigner(key("p384"), hash_name="sha1")
    with pytest.raises(UsageError):
        imgcrypt_mode.ImgcryptSigner(key("p384"), max_value_length=10)


# --- the manifest signature checked by openssl -----------------------------------------------


@pytest.mark.parametrize("kind", ["p256", "rsa2048", "ed25519"])
def test_openssl_verifies_the_manifest_signature(openssl: str, tmp_path: Path, kind: str) -> None:
    import hashlib

    properties = sign(kind)
    signature = base64.b64decode(storage.join_value(SIGNATURE_NAME, properties))
    manifest = Manifest(
        ALGORITHMS[kind], "sha256", hashlib.sha256(IMAGE).digest(), len(IMAGE), bound_values(BOUND)
    )
    (tmp_path / "manifest").write_bytes(manifest.to_bytes())
    (tmp_path / "sig").write_bytes(signature)
    (tmp_path / "pub.pem").write_bytes(
        key(kind)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    files = {n: str(tmp_path / n) for n in ("manifest", "sig", "pub.pem")}
    if kind == "ed25519":
        command = [
            openssl,
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            files["pub.pem"],
            "-rawin",
            "-in",
            files["manifest"],
            "-sigfile",
            files["sig"],
        ]
    else:
        pss = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:max"]
        command = [
            openssl,
            "dgst",
            "-sha256",
            "-verify",
            files["pub.pem"],
            *(pss if kind.startswith("rsa") else []),
            "-signature",
            files["sig"],
            files["manifest"],
        ]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Verified OK" in done.stdout or "Signature Verified Successfully" in done.stdout

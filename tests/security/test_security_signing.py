"""Signature attacks on top of the signing suite: algorithm confusion, a certificate swapped
in the key manager, duplicate property keys, and hostile property files through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fuzz import seeds, targets
from imgcrypt.errors import CertificateError, CertificateFault, VerificationError, VerificationFault
from tests.helpers.util import raises_fault


def _checked(cert: object) -> object:
    from imgcrypt.signing import check_certificate

    return check_certificate([cert], clock=targets._now)  # type: ignore[list-item]


def _verify(props: dict[str, str], cert: object, image: bytes = seeds.IMAGE) -> None:
    from imgcrypt.signing import ImageVerifier

    verifier = ImageVerifier(props, _checked(cert))  # type: ignore[arg-type]
    verifier.update(image)
    verifier.finalize()


@pytest.mark.parametrize("label", ["RSA-PSS", "ECC_SECP521R1", "DSA"])
def test_glance_key_type_that_does_not_match_the_key(label: str) -> None:
    from imgcrypt.errors import WeakAlgorithmError

    props = dict(seeds.glance_properties(), img_signature_key_type=label)
    if label == "DSA":
        with pytest.raises(WeakAlgorithmError):
            _verify(props, seeds.p384_certificate())
        return
    with raises_fault(VerificationError, VerificationFault.ALGORITHM_MISMATCH):
        _verify(props, seeds.p384_certificate())


@pytest.mark.parametrize("label", ["ecdsa-p384", "rsa-pss", "ml-dsa-65", "ecdsa-p256"])
def test_imgcrypt_algorithm_that_does_not_match_the_key(label: str) -> None:
    props = dict(seeds.imgcrypt_properties(), imgcrypt_sign_algorithm=label)
    with raises_fault(VerificationError, VerificationFault.ALGORITHM_MISMATCH):
        _verify(props, seeds.ed25519_certificate())


def test_unknown_labels_are_refused() -> None:
    from imgcrypt.errors import UnknownAlgorithmError

    with pytest.raises(UnknownAlgorithmError):
        _verify(dict(seeds.glance_properties(), img_signature_key_type="ECC_SECT571K1"),
                seeds.p384_certificate())
    with pytest.raises(UnknownAlgorithmError):
        _verify(dict(seeds.imgcrypt_properties(), imgcrypt_sign_algorithm="none"),
                seeds.ed25519_certificate())


def test_signature_from_one_scheme_under_the_other_key() -> None:
    """The Glance signature checked against the Ed25519 certificate: mismatch, not success."""
    with raises_fault(VerificationError, VerificationFault.ALGORITHM_MISMATCH):
        _verify(seeds.glance_properties(), seeds.ed25519_certificate())


def test_certificate_swapped_in_the_key_manager(tmp_path: Path) -> None:
    """An attacker re-signs a changed image with their own key and points the certificate id
    at their own certificate in the key manager. Without a trust anchor that verifies (as with
    cursive); with one, it is refused. The honest certificate swapped for another under the
    honest properties fails the signature."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from imgcrypt.errors import BadSignatureError
    from imgcrypt.keys.local import LocalKeyStore
    from imgcrypt.keys.secret import Secret
    from imgcrypt.signing import (
        ImageVerifier,
        ImgcryptSigner,
        certificates_from_key_manager,
        check_certificate,
    )

    store = LocalKeyStore(tmp_path / "ks")
    pem = serialization.Encoding.PEM
    honest_id = store.store(Secret(seeds.ed25519_certificate().public_bytes(pem),
                                   secret_type="certificate"))
    attacker_key = ed25519.Ed25519PrivateKey.generate()
    attacker_cert = seeds._certificate(attacker_key, "imgcrypt fuzz ed25519")  # same subject
    attacker_id = store.store(Secret(attacker_cert.public_bytes(pem), secret_type="certificate"))

    evil_image = seeds.IMAGE + b"backdoor"
    signer = ImgcryptSigner(attacker_key, properties={"os_encrypt_format": "LUKSv1"},
                            certificate_uuid=attacker_id, max_value_length=64)
    signer.update(evil_image)
    evil = signer.finalize()

    fetched = certificates_from_key_manager(store, evil["imgcrypt_sign_certificate_uuid"])
    unanchored = ImageVerifier(evil, check_certificate(fetched, clock=targets._now))
    unanchored.update(evil_image)
    unanchored.finalize()  # no trust anchor: only says "signed by whoever holds that cert"
    with raises_fault(CertificateError, CertificateFault.UNTRUSTED_CHAIN):
        check_certificate(fetched, trust=[seeds.ed25519_certificate()], clock=targets._now)

    honest = dict(seeds.imgcrypt_properties(), imgcrypt_sign_certificate_uuid=honest_id)
    swapped = certificates_from_key_manager(store, attacker_id)
    verifier = ImageVerifier(honest, check_certificate(swapped, clock=targets._now))
    verifier.update(seeds.IMAGE)
    with pytest.raises(BadSignatureError):
        verifier.finalize()


def test_duplicate_property_keys_are_refused() -> None:
    from imgcrypt.signing.propfile import parse_properties

    props = seeds.glance_properties()
    text = json.dumps(props)[:-1] + ', "img_signature_hash_method": "SHA-224"}'
    with raises_fault(VerificationError, VerificationFault.DUPLICATE_PROPERTY):
        parse_properties(text.encode())


def _cli_verify(tmp_path: Path, document: bytes) -> tuple[int, str]:
    from cryptography.hazmat.primitives import serialization

    from tests.helpers.util import imgcrypt

    image = tmp_path / "image.raw"
    image.write_bytes(seeds.IMAGE)
    cert = tmp_path / "cert.pem"
    cert.write_bytes(seeds.ed25519_certificate().public_bytes(serialization.Encoding.PEM))
    props = tmp_path / "props.json"
    props.write_bytes(document)
    proc = imgcrypt("verify", image, "--properties", props, "--cert", cert)
    return proc.returncode, proc.stderr.decode()


def test_cli_duplicate_keys(tmp_path: Path) -> None:
    text = json.dumps(seeds.imgcrypt_properties())[:-1] + ', "imgcrypt_sign_size": "1"}'
    code, stderr = _cli_verify(tmp_path, text.encode())
    assert code == 4 and stderr.count("\n") == 1 and "more than once" in stderr


def test_cli_accepts_the_honest_signature(tmp_path: Path) -> None:
    code, stderr = _cli_verify(tmp_path, json.dumps(seeds.imgcrypt_properties()).encode())
    assert code == 0, stderr


def test_cli_property_file_with_a_huge_integer(tmp_path: Path) -> None:
    document = json.dumps(seeds.imgcrypt_properties())[:-1] + ', "n": ' + "1" * 5000 + "}"
    code, stderr = _cli_verify(tmp_path, document.encode())
    assert code == 4 and stderr.count("\n") == 1 and "Traceback" not in stderr

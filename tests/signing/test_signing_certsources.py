"""Which certificate checks which signature scheme (imgcrypt.signing.verify.open_verifier):
--cert / --cert-id / the ids the properties name / --glance-cert(-id) / --trust(-id), with the
certificates in a real local keystore."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from imgcrypt.errors import CertificateError, UsageError, VerificationError
from imgcrypt.keys.local import LocalKeyStore
from imgcrypt.keys.secret import Secret
from imgcrypt.signing import glance, imgcrypt_mode
from imgcrypt.signing.certs import describe
from imgcrypt.signing.verify import CertificateSources, open_verifier
from tests.helpers.pki import NOW, cert_pem, key, make_cert

IMAGE = b"an image\n" * 1000
CERT_A = make_cert(key("p384"), "signer-a")
CERT_B = make_cert(key("p384-b"), "signer-b")


class _Keystore:
    """The real local keystore, counting how often the verifier asks for it."""

    def __init__(self, directory: Path) -> None:
        self.store = LocalKeyStore(directory)
        self.opened = 0
        self.id_a = self.store.store(Secret(payload=cert_pem(CERT_A), secret_type="certificate"))
        self.id_b = self.store.store(Secret(payload=cert_pem(CERT_B), secret_type="certificate"))

    def __call__(self) -> LocalKeyStore:
        self.opened += 1
        return self.store


@pytest.fixture
def keystore(tmp_path: Path) -> _Keystore:
    return _Keystore(tmp_path / "keys")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    paths = {}
    for label, certificate in (("a", CERT_A), ("b", CERT_B)):
        path = tmp_path / f"{label}.pem"
        path.write_bytes(cert_pem(certificate))
        paths[label] = str(path)
    return paths


def _both_schemes(id_a: str, id_b: str) -> dict[str, str]:
    """imgcrypt scheme signed by A (naming id_a), Glance scheme by B (naming id_b)."""
    properties: dict[str, str] = {}
    for signer in (imgcrypt_mode.ImgcryptSigner(key("p384"), certificate_uuid=id_a),
                   glance.GlanceSigner(key("p384-b"), certificate_uuid=id_b)):
        signer.update(IMAGE)
        properties.update(signer.finalize())
    return properties


def _glance_only(certificate_uuid: str) -> dict[str, str]:
    signer = glance.GlanceSigner(key("p384"), certificate_uuid=certificate_uuid)
    signer.update(IMAGE)
    return signer.finalize()


def _verify(properties: dict[str, str], sources: CertificateSources, keystore: _Keystore,
            at: dt.datetime = NOW) -> str:
    verifier = open_verifier(properties, sources, key_manager=keystore, clock=lambda: at)
    verifier.update(IMAGE)
    result = verifier.finalize()
    return result.certificate_subject


def test_the_ids_the_properties_name_give_each_scheme_its_certificate(
        keystore: _Keystore) -> None:
    properties = _both_schemes(keystore.id_a, keystore.id_b)
    assert _verify(properties, CertificateSources(), keystore) == describe(CERT_A)
    assert keystore.opened == 2  # the signing certificate, then the Glance scheme's own


def test_a_given_certificate_never_vouches_for_a_glance_signature_naming_another(
        keystore: _Keystore, files: dict[str, str]) -> None:
    properties = _both_schemes(keystore.id_a, keystore.id_b)
    with pytest.raises(UsageError, match=r"^both signature schemes are present and name "
                                         r"different certificates"):
        _verify(properties, CertificateSources(cert_file=files["a"]), keystore)
    with pytest.raises(UsageError, match="name different certificates"):
        _verify(properties, CertificateSources(cert_id=keystore.id_a), keystore)
    assert _verify(properties, CertificateSources(cert_file=files["a"],
                                                  glance_cert_file=files["b"]),
                   keystore) == describe(CERT_A)
    assert _verify(properties, CertificateSources(cert_id=keystore.id_a,
                                                  glance_cert_id=keystore.id_b),
                   keystore) == describe(CERT_A)
    # The Glance certificate given for the wrong scheme: B does not check A's signature.
    with pytest.raises(VerificationError):
        _verify(properties, CertificateSources(cert_file=files["a"],
                                               glance_cert_file=files["a"]), keystore)


def test_one_certificate_serves_both_schemes_when_both_name_it(
        keystore: _Keystore, files: dict[str, str]) -> None:
    properties: dict[str, str] = {}
    for signer in (imgcrypt_mode.ImgcryptSigner(key("p384"), certificate_uuid=keystore.id_a),
                   glance.GlanceSigner(key("p384"), certificate_uuid=keystore.id_a)):
        signer.update(IMAGE)
        properties.update(signer.finalize())
    assert _verify(properties, CertificateSources(cert_file=files["a"]), keystore) == \
        describe(CERT_A)
    assert keystore.opened == 0


def test_certificates_from_files_need_no_key_manager(
        keystore: _Keystore, files: dict[str, str]) -> None:
    assert _verify(_glance_only("anything"), CertificateSources(cert_file=files["a"],
                                                                trust_files=(files["a"],)),
                   keystore) == describe(CERT_A)
    assert keystore.opened == 0


def test_the_signing_certificate_comes_from_the_id_the_properties_name(
        keystore: _Keystore) -> None:
    assert _verify(_glance_only(keystore.id_a), CertificateSources(), keystore) == \
        describe(CERT_A)
    # An explicit id wins over the named one.
    with pytest.raises(VerificationError):
        _verify(_glance_only(keystore.id_a), CertificateSources(cert_id=keystore.id_b),
                keystore)


def test_no_certificate_anywhere_is_a_usage_error(keystore: _Keystore) -> None:
    properties = _glance_only(keystore.id_a)
    del properties[glance.CERT_UUID_KEY]
    with pytest.raises(UsageError, match=r"^no certificate: give --cert or --cert-id$"):
        _verify(properties, CertificateSources(), keystore)
    assert keystore.opened == 0


def test_trust_and_clock_reach_every_check(keystore: _Keystore, files: dict[str, str]) -> None:
    properties = _both_schemes(keystore.id_a, keystore.id_b)
    sources = CertificateSources(trust_ids=(keystore.id_a, keystore.id_b))
    assert _verify(properties, sources, keystore) == describe(CERT_A)
    # B alone trusted: A's chain fails; A alone trusted: the Glance scheme's B fails.
    for trusted in ((keystore.id_b,), (keystore.id_a,)):
        with pytest.raises(CertificateError):
            _verify(properties, CertificateSources(trust_ids=trusted), keystore)
    with pytest.raises(CertificateError):
        _verify(properties, CertificateSources(trust_files=(files["b"],)), keystore)
    with pytest.raises(CertificateError):
        _verify(properties, CertificateSources(), keystore, at=NOW + dt.timedelta(days=400))

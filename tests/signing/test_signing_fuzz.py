"""Hostile input to every signing parser yields an imgcrypt error, never a bare exception."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from imgcrypt.errors import ImgcryptError, VerificationError, VerificationFault
from imgcrypt.signing import certs, imgcrypt_mode
from imgcrypt.signing.keyfile import load_private_key
from imgcrypt.signing.propfile import dump_properties, parse_properties
from imgcrypt.signing.stream import feed_iterable
from imgcrypt.signing.verify import ImageVerifier
from tests.helpers.pki import NOW, cert_pem, key, make_cert
from tests.helpers.util import raises_fault

FUZZ = settings(max_examples=200, deadline=None)
IMAGE = b"image bytes " * 100
CERT = make_cert(key("p384"))


@FUZZ
@given(st.dictionaries(st.text(max_size=30), st.text(max_size=60), max_size=20))
def test_property_documents_round_trip(properties: dict[str, str]) -> None:
    assert parse_properties(dump_properties(properties)) == properties


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_property_parser_on_garbage(data: bytes) -> None:
    try:
        parse_properties(data)
    except VerificationError as exc:
        assert exc.reason in (VerificationFault.MALFORMED_PROPERTIES,
                              VerificationFault.DUPLICATE_PROPERTY), exc


@pytest.mark.parametrize(
    "document",
    [b"[]", b'{"a": 1}', b'{"a": {"b": "c"}}', b"[" * 100000 + b"]" * 100000, b"\xff"],
)
def test_property_parser_refusals(document: bytes) -> None:
    with raises_fault(VerificationError, VerificationFault.MALFORMED_PROPERTIES):
        parse_properties(document)


def test_duplicate_keys() -> None:
    with raises_fault(VerificationError, VerificationFault.DUPLICATE_PROPERTY):
        parse_properties(b'{"img_signature": "a", "img_signature": "b"}')


@FUZZ
@given(st.binary(max_size=2000))
def test_certificate_loader_on_garbage(data: bytes) -> None:
    try:
        certs.load_certificates(data)
    except ImgcryptError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_certificate_loader_on_damaged_certificates(data: st.DataObject) -> None:
    pem = bytearray(cert_pem(CERT))
    der = bytearray(CERT.public_bytes(serialization.Encoding.DER))
    blob = data.draw(st.sampled_from([pem, der]))
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    try:
        loaded = certs.load_certificates(bytes(blob))
        certs.check_certificate(loaded, clock=lambda: NOW, trust=loaded)
    except ImgcryptError:
        pass


@FUZZ
@given(st.binary(max_size=500), st.none() | st.binary(max_size=20))
def test_private_key_loader_on_garbage(data: bytes, passphrase: bytes | None) -> None:
    try:
        load_private_key(data, passphrase)
    except ImgcryptError:
        pass


def _signed() -> dict[str, str]:
    signer = imgcrypt_mode.ImgcryptSigner(key("p384"), max_value_length=64)
    return feed_iterable(signer, [IMAGE])


SIGNED = _signed()
GLANCE_KEYS = [
    "img_signature",
    "img_signature_hash_method",
    "img_signature_key_type",
    "img_signature_certificate_uuid",
]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(sorted(SIGNED) + GLANCE_KEYS + ["imgcrypt_sign_signature_01"]),
        st.text(max_size=80) | st.sampled_from(sorted(SIGNED.values())),
        max_size=12,
    ),
    st.booleans(),
)
def test_verifier_on_hostile_properties(changes: dict[str, str], start_empty: bool) -> None:
    properties = dict(changes) if start_empty else {**SIGNED, **changes}
    checked = certs.check_certificate([make_cert(key("p384"))], clock=lambda: NOW)
    try:
        feed_iterable(ImageVerifier(properties, checked), [IMAGE])
    except ImgcryptError:
        pass


def test_signed_fixture_is_valid() -> None:
    checked = certs.check_certificate([make_cert(key("p384"))], clock=lambda: NOW)
    feed_iterable(ImageVerifier(SIGNED, checked), [IMAGE])
    assert json.loads(dump_properties(SIGNED)) == SIGNED

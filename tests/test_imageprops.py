"""The property names imgcrypt knows and the reader of image records (imgcrypt.imageprops),
checked on the documents the image service and the openstack client really produce."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import assume, given
from hypothesis import strategies as st

from imgcrypt.errors import FormatError, VerificationError, VerificationFault
from imgcrypt.imageprops import (
    ENCRYPTION_NAMES,
    drop_bound_as_absent,
    image_show_properties,
    known_property,
    unknown_properties,
    upload_properties,
)
from imgcrypt.keys.properties import encryption_properties
from imgcrypt.signing.imgcrypt_mode import ImgcryptSigner
from imgcrypt.signing.propfile import MAX_DOCUMENT_BYTES, dump_properties, parse_properties

from .util import raises_fault

MALFORMED = VerificationFault.MALFORMED_PROPERTIES

# The shape of `openstack image show -f json` for an encrypted, signed image (Glance v2 record
# plus the client's nested "properties" object).
IMAGE_SHOW = {
    "checksum": None, "container_format": "bare", "created_at": "2026-11-29T10:00:00Z",
    "disk_format": "raw", "file": "/v2/images/0f3e/file", "id": "0f3e", "min_disk": 0,
    "min_ram": 0, "name": "vm1", "owner": "p1", "protected": False, "size": 2101248,
    "status": "active", "tags": [], "visibility": "private",
    "properties": {
        "os_encrypt_format": "luks", "os_encrypt_key_id": "5f0c", "os_decrypt_size": "1048576",
        "img_signature_hash_method": "SHA-256", "os_hidden": False,
        "owner_specified.openstack.md5": "", "stores": "fs",
    },
}


def test_an_image_show_record_becomes_flat_strings() -> None:
    flat = image_show_properties(json.dumps(IMAGE_SHOW).encode())
    assert flat["os_encrypt_key_id"] == "5f0c"
    assert flat["img_signature_hash_method"] == "SHA-256"
    assert flat["size"] == "2101248" and flat["min_disk"] == "0"  # integers as strings
    for left_out in ("checksum", "protected", "tags", "os_hidden"):  # null, bool, list
        assert left_out not in flat
    assert unknown_properties(flat) == []  # record fields and client-owned names


def test_a_name_given_twice_is_refused() -> None:
    with raises_fault(VerificationError, VerificationFault.DUPLICATE_PROPERTY,
                      match="more than once"):
        image_show_properties(b'{"os_encrypt_key_id": "a", "os_encrypt_key_id": "b"}')


def test_a_name_with_two_values_across_the_record_is_refused() -> None:
    record = {"os_encrypt_key_id": "a", "properties": {"os_encrypt_key_id": "b"}}
    with raises_fault(VerificationError, MALFORMED, match="two values"):
        image_show_properties(json.dumps(record).encode())


@pytest.mark.parametrize("value", [1.5, ["x"], {"x": "y"}, True])
def test_a_property_imgcrypt_reads_must_be_a_string_or_an_integer(value: object) -> None:
    with raises_fault(VerificationError, MALFORMED, match="not a string"):
        image_show_properties(json.dumps({"img_signature": value}).encode())


@pytest.mark.parametrize("data", [b"[]", b"\xff", b"{", b"1" * 5000])
def test_what_is_no_json_object_is_refused(data: bytes) -> None:
    with raises_fault(VerificationError, MALFORMED):
        image_show_properties(data)


def test_the_names_imgcrypt_writes_are_known_and_others_reported() -> None:
    assert all(known_property(name) for name in ENCRYPTION_NAMES)
    assert known_property("imgcrypt_sign_signature_12")
    assert not known_property("imgcrypt_sign_signature_0")  # numbering starts at 1
    assert unknown_properties({"hw_disk_bus": "virtio", "disk_format": "raw"}) == ["hw_disk_bus"]


@given(st.dictionaries(st.text(), st.text(), max_size=20))
def test_a_document_imgcrypt_writes_reads_back_the_same(properties: dict[str, str]) -> None:
    assert image_show_properties(dump_properties(properties)) == properties


def _signature(bound: dict[str, str]) -> dict[str, str]:
    """The properties 'imgcrypt sign --mode imgcrypt' writes for an image, binding ``bound``."""
    signer = ImgcryptSigner(ed25519.Ed25519PrivateKey.generate(), properties=bound)
    signer.update(b"image bytes")
    signed: dict[str, str] = signer.finalize()
    return signed


def _image() -> dict[str, str]:
    return {"disk_format": "raw", "container_format": "bare",
            **encryption_properties("5f0c0000-0000-4000-8000-000000000000", 1, 1 << 20)}


def test_what_an_imgcrypt_signature_binds_as_absent_is_left_out() -> None:
    """Signed without the encryption properties (no --bind): attaching them would make the
    signature fail, so they are left out, and only they."""
    image = _image()
    signature = _signature({"disk_format": "raw", "container_format": "bare"})
    absent = drop_bound_as_absent(image, signature, "sig.json")
    assert absent and set(absent) == set(_image()) - {"disk_format", "container_format"}
    assert image == {"disk_format": "raw", "container_format": "bare"}


def test_what_an_imgcrypt_signature_binds_is_kept() -> None:
    image = _image()
    bound = dict(image)
    assert drop_bound_as_absent(image, _signature(bound), "sig.json") == []
    assert image == bound


def test_a_signature_binding_other_values_is_refused() -> None:
    image = _image()
    signature = _signature({"disk_format": "qcow2", "container_format": "bare"})
    with pytest.raises(FormatError, match=r"sig\.json binds other values"):
        drop_bound_as_absent(image, signature, "sig.json")
    assert image == _image()  # nothing dropped on the way


def test_a_glance_signature_binds_nothing() -> None:
    image = _image()
    assert drop_bound_as_absent(image, {"img_signature": "c2ln"}, "sig.json") == []
    assert image == _image()


# Every reader of property documents starts from one strict loader: the same bytes get the
# same verdict whether sign --bind, verify --properties or upload --properties reads them.
READERS = [parse_properties, image_show_properties, upload_properties]
REFUSED = [
    (b'{"a": "1", "a": "2"}', VerificationFault.DUPLICATE_PROPERTY),
    (b'{"properties": {"a": "1", "a": "1"}}', VerificationFault.DUPLICATE_PROPERTY),
    (b"[]", MALFORMED), (b"\xff", MALFORMED), (b"{", MALFORMED), (b"1" * 5000, MALFORMED),
    (b" " * (MAX_DOCUMENT_BYTES + 1), MALFORMED),
]


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
@pytest.mark.parametrize(("data", "reason"), REFUSED, ids=lambda v: repr(v)[:24])
def test_every_reader_refuses_the_same_documents(
        reader: Callable[[bytes], dict[str, str]], data: bytes, reason: VerificationFault) -> None:
    with raises_fault(VerificationError, reason):
        reader(data)


def test_upload_takes_sign_output_and_the_properties_json_wrapper() -> None:
    flat = {"os_encrypt_key_id": "5f0c", "os_decrypt_size": "1048576"}
    assert upload_properties(dump_properties(flat)) == flat
    assert upload_properties(json.dumps({"properties": flat, "image": "x"}).encode()) == flat
    with raises_fault(VerificationError, MALFORMED, match="not a string"):
        upload_properties(b'{"os_decrypt_size": 1048576}')


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=8))
def test_upload_properties_round_trip(properties: dict[str, str]) -> None:
    assume(not isinstance(properties.get("properties"), dict))
    assert upload_properties(dump_properties(properties)) == properties
    assert parse_properties(dump_properties(properties)) == properties

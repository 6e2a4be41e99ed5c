"""The property names imgcrypt knows and the reader of image records (imgcrypt.imageprops),
checked on the documents the image service and the openstack client really produce."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import assume, given
from hypothesis import strategies as st

from imgcrypt.errors import (
    FormatError,
    UsageError,
    VerificationError,
    VerificationFault,
    WrongPassphraseError,
)
from imgcrypt.imageprops import (
    ENCRYPTION_NAMES,
    MAX_SIGNATURE_DOCUMENT,
    attach_properties,
    bound_properties,
    check_attachable,
    drop_bound_as_absent,
    image_show_properties,
    known_property,
    merge_signature,
    payload_size,
    signature_document,
    unknown_properties,
    upload_properties,
)
from imgcrypt.keys.properties import encryption_properties
from imgcrypt.luks.unlock import read_header
from imgcrypt.signing.imgcrypt_mode import ImgcryptSigner
from imgcrypt.signing.manifest import BOUND_PROPERTIES
from imgcrypt.signing.propfile import MAX_DOCUMENT_BYTES, dump_properties, parse_properties
from tests.helpers.util import raises_fault

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


# -- what 'imgcrypt properties' attaches (check_attachable, signature_document, merge_signature,
# payload_size) ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["", "SHA-256", "a.b_c:d+e/f=g-h", "0b6c1c6e-5a3a"])
def test_shell_safe_values_are_attachable(value: str) -> None:
    check_attachable("img_signature", value, "doc")


@pytest.mark.parametrize("value", ["x --public", "abc*", "a'b", "SHA-256\n--public", "$(id)",
                                   "a;b", "é", "a\tb", "~root"])
def test_values_a_shell_would_split_or_glob_are_refused(value: str) -> None:
    with pytest.raises(FormatError, match=r"^doc: the value of img_signature has characters "
                                          r"outside letters, digits and \._:\+/=-$"):
        check_attachable("img_signature", value, "doc")


@given(st.text(alphabet=st.sampled_from("aZ09._:+/=- \t\n'\"*?[]$`;&|<>(){}~#!\\é"),
               max_size=20))
def test_an_attachable_value_is_one_shell_word(value: str) -> None:
    """Accepted exactly when nothing in it means anything to a shell: no split, no glob, no
    expansion, no quoting."""
    try:
        check_attachable("img_signature", value, "doc")
        accepted = True
    except FormatError:
        accepted = False
    assert accepted == all(c.isascii() and (c.isalnum() or c in "._:+/=-") for c in value)


def test_unknown_names_are_not_attachable() -> None:
    with pytest.raises(FormatError, match=r"^doc sets 'unknown_name', not a property"):
        check_attachable("unknown_name", "abc", "doc")


def test_a_signature_document_is_read_strictly_with_its_own_messages() -> None:
    good = {"img_signature_hash_method": "SHA-256", "img_signature": "abc="}
    assert signature_document(json.dumps(good).encode(), "sig.json") == good
    cases = [
        (b'{"img_signature": "a", "img_signature": "a"}',
         "sig.json sets 'img_signature' more than once"),
        (b"[]", "sig.json is not a flat JSON object of strings"),
        (b'{"img_signature": 1}', "sig.json is not a flat JSON object of strings"),
        (b"{", "sig.json is not a JSON object of properties"),
        (b"\xff", "sig.json is not a JSON object of properties"),
        (b'{"unknown_name": "a"}', "sig.json sets 'unknown_name', not a property imgcrypt knows"),
        (b" " * (MAX_SIGNATURE_DOCUMENT + 1), "sig.json is too large for a properties file"),
    ]
    for data, message in cases:
        with pytest.raises(FormatError) as info:
            signature_document(data, "sig.json")
        assert str(info.value) == message


KEY_ID = "0b6c1c6e-5a3a-4c1e-9d3f-2f5b1a7c9e11"


def test_merge_signature_refuses_a_conflict_and_reports_what_it_drops() -> None:
    image = {"disk_format": "raw", "img_signature_hash_method": "SHA-256"}
    merge_signature(image, {"img_signature": "abc="}, "sig.json")
    assert image["img_signature"] == "abc="
    with pytest.raises(FormatError, match=r"^sig.json sets img_signature_hash_method "
                                          r"differently from the image$"):
        merge_signature(image, {"img_signature_hash_method": "SHA-512"}, "sig.json")
    # An imgcrypt-mode signature that binds os_decrypt_size as absent: it is left out, and said.
    signer = ImgcryptSigner(ed25519.Ed25519PrivateKey.generate())
    signer.update(b"image")
    signature = signer.finalize()
    properties = encryption_properties(KEY_ID, 1, 5, "on_image_deletion")
    dropped: list[list[str]] = []
    merge_signature(properties, signature, "sig.json", dropped=dropped.append)
    assert dropped == [[n for n in BOUND_PROPERTIES if n in
                        encryption_properties(KEY_ID, 1, 5, "on_image_deletion")]]
    assert dropped[0] and not set(dropped[0]) & set(properties)


@pytest.mark.parametrize("luks_type", ["luks1", "luks2"])
def test_payload_size_is_what_cryptsetup_puts_after_the_header(
        cryptsetup: str, tmp_path: Path, luks_type: str) -> None:
    image = tmp_path / "disk.luks"
    image.write_bytes(bytes(20 << 20))
    key = tmp_path / "key"
    key.write_bytes(b"passphrase")
    subprocess.run([cryptsetup, "luksFormat", "--batch-mode", "--type", luks_type,
                    "--key-file", str(key), "--pbkdf-force-iterations", "1000",
                    *(["--pbkdf", "pbkdf2"] if luks_type == "luks2" else []), str(image)],
                   check=True, capture_output=True)
    dump = subprocess.run([cryptsetup, "luksDump", str(image)], check=True,
                          capture_output=True, text=True).stdout
    if luks_type == "luks1":
        offset = int(re.search(r"Payload offset:\s*(\d+)", dump).group(1)) * 512  # type: ignore[union-attr]
    else:
        offset = int(re.search(r"offset:\s*(\d+) \[bytes\]", dump).group(1))  # type: ignore[union-attr]
    expected = (20 << 20) - offset
    with open(image, "rb") as f:
        header, region = read_header(f)
        assert payload_size(header, f, len(region)) == expected
    # Through a pipe, read in pieces: the same figure.
    proc = subprocess.Popen(["cat", str(image)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    header, region = read_header(proc.stdout)
    assert payload_size(header, proc.stdout, len(region)) == expected
    proc.stdout.close()
    assert proc.wait() == 0


def test_bound_properties_keeps_only_what_a_signature_binds() -> None:
    encryption = encryption_properties(KEY_ID, 1, 5, "on_image_deletion")
    document = {**encryption, "img_signature": "abc=", "disk_format": "raw"}
    bound = bound_properties(dump_properties(document))
    assert bound == {k: v for k, v in document.items() if k in BOUND_PROPERTIES}
    assert bound and "img_signature" not in bound
    with raises_fault(VerificationError, VerificationFault.DUPLICATE_PROPERTY):
        bound_properties(b'{"os_decrypt_size": "1", "os_decrypt_size": "1"}')


def _luks1_image(cryptsetup: str, directory: Path, passphrase: bytes) -> tuple[Path, int]:
    """A LUKS1 image cryptsetup made, and the payload bytes luksDump says follow its header."""
    image = directory / "disk.luks"
    image.write_bytes(bytes(6 << 20))
    key = directory / "key"
    key.write_bytes(passphrase)
    subprocess.run([cryptsetup, "luksFormat", "--batch-mode", "--type", "luks1", "--key-file",
                    str(key), "--pbkdf-force-iterations", "1000", str(image)],
                   check=True, capture_output=True)
    dump = subprocess.run([cryptsetup, "luksDump", str(image)], check=True,
                          capture_output=True, text=True).stdout
    found = re.search(r"Payload offset:\s*(\d+)", dump)
    assert found is not None
    return image, (6 << 20) - int(found.group(1)) * 512


def test_attach_properties_of_a_luks_image_the_key_opens(cryptsetup: str, tmp_path: Path) -> None:
    image, payload = _luks1_image(cryptsetup, tmp_path, b"open sesame")
    asked: list[int] = []

    def open_key(passphrase: bytes = b"open sesame") -> tuple[str, bytes]:
        asked.append(1)
        return KEY_ID, passphrase

    def attach(size: int | str | None = "payload", key: Callable[[], tuple[str, bytes]] = open_key,
               key_id: str | None = KEY_ID) -> dict[str, str]:
        with open(image, "rb") as f:
            return attach_properties(f, image="disk.luks", key_id=key_id, open_key=key,
                                     size=size, deletion_policy="on_image_deletion")

    assert attach() == {"disk_format": "raw", "container_format": "bare",
                        **encryption_properties(KEY_ID, 1, payload, "on_image_deletion")}
    assert attach(size=4096)["os_decrypt_size"] == "4096"
    # The header records the payload in whole sectors, not the plaintext: no size, no guess.
    with pytest.raises(UsageError, match=rf"does not record its plaintext size \(the payload "
                       rf"is {payload} bytes.*give --size BYTES"):
        attach(size=None)
    assert attach(size=payload)["os_decrypt_size"] == str(payload)
    for size in (payload + 1, -1):
        with pytest.raises(UsageError) as info:
            attach(size=size)
        assert str(info.value) == f"--size {size} does not fit the payload of {payload} bytes"
    with pytest.raises(WrongPassphraseError) as wrong:
        attach(key=lambda: ("other-id", b"wrong"))
    assert str(wrong.value) == "key other-id does not open disk.luks"
    asked.clear()
    with pytest.raises(UsageError, match=r"^IMAGE is encrypted: give --key-id"):
        attach(key_id=None)
    assert asked == []  # no key manager asked for a key that was not named


def test_attach_properties_of_a_plain_image_and_a_broken_header(tmp_path: Path) -> None:
    def never() -> tuple[str, bytes]:
        raise AssertionError("the key was fetched")

    def attach(data: bytes, key_id: str | None) -> dict[str, str]:
        path = tmp_path / "img"
        path.write_bytes(data)
        with open(path, "rb") as f:
            return attach_properties(f, image="img", key_id=key_id, open_key=never, size=None,
                                     deletion_policy="on_image_deletion")

    assert attach(bytes(8192), None) == {"disk_format": "raw", "container_format": "bare"}
    with pytest.raises(FormatError, match=r"^img is not a LUKS image, yet a key id was given$"):
        attach(bytes(8192), KEY_ID)
    # A LUKS magic over garbage: refused as a header before any key is fetched.
    with pytest.raises(FormatError):
        attach(b"LUKS\xba\xbe\x00\x01" + b"\xff" * 8192, KEY_ID)

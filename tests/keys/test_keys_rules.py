"""Secret values, the passphrase rule, spec checks, image properties and the deletion policy."""

from __future__ import annotations

import binascii
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgcrypt.errors import FormatError, UnusableSecretError, UsageError, UsageFault
from imgcrypt.keys.local import LocalKeyStore
from imgcrypt.keys.manager import Consumer, KeyOrder, SecretInfo
from imgcrypt.keys.properties import encryption_properties, parse_encrypt_format
from imgcrypt.keys.rules import (
    DeletionOutcome,
    apply_deletion_policy,
    check_secret,
    consumers_of,
    generate_secret,
    generation_order,
    luks_passphrase_text,
    passphrase_for,
    secret_from_payload,
)
from imgcrypt.keys.secret import SECRET_TYPES, EncryptionSpec, KeySizeMeaning, Secret
from tests.helpers.util import raises_fault

# Private, public and certificate secrets are PEM documents (tests/keys/test_keys_osbrick.py).
NON_PASSPHRASE = [t for t in SECRET_TYPES if t in ("symmetric", "opaque")]
payloads = st.binary(min_size=1, max_size=128)


# -- passphrase_for -------------------------------------------------------------------------------


@settings(max_examples=200)
@given(payload=payloads, secret_type=st.sampled_from(NON_PASSPHRASE))
def test_non_passphrase_secrets_become_lowercase_hex(payload: bytes, secret_type: str) -> None:
    result = passphrase_for(Secret(payload=payload, secret_type=secret_type))
    assert result == binascii.hexlify(payload)
    assert result == payload.hex().encode("ascii")
    assert result == result.lower()
    assert len(result) == 2 * len(payload)


@settings(max_examples=200)
@given(payload=payloads)
def test_passphrase_bytes_are_used_as_is(payload: bytes) -> None:
    secret = Secret(payload=payload, secret_type="passphrase")
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(UnusableSecretError):  # os-brick decodes it as UTF-8 and fails
            passphrase_for(secret)
    else:
        assert passphrase_for(secret) == payload


@settings(max_examples=200)
@given(text=st.text(min_size=1, max_size=64))
def test_text_payload_is_utf8(text: str) -> None:
    assert passphrase_for(Secret(payload=text, secret_type="passphrase")) == text.encode("utf-8")
    assert passphrase_for(Secret(payload=text, secret_type="symmetric")) == binascii.hexlify(
        text.encode("utf-8")
    )


def test_no_guessing_by_content() -> None:
    # A symmetric key that happens to look like hex text is still hexlified, and a passphrase
    # that looks like hex is never decoded.
    hexlike = b"00112233445566778899aabbccddeeff"
    assert passphrase_for(Secret(payload=hexlike)) == binascii.hexlify(hexlike)
    assert passphrase_for(Secret(payload=hexlike, secret_type="passphrase")) == hexlike
    assert len(passphrase_for(Secret(payload=bytes(32)))) == 64


# -- Secret ---------------------------------------------------------------------------------------


@settings(max_examples=100)
@given(payload=st.binary(min_size=8, max_size=64), secret_type=st.sampled_from(SECRET_TYPES))
def test_repr_and_str_never_show_the_payload(payload: bytes, secret_type: str) -> None:
    secret = Secret(payload=payload, secret_type=secret_type, secret_id="x", name="n")
    for text in (repr(secret), str(secret)):
        assert repr(payload) not in text
        assert payload.hex() not in text
        assert binascii.b2a_base64(payload, newline=False).decode() not in text


def test_repr_hides_text_payload() -> None:
    secret = Secret(payload="correct horse battery staple", secret_type="passphrase")
    assert "horse" not in repr(secret) and "horse" not in str(secret)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"payload": b"x", "secret_type": "bogus"},
        {"payload": 12},
        {"payload": b"x", "bit_length": 0},
        {"payload": b"x", "bit_length": True},
    ],
)
def test_secret_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        Secret(**kwargs)  # type: ignore[arg-type]


def test_secret_info_requires_id() -> None:
    with pytest.raises(UsageError):
        SecretInfo.of(Secret(payload=b"x"))


# -- EncryptionSpec and check_secret --------------------------------------------------------------


def spec(key_size: int = 512, meaning: KeySizeMeaning = KeySizeMeaning.WHOLE_XTS_KEY,
         cipher: str = "aes-xts-plain64") -> EncryptionSpec:
    return EncryptionSpec("luks", cipher, key_size, meaning, "front-end")


def key(**overrides: object) -> Secret:
    values: dict[str, object] = {
        "payload": bytes(range(64)), "secret_type": "symmetric", "algorithm": "AES",
        "bit_length": 512, "mode": "XTS",
    }
    values.update(overrides)
    return Secret(**values)  # type: ignore[arg-type]


def test_key_size_meaning_is_explicit() -> None:
    cryptsetup_256 = spec(256, KeySizeMeaning.WHOLE_XTS_KEY)
    qemu_256 = spec(256, KeySizeMeaning.PER_AES_KEY)
    assert (cryptsetup_256.whole_key_bits, cryptsetup_256.cipher_strength_bits) == (256, 128)
    assert (qemu_256.whole_key_bits, qemu_256.cipher_strength_bits) == (512, 256)
    assert spec(512).cipher_strength_bits == 256
    cbc = spec(256, KeySizeMeaning.PER_AES_KEY, "aes-cbc-essiv:sha256")
    assert (cbc.whole_key_bits, cbc.mode, cbc.algorithm) == (256, "cbc", "aes")
    with pytest.raises(TypeError):
        EncryptionSpec("luks", "aes-xts-plain64", 512)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "args",
    [
        ("lvm", "aes-xts-plain64", 512),
        ("luks", "aes", 512),
        ("luks", "aes-xts-plain64", 0),
        ("luks", "aes-xts-plain64", 257),
    ],
)
def test_spec_rejects_bad_values(args: tuple[str, str, int]) -> None:
    with pytest.raises(UsageError):
        EncryptionSpec(*args, KeySizeMeaning.WHOLE_XTS_KEY)
    with pytest.raises(UsageError):
        EncryptionSpec("luks", "aes-xts-plain64", 512, KeySizeMeaning.WHOLE_XTS_KEY, "middle")


def test_matching_secret_passes_case_insensitively() -> None:
    check_secret(key(), spec())
    check_secret(key(algorithm="aes", mode="xts"), spec())


def test_each_mismatch_is_named() -> None:
    with raises_fault(UsageError, UsageFault.SPEC_MISMATCH) as info:
        check_secret(key(bit_length=256), spec())
    assert info.value.details == ("bit length is 256, the spec needs 512",)
    with raises_fault(UsageError, UsageFault.SPEC_MISMATCH) as info:
        check_secret(key(algorithm="Serpent", mode="CBC", bit_length=256), spec())
    assert info.value.details == (
        "algorithm is Serpent, the spec needs aes",
        "bit length is 256, the spec needs 512",
        "mode is CBC, the spec needs xts",
    )
    assert "algorithm" in str(info.value) and "mode" in str(info.value)
    assert info.value.exit_code == 2


def test_unknown_metadata_is_a_mismatch_unless_allowed() -> None:
    castellan_key = key(mode=None)
    with raises_fault(UsageError, UsageFault.SPEC_MISMATCH) as info:
        check_secret(castellan_key, spec())
    assert info.value.details == ("mode is not recorded on the secret (spec needs xts)",)
    check_secret(castellan_key, spec(), allow_unknown=True)


def test_passphrase_secrets_have_nothing_to_compare() -> None:
    check_secret(Secret(payload=b"pw", secret_type="passphrase"), spec())


def test_non_symmetric_keys_do_not_fit() -> None:
    with raises_fault(UsageError, UsageFault.SPEC_MISMATCH) as info:
        check_secret(key(secret_type="opaque"), spec())
    assert info.value.details[0].startswith("secret type is opaque")


@settings(max_examples=100)
@given(bits=st.sampled_from([128, 192, 256, 384, 512]), want=st.sampled_from([256, 512]))
def test_bit_length_check_matches_equality(bits: int, want: int) -> None:
    if bits == want:
        check_secret(key(bit_length=bits), spec(want))
    else:
        with raises_fault(UsageError, UsageFault.SPEC_MISMATCH):
            check_secret(key(bit_length=bits), spec(want))


# -- generated secrets ----------------------------------------------------------------------------


def test_generated_secrets() -> None:
    sym = generate_secret(KeyOrder())
    assert (sym.secret_type, sym.algorithm, sym.bit_length, sym.mode) == (
        "symmetric", "AES", 512, "XTS")
    assert len(sym.payload_bytes) == 64 and sym.payload_bytes[:32] != sym.payload_bytes[32:]
    phrase = generate_secret(KeyOrder(secret_type="passphrase", mode=None))
    assert phrase.secret_type == "passphrase"
    assert passphrase_for(phrase) == phrase.payload_bytes
    assert phrase.payload_bytes.isascii() and len(phrase.payload_bytes) >= 64
    assert generate_secret(KeyOrder()).payload != sym.payload


@pytest.mark.parametrize("kwargs", [{"secret_type": "opaque"}, {"bit_length": 7},
                                    {"bit_length": 0}, {"bit_length": 1 << 20}])
def test_key_order_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        KeyOrder(**kwargs)  # type: ignore[arg-type]


# -- properties -----------------------------------------------------------------------------------

KEY_ID = "0b6c1c6e-5a3a-4c1e-9d3f-2f5b1a7c9e11"


def test_encryption_properties() -> None:
    assert encryption_properties(KEY_ID, 1, 1048576) == {
        "cinder_encryption_key_id": KEY_ID,
        "cinder_encryption_key_deletion_policy": "on_image_deletion",
        "os_encrypt_format": "LUKSv1",
        "os_encrypt_key_id": KEY_ID,
        "os_encrypt_key_deletion_policy": "on_image_deletion",
        "os_decrypt_size": "1048576",
        "os_decrypt_container_format": "bare",
    }
    props = encryption_properties(KEY_ID.upper(), 2, 0, "do_not_delete")
    assert props["os_encrypt_format"] == "LUKSv2"
    assert props["cinder_encryption_key_id"] == KEY_ID
    assert props["cinder_encryption_key_deletion_policy"] == "do_not_delete"


@pytest.mark.parametrize("args", [("not-a-uuid", 1, 0), (KEY_ID, 3, 0), (KEY_ID, 1, -1),
                                  (KEY_ID, True, 0)])
def test_encryption_properties_rejects(args: tuple[str, int, int]) -> None:
    with pytest.raises(UsageError):
        encryption_properties(*args)
    with pytest.raises(UsageError):
        encryption_properties(KEY_ID, 1, 0, "sometimes")


@pytest.mark.parametrize(
    ("value", "version"),
    [("luks", 1), ("LUKS", 1), ("luks1", 1), ("LUKSv1", 1), ("luksv1", 1), (" LUKSv1 ", 1),
     ("luks2", 2), ("LUKSv2", 2), ("LuKsV2", 2)],
)
def test_parse_encrypt_format(value: str, version: int) -> None:
    assert parse_encrypt_format(value) == version


@settings(max_examples=300)
@given(value=st.text(max_size=300))
def test_parse_encrypt_format_rejects_everything_else(value: str) -> None:
    if value.strip().lower() in ("luks", "luks1", "luksv1", "luks2", "luksv2"):
        assert parse_encrypt_format(value) in (1, 2)
    else:
        with pytest.raises(FormatError) as info:
            parse_encrypt_format(value)
        assert len(str(info.value)) < 200
        assert info.value.exit_code == 3


# -- the deletion policy, against the real local keystore ---------------------------------------

IMAGE = Consumer("glance", "image", "11111111-2222-3333-4444-555555555555")
SNAPSHOT = Consumer("glance", "image", "66666666-7777-8888-9999-000000000000")


def test_deletion_policy(tmp_path: object) -> None:
    store = LocalKeyStore(tmp_path / "keys")  # type: ignore[operator]
    key_id = store.create_key(KeyOrder())
    store.add_consumer(key_id, IMAGE)
    store.add_consumer(key_id, SNAPSHOT)

    kept = apply_deletion_policy(store, key_id, "do_not_delete", consumer=IMAGE)
    assert (kept.outcome, kept.deleted, kept.consumer_removed) == (
        DeletionOutcome.KEPT_BY_POLICY, False, True)
    assert store.list_consumers(key_id) == [SNAPSHOT]

    store.add_consumer(key_id, IMAGE)
    consumed = apply_deletion_policy(store, key_id, "on_image_deletion", consumer=IMAGE)
    assert consumed.outcome is DeletionOutcome.KEPT_CONSUMED
    assert SNAPSHOT.resource_id in consumed.reason
    store.get(key_id)  # still there

    referenced = apply_deletion_policy(store, key_id, "on_image_deletion", consumer=SNAPSHOT,
                                       other_references=["volume-42"])
    assert referenced.outcome is DeletionOutcome.KEPT_REFERENCED
    assert "volume-42" in referenced.reason
    assert store.list_consumers(key_id) == []

    deleted = apply_deletion_policy(store, key_id, "on_image_deletion")
    assert deleted.deleted and deleted.outcome is DeletionOutcome.DELETED
    assert deleted.as_dict()["outcome"] == "deleted"
    gone = apply_deletion_policy(store, key_id, "on_image_deletion")
    assert gone.outcome is DeletionOutcome.ALREADY_GONE and not gone.deleted
    with pytest.raises(UsageError):
        apply_deletion_policy(store, key_id, "whenever")


# -- secret_from_payload (keys create --payload-file) ------------------------------------------


def test_secret_from_payload_symmetric_takes_its_length_from_the_bytes() -> None:
    secret = secret_from_payload("symmetric", bytes(range(32)), name="k", algorithm="AES",
                                 mode="XTS")
    assert (secret.secret_type, secret.algorithm, secret.bit_length, secret.mode, secret.name) == (
        "symmetric", "AES", 256, "XTS", "k")
    assert secret.payload == bytes(range(32))
    assert secret.secret_id is None
    # An empty mode is no mode.
    assert secret_from_payload("symmetric", b"\x01" * 16, mode="").mode is None


@pytest.mark.parametrize("secret_type", ["passphrase", "opaque"])
def test_secret_from_payload_other_types_carry_no_cipher_metadata(secret_type: str) -> None:
    secret = secret_from_payload(secret_type, b"text", name="n", algorithm="AES", mode="XTS")
    assert (secret.secret_type, secret.algorithm, secret.bit_length, secret.mode, secret.name) == (
        secret_type, None, None, None, "n")
    assert secret.payload == b"text"


def test_secret_from_payload_stores_der_as_pem() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    der = public.public_bytes(serialization.Encoding.DER,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    pem = public.public_bytes(serialization.Encoding.PEM,
                              serialization.PublicFormat.SubjectPublicKeyInfo)
    assert secret_from_payload("public", der).payload == pem
    assert secret_from_payload("public", pem).payload == pem
    with pytest.raises(FormatError):
        secret_from_payload("public", b"not a key")


def test_secret_from_payload_refuses_a_passphrase_the_cloud_cannot_decode() -> None:
    with pytest.raises(UnusableSecretError):
        secret_from_payload("passphrase", b"\xff\xfe")
    with pytest.raises(UsageError):
        secret_from_payload("nonsense", b"x")


# -- generation_order, luks_passphrase_text, consumers_of (keys create / show) ---------------


def test_generation_order_gives_a_mode_to_symmetric_keys_only() -> None:
    order = generation_order("symmetric", algorithm="AES", bit_length=256, mode="XTS", name="n")
    assert order == KeyOrder(secret_type="symmetric", algorithm="AES", bit_length=256,
                             mode="XTS", name="n")
    assert generation_order("symmetric", mode="").mode is None
    assert generation_order("passphrase", mode="XTS").mode is None


@pytest.mark.parametrize("secret_type", ["private", "public", "certificate", "opaque"])
def test_generation_order_refuses_types_that_are_given_not_generated(secret_type: str) -> None:
    with pytest.raises(UsageError) as info:
        generation_order(secret_type)
    assert str(info.value) == f"a {secret_type} secret cannot be generated: give --payload-file"


def test_luks_passphrase_text_is_none_where_the_cloud_could_not_open_luks() -> None:
    assert luks_passphrase_text(Secret(payload=b"pass word", secret_type="passphrase")) == \
        "pass word"
    assert luks_passphrase_text(Secret(payload=b"\x01\xff")) == "01ff"
    assert luks_passphrase_text(Secret(payload=b"\xff", secret_type="passphrase")) is None


def test_consumers_of_a_real_local_keystore(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path / "keys")
    key_id = store.create_key(KeyOrder())
    assert consumers_of(store, key_id) == []
    consumer = Consumer(service="imgcrypt", resource_type="file", resource_id="/x")
    store.add_consumer(key_id, consumer)
    assert consumers_of(store, key_id) == store.list_consumers(key_id) != []
    # A manager that keeps no consumers is not asked for them.

    class NoConsumers(LocalKeyStore):
        supports_consumers = False

        def list_consumers(self, key_id: str) -> list[Consumer]:
            raise AssertionError("asked a manager without consumers for its consumers")

    assert consumers_of(NoConsumers(tmp_path / "keys"), key_id) == []

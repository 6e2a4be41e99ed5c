"""The signature-mode rules of imgcrypt.signing.signer and the hash spellings of
imgcrypt.digests: what 'imgcrypt sign' accepts and refuses, checked at the library."""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from imgcrypt.digests import GLANCE_HASHES, IMGCRYPT_HASHES, abbreviated, signing_hash_name
from imgcrypt.errors import UsageError
from imgcrypt.signing import glance
from imgcrypt.signing.signer import MODES, make_signer

KEY = ec.generate_private_key(ec.SECP384R1())


# -- hash spellings --------------------------------------------------------------------------

@pytest.mark.parametrize(("spelled", "mode", "name"), [
    ("SHA-256", "glance", "SHA-256"), ("sha256", "glance", "SHA-256"),
    ("sha-256", "glance", "SHA-256"), ("Sha_224", "glance", "SHA-224"),
    (" SHA-512 ", "glance", "SHA-512"), ("SHA-384", "imgcrypt", "sha384"),
    ("sha_512", "imgcrypt", "sha512"), ("SHA3-256", "imgcrypt", "sha3-256"),
    ("sha3_384", "imgcrypt", "sha3-384"), ("sha-3-512", "imgcrypt", "sha3-512"),
])
def test_every_spelling_of_a_mode_hash_is_accepted(spelled: str, mode: str, name: str) -> None:
    assert signing_hash_name(spelled, mode) == name


@pytest.mark.parametrize(("spelled", "mode", "message"), [
    ("sha3-256", "glance", "Glance mode hashes are SHA-224, SHA-256, SHA-384, SHA-512, not "
                           "'sha3-256'"),
    ("sha224", "imgcrypt", "imgcrypt mode hashes are sha256, sha384, sha512, sha3-256, "
                           "sha3-384, sha3-512, not 'sha224'"),
    ("md5", "glance", None), ("sha1", "imgcrypt", None), ("sha2-256", "glance", None),
    ("sha3256", "imgcrypt", None), ("", "imgcrypt", None), ("SHA 256", "glance", None),
])
def test_other_spellings_are_refused(spelled: str, mode: str, message: str | None) -> None:
    with pytest.raises(UsageError) as info:
        signing_hash_name(spelled, mode)
    if message is not None:
        assert str(info.value) == message


@given(st.sampled_from(sorted(GLANCE_HASHES) + sorted(IMGCRYPT_HASHES)),
       st.sampled_from(MODES), st.booleans(), st.booleans())
def test_case_and_underscores_never_change_the_answer(name: str, mode: str, upper: bool,
                                                      underscore: bool) -> None:
    spelled = name.upper() if upper else name.lower()
    spelled = spelled.replace("-", "_") if underscore else spelled
    table = GLANCE_HASHES if mode == "glance" else IMGCRYPT_HASHES
    expected = next((key for key, spec in table.items()
                     if spec.name == name or spec.glance_name == name), None)
    if expected is None:
        with pytest.raises(UsageError):
            signing_hash_name(spelled, mode)
    else:
        assert signing_hash_name(spelled, mode) == expected


def test_the_help_lists_come_from_the_table() -> None:
    assert abbreviated(GLANCE_HASHES) == "SHA-224/256/384/512"
    assert abbreviated(IMGCRYPT_HASHES) == "sha256/384/512, sha3-256/384/512"
    assert abbreviated(["md5", "sha1", "sha256"]) == "md5, sha1/256"


# -- signing modes ---------------------------------------------------------------------------

def _sign(**options: object) -> dict[str, str]:
    signer = make_signer(KEY, **options)  # type: ignore[arg-type]
    signer.update(b"image bytes")
    return signer.finalize()


def test_glance_mode_signs_with_the_hash_it_is_given() -> None:
    properties = _sign(mode="glance", certificate_uuid="c1", hash_name="sha-512")
    assert properties[glance.HASH_METHOD_KEY] == "SHA-512"
    assert properties[glance.CERT_UUID_KEY] == "c1"
    assert _sign(mode="glance", certificate_uuid="c1")[glance.HASH_METHOD_KEY] == "SHA-256"


@pytest.mark.parametrize(("options", "message"), [
    ({"properties": {"os_decrypt_size": "1"}},
     "Glance mode signs the image bytes only; use --mode imgcrypt to bind"),
    ({"algorithm": "ecdsa-p384"},
     "--algorithm is for imgcrypt mode; Glance mode follows the key"),
])
def test_glance_mode_refuses_imgcrypt_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        make_signer(KEY, mode="glance", certificate_uuid="c1", **options)  # type: ignore[arg-type]


def test_glance_mode_needs_a_certificate_id_and_unknown_modes_are_refused() -> None:
    with pytest.raises(UsageError, match=r"^Glance mode needs --cert-uuid or --cert-id$"):
        make_signer(KEY, mode="glance")
    with pytest.raises(UsageError):
        make_signer(KEY, mode="cursive", certificate_uuid="c1")


def test_imgcrypt_mode_binds_properties_and_uses_its_own_hash_names() -> None:
    properties = _sign(mode="imgcrypt", hash_name="SHA3-256",
                       properties={"os_decrypt_size": "11"})
    assert properties["imgcrypt_sign_hash"] == "sha3-256"
    assert _sign(mode="imgcrypt")["imgcrypt_sign_hash"] == "sha256"


def test_a_given_value_length_limit_is_enforced_for_glance_signatures() -> None:
    # A P-384 img_signature is about 140 base64 characters (ECDSA signatures vary in length).
    assert _sign(mode="glance", certificate_uuid="c1", max_value_length=255)
    with pytest.raises(UsageError, match=r"^img_signature is 1[0-9][0-9] characters, over "
                                         r"--max-value-length 64; cursive needs it whole"):
        _sign(mode="glance", certificate_uuid="c1", max_value_length=64)
    # imgcrypt mode splits long values instead, so the same limit holds.
    split = _sign(mode="imgcrypt", max_value_length=64)
    assert max(len(v) for v in split.values()) <= 64



# -- the key and its certificate -------------------------------------------------------------

def test_a_key_signs_only_with_its_own_certificate() -> None:
    from imgcrypt.signing.certs import check_key_matches
    from tests.helpers.pki import key, make_cert

    own = make_cert(key("p384"))
    check_key_matches([own, make_cert(key("p384-b"))], key("p384"))  # the first one counts
    with pytest.raises(UsageError, match=r"^the private key does not belong to the "
                                         r"certificate$"):
        check_key_matches([make_cert(key("p384-b")), own], key("p384"))

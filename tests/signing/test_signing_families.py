"""One record per key family, one digest table: every protocol's verdict, from outside.

The names each protocol accepts are pinned exactly (Glance's ``img_signature_hash_method``,
imgcrypt's ``imgcrypt_sign_hash``, the upload service's ``os_hash_algo``), every spelling of one
digest must compute what openssl computes under its own name, and each kind of key gets the
same name, refusal and message in both modes whichever call asks.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, x25519

from imgcrypt.errors import (
    UnknownAlgorithmError,
    UsageError,
    VerificationError,
    WeakAlgorithmError,
)
from imgcrypt.service.upload import UploadPolicy, inspect_upload
from imgcrypt.signing import algorithms, certs, glance, imgcrypt_mode
from imgcrypt.signing.stream import feed_iterable
from tests.helpers.openstack_servers import GLANCE_VENV, require_venv
from tests.helpers.pki import NOW, key, make_cert

IMAGE = os.urandom(256 * 1024 + 3)
UUID = "0d3c6f5e-6a49-4d1e-9d57-6f2b2f0b6a11"

GLANCE_NAMES = ["SHA-224", "SHA-256", "SHA-384", "SHA-512"]
IMGCRYPT_NAMES = ["sha256", "sha384", "sha512", "sha3-256", "sha3-384", "sha3-512"]
# Glance's os_hash_algo: any name hashlib.new() takes; imgcrypt follows Glance's advice and takes
# hashlib's guaranteed ones (shake has no fixed-length hexdigest).
MULTIHASH_NAMES = ["blake2b", "blake2s", "md5", "sha1", "sha224", "sha256", "sha384", "sha3_224",
                   "sha3_256", "sha3_384", "sha3_512", "sha512"]
# Spellings of real digests that some protocol or other uses: each refused where not listed.
SPELLINGS = sorted({*GLANCE_NAMES, *IMGCRYPT_NAMES, *MULTIHASH_NAMES, "sha224", "sha3_384",
                    "sha3-224", "sha3_224", "SHA-1", "sha1", "md5", "MD5", "sha-256", "SHA256",
                    "SHA3-256", "blake2b", "sha512_256", "shake_128", "SHA512", ""})
# The openssl dgst option for each digest, whatever the protocol calls it.
OPENSSL_DIGEST = {
    "SHA-224": "-sha224", "SHA-256": "-sha256", "SHA-384": "-sha384", "SHA-512": "-sha512",
    "sha256": "-sha256", "sha384": "-sha384", "sha512": "-sha512", "sha3-256": "-sha3-256",
    "sha3-384": "-sha3-384", "sha3-512": "-sha3-512", "sha3_256": "-sha3-256",
    "sha3_512": "-sha3-512", "blake2b": "-blake2b512", "blake2s": "-blake2s256", "md5": "-md5",
    "sha1": "-sha1", "sha224": "-sha224", "sha3_224": "-sha3-224", "sha3_384": "-sha3-384",
}


def _openssl_digest(openssl: str, option: str, path: Path) -> str:
    out = subprocess.run([openssl, "dgst", option, "-r", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[0]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("families") / "image.raw"
    path.write_bytes(IMAGE)
    return path


def _refused(call: Any, *args: Any, **kw: Any) -> bool:
    try:
        call(*args, **kw)
    except (UnknownAlgorithmError, UsageError):
        return True
    return False


def test_each_protocol_accepts_exactly_its_own_spellings() -> None:
    def glance_signs(name: str) -> None:
        glance.GlanceSigner(key("p384"), certificate_uuid=UUID, hash_method=name)

    def imgcrypt_signs(name: str) -> None:
        imgcrypt_mode.ImgcryptSigner(key("ed25519"), hash_name=name)

    def upload_hashes(name: str) -> None:
        UploadPolicy(hash_algo=name)

    for call, accepted in ((glance_signs, GLANCE_NAMES), (imgcrypt_signs, IMGCRYPT_NAMES),
                           (upload_hashes, MULTIHASH_NAMES)):
        verdicts = {name: not _refused(call, name) for name in SPELLINGS}
        assert {name for name, ok in verdicts.items() if ok} == set(accepted), call.__name__


def test_the_default_multihash_is_glances() -> None:
    assert UploadPolicy().hash_algo == "sha512"


@pytest.mark.parametrize("name", GLANCE_NAMES)
def test_glance_hash_names_compute_what_openssl_does(
        name: str, openssl: str, image_file: Path) -> None:
    signer = glance.GlanceSigner(key("p384"), certificate_uuid=UUID, hash_method=name)
    properties = feed_iterable(signer, [IMAGE])
    checked = certs.check_certificate([make_cert(key("p384"))], clock=lambda: NOW)
    verifier = glance.GlanceVerifier(properties, checked)
    result = feed_iterable(verifier, [IMAGE[:1000], IMAGE[1000:]])
    assert result.digest.hex == _openssl_digest(openssl, OPENSSL_DIGEST[name], image_file)


@pytest.mark.parametrize("name", IMGCRYPT_NAMES)
def test_imgcrypt_hash_names_compute_what_openssl_does(
        name: str, openssl: str, image_file: Path) -> None:
    properties = feed_iterable(imgcrypt_mode.ImgcryptSigner(key("ed25519"), hash_name=name),
                               [IMAGE])
    checked = certs.check_certificate([make_cert(key("ed25519"))], clock=lambda: NOW)
    result = feed_iterable(imgcrypt_mode.ImgcryptVerifier(properties, checked), [IMAGE])
    assert result.digest.hex == _openssl_digest(openssl, OPENSSL_DIGEST[name], image_file)


@pytest.mark.parametrize("name", MULTIHASH_NAMES)
def test_multihash_names_compute_what_openssl_does(
        name: str, openssl: str, image_file: Path) -> None:
    verdict = inspect_upload([IMAGE], {}, policy=UploadPolicy(hash_algo=name))
    assert verdict.properties()["os_hash_algo"] == name
    assert verdict.os_hash_value == _openssl_digest(openssl, OPENSSL_DIGEST[name], image_file)


def test_multihash_values_are_what_glance_store_computes(image_file: Path) -> None:
    """Glance stores os_hash_value from glance_store's get_hasher(hashing_algorithm): for every
    os_hash_algo imgcrypt takes, Glance's own code (in its virtualenv) gives the same value."""
    python = require_venv(GLANCE_VENV, "install-glance.sh")
    script = ("import json, sys\n"
              "from glance_store.common.utils import get_hasher\n"
              "data = open(sys.argv[1], 'rb').read()\n"
              "out = {}\n"
              "for name in sys.argv[2:]:\n"
              "    h = get_hasher(name, False)\n"
              "    h.update(data)\n"
              "    out[name] = h.hexdigest()\n"
              "print(json.dumps(out))\n")
    glance_values = json.loads(subprocess.run(
        [str(python), "-c", script, str(image_file), *MULTIHASH_NAMES], check=True,
        capture_output=True, text=True).stdout)
    for name in MULTIHASH_NAMES:
        verdict = inspect_upload([IMAGE[:5000], IMAGE[5000:]], {},
                                 policy=UploadPolicy(hash_algo=name))
        assert verdict.os_hash_value == glance_values[name], name


# kind -> (imgcrypt algorithm or refusal, Glance key type or refusal, description)
KINDS: dict[str, tuple[str, str, str]] = {
    "ed25519": ("ed25519", "cursive cannot verify Ed25519PublicKey signatures; use --mode imgcrypt",
                "Ed25519"),
    "p256": ("ecdsa-p256", "cursive cannot verify secp256r1 signatures; use --mode imgcrypt",
             "EC secp256r1"),
    "p384": ("ecdsa-p384", "ECC_SECP384R1", "EC secp384r1"),
    "p521": ("ecdsa-p521", "ECC_SECP521R1", "EC secp521r1"),
    "rsa2048": ("rsa-pss", "RSA-PSS", "RSA-2048"),
    "mldsa44": ("ml-dsa-44", "cursive cannot verify MLDSA44PublicKey signatures; use --mode "
                "imgcrypt", "ML-DSA-44"),
    "mldsa65": ("ml-dsa-65", "cursive cannot verify MLDSA65PublicKey signatures; use --mode "
                "imgcrypt", "ML-DSA-65"),
    "mldsa87": ("ml-dsa-87", "cursive cannot verify MLDSA87PublicKey signatures; use --mode "
                "imgcrypt", "ML-DSA-87"),
    "dsa2048": ("DSA-2048 keys are not supported in imgcrypt mode", "DSA", "DSA-2048"),
}
OTHER_KEYS: dict[str, Any] = {
    "secp256k1": lambda: ec.generate_private_key(ec.SECP256K1()),
    "ed448": ed448.Ed448PrivateKey.generate,
    "x25519": x25519.X25519PrivateKey.generate,
}
OTHER_KINDS: dict[str, tuple[str, str, str]] = {
    "secp256k1": ("curve secp256k1 is not supported",
                  "cursive cannot verify secp256k1 signatures; use --mode imgcrypt",
                  "EC secp256k1"),
    "ed448": ("Ed448 keys are not supported in imgcrypt mode",
              "cursive cannot verify Ed448PublicKey signatures; use --mode imgcrypt", "Ed448"),
    "x25519": ("X25519PublicKey keys are not supported in imgcrypt mode",
               "cursive cannot verify X25519PublicKey signatures; use --mode imgcrypt",
               "X25519PublicKey"),
}


def _private(kind: str) -> Any:
    return OTHER_KEYS[kind]() if kind in OTHER_KEYS else key(kind)


def _outcome(call: Any, *args: Any) -> str:
    try:
        return str(call(*args))
    except UnknownAlgorithmError as exc:
        return str(exc)


@pytest.mark.parametrize("kind", [*KINDS, *OTHER_KINDS])
def test_each_key_kind_is_named_and_refused_the_same_everywhere(kind: str) -> None:
    imgcrypt_name, glance_name, description = {**KINDS, **OTHER_KINDS}[kind]
    public = _private(kind).public_key()
    assert _outcome(algorithms.imgcrypt_algorithm_for, public) == imgcrypt_name
    assert _outcome(algorithms.glance_key_type_for, public) == glance_name
    assert algorithms.describe_key(public) == description
    family = algorithms.family_of(public)
    for name in (imgcrypt_name, glance_name):
        if algorithms.family_named(name) is not None:
            assert algorithms.family_named(name) is family
            algorithms.check_matches(name, public)


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_declared_name_of_another_family_is_a_mismatch(kind: str) -> None:
    public = key(kind).public_key()
    own = algorithms.family_of(public)
    for family in algorithms.FAMILIES:
        for name in family.names:
            if family is own:
                algorithms.check_matches(name, public)
            else:
                # A VerificationError that names the claim (the mismatch, not a bad signature).
                with pytest.raises(VerificationError,
                                   match=f"^the signature claims {name} but the certificate "
                                         "holds a "):
                    algorithms.check_matches(name, public)


@pytest.mark.parametrize(("kind", "glance_message", "imgcrypt_message"), [
    ("dsa2048", "DSA is verify-only; sign with RSA, P-384 or P-521",
     "refusing to sign: DSA signatures are refused unless legacy algorithms are allowed"),
    ("rsa1024", "refusing to sign: RSA-1024 is below the 2048-bit minimum",
     "refusing to sign: RSA-1024 is below the 2048-bit minimum"),
    ("p256", "cursive cannot verify secp256r1 signatures; use --mode imgcrypt", None),
    ("ed25519", "cursive cannot verify Ed25519PublicKey signatures; use --mode imgcrypt", None),
    ("secp256k1", "cursive cannot verify secp256k1 signatures; use --mode imgcrypt",
     "curve secp256k1 is not supported"),
    ("ed448", "cursive cannot verify Ed448PublicKey signatures; use --mode imgcrypt",
     "Ed448 keys are not supported in imgcrypt mode"),
])
def test_signers_refuse_keys_with_the_familys_message(
        kind: str, glance_message: str, imgcrypt_message: str | None) -> None:
    private = _private(kind)
    with pytest.raises(UsageError) as refused:
        glance.GlanceSigner(private, certificate_uuid=UUID)
    assert str(refused.value) == glance_message
    if imgcrypt_message is None:
        imgcrypt_mode.ImgcryptSigner(private)
        return
    with pytest.raises(UsageError) as refused:
        imgcrypt_mode.ImgcryptSigner(private)
    assert str(refused.value) == imgcrypt_message


def test_an_rsa_key_over_8192_bits_signs_for_glance_but_not_for_imgcrypt() -> None:
    private = key("rsa8200")
    glance.GlanceSigner(private, certificate_uuid=UUID)
    signer = imgcrypt_mode.ImgcryptSigner(private)
    with pytest.raises(UsageError, match=r"^RSA keys must have 2048 to 8192 bits$"):
        feed_iterable(signer, [b"image"])


def test_dsa_verification_asks_for_legacy() -> None:
    properties = {glance.SIGNATURE_KEY: "AAAA", glance.HASH_METHOD_KEY: "SHA-256",
                  glance.KEY_TYPE_KEY: "DSA", glance.CERT_UUID_KEY: UUID}
    checked = certs.check_certificate([make_cert(key("p384"))], clock=lambda: NOW)
    with pytest.raises(WeakAlgorithmError, match=r"^DSA is refused unless legacy"):
        glance.GlanceVerifier(properties, checked)
    with pytest.raises(VerificationError,
                       match=r"^the signature claims DSA but the certificate holds a EC"):
        glance.GlanceVerifier(properties, checked, allow_legacy=True)
    for imgcrypt_spelling in ("rsa-pss", "ecdsa-p384"):
        with pytest.raises(UnknownAlgorithmError, match="unknown img_signature_key_type"):
            glance.GlanceVerifier({**properties, glance.KEY_TYPE_KEY: imgcrypt_spelling}, checked)


def test_glance_names_are_exactly_the_ones_cursive_registers() -> None:
    """Glance mode speaks cursive's vocabulary: its key types and hash methods, no more."""
    from cursive import signature_utils

    registered = signature_utils.SignatureKeyType.REGISTERED_TYPES
    assert set(algorithms.GLANCE_KEY_TYPES) == set(registered)
    assert list(algorithms.GLANCE_HASHES) == list(signature_utils.HASH_METHODS)
    for family in algorithms.FAMILIES:
        if family.glance_name is None:
            continue
        assert family.key_types()[0] is registered[family.glance_name].public_key_type
        if family.curve is not None:
            assert family.glance_name == "ECC_" + family.curve.upper()
    for name, spec in algorithms.GLANCE_HASHES.items():
        assert spec.make().name == signature_utils.HASH_METHODS[name].name

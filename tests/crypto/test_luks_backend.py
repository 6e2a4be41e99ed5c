"""One crypto table (imgcrypt/crypto/backend.py): AF, KDF, cost and ciphers ask it and agree."""

from __future__ import annotations

import hashlib

import pytest

from imgcrypt.crypto import af, backend, cost, kdf
from imgcrypt.crypto.kdfparams import Pbkdf2
from imgcrypt.errors import UnsupportedError

NAMES = ["sha1", "SHA256", "sha-256", "sha2-512", "sha3-256", "SHA3-512", "sha512-256",
         "blake2b-512", "blake2s256", "sm3", "ripemd160", "rmd160", "whirlpool", "md5",
         "shake256", "md5-sha1", "sha3_256", "md4", "stribog512", "", "x" * 40]
# Every hash OpenSSL (with its legacy provider, as cryptsetup loads it) computes here.
COMPUTED = ["sha1", "sha224", "sha256", "sha384", "sha512", "sha3-224", "sha3-256", "sha3-384",
            "sha3-512", "blake2b-512", "blake2s-256", "sm3", "ripemd160", "whirlpool",
            "sha512-224", "sha512-256", "md5"]


def _accepts(check: object, name: str) -> bool:
    try:
        check(name)  # type: ignore[operator]
    except UnsupportedError:
        return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_af_kdf_and_cost_agree_on_what_they_compute(name: str) -> None:
    """All ask the one table: a hash usable for PBKDF2 is usable for the AF and is priced."""
    usable = backend.supports(name)
    assert _accepts(kdf.check_hash, name) == usable
    assert _accepts(af.check_hash, name) == usable
    assert _accepts(lambda n: cost.pbkdf2_cost(n, 1000, 32), name) == usable


@pytest.mark.parametrize("name", COMPUTED)
def test_every_openssl_hash_derives_and_is_priced(name: str) -> None:
    """PBKDF2 with it gives OpenSSL's bytes (hashlib as the reference), at a weight >= SHA-1's."""
    assert backend.supports(name)
    info = backend.lookup_hash(name)
    assert info is not None
    reference = hashlib.pbkdf2_hmac(info.hashlib_name, b"pass", b"s" * 32, 3, 40)
    assert kdf.derive(Pbkdf2(name, 3, b"s" * 32), b"pass", 40) == reference
    assert hashlib.new(info.hashlib_name).digest_size == info.size
    assert backend.pbkdf2_cost_weight(name) >= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_sizes_are_the_computed_output_lengths(name: str) -> None:
    if backend.supports(name):
        assert hashlib.new(backend.hashlib_name(name)).digest_size == backend.hash_size(name)


def test_known_but_not_computable_hashes_are_valid_yet_refused_for_work() -> None:
    for name in ("shake256", "md5-sha1"):
        assert backend.hash_size(name) is not None
        assert not backend.supports(name)
    assert backend.hash_size("sha3_256") is None  # OpenSSL's spelling only, as cryptsetup


def test_slow_hashes_cost_more() -> None:
    """The budget stays honest: whirlpool costs many SHA-256 iterations per iteration."""
    assert cost.pbkdf2_cost("whirlpool", 1000, 64) > 10 * cost.pbkdf2_cost("sha256", 1000, 32)
    assert cost.pbkdf2_cost("sha1", 1000, 64) == cost.pbkdf2_cost("sha1", 4000, 20)


@pytest.mark.parametrize("name", ["serpent", "twofish", "blowfish"])
def test_ciphers_openssl_lacks_are_refused_with_a_way_out(name: str) -> None:
    with pytest.raises(UnsupportedError) as err:
        backend.block_cipher(name, f"{name}-xts-plain64")
    message = str(err.value)
    assert f"{name}-xts-plain64" in message
    assert "cryptsetup reencrypt --cipher aes-xts-plain64" in message
    assert "qemu-img convert" in message and "nettle or gcrypt" in message
    assert "\n" not in message

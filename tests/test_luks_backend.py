"""One table of LUKS hash names (imgcrypt/luks/backend.py): AF and KDF ask it and agree."""

from __future__ import annotations

import hashlib

import pytest

from imgcrypt.errors import UnsupportedError
from imgcrypt.luks import af, backend, kdf

NAMES = ["sha1", "SHA256", "sha-256", "sha2-512", "sha3-256", "SHA3-512", "sha512-256",
         "blake2b-512", "blake2s256", "sm3", "ripemd160", "rmd160", "whirlpool", "md5",
         "shake256", "md5-sha1", "sha3_256", "md4", "stribog512", "", "x" * 40]


def _accepts(check: object, name: str) -> bool:
    try:
        check(name)  # type: ignore[operator]
    except UnsupportedError:
        return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_af_and_kdf_agree_on_what_they_compute(name: str) -> None:
    """Both ask the one table: a hash usable for PBKDF2 is usable for the AF diffusion."""
    assert _accepts(kdf.hash_algorithm, name) == backend.supports(name)
    if backend.supports(name):
        assert _accepts(af.check_hash, name)


@pytest.mark.parametrize("name", NAMES)
def test_sizes_are_the_computed_output_lengths(name: str) -> None:
    info = backend.lookup_hash(name)
    if info is not None and info.hashlib_name in hashlib.algorithms_available:
        assert hashlib.new(info.hashlib_name).digest_size == info.size
    if backend.supports(name):
        assert kdf.hash_algorithm(name).digest_size == backend.hash_size(name)


def test_known_but_not_computable_hashes_are_valid_yet_refused_for_work() -> None:
    for name in ("whirlpool", "shake256", "md5-sha1"):
        assert backend.hash_size(name) is not None
        assert not backend.supports(name)
    assert backend.hash_size("sha3_256") is None  # OpenSSL's spelling only, as cryptsetup


def test_every_hash_the_cost_model_prices_is_in_the_one_table() -> None:
    from imgcrypt.luks import backend, cost

    for name in cost.HASH_BLOCK_COST:
        assert backend.hash_size(name) is not None, name
    assert cost.pbkdf2_cost("sha1", 1000, 64) == cost.pbkdf2_cost("sha1", 4000, 20)

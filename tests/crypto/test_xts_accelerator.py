"""The optional C paths (OpenSSL EVP XTS, the tweak walker) give the same bytes as the numpy path
and as cryptography XTS run one sector at a time."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from imgcrypt.crypto import sectors
from imgcrypt.crypto.sectors import CipherSpec, SectorCipher
from imgcrypt.errors import UsageError
from tests.conftest import IN_CI


def test_accelerator_is_built() -> None:
    # make test builds it (pip install -e compiles imgcrypt/crypto/_xtsmul.c); CI must not fall
    # back silently to the slower path it would then not be measuring.
    if not sectors.ACCELERATED:
        if IN_CI:
            pytest.fail("imgcrypt.crypto._xtsmul was not built")
        pytest.skip("imgcrypt.crypto._xtsmul not built here (no compiler?)")


def test_openssl_xts_is_built() -> None:
    # make installs libssl-dev and builds imgcrypt/crypto/_evpxts.c against the system libcrypto.
    if not sectors.OPENSSL_XTS:
        if IN_CI:
            pytest.fail("imgcrypt.crypto._evpxts was not built")
        pytest.skip("imgcrypt.crypto._evpxts not built here (no libssl-dev?)")


def _reference(key: bytes, data: bytes, sector_size: int, iv_start: int, mode: str) -> bytes:
    """cryptography's XTS, one data unit per sector."""
    out = []
    for k in range(len(data) // sector_size):
        iv = (iv_start + k * sector_size // 512) % 2**64
        if mode == "xts-plain":
            iv &= 0xFFFFFFFF
        one = Cipher(algorithms.AES(key), modes.XTS(iv.to_bytes(16, "little"))).encryptor()
        out.append(one.update(data[k * sector_size : (k + 1) * sector_size]))
    return b"".join(out)


@settings(max_examples=80, deadline=None)
@given(key=st.sampled_from([32, 64]).map(os.urandom),
       sector_size=st.sampled_from([512, 1024, 2048, 4096]),
       sectors_count=st.integers(0, 40),
       iv_start=st.one_of(st.integers(0, 2**20), st.integers(2**32 - 40, 2**32 + 40),
                          st.integers(2**64 - 50, 2**64 - 1)),
       mode=st.sampled_from(["xts-plain64", "xts-plain"]))
def test_every_backend_equals_cryptography(key: bytes, sector_size: int, sectors_count: int,
                                           iv_start: int, mode: str) -> None:
    spec = CipherSpec.of("aes", mode)
    data = os.urandom(sector_size * sectors_count)
    expected = _reference(key, data, sector_size, iv_start, mode)
    for backend in sectors.XTS_BACKENDS:
        cipher = SectorCipher(spec, key, sector_size, xts_backend=backend)
        assert cipher.encrypt(data, iv_start) == expected, backend
        assert cipher.decrypt(expected, iv_start) == data, backend
        in_place = bytearray(expected)
        cipher.decrypt_into(in_place, iv_start, in_place)
        assert in_place == data, backend


def test_default_backend_is_openssl() -> None:
    if not sectors.OPENSSL_XTS:
        pytest.skip("OpenSSL XTS module not built")
    cipher = SectorCipher(CipherSpec.parse("aes-xts-plain64"), os.urandom(64), 512)
    assert cipher.xts_backend == "openssl"


@pytest.mark.parametrize("key_bytes", [32, 64])
def test_equal_key_halves_behave_alike_in_every_build(key_bytes: int) -> None:
    # cryptography's XTS refuses such a key outright, OpenSSL's EVP XTS when encrypting: the
    # default choice falls back to the ECB-based path, so every build gives the same bytes.
    half = os.urandom(key_bytes // 2)
    key = half + half
    with pytest.raises(ValueError):
        Cipher(algorithms.AES(key), modes.XTS(bytes(16))).encryptor()
    spec = CipherSpec.parse("aes-xts-plain64")
    data = os.urandom(4096)
    results = {SectorCipher(spec, key, 512, xts_backend=b).encrypt(data, 9)
               for b in sectors.XTS_BACKENDS if b != "openssl"}
    assert len(results) == 1
    default = SectorCipher(spec, key, 512)
    assert default.xts_backend != "openssl"
    assert default.encrypt(data, 9) in results
    if sectors.OPENSSL_XTS:
        from imgcrypt.crypto import _evpxts

        with pytest.raises(UsageError):
            SectorCipher(spec, key, 512, xts_backend="openssl")
        for through_evp in (False, True):
            with pytest.raises(RuntimeError):
                _evpxts.xts(key, data, bytearray(len(data)), 512, 9, False, True, through_evp)
            plain = bytearray(len(data))  # OpenSSL still decrypts with such a key
            _evpxts.xts(key, default.encrypt(data, 9), plain, 512, 9, False, False, through_evp)
            assert plain == data


def test_openssl_module_argument_checks() -> None:
    if not sectors.OPENSSL_XTS:
        pytest.skip("OpenSSL XTS module not built")
    from imgcrypt.crypto import _evpxts

    key = os.urandom(64)
    with pytest.raises(ValueError):
        _evpxts.xts(os.urandom(48), bytes(512), bytearray(512), 512, 0, False, True)
    with pytest.raises(ValueError):
        _evpxts.xts(key, bytes(512), bytearray(1024), 512, 0, False, True)
    with pytest.raises(ValueError):
        _evpxts.xts(key, bytes(700), bytearray(700), 512, 0, False, True)
    with pytest.raises(ValueError):
        _evpxts.xts(key, bytes(512), bytearray(512), 300, 0, False, True)
    with pytest.raises(TypeError):
        _evpxts.xts(key, bytes(512), bytes(512), 512, 0, False, True)  # read-only target
    shared = bytearray(1536)
    with pytest.raises(ValueError):  # overlapping but not the same memory
        _evpxts.xts(key, memoryview(shared)[:1024], memoryview(shared)[512:], 512, 0, False, True)


def test_nonzero_spans() -> None:
    if not sectors.ACCELERATED:
        pytest.skip("accelerator not built")
    from imgcrypt.crypto import _xtsmul

    data = bytearray(10 * 4096 + 100)
    data[5] = 1
    data[4096 * 3 + 7] = 2
    data[4096 * 4] = 3
    data[-1] = 4
    assert _xtsmul.nonzero_spans(data, 4096) == [(0, 4096), (3 * 4096, 5 * 4096),
                                                (10 * 4096, 10 * 4096 + 100)]
    assert _xtsmul.nonzero_spans(bytes(8192), 4096) == []
    with pytest.raises(ValueError):
        _xtsmul.nonzero_spans(data, 0)


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from([32, 64]).map(os.urandom),
       sector_size=st.sampled_from([512, 1024, 2048, 4096]),
       sectors_count=st.integers(0, 40),
       iv_start=st.one_of(st.integers(0, 2**20), st.integers(2**64 - 50, 2**64 - 1)),
       mode=st.sampled_from(["xts-plain64", "xts-plain"]),
       batch=st.sampled_from([512, 4096, 1 << 20]))
def test_accelerated_equals_numpy_and_cryptography(key: bytes, sector_size: int,
                                                   sectors_count: int, iv_start: int, mode: str,
                                                   batch: int) -> None:
    if not sectors.ACCELERATED:
        pytest.skip("accelerator not built")
    spec = CipherSpec.of("aes", mode)
    data = os.urandom(sector_size * sectors_count)
    fast = SectorCipher(spec, key, sector_size, batch_bytes=max(batch, sector_size),
                        xts_backend="walker")
    slow = SectorCipher(spec, key, sector_size, accelerated=False)
    encrypted = fast.encrypt(data, iv_start)
    assert encrypted == slow.encrypt(data, iv_start)
    assert fast.decrypt(encrypted, iv_start) == data
    step = sector_size // 512
    for k in range(sectors_count):
        iv = (iv_start + k * step) % 2**64
        if mode == "xts-plain":
            iv &= 0xFFFFFFFF
        one = Cipher(algorithms.AES(key), modes.XTS(iv.to_bytes(16, "little"))).encryptor()
        chunk = slice(k * sector_size, (k + 1) * sector_size)
        assert one.update(data[chunk]) == encrypted[chunk]


def test_in_place_and_argument_checks() -> None:
    if not sectors.ACCELERATED:
        pytest.skip("accelerator not built")
    from imgcrypt.crypto import _xtsmul

    cipher = SectorCipher(CipherSpec.parse("aes-xts-plain64"), os.urandom(64), 512,
                          xts_backend="walker")
    data = bytearray(os.urandom(512 * 9))
    expected = cipher.encrypt(bytes(data), 77)
    cipher.encrypt_into(data, 77, data)
    assert bytes(data) == expected
    with pytest.raises(ValueError):
        _xtsmul.xor_tweaks(bytes(32), bytearray(32), bytes(16), 0)
    with pytest.raises(ValueError):
        _xtsmul.xor_tweaks(bytes(32), bytearray(48), bytes(16), 2)
    with pytest.raises(TypeError):
        _xtsmul.xor_tweaks(bytes(32), bytes(32), bytes(16), 2)  # read-only destination


@settings(max_examples=60, deadline=None)
@given(key_size=st.sampled_from([16, 24, 32]),
       sector_size=st.sampled_from([512, 1024, 4096]),
       sectors_count=st.integers(0, 30),
       iv_start=st.one_of(st.integers(0, 2**20), st.integers(2**32 - 40, 2**32 + 40),
                          st.integers(2**64 - 50, 2**64 - 1)),
       mode=st.sampled_from(["cbc-essiv:sha256", "cbc-plain64", "cbc-plain"]))
def test_openssl_cbc_decryption_equals_numpy_and_cryptography(
        key_size: int, sector_size: int, sectors_count: int, iv_start: int, mode: str) -> None:
    if not sectors.OPENSSL_XTS:
        pytest.skip("OpenSSL module not built")
    import hashlib

    spec = CipherSpec.of("aes", mode)
    key = os.urandom(key_size)
    plain = os.urandom(sector_size * sectors_count)
    slow = SectorCipher(spec, key, sector_size, accelerated=False)
    fast = SectorCipher(spec, key, sector_size)
    encrypted = slow.encrypt(plain, iv_start)
    assert fast.decrypt(encrypted, iv_start) == plain == slow.decrypt(encrypted, iv_start)
    in_place = bytearray(encrypted)
    fast.decrypt_into(in_place, iv_start, in_place)
    assert in_place == plain
    for k in range(sectors_count):  # cryptography's CBC, sector by sector
        number = (iv_start + k * sector_size // 512) % 2**64
        if mode == "cbc-plain":
            number &= 0xFFFFFFFF
        iv = number.to_bytes(16, "little")
        if mode == "cbc-essiv:sha256":
            essiv = Cipher(algorithms.AES(hashlib.sha256(key).digest()), modes.ECB())
            iv = essiv.encryptor().update(iv)
        one = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        chunk = slice(k * sector_size, (k + 1) * sector_size)
        assert one.update(encrypted[chunk]) == plain[chunk]


def test_openssl_cbc_argument_checks() -> None:
    if not sectors.OPENSSL_XTS:
        pytest.skip("OpenSSL module not built")
    from imgcrypt.crypto import _evpxts

    with pytest.raises(ValueError):
        _evpxts.cbc_decrypt(os.urandom(20), b"", bytes(512), bytearray(512), 512, 0, False)
    with pytest.raises(ValueError):
        _evpxts.cbc_decrypt(os.urandom(32), bytes(16), bytes(512), bytearray(512), 512, 0, False)
    with pytest.raises(ValueError):
        _evpxts.cbc_decrypt(os.urandom(32), b"", bytes(600), bytearray(600), 512, 0, False)


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from([32, 64]).map(os.urandom),
       sector_size=st.sampled_from([512, 1024, 2048, 4096]),
       sectors_count=st.integers(0, 24),
       iv_start=st.one_of(st.integers(0, 2**20), st.integers(2**64 - 50, 2**64 - 1)),
       wrap32=st.booleans(), encrypt=st.booleans())
def test_provider_calls_equal_the_evp_calls(key: bytes, sector_size: int, sectors_count: int,
                                            iv_start: int, wrap32: bool, encrypt: bool) -> None:
    # The module calls the provider's init/update directly where it can (DIRECT); the EVP
    # route it falls back to must give the same bytes.
    if not sectors.OPENSSL_XTS:
        pytest.skip("OpenSSL module not built")
    from imgcrypt.crypto import _evpxts

    data = os.urandom(sector_size * sectors_count)
    direct, through_evp = bytearray(len(data)), bytearray(len(data))
    _evpxts.xts(key, data, direct, sector_size, iv_start, wrap32, encrypt)
    _evpxts.xts(key, data, through_evp, sector_size, iv_start, wrap32, encrypt, True)
    assert direct == through_evp


def test_provider_calls_are_found_here() -> None:
    if not sectors.OPENSSL_XTS:
        pytest.skip("OpenSSL module not built")
    from imgcrypt.crypto import _evpxts

    # OpenSSL 3's default provider hands out its dispatch table; CI must measure that path.
    if IN_CI:
        assert _evpxts.DIRECT == 1

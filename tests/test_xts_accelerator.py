"""The optional C tweak walker gives the same bytes as the numpy path and as cryptography."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from imgcrypt.luks import sectors
from imgcrypt.luks.sectors import CipherSpec, SectorCipher

from .conftest import IN_CI


def test_accelerator_is_built() -> None:
    # make test builds it (pip install -e compiles imgcrypt/luks/_xtsmul.c); CI must not fall
    # back silently to the slower path it would then not be measuring.
    if not sectors.ACCELERATED:
        if IN_CI:
            pytest.fail("imgcrypt.luks._xtsmul was not built")
        pytest.skip("imgcrypt.luks._xtsmul not built here (no compiler?)")


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
    fast = SectorCipher(spec, key, sector_size, batch_bytes=max(batch, sector_size))
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
    from imgcrypt.luks import _xtsmul

    cipher = SectorCipher(CipherSpec.parse("aes-xts-plain64"), os.urandom(64), 512)
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

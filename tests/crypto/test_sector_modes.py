"""Every cipher spec of the table against the per-sector oracle (tests/helpers/dmcrypt_oracle.py).

Hypothesis picks the cipher, mode, IV generator, key, sector size and the first IV, with IVs
near the 32-bit (plain) and 64-bit wraps and CTR counters that carry across their low word;
imgcrypt's whole-buffer kernels must give the oracle's bytes and decrypt them back.
"""

from __future__ import annotations

import hashlib
import os

from hypothesis import example, given, settings
from hypothesis import strategies as st

from imgcrypt.crypto.sectors import CipherSpec, SectorCipher
from tests.helpers.dmcrypt_oracle import oracle_encrypt

IVGENS = ("plain", "plain64", "plain64be", "benbi", "null", "essiv:sha256")
# (cipher, key bytes of one instance, block bytes)
CIPHERS = (("aes", 16, 16), ("aes", 32, 16), ("camellia", 32, 16), ("sm4", 16, 16),
           ("cast5", 16, 8))
SPECS = [(f"{name}-{mode}-{iv}", 2 * key if mode == "xts" else key)
         for name, key, block in CIPHERS for mode in ("xts", "cbc", "ctr")
         for iv in IVGENS
         if not (mode == "xts" and block != 16)
         and not (iv.startswith("essiv") and name in ("cast5", "sm4"))
         ] + [(f"{name}-ecb", key) for name, key, _ in CIPHERS]
NEAR_WRAPS = st.one_of(st.integers(0, 1 << 20),
                       st.integers((1 << 32) - 16, (1 << 32) + 16),
                       st.integers((1 << 64) - 16, (1 << 64) - 1))


@settings(max_examples=150, deadline=None)
# the CTR counter carries out of its low 64 bits; plain truncates to 32 bits; 64-bit wrap
@example(case=("aes-ctr-plain64be", 32), sector_size=512, sectors=2, iv_start=(1 << 64) - 1,
         seed=bytes(8))
@example(case=("cast5-ctr-plain64be", 16), sector_size=512, sectors=2, iv_start=(1 << 64) - 1,
         seed=bytes(8))
@example(case=("camellia-cbc-plain", 32), sector_size=4096, sectors=2, iv_start=(1 << 32) - 8,
         seed=bytes(8))
@example(case=("sm4-xts-benbi", 32), sector_size=1024, sectors=3, iv_start=(1 << 64) - 2,
         seed=bytes(8))
@given(case=st.sampled_from(SPECS), sector_size=st.sampled_from([512, 1024, 4096]),
       sectors=st.integers(1, 3), iv_start=NEAR_WRAPS, seed=st.binary(min_size=8, max_size=8))
def test_generic_kernels_give_the_oracle_s_bytes(case: tuple[str, int], sector_size: int,
                                                 sectors: int, iv_start: int,
                                                 seed: bytes) -> None:
    spec, key_size = case
    key = hashlib.shake_256(seed).digest(key_size)  # XTS halves differ, as OpenSSL's XTS asks
    plain = os.urandom(sector_size * sectors)
    cipher = SectorCipher(CipherSpec.parse(spec), key, sector_size)
    encrypted = cipher.encrypt(plain, iv_start)
    assert encrypted == oracle_encrypt(spec, key, plain, sector_size, iv_start)
    assert cipher.decrypt(encrypted, iv_start) == plain

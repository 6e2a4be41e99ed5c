"""Sector ciphers beyond the hot path: every block cipher, mode and IV generator of the table.

:class:`imgcrypt.crypto.sectors.SectorCipher` keeps AES-XTS (plain, plain64) and AES-CBC
(plain, plain64, essiv:sha256) on its fast paths; everything else a LUKS header may name and
OpenSSL computes runs here, built on one primitive, the block cipher in ECB mode from
`cryptography`, applied to whole buffers:

* IVs for every sector at once (numpy), by dm-crypt's rules (``crypt_iv_*_gen``): ``plain`` the
  sector as 32-bit little-endian, ``plain64`` 64-bit little-endian, ``plain64be`` 64-bit
  big-endian in the IV's last 8 bytes, ``benbi`` big-endian ``(sector << (9 - log2(block))) + 1``
  in the last 8 bytes, ``null`` zeros, ``essiv:HASH`` the plain64 IV encrypted with the same
  block cipher keyed by HASH(whole volume key); sectors count 512-byte units;
* ECB: one call; CBC decryption: one ECB call, then each block XORed with the ciphertext block
  before it (the IV for a sector's first); CBC encryption: one ECB call per block column across
  every sector; CTR: the counter blocks (IV + j, big-endian over the whole block, as the kernel's
  and OpenSSL's CTR count) through one ECB call, XORed in; XTS (16-byte blocks): the numpy XTS
  kernel with these IVs as tweak inputs.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from imgcrypt.crypto._sector_numpy import NumpyKernel
from imgcrypt.crypto.backend import CipherInfo, new_hash

U8Array = npt.NDArray[np.uint8]
_MASK64 = (1 << 64) - 1


def _ecb(info: CipherInfo, key: bytes) -> Cipher[modes.ECB]:
    assert info.make is not None  # CipherSpec refuses ciphers without an implementation
    return Cipher(info.make(key), modes.ECB())  # noqa: S305 - the modes are built on top of it


def _apply(ctx: Cipher[modes.ECB], data: bytes | memoryview, *, encrypt: bool) -> bytes:
    op = ctx.encryptor() if encrypt else ctx.decryptor()
    return op.update(data) + op.finalize()


class GenericKernel:
    """One cipher spec with one key over whole sectors; shareable by threads (no state)."""

    def __init__(self, info: CipherInfo, chaining: str, iv_scheme: str, key: bytes,
                 sector_size: int, sub_sectors: int) -> None:
        self.chaining = chaining
        ivgen, _, essiv_hash = iv_scheme.partition(":")
        self._ivgen = ivgen
        self._block = info.block_size
        self._blocks = sector_size // info.block_size
        self._iv_step = sector_size // 512
        self._benbi_shift = 9 - (info.block_size.bit_length() - 1)
        self._essiv = (_ecb(info, new_hash(essiv_hash, key).digest())
                       if ivgen == "essiv" else None)
        self._xts: NumpyKernel | None = None
        if chaining == "xts":
            half = len(key) // 2
            self._xts = NumpyKernel("xts", iv_scheme, _ecb(info, key[:half]),
                                    _ecb(info, key[half:]), sector_size, sub_sectors,
                                    iv_source=self.ivs)
        else:
            self._cipher = _ecb(info, key)

    # -- IVs ---------------------------------------------------------------------------------

    def ivs(self, iv_start: int, count: int) -> bytes:
        """The IV of each of ``count`` sectors from IV number ``iv_start``, concatenated."""
        size = self._block
        out = np.zeros((count, size), dtype=np.uint8)
        numbers = np.arange(count, dtype=np.uint64)
        numbers *= np.uint64(self._iv_step)
        numbers += np.uint64(iv_start & _MASK64)  # 64-bit counters that wrap, as in dm-crypt
        scheme = self._ivgen
        if scheme == "plain":
            out[:, :4] = (numbers & np.uint64(0xFFFFFFFF)).astype("<u4").view(np.uint8) \
                .reshape(count, 4)
        elif scheme in ("plain64", "essiv"):
            out[:, :8] = numbers.astype("<u8").view(np.uint8).reshape(count, 8)
        elif scheme == "plain64be":
            out[:, size - 8:] = numbers.astype(">u8").view(np.uint8).reshape(count, 8)
        elif scheme == "benbi":
            counter = (numbers << np.uint64(self._benbi_shift)) + np.uint64(1)
            out[:, size - 8:] = counter.astype(">u8").view(np.uint8).reshape(count, 8)
        # "null" (and ECB's unused IVs) stay zero.
        if self._essiv is not None:
            return _apply(self._essiv, out.tobytes(), encrypt=True)
        return out.tobytes()

    # -- modes -------------------------------------------------------------------------------

    def run(self, source: memoryview, iv_start: int, target: memoryview, count: int, *,
            encrypt: bool) -> None:
        if self._xts is not None:
            self._xts.run(source, iv_start, target, count, encrypt=encrypt)
        elif self.chaining == "ecb":
            target[:] = _apply(self._cipher, source, encrypt=encrypt)
        elif self.chaining == "ctr":
            self._ctr(source, iv_start, target, count)
        elif encrypt:
            self._cbc_encrypt(source, iv_start, target, count)
        else:
            self._cbc_decrypt(source, iv_start, target, count)

    def _shape(self, data: memoryview | bytes | bytearray, count: int) -> U8Array:
        return np.frombuffer(data, dtype=np.uint8).reshape(count, self._blocks, self._block)

    def _ivs_array(self, iv_start: int, count: int) -> U8Array:
        return np.frombuffer(self.ivs(iv_start, count), dtype=np.uint8).reshape(count,
                                                                                  self._block)

    def _cbc_decrypt(self, source: memoryview, iv_start: int, target: memoryview,
                     count: int) -> None:
        # No chain to wait for: P_j = D(C_j) ^ C_{j-1}, every block at once. D(C) is a new
        # buffer, so decrypting in place reads the ciphertext before it is overwritten.
        plain = self._shape(bytearray(_apply(self._cipher, source, encrypt=False)), count)
        cipher = self._shape(source, count)
        plain[:, 1:, :] ^= cipher[:, :-1, :]
        plain[:, 0, :] ^= self._ivs_array(iv_start, count)
        target[:] = plain.reshape(-1).data

    def _cbc_encrypt(self, source: memoryview, iv_start: int, target: memoryview,
                     count: int) -> None:
        # Chains stay inside a sector: block j of every sector goes through the cipher at once.
        plain = self._shape(source, count).copy()
        previous = self._ivs_array(iv_start, count)
        encryptor = self._cipher.encryptor()
        for j in range(self._blocks):
            column = np.bitwise_xor(plain[:, j, :], previous)
            encrypted = np.frombuffer(encryptor.update(column.tobytes()), dtype=np.uint8)
            previous = encrypted.reshape(count, self._block)
            plain[:, j, :] = previous
        target[:] = plain.reshape(-1).data

    def _ctr(self, source: memoryview, iv_start: int, target: memoryview, count: int) -> None:
        # The counter block of block j is the sector's IV + j, big-endian over the whole block.
        ivs = self._ivs_array(iv_start, count)
        j = np.arange(self._blocks, dtype=np.uint64)[None, :]
        counters = np.empty((count, self._blocks, self._block), dtype=np.uint8)
        low = ivs[:, -8:].copy().view(">u8").astype(np.uint64)  # (count, 1)
        new_low = low + j  # wraps modulo 2**64
        counters[:, :, -8:] = new_low.astype(">u8").view(np.uint8).reshape(count, self._blocks,
                                                                             8)
        if self._block == 16:
            carry = (new_low < low).astype(np.uint64)
            high = ivs[:, :8].copy().view(">u8").astype(np.uint64) + carry
            counters[:, :, :8] = high.astype(">u8").view(np.uint8).reshape(count, self._blocks,
                                                                             8)
        stream = np.frombuffer(_apply(self._cipher, counters.tobytes(), encrypt=True),
                               dtype=np.uint8)
        target[:] = np.bitwise_xor(np.frombuffer(source, dtype=np.uint8), stream).data

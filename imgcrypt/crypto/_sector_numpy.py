"""The numpy kernels behind :class:`imgcrypt.crypto.sectors.SectorCipher`.

XTS without the C tweak walker: the tweak of block 32g of each sector by multiplying by x^32,
then T * x^j for the 32 blocks of each group with per-block shift tables, in sub-batches of
about 256 KiB so every numpy pass stays in the core's L2 cache, in per-thread scratch buffers.
CBC decryption is vectorised the same way; CBC encryption chains across sectors block by
block. Imported only when one of these paths is used, so that commands which move no data (or
only XTS data, with the C walker built) do not pay numpy's import time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, modes

_U64 = np.dtype("<u8")
U64Array = npt.NDArray[np.uint64]
# Tweaks are computed in groups of 32 blocks from the group's first tweak, T * x**j for
# j < 32: the j bits shifted out of the top fold back in without a second reduction.
_GROUP = 32


@lru_cache(maxsize=16)
def _shift_tables(n: int) -> tuple[U64Array, U64Array]:
    """Per-block shift ``j`` (block index mod 32) and ``64 - j``, for ``n`` blocks; read only."""
    shifts = np.tile(np.arange(_GROUP, dtype=_U64), n // _GROUP)
    back = np.uint64(64) - shifts
    shifts.flags.writeable = False
    back.flags.writeable = False
    return shifts, back


def _times_x32(lo: U64Array, hi: U64Array, out_lo: U64Array, out_hi: U64Array) -> None:
    """(lo, hi) * x**32 in GF(2^128) with the XTS polynomial x^128 + x^7 + x^2 + x + 1."""
    k = np.uint64(32)
    overflow = hi >> k
    np.bitwise_or(hi << k, lo >> k, out=out_hi)
    np.left_shift(lo, k, out=out_lo)
    out_lo ^= overflow
    out_lo ^= overflow << np.uint64(1)
    out_lo ^= overflow << np.uint64(2)
    out_lo ^= overflow << np.uint64(7)


class _Scratch:
    """One thread's working buffers for sub-batches of up to ``blocks`` 16-byte blocks."""

    def __init__(self, blocks: int) -> None:
        self.blocks = blocks
        self.tweaks = np.empty(2 * blocks, dtype=_U64)
        # ``a`` holds the repeated group tweaks (low words, then high words) and later the
        # data XORed with the tweaks; ``b`` holds temporaries and later AES-ECB's output,
        # which needs one block of slack.
        self.a = np.empty(2 * blocks + 2, dtype=_U64)
        self.b = np.empty(2 * blocks + 2, dtype=_U64)


def _bytes_of(words: U64Array) -> memoryview:
    # cryptography takes byte-format buffers only; the view shares the words' memory.
    return memoryview(words.view(np.uint8))  # type: ignore[arg-type]


def _as_words(data: memoryview) -> U64Array:
    return np.frombuffer(data, dtype=_U64)


class NumpyKernel:
    """The numpy implementation of one :class:`SectorCipher`'s modes; shareable by threads."""

    def __init__(self, chaining: str, iv_scheme: str, data: Cipher[modes.ECB],
                 tweak: Cipher[modes.ECB] | None, sector_size: int, sub_sectors: int, *,
                 iv_source: Callable[[int, int], bytes] | None = None) -> None:
        # The parts of the CipherSpec the kernels read ("xts" or "cbc"; "plain", "plain64"
        # or "essiv:sha256"), so this module needs nothing from sectors.py.
        self.chaining = chaining
        self.iv_scheme = iv_scheme
        self._data = data
        self._tweak = tweak
        self._blocks = sector_size // 16
        self._iv_step = sector_size // 512
        self._sub_sectors = sub_sectors
        # The other IV generators (imgcrypt.crypto._sector_generic) hand their IVs in; XTS then
        # encrypts them into tweaks as it does the plain64 numbers.
        self._iv_source = iv_source
        self._local = threading.local()

    def run(self, source: memoryview, iv_start: int, target: memoryview, count: int, *,
            encrypt: bool) -> None:
        words = _as_words(source)
        target_words = np.frombuffer(target, dtype=_U64)
        if self.chaining == "xts":
            self._xts(words, iv_start, count, target_words, encrypt=encrypt)
        elif encrypt:
            target_words[:] = self._cbc_encrypt(words, iv_start, count).reshape(-1)
        else:
            self._cbc_decrypt(words, iv_start, count, target_words)

    def _scratch(self) -> _Scratch:
        blocks = self._sub_sectors * self._blocks
        scratch: _Scratch | None = getattr(self._local, "scratch", None)
        if scratch is None or scratch.blocks != blocks:
            scratch = _Scratch(blocks)
            self._local.scratch = scratch
        return scratch

    # -- IVs ---------------------------------------------------------------------------------

    def _iv_blocks(self, iv_start: int, count: int) -> U64Array:
        """The IV block of each of ``count`` sectors as (low, high) words, after ESSIV."""
        if self._iv_source is not None:
            ivs = np.frombuffer(self._iv_source(iv_start, count), dtype=_U64).reshape(count, 2)
            if self._tweak is not None:
                encrypted = self._tweak.encryptor().update(ivs.tobytes())
                return np.frombuffer(encrypted, dtype=_U64).reshape(count, 2)
            return ivs
        ivs = np.zeros((count, 2), dtype=_U64)
        numbers = ivs[:, 0]
        np.multiply(np.arange(count, dtype=_U64), np.uint64(self._iv_step), out=numbers)
        numbers += np.uint64(iv_start)  # wraps modulo 2**64 like dm-crypt's plain64
        if self.iv_scheme == "plain":
            numbers &= np.uint64(0xFFFFFFFF)
        if self._tweak is not None:
            encrypted = self._tweak.encryptor().update(_bytes_of(ivs.reshape(-1)))
            return np.frombuffer(encrypted, dtype=_U64).reshape(count, 2)
        return ivs

    def _group_tweaks(self, iv_start: int, count: int) -> tuple[U64Array, U64Array]:
        """Tweak of block 32*g of every sector, as (count * groups) low and high words."""
        first = self._iv_blocks(iv_start, count)
        groups = self._blocks // _GROUP
        lo = np.empty((count, groups), dtype=_U64)
        hi = np.empty((count, groups), dtype=_U64)
        lo[:, 0] = first[:, 0]
        hi[:, 0] = first[:, 1]
        for g in range(1, groups):
            _times_x32(lo[:, g - 1], hi[:, g - 1], lo[:, g], hi[:, g])
        return lo.reshape(-1), hi.reshape(-1)

    # -- XTS -------------------------------------------------------------------------------------

    def _xts(self, words: U64Array, iv_start: int, count: int, target: U64Array,
             *, encrypt: bool) -> None:
        base_lo, base_hi = self._group_tweaks(iv_start, count)
        scratch = self._scratch()
        ctx = self._data.encryptor() if encrypt else self._data.decryptor()
        groups_per_sector = self._blocks // _GROUP
        for first in range(0, count, self._sub_sectors):
            sectors = min(self._sub_sectors, count - first)
            groups = slice(first * groups_per_sector, (first + sectors) * groups_per_sector)
            n = sectors * self._blocks
            tweaks = scratch.tweaks[: 2 * n]
            _expand_tweaks(base_lo[groups], base_hi[groups], n, scratch, tweaks)
            span = slice(2 * first * self._blocks, 2 * (first + sectors) * self._blocks)
            work = scratch.a[: 2 * n]
            np.bitwise_xor(words[span], tweaks, out=work)
            ctx.update_into(_bytes_of(work), _bytes_of(scratch.b))
            np.bitwise_xor(scratch.b[: 2 * n], tweaks, out=target[span])

    # -- CBC -------------------------------------------------------------------------------------

    def _cbc_decrypt(self, words: U64Array, iv_start: int, count: int, target: U64Array) -> None:
        # CBC decryption has no chain to wait for: D(C_j) ^ C_{j-1} for every block at once.
        ivs = self._iv_blocks(iv_start, count)
        scratch = self._scratch()
        ctx = self._data.decryptor()
        blocks = self._blocks
        for first in range(0, count, self._sub_sectors):
            sectors = min(self._sub_sectors, count - first)
            n = sectors * blocks
            span = slice(2 * first * blocks, 2 * (first + sectors) * blocks)
            cipher_words = words[span]
            ctx.update_into(_bytes_of(cipher_words), _bytes_of(scratch.b))
            plain = scratch.b[: 2 * n].reshape(sectors, blocks, 2)
            # Chains stay inside a sector, so this span is read in full before it is written:
            # decrypting in place is safe.
            chained = cipher_words.reshape(sectors, blocks, 2)
            plain[:, 1:, :] ^= chained[:, :-1, :]
            plain[:, 0, :] ^= ivs[first : first + sectors]
            target[span] = scratch.b[: 2 * n]

    def _cbc_encrypt(self, words: U64Array, iv_start: int, count: int) -> U64Array:
        # CBC chains within a sector only, so block j of every sector goes through AES together.
        plain = words.reshape(count, self._blocks, 2)
        out = np.empty_like(plain)
        first_ivs = self._iv_blocks(iv_start, count)
        encryptor = self._data.encryptor()
        block = np.empty(2 * count, dtype=_U64)
        encrypted = np.empty(2 * count + 2, dtype=_U64)
        previous = encrypted[: 2 * count].reshape(count, 2)
        for j in range(self._blocks):
            np.bitwise_xor(plain[:, j, :], first_ivs if j == 0 else previous,
                           out=block.reshape(count, 2))
            encryptor.update_into(_bytes_of(block), _bytes_of(encrypted))
            out[:, j, :] = previous
        return out


def _expand_tweaks(base_lo: U64Array, base_hi: U64Array, n: int, scratch: _Scratch,
                   tweaks: U64Array) -> None:
    """Interleaved (low, high) tweaks of ``n`` blocks from every 32-block group's first tweak.

    Block j of a group gets T * x**j = (T << j) with the j bits pushed out of the top folded
    back in as o * (x^7 + x^2 + x + 1), which fits the low word because j + 7 < 64.
    """
    size = scratch.blocks
    lo = scratch.a[:n]
    hi = scratch.a[size : size + n]
    tmp = scratch.b[:n]
    over = scratch.b[size : size + n]
    np.copyto(lo.reshape(-1, _GROUP), base_lo[:, None])
    np.copyto(hi.reshape(-1, _GROUP), base_hi[:, None])
    shifts, back = _shift_tables(size)
    j = shifts[:n]
    j_back = back[:n]
    # High word: (hi << j) | (lo >> (64 - j)); numpy yields 0 for a shift by 64 (j == 0).
    np.left_shift(hi, j, out=tmp)
    np.right_shift(lo, j_back, out=over)
    np.bitwise_or(tmp, over, out=tweaks[1::2])
    # Low word: (lo << j) ^ reduce(hi >> (64 - j)).
    np.right_shift(hi, j_back, out=over)
    np.left_shift(lo, j, out=lo)
    lo ^= over
    np.left_shift(over, np.uint64(1), out=tmp)
    lo ^= tmp
    tmp <<= np.uint64(1)
    lo ^= tmp
    tmp <<= np.uint64(5)
    np.bitwise_xor(lo, tmp, out=tweaks[0::2])

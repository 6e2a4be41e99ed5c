"""Sector ciphers as dm-crypt applies them: AES in XTS or CBC mode with plain/plain64/ESSIV IVs.

XTS is vectorised: one AES-ECB call encrypts every sector's IV into its tweak, numpy computes
the GF(2^128) multiply-by-alpha sequence for all blocks of all sectors, and AES-ECB processes
the data XORed with those tweaks. That is byte-identical to `cryptography`'s XTS run sector by
sector, without a Python object per sector. The work runs in sub-batches of about 256 KiB so
that every numpy pass stays in the core's L2 cache, in per-thread scratch buffers; the AES-ECB
calls and the numpy passes release the GIL, so several threads can share one SectorCipher.

IVs always count 512-byte units, as dm-crypt does without ``iv_large_sectors``: sector ``k`` of
a buffer that starts at IV ``iv_start`` uses IV ``iv_start + k * sector_size // 512``.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from imgcrypt.errors import FormatError, UnsupportedError, UsageError

try:  # the optional C tweak walker; sectors.py computes identical bytes without it
    from imgcrypt.luks import _xtsmul
except ImportError:  # pragma: no cover - exercised where no compiler was available
    _xtsmul = None  # type: ignore[assignment]

ACCELERATED = _xtsmul is not None

_U64 = np.dtype("<u8")
U64Array = npt.NDArray[np.uint64]
Buffer = bytes | bytearray | memoryview

# Bytes per sub-batch: small enough that the ~5 buffers a sub-batch touches fit in a 2 MiB L2,
# large enough that numpy's per-call overhead stays small (measured: 256 KiB is the knee).
SUB_BATCH_BYTES = 256 << 10
# With the C tweak walker a batch costs three streaming passes, so it can be larger.
ACCELERATED_BATCH_BYTES = 1 << 20
# Tweaks are computed in groups of 32 blocks from the group's first tweak, T * x**j for
# j < 32: the j bits shifted out of the top fold back in without a second reduction.
_GROUP = 32
_MASK64 = (1 << 64) - 1

# cipher_mode strings this module implements, and the key sizes (bytes) each accepts.
_MODES: dict[str, tuple[int, ...]] = {
    "xts-plain64": (32, 64),
    "xts-plain": (32, 64),
    "cbc-essiv:sha256": (16, 24, 32),
    "cbc-plain64": (16, 24, 32),
    "cbc-plain": (16, 24, 32),
}


@dataclass(frozen=True)
class CipherSpec:
    """A dm-crypt cipher specification such as ``aes-xts-plain64``, split into its parts."""

    name: str
    mode: str

    @classmethod
    def parse(cls, spec: str) -> CipherSpec:
        name, _, mode = spec.partition("-")
        return cls.of(name, mode)

    @classmethod
    def of(cls, name: str, mode: str) -> CipherSpec:
        """Validate a (cipher name, cipher mode) pair, as LUKS1 stores them separately."""
        if name.lower() != "aes" or mode.lower() not in _MODES:
            raise UnsupportedError(
                f"unsupported cipher {name}-{mode}" if mode else f"unsupported cipher {name}"
            )
        return cls(name.lower(), mode.lower())

    @property
    def chaining(self) -> str:
        return self.mode.split("-", 1)[0]

    @property
    def iv_scheme(self) -> str:
        return self.mode.split("-", 1)[1]

    def __str__(self) -> str:
        return f"{self.name}-{self.mode}"

    def check_key_size(self, key_bytes: int) -> None:
        if key_bytes not in _MODES[self.mode]:
            sizes = ", ".join(str(8 * n) for n in _MODES[self.mode])
            raise UnsupportedError(
                f"{self} needs a key of {sizes} bits, not {8 * key_bytes} bits"
            )


def _ecb(key: bytes) -> Cipher[modes.ECB]:
    return Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305 - XTS/CBC are built on top of it


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


def _as_words(data: Buffer) -> U64Array:
    return np.frombuffer(data, dtype=_U64)


def _writable_words(out: Buffer, size: int) -> U64Array:
    view = memoryview(out)
    if view.readonly:
        raise UsageError("output buffer is read-only")
    if view.nbytes != size:
        raise UsageError(f"output buffer holds {view.nbytes} bytes, not {size}")
    if not view.c_contiguous:
        raise UsageError("output buffer is not contiguous")
    return np.frombuffer(view.cast("B"), dtype=_U64)


class SectorCipher:
    """Encrypts and decrypts whole sectors of one segment or keyslot area.

    An instance is safe to share between threads: each call uses its own cipher contexts and
    the calling thread's scratch buffers.
    """

    def __init__(self, spec: CipherSpec, key: bytes, sector_size: int = 512, *,
                 batch_bytes: int = SUB_BATCH_BYTES, accelerated: bool = True) -> None:
        spec.check_key_size(len(key))
        if sector_size not in (512, 1024, 2048, 4096):
            raise UnsupportedError(f"unsupported sector size {sector_size}")
        if batch_bytes < 1:
            raise UsageError("batch_bytes must be positive")
        self.spec = spec
        self.sector_size = sector_size
        self._blocks = sector_size // 16
        self._iv_step = sector_size // 512
        self._sub_sectors = max(1, batch_bytes // sector_size)
        self._local = threading.local()
        self._accelerated = accelerated and _xtsmul is not None and spec.chaining == "xts"
        if self._accelerated and batch_bytes == SUB_BATCH_BYTES:
            self._sub_sectors = max(1, ACCELERATED_BATCH_BYTES // sector_size)
        if spec.chaining == "xts":
            half = len(key) // 2
            self._data = _ecb(key[:half])
            self._tweak: Cipher[modes.ECB] | None = _ecb(key[half:])
        else:
            self._data = _ecb(key)
            self._tweak = (
                _ecb(hashlib.sha256(key).digest()) if spec.iv_scheme == "essiv:sha256" else None
            )

    def __repr__(self) -> str:
        return f"SectorCipher({self.spec}, sector_size={self.sector_size})"

    # -- public API --------------------------------------------------------------------------

    def encrypt(self, data: Buffer, iv_start: int) -> bytes:
        out = bytearray(len(memoryview(data).cast("B")))
        self.encrypt_into(data, iv_start, out)
        return bytes(out)

    def decrypt(self, data: Buffer, iv_start: int) -> bytes:
        out = bytearray(len(memoryview(data).cast("B")))
        self.decrypt_into(data, iv_start, out)
        return bytes(out)

    def encrypt_into(self, data: Buffer, iv_start: int, out: Buffer) -> None:
        """Encrypt ``data`` into the writable buffer ``out`` of the same size (may be ``data``)."""
        self._run(data, iv_start, out, encrypt=True)

    def decrypt_into(self, data: Buffer, iv_start: int, out: Buffer) -> None:
        """Decrypt ``data`` into the writable buffer ``out`` of the same size (may be ``data``)."""
        self._run(data, iv_start, out, encrypt=False)

    # -- dispatch ------------------------------------------------------------------------------

    def _run(self, data: Buffer, iv_start: int, out: Buffer, *, encrypt: bool) -> None:
        source = memoryview(data).cast("B")
        if len(source) % self.sector_size:
            raise FormatError(f"data is not a whole number of {self.sector_size}-byte sectors")
        iv_start &= _MASK64  # IVs are 64-bit counters that wrap, as in dm-crypt
        target = _writable_words(out, len(source))
        count = len(source) // self.sector_size
        if count == 0:
            return
        words = _as_words(source)
        if self.spec.chaining == "xts":
            self._xts(words, iv_start, count, target, encrypt=encrypt)
        elif encrypt:
            target[:] = self._cbc_encrypt(words, iv_start, count).reshape(-1)
        else:
            self._cbc_decrypt(words, iv_start, count, target)

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
        ivs = np.zeros((count, 2), dtype=_U64)
        numbers = ivs[:, 0]
        np.multiply(np.arange(count, dtype=_U64), np.uint64(self._iv_step), out=numbers)
        numbers += np.uint64(iv_start)  # wraps modulo 2**64 like dm-crypt's plain64
        if self.spec.iv_scheme == "plain":
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
        if self._accelerated:
            self._xts_accelerated(words, iv_start, count, target, encrypt=encrypt)
            return
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

    def _xts_accelerated(self, words: U64Array, iv_start: int, count: int, target: U64Array,
                         *, encrypt: bool) -> None:
        # The same computation with the tweak walk and both XORs done by _xtsmul in one pass
        # each, outside the GIL.
        assert _xtsmul is not None
        first = _bytes_of(self._iv_blocks(iv_start, count).reshape(-1))
        scratch = self._scratch()
        ctx = self._data.encryptor() if encrypt else self._data.decryptor()
        for start in range(0, count, self._sub_sectors):
            sectors = min(self._sub_sectors, count - start)
            n = sectors * self._blocks
            span = slice(2 * start * self._blocks, 2 * (start + sectors) * self._blocks)
            tweaks = first[16 * start : 16 * (start + sectors)]
            work = _bytes_of(scratch.a[: 2 * n])
            _xtsmul.xor_tweaks(_bytes_of(words[span]), work, tweaks, self._blocks)
            ctx.update_into(work, _bytes_of(scratch.b))
            _xtsmul.xor_tweaks(_bytes_of(scratch.b[: 2 * n]), _bytes_of(target[span]), tweaks,
                               self._blocks)

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

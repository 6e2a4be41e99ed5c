"""Sector ciphers as dm-crypt applies them: AES in XTS or CBC mode with plain/plain64/ESSIV IVs.

XTS is vectorised: one AES-ECB call encrypts every sector's IV into its tweak, numpy computes
the GF(2^128) multiply-by-alpha sequence for all blocks of all sectors, and one AES-ECB call
processes the data XORed with those tweaks. That is byte-identical to `cryptography`'s XTS run
sector by sector, without a Python object per sector.

IVs always count 512-byte units, as dm-crypt does without ``iv_large_sectors``: sector ``k`` of
a buffer that starts at IV ``iv_start`` uses IV ``iv_start + k * sector_size // 512``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from imgcrypt.errors import FormatError, UnsupportedError

_U64 = np.dtype("<u8")
U64Array = npt.NDArray[np.uint64]

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


def _mul_alpha_pow(lo: U64Array, hi: U64Array, shift: int, out_lo: U64Array, out_hi: U64Array) -> None:
    """(lo, hi) * x**shift in GF(2^128) with the XTS polynomial, for 1 <= shift <= 32.

    The ``shift`` bits pushed out of the top fold back in as ``o * (x^7 + x^2 + x + 1)``, which
    fits in the low word without further reduction because shift + 7 < 64.
    """
    s = np.uint64(shift)
    back = np.uint64(64 - shift)
    overflow = hi >> back
    np.left_shift(hi, s, out=out_hi)
    out_hi |= lo >> back
    np.left_shift(lo, s, out=out_lo)
    out_lo ^= overflow
    out_lo ^= overflow << np.uint64(1)
    out_lo ^= overflow << np.uint64(2)
    out_lo ^= overflow << np.uint64(7)


class SectorCipher:
    """Encrypts and decrypts whole sectors of one segment or keyslot area."""

    def __init__(self, spec: CipherSpec, key: bytes, sector_size: int = 512) -> None:
        spec.check_key_size(len(key))
        if sector_size not in (512, 1024, 2048, 4096):
            raise UnsupportedError(f"unsupported sector size {sector_size}")
        self.spec = spec
        self.sector_size = sector_size
        self._blocks = sector_size // 16
        self._iv_step = sector_size // 512
        if spec.chaining == "xts":
            half = len(key) // 2
            self._data = _ecb(key[:half])
            self._tweak = _ecb(key[half:])
        else:
            self._data = _ecb(key)
            self._tweak = (
                _ecb(hashlib.sha256(key).digest()) if spec.iv_scheme == "essiv:sha256" else None
            )

    def __repr__(self) -> str:
        return f"SectorCipher({self.spec}, sector_size={self.sector_size})"

    # -- IVs ---------------------------------------------------------------------------------

    def _iv_blocks(self, iv_start: int, count: int) -> bytes:
        """The 16-byte IV block of each of ``count`` sectors, after ESSIV where it applies."""
        ivs = np.zeros((count, 2), dtype=_U64)
        numbers = np.arange(count, dtype=_U64) * np.uint64(self._iv_step)
        numbers += np.uint64(iv_start & 0xFFFFFFFFFFFFFFFF)
        if self.spec.iv_scheme == "plain":
            numbers &= np.uint64(0xFFFFFFFF)
        ivs[:, 0] = numbers
        raw = ivs.tobytes()
        if self._tweak is not None:
            return self._tweak.encryptor().update(raw)
        return raw

    def _xts_tweaks(self, iv_start: int, count: int) -> U64Array:
        """Tweak of every 16-byte block, shape (count * blocks, 2) as (low, high) words."""
        # Low and high words live in separate (block, sector) arrays so every doubling step
        # works on contiguous rows; one transposing copy interleaves them at the end.
        first = np.frombuffer(self._iv_blocks(iv_start, count), dtype=_U64).reshape(count, 2)
        lo = np.empty((self._blocks, count), dtype=_U64)
        hi = np.empty((self._blocks, count), dtype=_U64)
        lo[0] = first[:, 0]
        hi[0] = first[:, 1]
        done = 1
        while done < self._blocks:
            step = min(done, 32, self._blocks - done)
            _mul_alpha_pow(lo[done - step : done], hi[done - step : done], step,
                           lo[done : done + step], hi[done : done + step])
            done += step
        tweaks = np.empty((count, self._blocks, 2), dtype=_U64)
        tweaks[:, :, 0] = lo.T
        tweaks[:, :, 1] = hi.T
        return tweaks.reshape(-1, 2)

    # -- data ----------------------------------------------------------------------------------

    def _check(self, data: bytes | bytearray | memoryview) -> int:
        if len(data) % self.sector_size:
            raise FormatError(f"data is not a whole number of {self.sector_size}-byte sectors")
        return len(data) // self.sector_size

    def encrypt(self, data: bytes | bytearray | memoryview, iv_start: int) -> bytes:
        count = self._check(data)
        if count == 0:
            return b""
        if self.spec.chaining == "xts":
            return self._xts(data, iv_start, count, encrypt=True)
        return self._cbc_encrypt(data, iv_start, count)

    def decrypt(self, data: bytes | bytearray | memoryview, iv_start: int) -> bytes:
        count = self._check(data)
        if count == 0:
            return b""
        if self.spec.chaining == "xts":
            return self._xts(data, iv_start, count, encrypt=False)
        return self._cbc_decrypt(data, iv_start, count)

    def _xts(self, data: bytes | bytearray | memoryview, iv_start: int, count: int,
             *, encrypt: bool) -> bytes:
        tweaks = self._xts_tweaks(iv_start, count)
        work = np.frombuffer(data, dtype=_U64).reshape(-1, 2) ^ tweaks
        out = bytearray(len(data) + 15)
        ctx = self._data.encryptor() if encrypt else self._data.decryptor()
        ctx.update_into(work.view(np.uint8).reshape(-1), out)
        result = np.frombuffer(out, dtype=_U64, count=2 * len(tweaks)).reshape(-1, 2)
        result ^= tweaks
        return bytes(memoryview(out)[: len(data)])

    def _cbc_decrypt(self, data: bytes | bytearray | memoryview, iv_start: int, count: int) -> bytes:
        plain = bytearray(len(data) + 15)
        self._data.decryptor().update_into(data, plain)
        words = np.frombuffer(plain, dtype=_U64, count=len(data) // 8).reshape(
            count, self._blocks, 2
        )
        cipher_words = np.frombuffer(data, dtype=_U64).reshape(count, self._blocks, 2)
        words[:, 1:, :] ^= cipher_words[:, :-1, :]
        words[:, 0, :] ^= np.frombuffer(self._iv_blocks(iv_start, count), dtype=_U64).reshape(
            count, 2
        )
        return bytes(memoryview(plain)[: len(data)])

    def _cbc_encrypt(self, data: bytes | bytearray | memoryview, iv_start: int, count: int) -> bytes:
        # CBC chains within a sector only, so block j of every sector goes through AES together.
        plain = np.frombuffer(data, dtype=_U64).reshape(count, self._blocks, 2)
        out = np.empty_like(plain)
        previous = np.frombuffer(self._iv_blocks(iv_start, count), dtype=_U64).reshape(count, 2)
        encryptor = self._data.encryptor()
        for j in range(self._blocks):
            block = np.ascontiguousarray(plain[:, j, :] ^ previous)
            previous = np.frombuffer(encryptor.update(block.tobytes()), dtype=_U64).reshape(count, 2)
            out[:, j, :] = previous
        return out.tobytes()

"""Sector ciphers as dm-crypt applies them: every cipher spec of the crypto table.

A spec is a block cipher of :mod:`imgcrypt.crypto.backend` (AES, camellia, sm4, cast5), a chaining
mode (xts, cbc, ecb, ctr) and an IV generator (plain, plain64, plain64be, benbi, null,
essiv:HASH). AES-XTS and AES-CBC with plain/plain64 (and cbc with essiv:sha256) run on the fast
paths below, the only forms imgcrypt writes; every other spec runs in
:mod:`imgcrypt.crypto._sector_generic`, on whole buffers with the cipher's ECB from `cryptography`.
Serpent, twofish and the other tools' IV generators (lmk, tcw...) are refused with a message
naming the tools that open them and the command that converts them.

XTS runs, by preference, in OpenSSL's own EVP AES-XTS (the optional C module ``_evpxts``, linked
against the system libcrypto): one context a call, the IV set again for every sector, the loop
over sectors in C without the GIL. Without that module (no libcrypto headers at build time), or
for a key whose two halves are equal (which OpenSSL refuses to encrypt with, as FIPS asks), XTS
is vectorised: one AES-ECB call encrypts every sector's IV into its tweak, the GF(2^128)
multiply-by-alpha sequence is computed for all blocks of all sectors (by the small C walker
``_xtsmul`` when it is built, else by numpy in ``_sector_numpy``), and AES-ECB processes the
data XORed with those tweaks. That is byte-identical to `cryptography`'s XTS run sector by
sector, without a Python object per sector. The work runs in batches, in per-thread buffers;
the AES-ECB calls, the C walker and the numpy passes release the GIL, so several threads can
share one SectorCipher.

IVs always count 512-byte units, as dm-crypt does without ``iv_large_sectors``: sector ``k`` of
a buffer that starts at IV ``iv_start`` uses IV ``iv_start + k * sector_size // 512``.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from imgcrypt.crypto import backend
from imgcrypt.crypto.backend import hash_size
from imgcrypt.errors import FormatError, UnsupportedError, UsageError

try:  # the optional C tweak walker; sectors.py computes identical bytes without it
    from imgcrypt.crypto import _xtsmul
except ImportError:  # pragma: no cover - exercised where no compiler was available
    _xtsmul = None  # type: ignore[assignment]

try:  # the optional OpenSSL EVP AES-XTS loop; the paths below give identical bytes without it
    from imgcrypt.crypto import _evpxts
except ImportError:  # pragma: no cover - exercised where libcrypto's headers were missing
    _evpxts = None  # type: ignore[assignment]

ACCELERATED = _xtsmul is not None
OPENSSL_XTS = _evpxts is not None
# How XTS can run here, fastest first: OpenSSL's EVP XTS, AES-ECB plus the C tweak walker,
# AES-ECB plus numpy. Tests name one to compare them; callers leave the choice to SectorCipher.
XTS_BACKENDS = tuple(name for name, present in (("openssl", OPENSSL_XTS), ("walker", ACCELERATED),
                                                ("numpy", True)) if present)

if TYPE_CHECKING:
    from imgcrypt.crypto._sector_generic import GenericKernel
    from imgcrypt.crypto._sector_numpy import NumpyKernel

Buffer = bytes | bytearray | memoryview

# Bytes per sub-batch: small enough that the ~5 buffers a sub-batch touches fit in a 2 MiB L2,
# large enough that numpy's per-call overhead stays small (measured: 256 KiB is the knee).
SUB_BATCH_BYTES = 256 << 10
# With the C tweak walker a batch costs three streaming passes, so it can be larger.
ACCELERATED_BATCH_BYTES = 1 << 20
_MASK64 = (1 << 64) - 1

# The data sector sizes dm-crypt allows (LUKS2 declares one per segment; LUKS1 has only 512).
SECTOR_SIZES = (512, 1024, 2048, 4096)
# AES cipher modes on the fast paths below, with the key sizes (bytes) they take; the only ones
# imgcrypt writes (the clouds read aes-xts-plain64, and the cbc forms are the legacy ones).
_FAST_MODES: dict[str, tuple[int, ...]] = {
    "xts-plain64": (32, 64),
    "xts-plain": (32, 64),
    "cbc-essiv:sha256": (16, 24, 32),
    "cbc-plain64": (16, 24, 32),
    "cbc-plain": (16, 24, 32),
}
# The chaining modes and IV generators the table's ciphers run in (imgcrypt.crypto._sector_generic).
CHAININGS = ("xts", "cbc", "ecb", "ctr")
IV_GENERATORS = ("plain", "plain64", "plain64be", "benbi", "null", "essiv")
# dm-crypt IV generators for other tools' formats, named in the refusal.
_FOREIGN_IVGENS = {"lmk": "loop-AES", "tcw": "TrueCrypt", "random": "dm-crypt's random IVs",
                   "eboiv": "BitLocker", "elephant": "BitLocker"}


def _refuse_mode(name: str, mode: str, why: str) -> UnsupportedError:
    return UnsupportedError(f"unsupported cipher {name}-{mode[:48]}: {why}; cryptsetup with the "
                            f"Linux kernel's dm-crypt opens it; {backend.CONVERT}")


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
        info = backend.block_cipher(name, f"{name}-{mode}" if mode else name)
        mode = mode.lower()
        chaining, _, iv_scheme = mode.partition("-")
        ivgen, _, essiv_hash = iv_scheme.partition(":")
        if chaining not in CHAININGS:
            raise _refuse_mode(info.name, mode, f"chaining mode {chaining[:16]!r} is not "
                               "implemented")
        if ivgen in _FOREIGN_IVGENS:
            raise _refuse_mode(info.name, mode, f"IV generator {ivgen} ({_FOREIGN_IVGENS[ivgen]} "
                               "compatibility) is not implemented")
        if not (ivgen in IV_GENERATORS or (chaining == "ecb" and not iv_scheme)):
            raise _refuse_mode(info.name, mode, f"IV generator {ivgen[:16]!r} is unknown")
        if (ivgen == "essiv") != bool(essiv_hash):
            raise _refuse_mode(info.name, mode, "only essiv takes a hash")
        if chaining == "xts" and info.block_size != 16:
            raise _refuse_mode(info.name, mode, "XTS needs a 16-byte block cipher")
        if essiv_hash:
            size = hash_size(essiv_hash)
            if size not in info.key_sizes:
                raise _refuse_mode(info.name, mode, f"ESSIV's hash {essiv_hash[:16]!r} does not "
                                   f"give a key size {info.name} takes")
            backend.hashlib_name(essiv_hash)  # computable here, or refused naming the hash
            mode = f"{chaining}-essiv:{backend.lookup_hash(essiv_hash).name}"  # type: ignore[union-attr]
        return cls(info.name, mode)

    @property
    def chaining(self) -> str:
        return self.mode.partition("-")[0]

    @property
    def iv_scheme(self) -> str:
        return self.mode.partition("-")[2]

    @property
    def fast(self) -> bool:
        """On the AES fast paths (and so among the specs imgcrypt writes)?"""
        return self.name == "aes" and self.mode in _FAST_MODES

    def __str__(self) -> str:
        return f"{self.name}-{self.mode}"

    def key_sizes(self) -> tuple[int, ...]:
        """The key sizes (bytes) this spec takes: XTS keys are two cipher keys."""
        sizes = backend.block_cipher(self.name).key_sizes
        return tuple(2 * n for n in sizes) if self.chaining == "xts" else sizes

    def check_key_size(self, key_bytes: int) -> None:
        sizes = self.key_sizes()
        if key_bytes not in sizes:
            shown = ", ".join(str(8 * n) for n in sizes)
            raise UnsupportedError(
                f"{self} needs a key of {shown} bits, not {8 * key_bytes} bits"
            )

    def check_writable(self, key_bytes: int) -> None:
        """Refuse to write anything but the AES forms the clouds read (and their legacy)."""
        if not self.fast or key_bytes not in _FAST_MODES[self.mode]:
            raise UnsupportedError(
                f"imgcrypt reads {self} but writes only aes-xts-plain64, aes-xts-plain and the "
                "legacy aes-cbc-essiv:sha256, aes-cbc-plain64 and aes-cbc-plain")


def _ecb(key: bytes) -> Cipher[modes.ECB]:
    return Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305 - XTS/CBC are built on top of it


class SectorCipher:
    """Encrypts and decrypts whole sectors of one segment or keyslot area.

    An instance is safe to share between threads: each call uses its own cipher contexts and
    the calling thread's scratch buffers.
    """

    def __init__(self, spec: CipherSpec, key: bytes, sector_size: int = 512, *,
                 batch_bytes: int = SUB_BATCH_BYTES, accelerated: bool = True,
                 xts_backend: str | None = None) -> None:
        spec.check_key_size(len(key))
        if sector_size not in SECTOR_SIZES:
            raise UnsupportedError(f"unsupported sector size {sector_size}")
        if batch_bytes < 1:
            raise UsageError("batch_bytes must be positive")
        self.spec = spec
        self.sector_size = sector_size
        self._blocks = sector_size // 16
        self._iv_step = sector_size // 512
        self._sub_sectors = max(1, batch_bytes // sector_size)
        self._local = threading.local()
        self._generic: GenericKernel | None = None
        # CBC decryption in OpenSSL's EVP loop (no numpy); CBC encryption chains block by block
        # and stays on the numpy path.
        self._evp_cbc: tuple[bytes, bytes] | None = None
        if not spec.fast:
            # Every other cipher, mode and IV generator of the table, on whole buffers.
            from imgcrypt.crypto._sector_generic import GenericKernel

            self.xts_backend = None
            self._evp_key = None
            self._accelerated = False
            self._generic = GenericKernel(backend.block_cipher(spec.name), spec.chaining,
                                          spec.iv_scheme, key, sector_size, self._sub_sectors)
            return
        backend_name = _choose_xts_backend(spec, key, accelerated, xts_backend)
        self.xts_backend = backend_name
        self._evp_key = key if backend_name == "openssl" else None
        if spec.chaining == "cbc" and accelerated and OPENSSL_XTS:
            essiv = hashlib.sha256(key).digest() if spec.iv_scheme == "essiv:sha256" else b""
            self._evp_cbc = (key, essiv)
        self._accelerated = backend_name == "walker"
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
        target = _writable_bytes(out, len(source))
        count = len(source) // self.sector_size
        if count == 0:
            return
        if self._generic is not None:
            self._generic.run(source, iv_start, target, count, encrypt=encrypt)
        elif self._evp_cbc is not None and not encrypt:
            assert _evpxts is not None
            key, essiv_key = self._evp_cbc
            _evpxts.cbc_decrypt(key, essiv_key, source, target, self.sector_size, iv_start,
                                self.spec.iv_scheme == "plain")
        elif self._evp_key is not None:
            assert _evpxts is not None
            _evpxts.xts(self._evp_key, source, target, self.sector_size, iv_start,
                        self.spec.iv_scheme == "plain", encrypt)
        elif self._accelerated:
            self._xts_accelerated(source, iv_start, count, target, encrypt=encrypt)
        else:
            self._numpy().run(source, iv_start, target, count, encrypt=encrypt)

    def _numpy(self) -> NumpyKernel:
        kernel: NumpyKernel | None = self.__dict__.get("_kernel")
        if kernel is None:
            from imgcrypt.crypto._sector_numpy import NumpyKernel

            kernel = NumpyKernel(self.spec.chaining, self.spec.iv_scheme, self._data,
                                 self._tweak, self.sector_size, self._sub_sectors)
            self._kernel = kernel
        return kernel

    def _xts_accelerated(self, source: memoryview, iv_start: int, count: int,
                         target: memoryview, *, encrypt: bool) -> None:
        # Three streaming passes a batch: the C walker XORs the tweak sequence in, one AES-ECB
        # call, the walker XORs it out again. No numpy, no Python object per sector.
        assert _xtsmul is not None and self._tweak is not None
        ivs = _xtsmul.iv_blocks(iv_start, self._iv_step, count, self.spec.iv_scheme == "plain")
        first = self._tweak.encryptor().update(ivs)
        batch = self._sub_sectors * self.sector_size
        work, result = self._buffers(batch)
        ctx = self._data.encryptor() if encrypt else self._data.decryptor()
        for start in range(0, count, self._sub_sectors):
            sectors = min(self._sub_sectors, count - start)
            span = slice(start * self.sector_size, (start + sectors) * self.sector_size)
            n = sectors * self.sector_size
            tweaks = first[16 * start : 16 * (start + sectors)]
            _xtsmul.xor_tweaks(source[span], work[:n], tweaks, self._blocks)
            ctx.update_into(work[:n], result)
            _xtsmul.xor_tweaks(result[:n], target[span], tweaks, self._blocks)

    def _buffers(self, size: int) -> tuple[memoryview, memoryview]:
        """This thread's work buffer and AES output buffer (one block of slack) for a batch."""
        buffers: tuple[memoryview, memoryview] | None = getattr(self._local, "buffers", None)
        if buffers is None or len(buffers[0]) != size:
            buffers = (memoryview(bytearray(size)), memoryview(bytearray(size + 16)))
            self._local.buffers = buffers
        return buffers


def _choose_xts_backend(spec: CipherSpec, key: bytes, accelerated: bool,
                        wanted: str | None) -> str | None:
    """The XTS implementation for this key (None for CBC): ``wanted`` if given, else the
    fastest one built; OpenSSL only for keys whose halves differ, so that a key OpenSSL refuses
    to encrypt with behaves the same in every build (the ECB-based paths accept it)."""
    if spec.chaining != "xts":
        return None
    if wanted is not None:
        if wanted not in XTS_BACKENDS:
            raise UsageError(f"XTS backend {wanted!r} is not available here")
        if wanted == "openssl" and len(key) not in (32, 64):
            raise UsageError("OpenSSL's XTS takes AES-128 and AES-256 keys only")
        if wanted == "openssl" and key[: len(key) // 2] == key[len(key) // 2 :]:
            raise UsageError("OpenSSL's XTS refuses keys whose two halves are equal")
        return wanted
    if not accelerated:
        return "numpy"
    if OPENSSL_XTS and len(key) in (32, 64) and key[: len(key) // 2] != key[len(key) // 2 :]:
        return "openssl"
    return "walker" if ACCELERATED else "numpy"


def _writable_bytes(out: Buffer, size: int) -> memoryview:
    view = memoryview(out)
    if view.readonly:
        raise UsageError("output buffer is read-only")
    if not view.c_contiguous:
        raise UsageError("output buffer is not contiguous")
    view = view.cast("B")
    if view.nbytes != size:
        raise UsageError(f"output buffer holds {view.nbytes} bytes, not {size}")
    return view

"""Parameters for a new container, and building its header region from them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from imgcrypt.crypto.kdf import Argon2, Kdf, Pbkdf2, pbkdf2_iterations_for
from imgcrypt.crypto.kdfparams import ARGON2ID, KDF_NAMES, PBKDF2
from imgcrypt.crypto.sectors import SECTOR_SIZES, CipherSpec
from imgcrypt.errors import UsageError
from imgcrypt.luks.base import SECTOR

DEFAULT_ITER_TIME_MS = 2000
DEFAULT_ARGON2_MEMORY_KIB = 1024 * 1024
DEFAULT_ARGON2_PARALLEL = 4
# cryptsetup 2.4+ formats LUKS2 on a file with 4096-byte sectors (the file system's block
# size); imgcrypt pads the payload to whole sectors, so the data area is always aligned.
DEFAULT_LUKS2_SECTOR_SIZE = 4096


@dataclass(frozen=True)
class FormatOptions:
    """What ``imgcrypt encrypt`` asks for; defaults follow cryptsetup.

    ``key_size`` is in bits and, as in cryptsetup, is the whole key: for XTS, 512 means
    AES-256-XTS and 256 means AES-128-XTS.
    """

    version: int = 1
    cipher: str = "aes-xts-plain64"
    key_size: int = 512
    hash: str = "sha256"
    iter_time_ms: int = DEFAULT_ITER_TIME_MS
    iterations: int | None = None  # exact PBKDF2 iterations / argon2 time cost; skips the benchmark
    sector_size: int | None = None  # None: 512 for LUKS1, 4096 for LUKS2 (as cryptsetup)
    pbkdf: str | None = None  # LUKS2: argon2id (default), argon2i, pbkdf2. LUKS1: pbkdf2 only.
    # argon2 memory: the benchmark's maximum (cryptsetup's --pbkdf-memory), or exact with
    # ``iterations``; None means cryptsetup's default of 1 GiB.
    pbkdf_memory_kib: int | None = None
    pbkdf_parallel: int | None = None  # None: min(4, CPUs) when benchmarking, else 4
    key_slot: int = 0  # the keyslot the first passphrase goes into (luksFormat --key-slot)

    @property
    def data_sector_size(self) -> int:
        if self.sector_size is not None:
            return self.sector_size
        return SECTOR if self.version == 1 else DEFAULT_LUKS2_SECTOR_SIZE

    def validate(self) -> CipherSpec:
        if self.version not in (1, 2):
            raise UsageError(f"unknown LUKS version {self.version}")
        if self.key_size % 8:
            raise UsageError("key size must be a multiple of 8 bits")
        spec = CipherSpec.parse(self.cipher)
        spec.check_key_size(self.key_size // 8)
        spec.check_writable(self.key_size // 8)
        if self.version == 1 and self.data_sector_size != SECTOR:
            raise UsageError("LUKS1 supports 512-byte sectors only")
        if self.data_sector_size not in SECTOR_SIZES:
            *most, last = SECTOR_SIZES
            raise UsageError(f"sector size must be {', '.join(map(str, most))} or {last}")
        if self.version == 1 and self.pbkdf not in (None, PBKDF2):
            raise UsageError("LUKS1 keyslots use pbkdf2")
        if self.pbkdf is not None and self.pbkdf not in KDF_NAMES:
            raise UsageError(f"unknown pbkdf {self.pbkdf!r}")
        if self.iterations is not None and self.iterations < 1:
            raise UsageError("iterations must be positive")
        if self.iter_time_ms < 1:
            raise UsageError("iter-time must be positive")
        if self.pbkdf_memory_kib is not None and not 32 <= self.pbkdf_memory_kib <= 4 << 20:
            raise UsageError("pbkdf memory must be 32..4194304 KiB (cryptsetup's limits)")
        if self.pbkdf_parallel is not None and not 1 <= self.pbkdf_parallel <= 4:
            raise UsageError("pbkdf parallel must be 1..4")
        slots = 8 if self.version == 1 else 32
        if not 0 <= self.key_slot < slots:
            raise UsageError(f"LUKS{self.version} keyslots are numbered 0..{slots - 1}")
        return spec

    @property
    def kdf_name(self) -> str:
        return self.pbkdf or (PBKDF2 if self.version == 1 else ARGON2ID)

    def keyslot_kdf(self) -> Kdf:
        """KDF parameters for a new keyslot, benchmarked here unless given exactly."""
        salt = os.urandom(32)
        if self.kdf_name == PBKDF2:
            iterations = self.iterations or pbkdf2_iterations_for(
                self.hash, self.key_size // 8, self.iter_time_ms
            )
            return Pbkdf2(self.hash, iterations, salt)
        if self.iterations is not None:
            # forced: exactly what was asked, neither benchmarked nor capped (as cryptsetup)
            return Argon2(self.kdf_name, self.iterations,
                          self.pbkdf_memory_kib or DEFAULT_ARGON2_MEMORY_KIB,
                          self.pbkdf_parallel or DEFAULT_ARGON2_PARALLEL, salt)
        from imgcrypt.crypto.benchmark import benchmark_argon2

        cost = benchmark_argon2(self.kdf_name, self.iter_time_ms,
                                max_memory_kib=self.pbkdf_memory_kib, parallel=self.pbkdf_parallel)
        return Argon2(self.kdf_name, cost.time, cost.memory_kib, cost.parallel, salt)

    def digest_iterations(self) -> int:
        # cryptsetup spends 1/8 of the keyslot budget on the volume-key digest, at least 1000.
        if self.iterations is not None:
            return max(1000, self.iterations // 8) if self.kdf_name == PBKDF2 else 1000
        return max(1000, pbkdf2_iterations_for(self.hash, 20, max(1, self.iter_time_ms // 8)))


@dataclass(frozen=True)
class KdfOptions:
    """The KDF asked for a new keyslot in an existing image (``rekey``'s --iter-time,
    --iterations, --pbkdf...); the image's own header supplies the rest: its version decides the
    default KDF, LUKS1 keeps its header hash."""

    iter_time_ms: int = DEFAULT_ITER_TIME_MS
    iterations: int | None = None
    pbkdf: str | None = None
    pbkdf_memory_kib: int | None = None
    pbkdf_parallel: int | None = None

    def format_options(self) -> FormatOptions:
        """These KDF choices over :class:`FormatOptions`' defaults (the header overrides
        version, hash, cipher and key size: :func:`imgcrypt.luks.rekey.kdf_for`)."""
        return FormatOptions(
            iter_time_ms=self.iter_time_ms, iterations=self.iterations, pbkdf=self.pbkdf,
            pbkdf_memory_kib=self.pbkdf_memory_kib, pbkdf_parallel=self.pbkdf_parallel,
        )


def new_region(options: FormatOptions, master_key: bytes, passphrase: bytes) -> bytes:
    """The header region of a new container holding ``master_key`` behind ``passphrase``."""
    spec = options.validate()
    if len(master_key) * 8 != options.key_size:
        raise UsageError("master key length does not match the key size")
    kdf = options.keyslot_kdf()
    if options.version == 1:
        from imgcrypt.luks import luks1

        assert isinstance(kdf, Pbkdf2)
        return luks1.format_region(
            master_key, passphrase, cipher=spec, hash_spec=options.hash,
            iterations=kdf.iterations, digest_iterations=options.digest_iterations(),
            slot=options.key_slot,
        )
    from imgcrypt.luks import luks2

    return luks2.format_region(
        master_key, passphrase, cipher=spec, kdf=kdf, sector_size=options.data_sector_size,
        digest_iterations=options.digest_iterations(), slot=options.key_slot,
    )

"""Password-based key derivation for LUKS keyslots and digests, with bounds checked first.

KDF parameters come from image headers, i.e. from whoever made the image. :class:`KdfLimits`
caps them, and :func:`derive` refuses anything above the caps before doing any work, so a
hostile header costs microseconds to reject instead of hours or terabytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.kdf.argon2 import Argon2i, Argon2id

from imgcrypt.crypto import backend
from imgcrypt.crypto.cost import check_cost
from imgcrypt.crypto.kdfparams import ARGON2I, ARGON2ID, Argon2, Kdf, Pbkdf2
from imgcrypt.errors import FormatError, FormatFault, UnsupportedError

# The KDF parameter types are leaf types (imgcrypt.crypto.kdfparams), shared with the cost model;
# they are imported from here as well, where they are run.
__all__ = ["DEFAULT_LIMITS", "Argon2", "Kdf", "KdfLimits", "Pbkdf2", "argon2_time_for",
           "check_hash", "check_limits", "check_total", "derive", "pbkdf2_iterations_for"]


def check_hash(name: str) -> None:
    """Refuse a LUKS hash spec PBKDF2 cannot run with here (UnsupportedError, naming it)."""
    backend.pbkdf2_cost_weight(name)


@dataclass(frozen=True)
class KdfLimits:
    """Caps on KDF parameters read from headers. The defaults are cryptsetup's own maxima for
    argon2 memory and parallelism, and bounds on iterations that no legitimate image exceeds."""

    max_pbkdf2_iterations: int = 100_000_000
    max_argon2_time: int = 1_000
    max_argon2_memory_kib: int = 4 * 1024 * 1024
    max_argon2_parallel: int = 4
    max_salt_size: int = 4096
    max_key_size: int = 512
    # Work caps (argon2 memory x passes, in KiB) for one keyslot, and for everything one unlock
    # may compute, so eight or thirty-two keyslots each just under the caps cannot add up to
    # hours for a wrong passphrase.
    max_argon2_work: int = 64 * 1024 * 1024
    max_total_pbkdf2_iterations: int = 200_000_000
    max_total_argon2_work: int = 256 * 1024 * 1024
    # All KDF work one unlock may do, as cost (see imgcrypt.crypto.cost): one unit is one
    # PBKDF2-HMAC-SHA-256 iteration for one 32-byte block (~120 ns here), so the default is
    # about 48 s of one core here: eight keyslots of cryptsetup's 2-second benchmark made on a
    # machine three times as fast, each with its digest check.
    max_unlock_cost: int = 400_000_000


#: The bounds applied when a caller gives none.
DEFAULT_LIMITS = KdfLimits()


def check_limits(kdf: Kdf, length: int, limits: KdfLimits = DEFAULT_LIMITS) -> None:
    """Refuse parameters above ``limits`` or outside what the algorithm accepts."""
    if not 1 <= length <= limits.max_key_size:
        raise FormatError(f"derived key length {length} outside 1..{limits.max_key_size}",
                          reason=FormatFault.LIMIT_EXCEEDED)
    if len(kdf.salt) > limits.max_salt_size:
        raise FormatError(f"KDF salt of {len(kdf.salt)} bytes exceeds the cap",
                          reason=FormatFault.LIMIT_EXCEEDED)
    if isinstance(kdf, Pbkdf2):
        check_hash(kdf.hash)
        if not 1 <= kdf.iterations <= limits.max_pbkdf2_iterations:
            raise FormatError(
                f"pbkdf2 iterations {kdf.iterations} outside 1..{limits.max_pbkdf2_iterations}",
                reason=FormatFault.LIMIT_EXCEEDED,
            )
        _check_cost(kdf, length, limits)
        return
    if kdf.variant not in (ARGON2I, ARGON2ID):
        raise UnsupportedError(f"unsupported KDF {kdf.variant!r}")
    if not 1 <= kdf.time <= limits.max_argon2_time:
        raise FormatError(f"argon2 time cost {kdf.time} outside 1..{limits.max_argon2_time}",
                          reason=FormatFault.LIMIT_EXCEEDED)
    if not 1 <= kdf.parallel <= limits.max_argon2_parallel:
        raise FormatError(
            f"argon2 parallelism {kdf.parallel} outside 1..{limits.max_argon2_parallel}",
            reason=FormatFault.LIMIT_EXCEEDED,
        )
    if not 8 * kdf.parallel <= kdf.memory_kib <= limits.max_argon2_memory_kib:
        raise FormatError(
            f"argon2 memory {kdf.memory_kib} KiB outside {8 * kdf.parallel}.."
            f"{limits.max_argon2_memory_kib} KiB",
            reason=FormatFault.LIMIT_EXCEEDED,
        )
    if kdf.memory_kib * kdf.time > limits.max_argon2_work:
        raise FormatError(
            f"argon2 work of {kdf.memory_kib} KiB x {kdf.time} passes exceeds the cap",
            reason=FormatFault.LIMIT_EXCEEDED,
        )
    if len(kdf.salt) < 8:
        raise UnsupportedError("argon2 salt shorter than 8 bytes")
    _check_cost(kdf, length, limits)


def _check_cost(kdf: Kdf, length: int, limits: KdfLimits) -> None:
    check_cost(kdf, length, limits.max_unlock_cost)


def check_total(kdfs: Iterable[Kdf], limits: KdfLimits = DEFAULT_LIMITS) -> None:
    """Refuse a set of KDFs (all one unlock may try) whose work adds up beyond the caps."""
    pbkdf2 = argon2 = 0
    for kdf in kdfs:
        if isinstance(kdf, Pbkdf2):
            pbkdf2 += kdf.iterations
        else:
            argon2 += kdf.memory_kib * kdf.time
    if pbkdf2 > limits.max_total_pbkdf2_iterations:
        raise FormatError(
            f"the keyslots ask for {pbkdf2} pbkdf2 iterations in all, above the cap of "
            f"{limits.max_total_pbkdf2_iterations}",
            reason=FormatFault.LIMIT_EXCEEDED,
        )
    if argon2 > limits.max_total_argon2_work:
        raise FormatError("the keyslots' argon2 work adds up beyond the cap",
                          reason=FormatFault.LIMIT_EXCEEDED)


def derive(kdf: Kdf, secret: bytes, length: int, limits: KdfLimits = DEFAULT_LIMITS) -> bytes:
    """Derive ``length`` bytes from ``secret``; parameters are checked against ``limits`` first."""
    check_limits(kdf, length, limits)
    if isinstance(kdf, Pbkdf2):
        return backend.pbkdf2(kdf.hash, secret, kdf.salt, kdf.iterations, length)
    argon = Argon2id if kdf.variant == ARGON2ID else Argon2i
    return argon(
        salt=kdf.salt, length=length, iterations=kdf.time, lanes=kdf.parallel,
        memory_cost=kdf.memory_kib,
    ).derive(secret)


def pbkdf2_iterations_for(hash_name: str, length: int, milliseconds: int) -> int:
    """Iterations of PBKDF2 that take about ``milliseconds`` here (cryptsetup's --iter-time)."""
    check_hash(hash_name)
    probe = 1 << 14
    while True:
        start = time.perf_counter()
        backend.pbkdf2(hash_name, b"benchmark", bytes(32), probe, length)
        elapsed = time.perf_counter() - start
        if elapsed >= 0.05 or probe >= 1 << 24:
            break
        probe *= 4
    return max(1000, int(probe * (milliseconds / 1000.0) / max(elapsed, 1e-6)))


def argon2_time_for(
    variant: str, memory_kib: int, parallel: int, milliseconds: int, max_time: int = 1000
) -> int:
    """Argon2 time cost that takes about ``milliseconds`` with the given memory and lanes."""
    probe = Argon2(variant, 1, memory_kib, parallel, bytes(16))
    start = time.perf_counter()
    derive(probe, b"benchmark", 32)
    one = max(time.perf_counter() - start, 1e-6)
    # cryptsetup's floor for argon2 time cost is 4.
    return max(4, min(max_time, int((milliseconds / 1000.0) / one)))

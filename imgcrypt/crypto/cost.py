"""What a KDF costs, as work rather than as a count of iterations.

PBKDF2 computes one HMAC chain per output block of the hash, so its cost is iterations x
blocks x the price of one HMAC of that hash; argon2's is memory x passes. Both are expressed in
one unit, the price of one PBKDF2-HMAC-SHA-256 iteration for one 32-byte block (about 120 ns on
the machine docs/security.md describes), so one budget covers everything an unlock may compute:
every keyslot it tries and the digest check after each.

The per-hash weights are a column of the one crypto table (:mod:`imgcrypt.crypto.backend`, where
their measurement is described). Argon2id was measured with ``cryptography`` (OpenSSL 3) on that
machine: 11.6 per KiB and pass at 256 MiB in wall time, 7.5 at 1 GiB in CPU time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from imgcrypt.crypto.backend import hash_size, pbkdf2_cost_weight
from imgcrypt.crypto.kdfparams import Argon2, Kdf, Pbkdf2
from imgcrypt.errors import FormatError, FormatFault, UnsupportedError

# Price of one KiB of argon2 memory for one pass: measured 11.6 (wall time, 256 MiB, 4 lanes
# on 2 cores) and 7.5 (CPU time, 1 GiB, 4 lanes), rounded up.
ARGON2_KIB_PASS_COST = 12.0


def pbkdf2_cost(hash_name: str, iterations: int, length: int) -> int:
    """Cost of PBKDF2 with ``hash_name`` deriving ``length`` bytes."""
    weight = pbkdf2_cost_weight(hash_name)
    output = hash_size(hash_name)
    assert output is not None  # every hash with a weight is in the one table
    blocks = math.ceil(length / output)
    return math.ceil(iterations * blocks * weight)


def argon2_cost(memory_kib: int, passes: int) -> int:
    """An Argon2 keyslot's cost in the budget's units: memory times passes, weighted."""
    return math.ceil(memory_kib * passes * ARGON2_KIB_PASS_COST)


def kdf_cost(kdf: Kdf, length: int) -> int:
    """Cost of one derivation of ``length`` bytes with a :mod:`imgcrypt.crypto.kdf` KDF."""
    if isinstance(kdf, Pbkdf2):
        return pbkdf2_cost(kdf.hash, kdf.iterations, length)
    if isinstance(kdf, Argon2):
        return argon2_cost(kdf.memory_kib, kdf.time)
    raise UnsupportedError(f"unsupported KDF {type(kdf).__name__}")


def check_cost(kdf: Kdf, length: int, budget: int) -> None:
    """Refuse one derivation that alone costs more than ``budget``."""
    cost = kdf_cost(kdf, length)
    if cost > budget:
        raise FormatError(
            f"one KDF derivation would cost {cost:,} units, above the budget of {budget:,} "
            "for a whole unlock",
            reason=FormatFault.LIMIT_EXCEEDED,
        )


def check_unlock_cost(derivations: Iterable[tuple[Kdf, int]], budget: int) -> int:
    """Refuse an unlock whose derivations (KDF, output length) cost more than ``budget``."""
    total = sum(kdf_cost(kdf, length) for kdf, length in derivations)
    if total > budget:
        raise FormatError(
            f"trying every keyslot would cost {total:,} units of KDF work, above the budget of "
            f"{budget:,} per unlock",
            reason=FormatFault.LIMIT_EXCEEDED,
        )
    return total

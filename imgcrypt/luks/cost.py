"""What a KDF costs, as work rather than as a count of iterations.

PBKDF2 computes one HMAC chain per output block of the hash, so its cost is iterations x
blocks x the price of one HMAC of that hash; argon2's is memory x passes. Both are expressed in
one unit, the price of one PBKDF2-HMAC-SHA-256 iteration for one 32-byte block (about 120 ns on
the machine docs/security.md describes), so one budget covers everything an unlock may compute:
every keyslot it tries and the digest check after each.

The weights were measured with ``cryptography``'s PBKDF2HMAC and Argon2id (OpenSSL 3) on that
machine, rounded up: an iteration of one block cost 121 ns with SHA-1 and SHA-256, 132 with
SHA-224, 386 with SHA-384, 410 with SHA-512, 672 with SHA3-256 and 674 with SHA3-512; argon2id
cost 1.2 to 2.0 us per KiB and pass between 64 MiB and 256 MiB of memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from imgcrypt.errors import LimitExceededError, UnsupportedError

# Price of one PBKDF2 iteration per output block, in SHA-256 iteration-blocks.
HASH_BLOCK_COST: dict[str, float] = {
    "sha1": 1.0,
    "sha224": 1.1,
    "sha256": 1.0,
    "sha384": 3.2,
    "sha512": 3.4,
    "sha3-256": 5.6,
    "sha3-512": 5.6,
}
HASH_OUTPUT_BYTES: dict[str, int] = {
    "sha1": 20, "sha224": 28, "sha256": 32, "sha384": 48, "sha512": 64,
    "sha3-256": 32, "sha3-512": 64,
}
# Price of one KiB of argon2 memory for one pass (measured 10 to 16.5, rounded up).
ARGON2_KIB_PASS_COST = 18.0


def pbkdf2_cost(hash_name: str, iterations: int, length: int) -> int:
    """Cost of PBKDF2 with ``hash_name`` deriving ``length`` bytes."""
    name = hash_name.lower()
    if name not in HASH_BLOCK_COST:
        raise UnsupportedError(f"unsupported hash {hash_name!r}")
    blocks = math.ceil(length / HASH_OUTPUT_BYTES[name])
    return math.ceil(iterations * blocks * HASH_BLOCK_COST[name])


def argon2_cost(memory_kib: int, passes: int) -> int:
    return math.ceil(memory_kib * passes * ARGON2_KIB_PASS_COST)


def kdf_cost(kdf: object, length: int) -> int:
    """Cost of one derivation of ``length`` bytes with a :mod:`imgcrypt.luks.kdf` KDF."""
    from imgcrypt.luks.kdf import Argon2, Pbkdf2

    if isinstance(kdf, Pbkdf2):
        return pbkdf2_cost(kdf.hash, kdf.iterations, length)
    if isinstance(kdf, Argon2):
        return argon2_cost(kdf.memory_kib, kdf.time)
    raise UnsupportedError(f"unsupported KDF {type(kdf).__name__}")


def check_cost(kdf: object, length: int, budget: int) -> None:
    """Refuse one derivation that alone costs more than ``budget``."""
    cost = kdf_cost(kdf, length)
    if cost > budget:
        raise LimitExceededError(
            f"one KDF derivation would cost {cost:,} units, above the budget of {budget:,} "
            "for a whole unlock"
        )


def check_unlock_cost(derivations: Iterable[tuple[object, int]], budget: int) -> int:
    """Refuse an unlock whose derivations (KDF, output length) cost more than ``budget``."""
    total = sum(kdf_cost(kdf, length) for kdf, length in derivations)
    if total > budget:
        raise LimitExceededError(
            f"trying every keyslot would cost {total:,} units of KDF work, above the budget of "
            f"{budget:,} per unlock"
        )
    return total

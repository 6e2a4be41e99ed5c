"""Argon2 cost for a new keyslot, benchmarked to a time target the way cryptsetup does it.

The facts, from cryptsetup's ``lib/crypto_backend/pbkdf_check.c`` and ``lib/utils_pbkdf.c``:

* the time cost is at least 4 passes; a forced memory cost is at least 32 KiB, and the
  benchmark does not go below 64 MiB (nor below 8 KiB per lane);
* memory is capped at the maximum asked for (1 GiB by default, 4 GiB at most), and that cap
  at half of the physical memory (half of the free memory on a small machine without swap);
* lanes are ``min(4, online CPUs)``;
* the search measures wall-clock time (argon2 may run its lanes in parallel): it first finds
  parameters that take at least 250 ms, then scales memory first (up to the cap) and passes
  second to the target, re-measuring until a run lands within 95 %..110 % of it.

The search (:func:`search_argon2`) takes the measuring function as a parameter, so its rules
can be checked against a cost model without burning CPU; :func:`benchmark_argon2` measures
real derivations.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from imgcrypt.crypto.cost import ARGON2_KIB_PASS_COST
from imgcrypt.crypto.kdf import DEFAULT_LIMITS, Argon2, derive
from imgcrypt.errors import UsageError

MIN_TIME = 4
MIN_MEMORY_KIB = 32
MIN_BENCH_MEMORY_KIB = 64 * 1024
DEFAULT_MAX_MEMORY_KIB = 1024 * 1024
MAX_MEMORY_KIB = 4 * 1024 * 1024
MAX_PARALLEL = 4
# imgcrypt's own caps for reading headers (kdf.KdfLimits): a keyslot made here must open here.
MAX_TIME = DEFAULT_LIMITS.max_argon2_time
MAX_WORK_KIB = DEFAULT_LIMITS.max_argon2_work  # memory x passes
# ... and within half the cost budget of one unlock (crypto/cost.py): what the upload hook allows.
MAX_KEYSLOT_COST = DEFAULT_LIMITS.max_unlock_cost // 2
PROBE_MS = 250
PROBE_FAST_MS = 10
ACCEPT_LOW = 0.95
ACCEPT_HIGH = 1.10
# cryptsetup loops until a measurement lands in the window; on a loaded machine that can take
# long, so the search stops after this many measurements and keeps the last estimate.
MAX_MEASUREMENTS = 12

Measure = Callable[[int, int, int], float]


@dataclass(frozen=True)
class Argon2Cost:
    """Argon2 parameters and what one derivation with them took when last measured."""

    time: int
    memory_kib: int
    parallel: int
    measured_ms: float


def default_parallel() -> int:
    return max(1, min(MAX_PARALLEL, os.cpu_count() or 1))


def _meminfo_kib() -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, rest = line.partition(":")
                fields = rest.split()
                if fields and fields[0].isdigit():
                    values[name] = int(fields[0])
    except OSError:
        pass
    return values


def physical_memory_cap_kib() -> int:
    """The most memory a benchmark may give argon2 here: half of physical memory, or half of
    the free memory on a machine with less than 4 GiB and no swap (cryptsetup's rule)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError):
        total = 0
    if not 128 * 1024 <= total <= 0xFFFFFFFF:
        return DEFAULT_MAX_MEMORY_KIB  # a bogus figure is ignored, as cryptsetup does
    cap = total // 2
    meminfo = _meminfo_kib()
    if cap < 2 * 1024 * 1024 and meminfo.get("SwapTotal", 0) == 0:
        free = meminfo.get("MemAvailable", meminfo.get("MemFree", 0)) // 2
        if 64 * 1024 < free < cap:
            return free
    return cap


def max_time_for(memory_kib: int) -> int:
    """Most passes with ``memory_kib`` that imgcrypt's own reading caps still accept."""
    by_cost = int(MAX_KEYSLOT_COST // (memory_kib * ARGON2_KIB_PASS_COST))
    return max(MIN_TIME, min(MAX_TIME, MAX_WORK_KIB // memory_kib, by_cost))


def _next_cost(t: int, m: int, ms: float, target_ms: int, min_m: int,
               max_m: int) -> tuple[int, int, bool]:
    """The next estimate after a run of ``ms``; the flag says the search is over."""
    if ms > target_ms:
        # too slow: fewer passes first, then less memory
        new_t = int(t * target_ms / ms)
        if new_t >= MIN_TIME:
            return new_t, m, (new_t, m) == (t, m)
        new_m = int(t * m * target_ms / (MIN_TIME * ms))
        if new_m < min_m:
            return MIN_TIME, min_m, True
        return MIN_TIME, new_m, (MIN_TIME, new_m) == (t, m)
    # too fast: more memory first, then more passes
    new_m = int(m * target_ms / max(ms, 1e-3))
    if new_m > max_m:
        new_t = int(t * m * target_ms / (max_m * max(ms, 1e-3)))
        if new_t <= MIN_TIME:
            return MIN_TIME, max_m, True
        new_t = min(new_t, max_time_for(max_m))
        return new_t, max_m, (new_t, max_m) == (t, m) or new_t == max_time_for(max_m)
    if new_m < min_m:
        return t, min_m, True
    return t, new_m, (t, new_m) == (t, m)


def search_argon2(measure: Measure, target_ms: int, max_memory_kib: int,
                  parallel: int) -> Argon2Cost:
    """Find argon2 (time, memory) for ``parallel`` lanes taking about ``target_ms``.

    ``measure(time, memory_kib, parallel)`` returns milliseconds of one derivation.
    """
    if target_ms < 1:
        raise UsageError("iter-time must be positive")
    if not 1 <= parallel <= MAX_PARALLEL:
        raise UsageError(f"argon2 parallelism must be 1..{MAX_PARALLEL}")
    min_m = max(8 * parallel, min(MIN_BENCH_MEMORY_KIB, max_memory_kib))
    if max_memory_kib < min_m:
        raise UsageError(f"argon2 memory below {min_m} KiB for {parallel} lanes")
    t, m = MIN_TIME, min_m
    measurements = 0
    # 1. small parameters that take at least PROBE_MS
    while True:
        ms = measure(t, m, parallel)
        measurements += 1
        if ms >= PROBE_MS or measurements >= MAX_MEASUREMENTS:
            break
        grow = 16.0 if ms < PROBE_FAST_MS else PROBE_MS / ms
        if m == max_memory_kib:
            new_t = min(max_time_for(m), int(t * grow))
            if new_t == t:
                break
            t = new_t
        else:
            new_m = min(max_memory_kib, int(m * grow))
            if new_m == m:
                break
            m = new_m
    # 2. estimate the target from there, 3. re-measure until within 95 %..110 %
    measured = (t, m)
    while measurements < MAX_MEASUREMENTS:
        t, m, final = _next_cost(t, m, ms, target_ms, min_m, max_memory_kib)
        if final:
            break
        ms = measure(t, m, parallel)
        measured = (t, m)
        measurements += 1
        if ACCEPT_LOW * target_ms <= ms <= ACCEPT_HIGH * target_ms:
            break
    if measured != (t, m):
        # the result always reports what its own parameters cost
        ms = measure(t, m, parallel)
    return Argon2Cost(t, m, parallel, ms)


def measure_derivation(variant: str) -> Measure:
    """A :data:`Measure` that times one real argon2 derivation, in wall-clock milliseconds."""

    def measure(time_cost: int, memory_kib: int, parallel: int) -> float:
        probe = Argon2(variant, time_cost, memory_kib, parallel, b"0123456789abcdef" * 2)
        start = time.perf_counter()
        derive(probe, b"foobarfo", 32)
        return (time.perf_counter() - start) * 1000.0

    return measure


def benchmark_argon2(variant: str, target_ms: int, *, max_memory_kib: int | None = None,
                     parallel: int | None = None) -> Argon2Cost:
    """Argon2 cost that takes about ``target_ms`` here, as ``cryptsetup luksFormat`` picks it.

    ``max_memory_kib`` (default 1 GiB, at most 4 GiB) is capped by :func:`physical_memory_cap_kib`;
    ``parallel`` defaults to ``min(4, CPUs)``.
    """
    wanted = DEFAULT_MAX_MEMORY_KIB if max_memory_kib is None else max_memory_kib
    if not MIN_MEMORY_KIB <= wanted <= MAX_MEMORY_KIB:
        raise UsageError(f"argon2 memory must be {MIN_MEMORY_KIB}..{MAX_MEMORY_KIB} KiB")
    lanes = default_parallel() if parallel is None else parallel
    cap = min(wanted, physical_memory_cap_kib())
    return search_argon2(measure_derivation(variant), target_ms, cap, lanes)


__all__ = [
    "DEFAULT_MAX_MEMORY_KIB",
    "MAX_MEMORY_KIB",
    "MIN_MEMORY_KIB",
    "Argon2Cost",
    "benchmark_argon2",
    "default_parallel",
    "physical_memory_cap_kib",
    "search_argon2",
]

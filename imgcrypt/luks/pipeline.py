"""Order-preserving map of a function over chunks, on a small thread pool with bounded memory.

The data paths of imgcrypt use :mod:`imgcrypt.luks.engine`; this map stays for callers that
transform items of their own.

The sector ciphers spend their time in AES-ECB calls and numpy passes that release the GIL, so
threads can overlap them without copying chunks between processes. At most ``in_flight`` items
are submitted and not yet handed to the consumer, so memory stays bounded whatever the input
size; the input iterator is advanced in the consumer's thread, so file reads overlap the work
of the pool.

:func:`transform_file_range` is the earlier file-to-file API, now a thin wrapper over the engine.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_WORKERS = 4


def default_workers() -> int:
    """One worker per CPU this process may run on, at most :data:`MAX_WORKERS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int | None = None,
    in_flight: int | None = None,
) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, results in input order.

    ``in_flight`` (default: one more than the workers) bounds the items submitted but not yet
    consumed. An exception from ``fn`` is raised to the consumer at that item's place in the
    order; closing the returned generator early cancels queued work and waits for the
    running calls, so no thread outlives the iteration.
    """
    count = default_workers() if workers is None else workers
    if count < 1:
        raise ValueError("workers must be at least 1")
    # One queued item beyond the running ones keeps every worker busy while the consumer
    # handles a result; more would only hold more chunks in memory.
    bound = count + 1 if in_flight is None else in_flight
    if bound < 1:
        raise ValueError("in_flight must be at least 1")
    if count == 1:
        return (fn(item) for item in items)
    return _threaded(fn, items, count, bound)


def _threaded(fn: Callable[[T], R], items: Iterable[T], workers: int, bound: int) -> Iterator[R]:
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgcrypt-worker")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= bound:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def transform_file_range(
    transform: Callable[[memoryview, int], None],
    *,
    src_fd: int,
    src_offset: int,
    length: int,
    dst_fd: int,
    dst_offset: int,
    write_length: int | None = None,
    block: int = 512,
    chunk_size: int = 4 << 20,
    workers: int | None = None,
    processes: bool | None = None,
) -> Iterator[int]:
    """Transform ``length`` bytes of ``src_fd`` at ``src_offset`` into ``dst_fd`` at ``dst_offset``.

    The range is cut into ``chunk_size`` pieces; the last one is zero-padded to a multiple of
    ``block``. ``transform(view, start)`` rewrites a piece in place, ``start`` being its offset
    in the range. The first ``write_length`` bytes of the result (default: all of it, padding
    included) are written at the same offsets. Yields the input bytes of each piece as the
    pieces complete. Raises :class:`TruncatedError` if the input is shorter than ``length``,
    and whatever ``transform`` raises.

    This is :func:`imgcrypt.luks.engine.transfer` between two regular files, kept for callers
    of the earlier API; ``processes`` is accepted and ignored (the engine's workers are threads:
    the sector cipher releases the GIL for a whole chunk).
    """
    from imgcrypt.luks.engine import FileSource, FileTarget, PayloadPlan, transfer_events

    del processes
    if chunk_size < block or chunk_size % block:
        raise ValueError("chunk_size must be a positive multiple of block")
    if length < 0:
        raise ValueError("length must not be negative")
    padded_length = -(-length // block) * block
    limit = padded_length if write_length is None else write_length
    if not 0 <= limit <= padded_length:
        raise ValueError("write_length must lie within the padded length")
    plan = PayloadPlan(block, 0, length, write_length, pad_tail=True)
    return transfer_events(plan, FileSource(src_fd, src_offset, length),
                           FileTarget(dst_fd, dst_offset), transform, workers=workers,
                           chunk_size=chunk_size)

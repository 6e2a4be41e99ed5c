"""Order-preserving map of a function over chunks, on a small thread pool with bounded memory.

The sector ciphers spend their time in AES-ECB calls and numpy passes that release the GIL, so
threads can overlap them without copying chunks between processes. At most ``in_flight`` items
are submitted and not yet handed to the consumer, so memory stays bounded whatever the input
size; the input iterator is advanced in the consumer's thread, so file reads overlap the work
of the pool.

:func:`transform_file_range` is the file-to-file form: each worker reads its chunk with
``pread``, transforms it in place in a buffer of its own and writes it with ``pwrite``, so no
chunk passes through the consumer, nothing is allocated per chunk, and memory is one chunk per
worker. There the workers are forked processes where ``fork`` exists: the kernel's numpy passes
are short (about 8 µs on a 256 KiB sub-batch), and two threads handing the GIL back and forth
that often run no faster than one on a small VM (docs/performance.md has the figures), while
processes need nothing from each other but a 16-byte completion record per chunk.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import selectors
import signal
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NoReturn, TypeVar

from imgcrypt.errors import ImgcryptError, TruncatedError

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
    included) are written at the same offsets. Yields the input bytes of each piece, in order,
    as the pieces complete. Raises :class:`TruncatedError` if the input is shorter than
    ``length``, and whatever ``transform`` raises.

    ``processes`` (default: where ``os.fork`` exists and no other thread is running) runs the
    workers as forked processes instead of threads; ``transform`` then runs in the children,
    which share nothing with the parent but the file descriptors and what they inherited at the
    fork.
    """
    if chunk_size < block or chunk_size % block:
        raise ValueError("chunk_size must be a positive multiple of block")
    if length < 0:
        raise ValueError("length must not be negative")
    padded_length = -(-length // block) * block
    limit = padded_length if write_length is None else write_length
    if not 0 <= limit <= padded_length:
        raise ValueError("write_length must lie within the padded length")
    local = threading.local()

    def piece(start: int) -> int:
        buffer: bytearray | None = getattr(local, "buffer", None)
        if buffer is None:
            buffer = local.buffer = bytearray(chunk_size)
        view = memoryview(buffer)
        want = min(chunk_size, length - start)
        got = _pread_full(src_fd, view[:want], src_offset + start)
        if got < want:
            raise TruncatedError(f"input ends {length - start - got} bytes before its end")
        padded = -(-want // block) * block
        view[want:padded] = bytes(padded - want)
        transform(view[:padded], start)
        _pwrite_full(dst_fd, view[: min(padded, max(0, limit - start))], dst_offset + start)
        return want

    count = default_workers() if workers is None else workers
    if count < 1:
        raise ValueError("workers must be at least 1")
    starts = range(0, length, chunk_size)
    if processes is None:
        # fork() copies only the calling thread; with others running, a lock one of them holds
        # could stay held in the child forever, so threads are used then.
        processes = hasattr(os, "fork") and threading.active_count() == 1
    forking = processes
    if forking and count > 1 and len(starts) > 1:
        return _forked_map(piece, starts, min(count, len(starts)))
    return ordered_map(piece, starts, workers=count)


# A child reports (chunk index, value); an error is (_ERROR, payload length) + pickled error.
_RECORD = struct.Struct("<QQ")
_ERROR = (1 << 64) - 1


def _forked_map(fn: Callable[[int], int], items: Sequence[int], workers: int) -> Iterator[int]:
    """``map(fn, items)`` on ``workers`` forked children; child k takes items k, k+workers, ...

    Results come back in order. A child's exception is re-raised here; closing the iterator
    early, or an error, kills the children; every child is reaped before this returns.
    """
    pids: list[int] = []
    readers: list[int] = []
    finished = False
    try:
        for k in range(workers):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which never returns
                os.close(read_end)
                _child(fn, items, k, workers, write_end)
            os.close(write_end)
            pids.append(pid)
            readers.append(read_end)
        yield from _collect(readers, len(items))
        finished = True
    finally:
        for pid in pids:
            if not finished:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # pragma: no cover - already gone
                    pass
            _, status = os.waitpid(pid, 0)
            if finished and os.waitstatus_to_exitcode(status) != 0:
                raise ImgcryptError("a worker process failed after reporting its work")
        for fd in readers:
            os.close(fd)


def _child(fn: Callable[[int], int], items: Sequence[int], k: int, workers: int,
           channel: int) -> NoReturn:  # pragma: no cover - measured by the parent's tests
    code = 0
    # The parent's Python signal handlers (cleaning up its outputs, say) are not the child's
    # business: a signal ends the child, and the parent sees its missing records.
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        for index in range(k, len(items), workers):
            _write_all(channel, _RECORD.pack(index, fn(items[index])))
    except BaseException as error:
        code = 1
        try:
            payload = pickle.dumps(error)
        except Exception:
            payload = pickle.dumps(ImgcryptError(f"{type(error).__name__}: {error}"))
        # If the parent is gone there is nobody to tell; it sees a missing record otherwise.
        with contextlib.suppress(OSError):
            _write_all(channel, _RECORD.pack(_ERROR, len(payload)) + payload)
    finally:
        # Never return into the parent's code, run its atexit hooks or flush its buffers.
        os._exit(code)


def _collect(readers: list[int], total: int) -> Iterator[int]:
    """Read the children's records and yield the values in item order."""
    pending: dict[int, int] = {}
    buffers = {fd: b"" for fd in readers}
    next_index = 0
    # A selector, not select(): a long-running service may hold descriptors above 1024.
    with selectors.DefaultSelector() as selector:
        for fd in readers:
            selector.register(fd, selectors.EVENT_READ)
        while next_index < total:
            if next_index in pending:
                yield pending.pop(next_index)
                next_index += 1
                continue
            if not selector.get_map():
                raise ImgcryptError("a worker process ended before finishing its chunks")
            for key, _ in selector.select():
                _read_records(key.fd, buffers, pending, selector)


def _read_records(fd: int, buffers: dict[int, bytes], pending: dict[int, int],
                  selector: selectors.BaseSelector) -> None:
    data = os.read(fd, 1 << 16)
    if not data:
        selector.unregister(fd)
        return
    buffer = buffers[fd] + data
    while len(buffer) >= _RECORD.size:
        index, value = _RECORD.unpack_from(buffer)
        if index == _ERROR:
            if len(buffer) < _RECORD.size + value:
                break
            _raise_child_error(buffer[_RECORD.size : _RECORD.size + value])
        pending[index] = value
        buffer = buffer[_RECORD.size :]
    buffers[fd] = buffer


def _raise_child_error(payload: bytes) -> NoReturn:
    # The payload comes from our own forked child over a private pipe, never from input.
    error = pickle.loads(payload)  # noqa: S301
    if isinstance(error, BaseException):
        raise error
    raise ImgcryptError("a worker process failed")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _pread_full(fd: int, view: memoryview, offset: int) -> int:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


def _pwrite_full(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)

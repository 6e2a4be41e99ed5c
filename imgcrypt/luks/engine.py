"""The transfer engine: the payload planned once from the header, then one loop that moves it.

Every data path of imgcrypt — the command line, the service hooks, the library, files, pipes,
block devices — goes through :func:`transfer` (or :func:`iter_transfer` for a consumer that
takes chunks). A :class:`PayloadPlan` says, from the header and what is known of the input,
how many bytes to read, how many to write and when an input that ends is truncated; it is made
in one place (:func:`plan_encrypt`, :func:`plan_decrypt`) so that rules about the payload live
there and nowhere else.

The loop runs on a few worker threads, each with one reused chunk buffer. A worker reads its
chunk (``pread`` for a regular file, in any order; ``readinto`` for a stream, in turn), transforms
it in place (the sector cipher releases the GIL for the whole chunk), and writes it (``pwrite``
for a regular file, in any order; ``write`` for a stream, in turn). So reading, transforming and
writing overlap whatever the source and target are, memory is one chunk per worker, and there
is one engine whether or not other threads run in the process.

Regular files get more: holes of a sparse source are not read (``SEEK_DATA``/``SEEK_HOLE``;
the zeros are still transformed), and a sparse-capable target (decrypted output written to a
fresh regular file) gets holes where whole 4 KiB blocks of output are zero, its size set with
``ftruncate``, as ``qemu-img convert`` does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from imgcrypt.errors import FormatError, FormatFault
from imgcrypt.luks.container import LuksHeader, payload_span, whole_sectors

if TYPE_CHECKING:
    from imgcrypt.crypto.sectors import SectorCipher

try:
    from imgcrypt.crypto._xtsmul import nonzero_spans as _nonzero_spans
except ImportError:  # pragma: no cover - no compiler: numpy finds the zero blocks
    _nonzero_spans = None  # type: ignore[assignment]

CHUNK_SIZE = 4 << 20
# What one worker moves at a time: small enough that its buffer stays in the core's L2 cache
# between the read, the cipher and the write (three passes over it), large enough that the
# per-chunk cost (a few system calls and Python calls) stays under 2 %.
TRANSFER_CHUNK = 256 << 10
# What one worker moves at a time when the source or the target is a stream (a pipe, a
# socket): each chunk passes a read turn and a write turn, two thread hand-offs that cost more
# than the cache misses of a larger buffer (1 MiB chunks cut the context switches of a piped
# decrypt threefold), and a pipe's 1 MiB buffer is then filled or drained in one system call.
STREAM_CHUNK = 1 << 20
# A regular file's pages already read are dropped from the cache in windows of this size:
# posix_fadvise costs tens of microseconds a call (tmpfs walks its pages), too much per chunk.
FADVISE_WINDOW = 16 << 20
# Progress is reported in steps of this many bytes, not for every chunk.
PROGRESS_STEP = 4 << 20
# After a stop, how long to wait for workers before leaving one blocked on a stalled stream.
STOP_GRACE = 5.0
# The granularity of holes in sparse output: a file system block.
SPARSE_BLOCK = 4096
MAX_WORKERS = 4
# Linux: a pipe buffer of 1 MiB instead of 64 KiB cuts the wake-ups of a stream 16-fold.
_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032
_PIPE_SIZE = 1 << 20
_ZEROS = memoryview(bytes(CHUNK_SIZE))

Transform = Callable[[memoryview, int], None]
Progress = Callable[[int], None]


def default_workers() -> int:
    """One worker per CPU this process may run on, at most :data:`MAX_WORKERS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


# -- the plan ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PayloadPlan:
    """How much of the input to read and of the output to write, and what an end means.

    ``read_limit`` bounds the input bytes read (None: to the end of the input); ``output_limit``
    is the exact output length wanted (None: everything read, padded to whole sectors);
    ``pad_tail`` says a last partial sector is zero-padded (encryption) rather than an error;
    ``loop_sectors`` says a stream's trailing partial 512-byte sector is left out, as a loop
    device would (a file's is left out of ``read_limit`` when the plan is made).
    """

    sector_size: int
    iv_base: int
    read_limit: int | None
    output_limit: int | None
    pad_tail: bool
    loop_sectors: bool = False

    def padded(self, length: int) -> int:
        return -(-length // self.sector_size) * self.sector_size

    def check_end(self, read: int) -> int:
        """Judge an input that ended after ``read`` bytes; return the output length."""
        sector = self.sector_size
        if read % sector and not self.pad_tail and (
                self.output_limit is None or read < self.output_limit):
            raise FormatError("encrypted payload ends inside a sector",
                              reason=FormatFault.TRUNCATED)
        if self.output_limit is not None:
            if (self.padded(read) if self.pad_tail else read) < self.output_limit:
                raise FormatError(
                    f"image holds {read} payload bytes, {self.output_limit} expected",
                    reason=FormatFault.TRUNCATED)
            return self.output_limit
        return self.padded(read)

    def output_of(self, start: int, padded: int) -> int:
        """Output bytes of the transformed chunk at input offset ``start`` of ``padded`` bytes."""
        if self.output_limit is None:
            return padded
        return max(0, min(padded, self.output_limit - start))


def plan_encrypt(header: LuksHeader, length: int | None) -> PayloadPlan:
    """Encrypt ``length`` input bytes (None: a stream, to its end), the last sector padded."""
    return PayloadPlan(header.sector_size, header.iv_tweak, length, None, pad_tail=True)


def plan_decrypt(header: LuksHeader, *, size: int | None, available: int | None) -> PayloadPlan:
    """Decrypt the payload of ``header``.

    ``size`` (``os_decrypt_size``) trims the output; ``available`` is the number of bytes after
    the payload offset when the input is a file (None for a stream, judged at its end). The
    extent is :func:`~imgcrypt.luks.container.payload_span`'s.
    """
    image_size = None if available is None else header.payload_offset + available
    span = payload_span(header, image_size=image_size, decrypt_size=size)
    plan = PayloadPlan(header.sector_size, header.iv_tweak, span.length, span.limit,
                       pad_tail=False, loop_sectors=span.limit is None and available is None)
    if available is not None:
        assert span.length is not None
        plan.check_end(span.length)  # a file's end is known now: refuse before writing
    return plan


def xts_transform(cipher: SectorCipher, iv_base: int, *, encrypt: bool) -> Transform:
    """The transform of a payload under ``cipher`` whose first sector has IV ``iv_base``: a
    chunk at input offset ``at`` starts at IV ``iv_base + at // 512`` (IVs count 512-byte
    units whatever the sector size)."""
    run = cipher.encrypt_into if encrypt else cipher.decrypt_into

    def transform(view: memoryview, at: int) -> None:
        run(view, iv_base + at // 512, view)

    return transform


# -- sources and targets -----------------------------------------------------------------------


class Source(Protocol):
    """Where input bytes come from. ``sequential`` sources are read in order, one at a time."""

    sequential: bool

    def read(self, view: memoryview, at: int) -> int:
        """Fill ``view`` with the input at offset ``at``; fewer bytes only at the end."""
        ...


class Target(Protocol):
    """Where output bytes go. ``sequential`` targets are written in order, one at a time."""

    sequential: bool

    def write(self, view: memoryview, at: int) -> None: ...

    def finish(self, length: int) -> None: ...


def zero_fill(view: memoryview) -> None:
    """Set ``view`` to zeros without allocating."""
    for start in range(0, len(view), CHUNK_SIZE):
        part = view[start : start + CHUNK_SIZE]
        part[:] = _ZEROS[: len(part)]


def regular_fd(stream: Any) -> int | None:
    """The descriptor of ``stream`` if positional I/O works on it (a regular file not opened
    for appending, where pwrite would ignore the offset), else None."""
    import fcntl
    import io

    try:
        fd = stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return None if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND else int(fd)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def widen_pipe(stream: Any) -> None:
    """Give the pipe behind ``stream`` (a file object or a descriptor) a 1 MiB buffer, where
    the system allows it (an unprivileged process is bounded by /proc/sys/fs/pipe-max-size);
    anything that is not a pipe is left alone."""
    import fcntl

    with contextlib.suppress(AttributeError, OSError, ValueError):
        fd = stream if isinstance(stream, int) else stream.fileno()
        if stat.S_ISFIFO(os.fstat(fd).st_mode) and \
                fcntl.fcntl(fd, _F_GETPIPE_SZ) < _PIPE_SIZE:
            fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)


class FileSource:
    """``length`` bytes of a regular file from ``offset``, read with ``pread``; holes of a
    sparse file are not read but zero-filled."""

    sequential = False

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd, self.offset, self.length = fd, offset, length
        self._holes = True
        self._extent = (0, 0)  # the last data range found, as (start, end) file offsets
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_SEQUENTIAL)

    def read(self, view: memoryview, at: int) -> int:
        want = max(0, min(len(view), self.length - at))
        position = self.offset + at
        end = position + want
        while position < end:
            data, hole = self._next_data(position, end)
            if data > position:
                view[position - self.offset - at : data - self.offset - at] = \
                    _ZEROS[: data - position]
            if data < end:
                _pread_full(self.fd, view[data - self.offset - at : hole - self.offset - at],
                            data)
            position = hole
        end = at + want
        edge = end - end % FADVISE_WINDOW
        if edge > at:  # this chunk reached the edge of a window: that window is read
            self._drop(max(0, edge - FADVISE_WINDOW), edge)
        if end == self.length and end > edge:
            self._drop(edge, end)
        return want

    def _drop(self, start: int, end: int) -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(self.fd, self.offset + start, end - start, os.POSIX_FADV_DONTNEED)

    def _next_data(self, position: int, end: int) -> tuple[int, int]:
        """The next data range [data, hole) at or after ``position``, clipped to ``end``.

        The last range found is remembered: on tmpfs a SEEK_HOLE walks the page cache to the
        next hole, so asking again for every chunk of a dense file would cost quadratic time.
        """
        if not self._holes:
            return position, end
        known_data, known_hole = self._extent
        if known_data <= position < known_hole:
            return position, min(end, known_hole)
        try:
            data = os.lseek(self.fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole up to the end of the file
                size = os.fstat(self.fd).st_size
                if size < end:
                    raise FormatError(
                        f"input ends {end - size} bytes before its end",
                        reason=FormatFault.TRUNCATED) from None
                return end, end
            self._holes = False  # a file system without SEEK_DATA: read everything
            return position, end
        if data >= end:
            return end, end
        hole = os.lseek(self.fd, data, os.SEEK_HOLE)
        self._extent = (data, hole)
        return data, min(end, hole)


class StreamSource:
    """A forward-only stream; ``prefix`` holds bytes of it already read (e.g. with the header)."""

    sequential = True

    def __init__(self, stream: BinaryIO, prefix: bytes = b"") -> None:
        self.stream = stream
        self._prefix = memoryview(prefix)
        self._readinto = getattr(stream, "readinto", None)
        widen_pipe(stream)

    def read(self, view: memoryview, at: int) -> int:
        done = min(len(self._prefix), len(view))
        view[:done] = self._prefix[:done]
        self._prefix = self._prefix[done:]
        while done < len(view):
            if self._readinto is not None:
                got = self._readinto(view[done:])
            else:
                data = self.stream.read(len(view) - done)
                got = len(data)
                view[done : done + got] = data
            if not got:
                break
            done += got
        return done


class FileTarget:
    """A regular file written with ``pwrite`` from ``offset``. With ``sparse``, and only when
    the file ends before ``offset`` (nothing old could show through a hole), all-zero 4 KiB
    blocks are skipped and the size set at the end."""

    sequential = False

    def __init__(self, fd: int, offset: int, *, sparse: bool = False) -> None:
        self.fd, self.offset = fd, offset
        status = os.fstat(fd)
        # Never on a block device: its old blocks would show through where nothing is written.
        self.sparse = sparse and stat.S_ISREG(status.st_mode) and status.st_size <= offset

    def write(self, view: memoryview, at: int) -> None:
        if not self.sparse:
            _pwrite_full(self.fd, view, self.offset + at)
            return
        for start, end in nonzero_spans(view, SPARSE_BLOCK):
            _pwrite_full(self.fd, view[start:end], self.offset + at + start)

    def finish(self, length: int) -> None:
        if self.sparse and os.fstat(self.fd).st_size < self.offset + length:
            os.ftruncate(self.fd, self.offset + length)


class StreamTarget:
    """A forward-only stream (a pipe, a socket, any file object with ``write``)."""

    sequential = True

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        widen_pipe(stream)

    def write(self, view: memoryview, at: int) -> None:
        self.stream.write(view)

    def finish(self, length: int) -> None:
        pass


def nonzero_spans(view: memoryview, block: int) -> list[tuple[int, int]]:
    """The ranges of ``view`` holding a non-zero byte, at ``block`` granularity, merged."""
    if _nonzero_spans is not None:
        return _nonzero_spans(view, block)
    import numpy as np  # pragma: no cover - only without the C helper

    whole = len(view) // block * block
    blocks = np.frombuffer(view[:whole], dtype=np.uint8).reshape(-1, block).any(axis=1)
    flags = [*blocks.tolist(), *([any(view[whole:])] if whole < len(view) else [])]
    spans: list[tuple[int, int]] = []
    for k, nonzero in enumerate(flags):
        if not nonzero:
            continue
        start, end = k * block, min(len(view), (k + 1) * block)
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


# -- the loop ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferResult:
    read: int  # input bytes read
    written: int  # output bytes written


class _Stopped(Exception):
    """Raised in a worker when the transfer was stopped elsewhere."""


class _Turns:
    """Chunk ``i`` may go only after chunk ``i - 1``: for sequential sources and targets."""

    def __init__(self, engine: _Engine) -> None:
        self._engine = engine
        self._next = 0

    def wait(self, index: int) -> None:
        cond = self._engine.cond
        with cond:
            while self._next != index and not self._engine.stopped:
                cond.wait()
            if self._engine.stopped:
                raise _Stopped

    def done(self) -> None:
        with self._engine.cond:
            self._next += 1
            self._engine.cond.notify_all()


class _Engine:
    def __init__(self, plan: PayloadPlan, source: Source, target: Target | None,
                 transform: Transform, workers: int, chunk_size: int) -> None:
        self.plan, self.source, self.target = plan, source, target
        self.transform, self.chunk_size = transform, chunk_size
        self.cond = threading.Condition()
        self.stopped = False
        self.reads, self.writes = _Turns(self), _Turns(self)
        self._index = 0
        self.end_index: int | None = None
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(2, workers))
        self.workers = workers
        self.read_total = 0
        self.length = 0  # the output's length, once the transfer has ended

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def _put(self, event: tuple[str, Any]) -> None:
        while True:
            try:
                self.events.put(event, timeout=0.05)
                return
            except queue.Full:
                if self.stopped:  # nobody may be listening any more
                    if event[0] == "data":
                        raise _Stopped from None
                    return

    def _claim(self) -> int:
        with self.cond:
            index = self._index
            self._index += 1
            return index

    def worker(self) -> None:
        progress = [0]
        try:
            buffer = memoryview(bytearray(self.chunk_size))
            while not self.stopped and self._chunk(buffer, progress):
                pass
        except _Stopped:
            pass
        except BaseException as error:
            self._put(("error", error))
        finally:
            if progress[0]:
                self._put(("progress", progress[0]))
            self._put(("done", None))

    def _chunk(self, view: memoryview, progress: list[int]) -> bool:
        """Move one chunk; False when there is nothing left for this worker."""
        plan, index = self.plan, self._claim()
        start = index * self.chunk_size
        want = self.chunk_size if plan.read_limit is None else \
            min(self.chunk_size, plan.read_limit - start)
        if want <= 0:
            return False
        if self.source.sequential:
            self.reads.wait(index)
            try:
                if self.end_index is not None and index > self.end_index:
                    return False
                got = self.source.read(view[:want], start)
                if got < want:
                    self.end_index = index
            finally:
                self.reads.done()
        else:
            got = self.source.read(view[:want], start)
            if got < want:
                raise FormatError(f"input ends {want - got} bytes before its end",
                                  reason=FormatFault.TRUNCATED)
        if got < want and plan.loop_sectors:
            got = whole_sectors(start + got) - start
        ends = got < want or (plan.read_limit is not None and start + got == plan.read_limit)
        if ends:
            plan.check_end(start + got)  # before a partial last chunk goes out
        padded = plan.padded(got)
        if padded > got:
            view[got:padded] = _ZEROS[: padded - got]
        if padded:
            self.transform(view[:padded], start)
        out = plan.output_of(start, padded)
        if self.target is not None and self.target.sequential:
            self.writes.wait(index)
            try:
                self.target.write(view[:out], start)
            finally:
                self.writes.done()
        elif self.target is not None:
            if self.stopped:
                raise _Stopped
            self.target.write(view[:out], start)
        else:
            self.writes.wait(index)
            try:
                if out:
                    self._put(("data", bytes(view[:out])))
            finally:
                self.writes.done()
        with self.cond:
            self.read_total += got
        progress[0] += got
        if progress[0] >= PROGRESS_STEP:
            self._put(("progress", progress[0]))
            progress[0] = 0
        return not ends

    def run(self) -> Iterator[tuple[str, Any]]:
        """("data", bytes) and ("progress", input bytes) events, in the caller's thread."""
        # Daemon threads: one blocked reading a stalled pipe must not keep Ctrl-C waiting.
        threads = [threading.Thread(target=self.worker, name=f"imgcrypt-transfer-{k}",
                                    daemon=True) for k in range(self.workers)]
        error: BaseException | None = None
        finished = 0
        try:
            for thread in threads:
                thread.start()
            while finished < len(threads):
                kind, value = self.events.get()
                if kind in ("data", "progress"):
                    yield kind, value
                elif kind == "done":
                    finished += 1
                else:
                    error = value
                    break
        finally:
            self.stop()
            deadline = time.monotonic() + STOP_GRACE
            while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    self.events.get(timeout=0.02)
            # A worker still blocked reading a stalled stream ends by itself once its read
            # returns: it finds the transfer stopped and writes nothing.
        if error is not None:
            raise error
        self.length = self.plan.check_end(self.read_total)
        if self.target is not None:
            self.target.finish(self.length)


def _engine(plan: PayloadPlan, source: Source, target: Target | None, transform: Transform,
            workers: int | None, chunk_size: int | None) -> _Engine:
    streaming = source.sequential or target is None or target.sequential
    if chunk_size is None:
        chunk_size = STREAM_CHUNK if streaming else TRANSFER_CHUNK
    if chunk_size <= 0 or chunk_size % plan.sector_size or chunk_size > CHUNK_SIZE:
        raise ValueError("chunk_size must be a multiple of the sector size, at most 4 MiB")
    count = default_workers() if workers is None else workers
    if count < 1:
        raise ValueError("workers must be at least 1")
    if workers is None and streaming:
        count += 1  # one more so that a read, a transform and a write can all be under way
    return _Engine(plan, source, target, transform, count, chunk_size)


def transfer(plan: PayloadPlan, source: Source, target: Target, transform: Transform, *,
             progress: Progress | None = None, workers: int | None = None,
             chunk_size: int | None = None) -> TransferResult:
    """Move the planned payload from ``source`` to ``target`` through ``transform``.

    ``transform(view, at)`` rewrites the sector-padded chunk at input offset ``at`` in place.
    ``progress`` gets the input bytes of each chunk, in the caller's thread. ``chunk_size``
    defaults to :data:`STREAM_CHUNK` when the source or the target is a stream, else
    :data:`TRANSFER_CHUNK`. Any error stops
    every worker and is raised here once they have all ended.
    """
    engine = _engine(plan, source, target, transform, workers, chunk_size)
    for kind, value in engine.run():
        if kind == "progress" and progress is not None and value:
            progress(value)
    return TransferResult(engine.read_total, engine.length)


def iter_transfer(plan: PayloadPlan, source: Source, transform: Transform, *,
                  workers: int | None = None, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The output of the planned payload as chunks, in order, for a consumer that pulls.

    Closing the iterator early stops the workers and waits for them.
    """
    engine = _engine(plan, source, None, transform, workers, chunk_size)
    for kind, value in engine.run():
        if kind == "data":
            yield value


def _pread_full(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise FormatError(f"input ends {len(view) - done} bytes before its end",
                              reason=FormatFault.TRUNCATED)
        done += got


def _pwrite_full(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)

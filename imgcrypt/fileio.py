"""File edges: atomic outputs beside their target, exact reads, and stdin/stdout as ``-``."""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, cast

from imgcrypt.errors import (
    FormatError,
    FormatFault,
    ImgcryptError,
    TargetExistsError,
    UsageError,
)

TEMP_SUFFIX = ".imgcrypt-tmp"


def read_full(stream: BinaryIO, size: int) -> bytes:
    """Read up to ``size`` bytes, looping over short reads (pipes); fewer only at end of file."""
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        parts.append(chunk)
        remaining -= len(chunk)
    return b"".join(parts)


@contextlib.contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdin.buffer
        return
    with open(path, "rb") as f:
        yield f


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _check_target(target: str, force: bool, source: str | os.PathLike[str] | None) -> None:
    if source is not None and os.fspath(source) != "-" and _same_file(os.fspath(source), target):
        raise UsageError("source and target are the same file")
    if os.path.lexists(target) and not force:
        raise TargetExistsError(f"{target} exists (use --force to replace it)")
    if os.path.isdir(target):
        raise UsageError(f"{target} is a directory")
    try:
        info = os.stat(target)
    except OSError:
        return  # absent, or a dangling symlink the rename replaces
    if not stat.S_ISREG(info.st_mode):
        # A rename would turn a device node or FIFO into a regular file holding the output;
        # whoever reads the device or pipe would never see it. Devices are written in place
        # only by the flows meant for them (imgcrypt.devices).
        raise UsageError(f"{target} is not a regular file (a device, FIFO or socket): "
                         "refusing to replace it")


def _temporary_beside(target: str, naming: tuple[str, str] | None = None) -> tuple[int, str]:
    # mkstemp opens O_CREAT | O_EXCL | O_NOFOLLOW, 0600: a name planted in advance (file or
    # symlink) makes it pick another, never open the planted one.
    directory = os.path.dirname(os.path.abspath(target))
    prefix, suffix = naming or (f".{os.path.basename(target)}.", TEMP_SUFFIX)
    return tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)


class OutputFile:
    """The temporary file of one atomic output, open for writing.

    ``fd`` is the descriptor imgcrypt created the file with; ``path`` names that open file for
    a tool (``/proc/self/fd/N``: opening it reaches this inode whatever the directory entry has
    become since), and the tool gets the descriptor through ``pass_fds`` (see
    :func:`handle_fds`). Nothing ever reopens the temporary *name*.
    """

    def __init__(self, fd: int, temp: str) -> None:
        self.fd = fd
        self.temp = temp

    def __repr__(self) -> str:
        return f"OutputFile(fd={self.fd})"

    @property
    def path(self) -> str:
        return handle_path(self.fd)


def handle_path(fd: int) -> str:
    """The name of open file ``fd`` for a child process that inherits ``fd`` (pass_fds)."""
    return f"/proc/self/fd/{fd}"


_HANDLE = re.compile(r"/proc/self/fd/([0-9]{1,9})(?![0-9])")


# Open sources' names by descriptor, so a tool's message about /proc/self/fd/N names the file
# the person gave (entries live exactly as long as the descriptor: open_source).
_HANDLE_NAMES: dict[int, str] = {}


@contextlib.contextmanager
def named_handle(fd: int, name: str) -> Iterator[None]:
    _HANDLE_NAMES[fd] = name
    try:
        yield
    finally:
        _HANDLE_NAMES.pop(fd, None)


def handle_names(text: str) -> str:
    """``text`` with each ``/proc/self/fd/N`` of a named open source replaced by its name."""
    return _HANDLE.sub(lambda m: _HANDLE_NAMES.get(int(m.group(1)), m.group(0)), text)


def handle_fds(args: Iterable[str]) -> tuple[int, ...]:
    """The descriptors that ``/proc/self/fd/N`` names in ``args`` (json: specs included): a
    child given these arguments must inherit exactly those."""
    return tuple(sorted({int(m.group(1)) for arg in args for m in _HANDLE.finditer(arg)}))


def _same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _publish(fd: int, temp: str, target: str, mode: int) -> None:
    """fsync, fchmod and rename the temporary file ``fd`` (created as ``temp``) to ``target``.

    The mode is set on the descriptor, never by name (a chmod by name follows a symlink swapped
    in for ``temp`` to someone else's file). Before and after the rename the name must still be
    the file imgcrypt created; if not, someone replaced it: the data imgcrypt wrote is erased
    (truncated through the descriptor) and the output refused.
    """
    os.fsync(fd)
    os.fchmod(fd, mode & ~_umask())
    mine = os.fstat(fd)
    try:
        swapped = not _same_inode(os.lstat(temp), mine)
    except FileNotFoundError:
        swapped = True
    if not swapped:
        os.replace(temp, target)
        try:
            swapped = not _same_inode(os.lstat(target), mine)
        except FileNotFoundError:
            swapped = True
    if swapped:
        os.ftruncate(fd, 0)
        raise ImgcryptError(f"the temporary file of {target} was replaced by another process "
                         "while it was written; nothing was published (is the directory "
                         "writable by others?)")
    _fsync_directory(os.path.dirname(os.path.abspath(target)))


def _fsync_directory(directory: str) -> None:
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def free_space(directory: str) -> int:
    """Bytes an unprivileged writer may still use on ``directory``'s file system."""
    info = os.statvfs(directory)
    return info.f_bavail * info.f_frsize


def check_room(target: str, size: int | None, max_size: int | None = None) -> None:
    """Refuse an output of ``size`` bytes (None: not known yet) before a byte is written: above
    ``max_size`` (``--max-size``), or more than the free space of the target's file system.

    A tiny image can declare an enormous disk (a qcow2 of 1 MiB claiming 60 TiB, compressed
    clusters expanding a thousandfold): without this the output grows until the disk is full.
    :class:`FormatError` (``LIMIT_EXCEEDED``, exit 3), as every cap on input.
    """
    if size is None:
        return
    if max_size is not None and size > max_size:
        raise FormatError(f"{target}: the output would be {size} bytes, more than the "
                          f"--max-size of {max_size}", reason=FormatFault.LIMIT_EXCEEDED)
    directory = os.path.dirname(os.path.abspath(target))
    free = free_space(directory)
    if size > free:
        raise FormatError(f"{target}: the output would be {size} bytes, and its file system "
                          f"has {free} bytes free", reason=FormatFault.LIMIT_EXCEEDED)


class _Capped(io.RawIOBase):
    """A writer that refuses to pass ``limit`` bytes (``--max-size`` of an output whose size is
    not known in advance: stdin, a stream)."""

    def __init__(self, out: BinaryIO, limit: int, target: str) -> None:
        super().__init__()
        self._out, self._left, self._target = out, limit, target

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        if n > self._left:
            raise FormatError(f"{self._target}: the output grew past the --max-size",
                              reason=FormatFault.LIMIT_EXCEEDED)
        self._left -= n
        return self._out.write(data)

    def flush(self) -> None:
        self._out.flush()


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike[str], *, force: bool = False,
                source: str | os.PathLike[str] | None = None, mode: int = 0o600,
                size: int | None = None, max_size: int | None = None,
                temp_naming: tuple[str, str] | None = None) -> Iterator[OutputFile]:
    """The one way imgcrypt creates an output file: an :class:`OutputFile` beside ``target``
    that becomes ``target`` if the block completes.

    Created ``O_EXCL | O_NOFOLLOW`` and 0600 in the target's directory, written through its
    descriptor (by imgcrypt, or by qemu-img through :attr:`OutputFile.path`), then fsynced,
    given ``mode`` less the umask (0600 unless the caller asks) and renamed over ``target``.
    Any exception, Ctrl-C included, removes the temporary file and leaves an existing target
    untouched. A target that exists but is not a regular file is refused, and so is a planned
    ``size`` the file system or ``max_size`` cannot take (:func:`check_room`), before anything
    is created. ``temp_naming`` (prefix, suffix) names the temporary file for callers whose
    readers skip their own pattern (the keystore's ``.tmp-*.part``).
    """
    target = os.fspath(target)
    _check_target(target, force, source)
    check_room(target, size, max_size)
    fd, temp = _temporary_beside(target, temp_naming)
    try:
        yield OutputFile(fd, temp)
        _publish(fd, temp, target, mode)
    except BaseException:
        with contextlib.suppress(OSError):
            if _same_inode(os.lstat(temp), os.fstat(fd)):
                os.unlink(temp)
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(target: str, *, force: bool = False, source: str | None = None,
                  mode: int = 0o600, size: int | None = None,
                  max_size: int | None = None) -> Iterator[BinaryIO]:
    """A file object whose contents appear at ``target`` only if the block completes
    (:func:`atomic_file`, written by imgcrypt). ``-`` means standard output. ``size`` is the
    planned output size, checked first; when it is not known, ``max_size`` bounds what is
    then written (a wrapper: the engine's parallel, sparse file path is kept for known
    sizes)."""
    if target == "-":
        if size is not None and max_size is not None and size > max_size:
            raise FormatError(f"the output would be {size} bytes, more than the --max-size of "
                              f"{max_size}", reason=FormatFault.LIMIT_EXCEEDED)
        stdout = sys.stdout.buffer
        yield stdout if max_size is None or size is not None \
            else cast(BinaryIO, _Capped(stdout, max_size, target))
        stdout.flush()
        return
    with atomic_file(target, force=force, source=source, mode=mode, size=size,
                     max_size=max_size) as out, os.fdopen(os.dup(out.fd), "wb") as f:
        yield f if max_size is None or size is not None \
            else cast(BinaryIO, _Capped(f, max_size, target))
        f.flush()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


class ChunkReader(io.RawIOBase):
    """A forward-only binary stream over an iterator of byte chunks (an upload, a download)."""

    def __init__(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        super().__init__()
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        while not self._pending:
            try:
                self._pending = memoryview(bytes(next(self._chunks)))
            except StopIteration:
                return 0
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

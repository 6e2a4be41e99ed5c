"""File edges: atomic outputs beside their target, exact reads, and stdin/stdout as ``-``."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import sys
import tempfile
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from imgcrypt.errors import TargetExistsError, UsageError

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


def _temporary_beside(target: str) -> tuple[int, str]:
    directory = os.path.dirname(os.path.abspath(target))
    return tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(target)}.",
                            suffix=TEMP_SUFFIX)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, force: bool = False,
                source: str | os.PathLike[str] | None = None,
                mode: int = 0o644) -> Iterator[str]:
    """A temporary path beside ``target`` that becomes ``target`` if the block completes.

    Whatever is written there (by imgcrypt or by a tool such as qemu-img) replaces the target
    by a rename; any exception, Ctrl-C included, removes the temporary file and leaves an
    existing target untouched. A target that exists but is not a regular file is refused.
    """
    target = os.fspath(target)
    _check_target(target, force, source)
    fd, temp = _temporary_beside(target)
    os.close(fd)  # a tool (qemu-img) writes the path, and may create the file anew
    try:
        yield temp
        os.chmod(temp, mode & ~_umask())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


@contextlib.contextmanager
def atomic_output(target: str, *, force: bool = False, source: str | None = None,
                  mode: int = 0o644) -> Iterator[BinaryIO]:
    """A file object whose contents appear at ``target`` only if the block completes.

    The data is written through the descriptor of the temporary file ``mkstemp`` created (0600
    until complete; never reopened by path, so a symlink swapped in beside the target cannot
    redirect it) and flushed to disk before the rename. ``-`` means standard output.
    """
    if target == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    _check_target(target, force, source)
    fd, temp = _temporary_beside(target)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode & ~_umask())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


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

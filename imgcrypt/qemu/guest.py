"""The guest content of an image: converted to a raw file, or read in place through qemu-nbd.

:func:`guest_source` has ``qemu-nbd`` export the image read-only on a private UNIX socket and
reads it with imgcrypt's NBD client (:mod:`imgcrypt.qemu.nbd`), one connection per engine
thread, with the ranges ``qemu-img map`` reports as zeros filled in locally; :func:`raw_view`
wraps that as a file object and :func:`convert_to_raw` runs ``qemu-img convert``. Each runs the
source checks of :mod:`imgcrypt.qemu.source` first and names the image to qemu by an
explicit-driver ``json:`` spec with no backing file.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from imgcrypt.errors import ToolError
from imgcrypt.fileio import atomic_file, handle_fds, handle_names
from imgcrypt.luks.engine import Source, zero_fill
from imgcrypt.qemu.info import MAX_SIZE, ImageInfo
from imgcrypt.qemu.nbd import NbdClient
from imgcrypt.qemu.source import (
    SourceFile,
    format_by_magic,
    image_info,
    open_source,
    require_convertible,
    resolve_format,
    source_spec,
)
from imgcrypt.qemu.tool import DEFAULT_QEMU_IMG, INFO_LIMITS, QemuImg, stderr_line


def convert_to_raw(source: str | os.PathLike[str], target: str | os.PathLike[str], *,
                   source_format: str | None = None, force: bool = False,
                   allow_backing: bool = False,
                   qemu_img: QemuImg = DEFAULT_QEMU_IMG) -> ImageInfo:
    """Convert ``source`` (qcow2, vmdk, vhdx, vpc, vdi or raw) to a raw image at ``target``.

    The output appears at ``target`` only when complete (written beside it, then renamed); an
    existing ``target`` is refused with :class:`TargetExistsError` unless ``force``. Returns the
    source's :class:`ImageInfo`.
    """
    with open_source(source) as src:
        info = image_info(src, source_format=resolve_format(src, source_format),
                          allow_backing=allow_backing, qemu_img=qemu_img)
        require_convertible(info, src)
        # The guest is plaintext: 0600, like every output (atomic_file).
        with atomic_file(target, force=force, source=source) as out:
            qemu_img.run(["convert", "-O", "raw",
                          source_spec(src, info.format, allow_backing=allow_backing), out.path],
                         what="convert")
    return info


@contextlib.contextmanager
def raw_view(source: str | os.PathLike[str], *, source_format: str | None = None,
             qemu_img: QemuImg = DEFAULT_QEMU_IMG) -> Iterator[tuple[BinaryIO, ImageInfo]]:
    """A readable raw stream of ``source``'s guest content, and the source's :class:`ImageInfo`.

    A raw source is opened as it is. Any other format is read through :func:`guest_source`
    (qemu-nbd on a private socket): no temporary copy, memory and scratch space bounded
    whatever the virtual size. Images with backing files or other external files are refused.
    """
    with open_source(source) as src:
        info = image_info(src, source_format=resolve_format(src, source_format),
                          qemu_img=qemu_img)
        if info.format == "raw":
            with open(src, "rb") as stream:
                yield stream, info
            return
        with guest_source(src, info, qemu_img=qemu_img) as guest:
            yield io.BufferedReader(GuestReader(guest), buffer_size=1 << 20), info


@contextlib.contextmanager
def open_guest(path: str | os.PathLike[str], source_format: str | None = None, *,
               qemu_img: QemuImg = DEFAULT_QEMU_IMG,
               before_reading: Callable[[str, int], None] | None = None
               ) -> Iterator[tuple[BinaryIO | Source, str, int]]:
    """(the guest content of ``path`` as a transfer-engine source, its format, its size).

    ``source_format`` None means by its magic bytes (:func:`format_by_magic`: raw when none, a
    LUKS image refused). A raw image is the file itself, read without qemu-img; qcow2, vmdk,
    vhdx, vpc and vdi are read in place through qemu-nbd (:func:`guest_source`): no temporary
    copy of the guest, zeros not even sent. The size is the file's, or the virtual size.
    ``before_reading(format, size)`` runs after the checks and before qemu-nbd starts (a size
    guard refuses there, in a fraction of a second whatever the size).
    """
    with open_source(path) as src:
        # every check below and every read after it go through this one open file
        if source_format is None:
            source_format = format_by_magic(src)
        if source_format != "raw":
            # image_info refuses a file qemu-img sees as another format than the one given
            info = image_info(src, source_format=source_format, qemu_img=qemu_img)
            if before_reading is not None:
                before_reading(info.format, info.virtual_size)
            with guest_source(src, info, qemu_img=qemu_img) as guest:
                yield guest, info.format, info.virtual_size
            return
        with open(src, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if before_reading is not None:
                before_reading("raw", size)
            yield f, "raw", size


# More merged data extents than this and the map is dropped: everything is read instead, so
# memory stays bounded whatever a hostile image claims.
MAX_MAP_EXTENTS = 1 << 16
NBD_START_TIMEOUT = 30.0
# Threads of the transfer engine each get a connection of their own.
NBD_CLIENTS = 8


class GuestSource:
    """The guest content of an image exported read-only by qemu-nbd, as a transfer-engine
    source: positional reads, one NBD connection per thread, and ranges that
    ``qemu-img map`` reports as zeros filled in without asking the server."""

    sequential = False

    def __init__(self, socket_path: str, first: NbdClient,
                 data_ranges: list[tuple[int, int]] | None) -> None:
        self._path = socket_path
        self.length = first.size
        self._clients = [first]
        self._free = [first]
        self._lock = threading.Lock()
        self._local = threading.local()
        self._ranges = data_ranges
        self._starts = [start for start, _ in data_ranges] if data_ranges is not None else []

    def __repr__(self) -> str:
        return f"GuestSource(length={self.length})"

    def _client(self) -> NbdClient:
        client: NbdClient | None = getattr(self._local, "client", None)
        if client is None:
            with self._lock:
                client = self._free.pop() if self._free else None
            if client is None:
                client = NbdClient(self._path)
                with self._lock:
                    self._clients.append(client)
            self._local.client = client
        return client

    def data_in(self, low: int, high: int) -> Iterator[tuple[int, int]]:
        """The parts of [low, high) that may hold non-zero bytes."""
        if self._ranges is None:
            yield low, high
            return
        index = max(0, bisect.bisect_right(self._starts, low) - 1)
        while index < len(self._ranges) and self._ranges[index][0] < high:
            start, end = self._ranges[index]
            if end > low:
                yield max(start, low), min(end, high)
            index += 1

    def read(self, view: memoryview, at: int) -> int:
        want = max(0, min(len(view), self.length - at))
        position = at
        for start, end in self.data_in(at, at + want):
            zero_fill(view[position - at : start - at])
            self._client().read_into(view[start - at : end - at], start)
            position = end
        zero_fill(view[position - at : want])
        return want

    def close(self) -> None:
        for client in self._clients:
            client.close()


class GuestReader(io.RawIOBase):
    """A forward-only file object over a :class:`GuestSource`."""

    def __init__(self, source: GuestSource) -> None:
        super().__init__()
        self._source = source
        self._position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")[: 4 << 20]
        got = self._source.read(view, self._position)
        self._position += got
        return got


def _data_ranges(spec: str, qemu_img: QemuImg) -> list[tuple[int, int]] | None:
    """Merged ranges that ``qemu-img map`` does not report as zeros; None when it fails or
    lists more than :data:`MAX_MAP_EXTENTS` of them (then everything is read)."""
    ranges: list[tuple[int, int]] = []
    try:
        proc = subprocess.Popen(qemu_img.command(["map", "--output=json", spec], INFO_LIMITS),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, pass_fds=handle_fds([spec]))
    except OSError:
        return None
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            entry = _map_entry(line)
            if entry is None:
                return None
            start, end, zero = entry
            if zero:
                continue
            if ranges and ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], end)
            elif len(ranges) >= MAX_MAP_EXTENTS:
                return None
            else:
                ranges.append((start, end))
    finally:
        proc.kill()
        proc.stdout.close()
        proc.wait()
    return ranges if proc.returncode in (0, -9) else None


def _map_entry(line: bytes) -> tuple[int, int, bool] | None:
    text = line.strip().lstrip(b"[").rstrip(b",").rstrip(b"]")
    if len(text) > 4096:
        return None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    start, length, zero = obj.get("start"), obj.get("length"), obj.get("zero")
    if not (_map_int(start) and _map_int(length) and isinstance(zero, bool)):
        return None
    return int(start or 0), int(start or 0) + int(length or 0), zero


def _map_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SIZE


@contextlib.contextmanager
def guest_source(source: str | os.PathLike[str], info: ImageInfo | None = None, *,
                 source_format: str | None = None,
                 qemu_img: QemuImg = DEFAULT_QEMU_IMG) -> Iterator[GuestSource]:
    """The guest content of ``source`` (qcow2, vmdk, vhdx, vpc, vdi) as an engine source.

    ``qemu-nbd`` exports the image read-only on a UNIX socket in a private 0700 directory
    (the image named by an explicit-driver ``json:`` spec with no backing file, as for
    conversions), for as long as the block runs; nothing of the guest is written to disk.
    qemu-nbd reads the open file the checks read (:func:`~imgcrypt.qemu.source.open_source`),
    never the name again; ``info`` is trusted only when ``source`` is that open file.
    """
    with open_source(source) as src:
        if info is None or not isinstance(source, SourceFile):
            # an ImageInfo of a path may describe another file than the one opened here
            fmt = info.format if info is not None else resolve_format(src, source_format)
            info = image_info(src, source_format=fmt, qemu_img=qemu_img)
        with _served(src, info, qemu_img) as guest:
            yield guest


@contextlib.contextmanager
def _served(src: SourceFile, info: ImageInfo, qemu_img: QemuImg) -> Iterator[GuestSource]:
    require_convertible(info, src)
    spec = source_spec(src, info.format)
    directory = tempfile.mkdtemp(prefix="imgcrypt-nbd-")
    server: subprocess.Popen[bytes] | None = None
    guest: GuestSource | None = None
    try:
        os.chmod(directory, 0o700)
        socket_path = os.path.join(directory, "nbd.sock")
        with open(os.path.join(directory, "stderr"), "w+b") as errors:
            try:
                server = subprocess.Popen(
                    [qemu_img.nbd_program, "--read-only", f"--shared={NBD_CLIENTS}", "--socket",
                     socket_path, spec], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=errors, pass_fds=handle_fds([spec]))
            except FileNotFoundError:
                raise ToolError("qemu-nbd is not installed (Debian/Ubuntu: apt install "
                                "qemu-utils)") from None
            first = _connect(socket_path, server, errors)
        guest = GuestSource(socket_path, first, _data_ranges(spec, qemu_img))
        if guest.length != info.virtual_size:
            raise ToolError(f"qemu-nbd exports {guest.length} bytes, qemu-img reports "
                            f"{info.virtual_size}")
        yield guest
    finally:
        if guest is not None:
            guest.close()
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(directory, ignore_errors=True)


def _connect(socket_path: str, server: subprocess.Popen[bytes], errors: BinaryIO) -> NbdClient:
    deadline = time.monotonic() + NBD_START_TIMEOUT
    while True:
        if server.poll() is not None:
            errors.seek(0)
            raise ToolError(f"qemu-nbd failed: {handle_names(stderr_line(errors.read(1 << 16)))}")
        if os.path.exists(socket_path):
            with contextlib.suppress(ToolError):
                return NbdClient(socket_path)
        if time.monotonic() > deadline:
            raise ToolError(f"qemu-nbd: no socket within {NBD_START_TIMEOUT:.0f} s")
        time.sleep(0.01)

"""What an image is and whether it is safe to read: the source checks before qemu reads guest data.

* A qcow2 (or vmdk, qed...) can name other host files as its backing file, external data file or
  extents — ``/etc/shadow`` included — and qemu follows them when it reads guest data. Such images
  are refused unless the caller passes ``allow_backing=True``; conversions also open the image
  with ``"backing": null`` (:func:`source_spec`) so a file swapped in after the check gains
  nothing.
* The format is always named to qemu (``-f FORMAT`` for ``info``, an explicit ``driver`` in a
  ``json:`` spec for conversions) once it is known, so qemu never probes a raw guest disk whose
  first sector happens to look like a qcow2 header. Only :func:`image_info` without
  ``source_format`` lets qemu probe, and says so; :func:`detect_format` and
  :func:`sniff_format` ask oslo.utils' format inspector, as the cloud does.
* Before qemu-img reads an image for its guest data, the format inspector's safety checks run
  on it (:mod:`imgcrypt.inspector`), so what Glance, Nova and Cinder would refuse is refused.

The inspector (and oslo.utils with it) is imported where it is first used, so code that only
runs qemu-img on a known format does not pay for importing it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from imgcrypt.errors import (
    FormatError,
    FormatFault,
    ToolError,
    UnsupportedError,
    UsageError,
)
from imgcrypt.fileio import handle_path, named_handle
from imgcrypt.qemu.info import FORMAT_NAME, ImageInfo, parse_image_info
from imgcrypt.qemu.tool import DEFAULT_QEMU_IMG, INFO_LIMITS, QemuImg
from imgcrypt.text import escape

INFO_TIMEOUT = 120.0
LOCK_FAILURE = re.compile(r"Failed to get .*lock")
RELATIVE_REFERENCE = re.compile(r"Could not open '/proc/self/fd/([^0-9'][^']*)'")
# Formats imgcrypt converts to raw: what clouds accept as disk_format and qemu reads well.
CONVERTIBLE_FORMATS = frozenset({"raw", "qcow2", "vmdk", "vhdx", "vpc", "vdi"})
# Conversion writes a sparse raw file of the virtual size and a reader then streams all of it; a
# hostile header can claim exabytes at no cost to its author.
MAX_VIRTUAL_SIZE = 64 << 40
# Drivers that accept a "backing" option and therefore take "backing": null.
BACKING_DRIVERS = frozenset({"qcow2", "qcow", "qed", "vmdk"})
# How many of an image's first bytes callers give sniff_format.
SNIFF_SIZE = 512


class SourceFile(os.PathLike[str]):
    """An image opened once, read-only, and named from then on by its open file.

    ``os.fspath()`` of it is ``/proc/self/fd/N``: every check (magic bytes, the inspector,
    ``qemu-img info``) and every reader (qemu-img, qemu-nbd, imgcrypt) reaches the same inode
    through it, whatever happens to ``name`` in the meantime (BRIEF section 11). qemu resolves
    a relative backing or data-file name against ``/proc/self/fd/``, which fails safely.
    ``str()`` is the name the person gave, for messages.
    """

    def __init__(self, name: str, fd: int) -> None:
        self.name = name
        self.fd = fd

    def __fspath__(self) -> str:
        return handle_path(self.fd)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"SourceFile({self.name!r}, fd={self.fd})"

    def size(self) -> int:
        return os.fstat(self.fd).st_size


@contextlib.contextmanager
def open_source(path: str | os.PathLike[str]) -> Iterator[SourceFile]:
    """``path`` opened once (a :class:`SourceFile` passes through as it is)."""
    if isinstance(path, SourceFile):
        yield path
        return
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"{name} does not exist") from None
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise UsageError(f"{name} is a directory")
        with named_handle(fd, name):
            yield SourceFile(name, fd)
    finally:
        os.close(fd)


def shown(path: str | os.PathLike[str]) -> str:
    """The name of ``path`` for a person: a :class:`SourceFile`'s own name, not its handle."""
    return str(path) if isinstance(path, SourceFile) else os.fspath(path)


# A virtual size this many times the source's allocation, and above 1 GiB, is pointed out.
BOMB_RATIO = 100
BOMB_FLOOR = 1 << 30


def bomb_note(source: str, virtual_size: int, say: Callable[[str], None]) -> None:
    """Show the decompression-bomb shape: a declared disk far larger than the file holding it
    (a qcow2 of 1 MiB claiming 60 TiB), which the output will nonetheless be."""
    try:
        info = os.stat(source)
    except OSError:
        return
    held = max(info.st_size, 1)
    if virtual_size > BOMB_FLOOR and virtual_size > BOMB_RATIO * held:
        say(f"{escape(source)} declares a {virtual_size}-byte disk in a {info.st_size}-byte "
            f"file ({virtual_size // held}x: the shape of a decompression bomb)")


def sniff_format(head: bytes) -> str | None:
    """The image format named by an image's first :data:`SNIFF_SIZE` bytes, or None for what
    qemu would read as raw.

    Lets a caller send only non-raw sources through qemu-img (raw input then needs no
    qemu-img at all). The verdict is oslo.utils' format inspector's, the one the cloud reaches
    (:mod:`imgcrypt.inspector`); a fixed VHD keeps its footer only at the end, and both the
    inspector and qemu's probe call it raw.
    """
    from imgcrypt import inspector

    return inspector.sniff(head)


def format_by_magic(path: str | os.PathLike[str]) -> str:
    """``path``'s format by its magic bytes (:func:`sniff_format`), raw when none.

    Going by magic rather than letting qemu probe means a raw guest disk is never reinterpreted,
    and raw sources need no qemu-img at all. A LUKS image is refused: encrypting it again
    needs the source format said (raw).
    """
    with open(path, "rb") as f:
        found = sniff_format(f.read(SNIFF_SIZE)) or "raw"
    if found == "luks":
        raise UnsupportedError(
            f"{shown(path)} is already a LUKS image; give --source-format raw to encrypt it "
            "again")
    return found


def check_format_name(source_format: str | None) -> None:
    if source_format is not None and not FORMAT_NAME.fullmatch(source_format):
        raise UsageError(f"not a qemu format name: {source_format!r}")


def qemu_path(path: str | os.PathLike[str]) -> str:
    # An absolute path keeps qemu from reading "nbd:..." or "json:..." as a protocol.
    return os.path.abspath(os.fspath(path))


def image_info(path: str | os.PathLike[str], *, source_format: str | None = None,
               allow_backing: bool = False, qemu_img: QemuImg = DEFAULT_QEMU_IMG) -> ImageInfo:
    """``qemu-img info`` of ``path``, validated.

    Without ``source_format`` qemu probes the format from the file's first bytes, which trusts
    the file: a raw guest disk can be made to look like anything. Give the format when known.
    An image that would make qemu open other host files (backing file, qcow2 external data file,
    vmdk extents elsewhere) raises :class:`UnsupportedError` unless ``allow_backing``.
    """
    check_format_name(source_format)
    qpath = qemu_path(path)
    if not os.path.exists(qpath):
        raise UsageError(f"{shown(path)} does not exist")
    base = ["info", "--output=json", *(["-f", source_format] if source_format else [])]
    try:
        try:
            proc = qemu_img.run([*base, qpath], what="info", timeout=INFO_TIMEOUT,
                                limits=INFO_LIMITS)
        except ToolError as exc:
            # Only when a running VM holds the image: reading metadata under its lock is
            # harmless.
            if not LOCK_FAILURE.search(str(exc)):
                raise
            proc = qemu_img.run([*base, "-U", qpath], what="info", timeout=INFO_TIMEOUT,
                                limits=INFO_LIMITS)
    except ToolError as exc:
        relative = RELATIVE_REFERENCE.search(str(exc))
        if relative is None:
            raise
        # A relative backing file, data file or extent name resolves against the open file's
        # handle (/proc/self/fd/), where it cannot exist: the image names another host file.
        raise UnsupportedError(
            f"{shown(path)} refers to other host files (a backing file, external data file or "
            f"extent named {relative.group(1)!r}); refused because reading it would read "
            "those files") from None
    info = parse_image_info(proc.stdout)
    if source_format is not None and info.format != source_format:
        raise FormatError(f"qemu-img reports format {info.format}, expected {source_format}")
    if not allow_backing:
        # The cloud's safety verdict first; then qemu's own account of the files it would open,
        # which also covers what the inspector does not parse (vmdk descriptor files, qcow v1).
        from imgcrypt import inspector

        inspector.safety_check(qpath, info.format, shown=shown(path))
        external = info.external_files(qpath)
        if external:
            raise UnsupportedError(
                f"{shown(path)} refers to other host files ({', '.join(external)}); "
                "refused because reading it would read those files")
    return info


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of ``path`` as the cloud detects it: raw, qcow2, vmdk, vhdx, vpc, vdi, luks...

    oslo.utils' format inspector decides (:mod:`imgcrypt.inspector`), not qemu's probe, so a
    file the cloud would store as raw is raw here too.
    """
    if not os.path.exists(path):
        raise UsageError(f"{shown(path)} does not exist")
    from imgcrypt import inspector

    return inspector.detect_file(path)


def source_spec(path: str | os.PathLike[str], fmt: str, *, allow_backing: bool = False,
                options: Mapping[str, Any] | None = None) -> str:
    """A ``json:`` image spec naming the driver explicitly and, unless allowed, no backing file."""
    check_format_name(fmt)
    spec: dict[str, Any] = {"driver": fmt, **(options or {}),
                            "file": {"driver": "file", "filename": qemu_path(path)}}
    if not allow_backing and fmt in BACKING_DRIVERS:
        spec["backing"] = None
    return "json:" + json.dumps(spec, separators=(",", ":"))


def refuse_luks(path: str | os.PathLike[str]) -> UnsupportedError:
    return UnsupportedError(
        f"{shown(path)} is a LUKS container; decrypt it first, or pass --source-format raw "
        "to treat its bytes as the guest disk")


def resolve_format(path: str | os.PathLike[str], source_format: str | None) -> str:
    """``source_format``, else the format the cloud's inspector detects; never qemu's probe,
    which calls a LUKS2 container raw (qemu reads only LUKS1)."""
    if source_format is not None:
        return source_format
    detected = detect_format(path)
    if detected == "luks":
        raise refuse_luks(path)
    return detected


def require_convertible(info: ImageInfo, path: str | os.PathLike[str]) -> None:
    name = shown(path)
    if info.format == "luks":
        raise refuse_luks(path)
    if info.encrypted:
        raise UnsupportedError(f"{name} is an encrypted {info.format} image; decrypt it first "
                               "(imgcrypt decrypt)")
    if info.format not in CONVERTIBLE_FORMATS:
        raise UnsupportedError(f"{name}: format {info.format} is not supported (supported: "
                               f"{', '.join(sorted(CONVERTIBLE_FORMATS))})")
    if info.virtual_size > MAX_VIRTUAL_SIZE:
        raise FormatError(f"{name}: virtual size {info.virtual_size} bytes exceeds the "
                          f"limit of {MAX_VIRTUAL_SIZE} bytes",
                          reason=FormatFault.LIMIT_EXCEEDED)

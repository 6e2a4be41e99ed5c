"""Block-device checks before imgcrypt writes a volume onto a device.

Writing an image over a device that is mounted, held by device-mapper (an open LUKS mapping, LVM,
multipath), partitioned, used as swap or carrying a file system destroys someone's data. Before
writing, :func:`check_target_device` looks the device up and refuses, saying what uses it.

The facts come from udev through pyudev where its database exists, and otherwise from sysfs
(``/sys/dev/block/MAJ:MIN``), ``/proc/self/mountinfo`` and ``/proc/swaps``, which containers
have even without a udev daemon. Signatures are read from the device's first bytes by this
module itself (no blkid): the udev database, where present, only adds what it knows.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass

from imgcrypt.errors import UsageError, UsageFault
from imgcrypt.luks.base import MAGIC, SECTOR
from imgcrypt.luks.signatures import lvm2_label

# The furthest signature probed is btrfs at 64 KiB; swap's at most at 64 KiB - 10.
PROBE_SIZE = 0x10040 + 8
MAX_MOUNTINFO = 16 << 20
SWAP_PAGE_SIZES = (4096, 8192, 16384, 32768, 65536)
# ext3 understands these; anything beyond them makes an ext2/3 superblock an ext4 one (blkid's rule)
EXT3_INCOMPAT = 0x0002 | 0x0004 | 0x0010
EXT3_RO_COMPAT = 0x0001 | 0x0002 | 0x0004
EXT_HAS_JOURNAL = 0x0004
EXT_JOURNAL_DEV = 0x0008




@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo, reduced to what identifies the device."""

    major: int
    minor: int
    mountpoint: str
    source: str


@dataclass(frozen=True)
class DeviceInfo:
    """What uses a block device (or, for a regular file, only its size).

    ``partitions`` and ``holders`` are kernel names (``loop0p1``, ``dm-0``); ``holders`` and
    ``mountpoints`` cover the device and its partitions. ``signature`` uses blkid's names
    (``crypto_LUKS``, ``ext4``, ``xfs``, ``swap``, ``gpt``, ``dos``...). ``busy`` means the kernel
    refused an exclusive open. ``unreadable`` is why the device could not be read (then
    ``signature`` is unknown and ``size`` comes from sysfs). ``source`` is ``udev`` or ``sysfs``.
    """

    path: str
    size: int
    is_block: bool
    name: str | None = None
    partitions: tuple[str, ...] = ()
    holders: tuple[str, ...] = ()
    mountpoints: tuple[str, ...] = ()
    swap: tuple[str, ...] = ()
    busy: bool = False
    signature: str | None = None
    unreadable: str | None = None
    source: str = "sysfs"

    def in_use_reasons(self, *, include_signature: bool = True) -> list[str]:
        """Why overwriting this device would destroy something, one phrase per use; [] if none."""
        reasons = [f"mounted at {mountpoint}" for mountpoint in self.mountpoints]
        reasons += [f"held by {holder}" for holder in self.holders]
        reasons += [f"used as swap ({name})" for name in self.swap]
        if self.partitions:
            reasons.append(f"has partitions ({', '.join(self.partitions)})")
        if self.busy and not reasons:
            reasons.append("opened exclusively by the kernel or another program")
        if include_signature and self.signature is not None:
            reasons.append(f"carries an existing {describe_signature(self.signature)}")
        return reasons


def describe_signature(signature: str) -> str:
    if signature == "crypto_LUKS":
        return "LUKS header"
    if signature in ("gpt", "dos"):
        return f"{signature} partition table"
    if signature == "swap":
        return "swap signature"
    if signature == "LVM2_member":
        return "LVM physical volume label"
    return f"{signature} signature"


def _ext_flavour(data: bytes) -> str:
    compat, incompat, ro_compat = struct.unpack_from("<III", data, 1024 + 0x5C)
    if incompat & EXT_JOURNAL_DEV:
        return "jbd"
    if incompat & ~EXT3_INCOMPAT or ro_compat & ~EXT3_RO_COMPAT:
        return "ext4"
    return "ext3" if compat & EXT_HAS_JOURNAL else "ext2"


def detect_signature(data: bytes) -> str | None:
    """The file-system, container or partition-table signature in a device's first bytes.

    ``data`` should be the first :data:`PROBE_SIZE` bytes (fewer at the end of a small device).
    Names follow blkid's TYPE/PTTYPE.
    """
    if data.startswith(MAGIC):
        return "crypto_LUKS"
    if data[:4] == b"XFSB":
        return "xfs"
    if len(data) >= 1024 + 0x68 and data[1080:1082] == b"\x53\xef":
        return _ext_flavour(data)
    if data[0x10040:0x10048] == b"_BHRfS_M":
        return "btrfs"
    if lvm2_label(data) is not None:
        return "LVM2_member"
    for page in SWAP_PAGE_SIZES:
        if data[page - 10:page] in (b"SWAPSPACE2", b"SWAP-SPACE"):
            return "swap"
    if data[0x8001:0x8006] == b"CD001":
        return "iso9660"
    if data[:4] == b"QFI\xfb":
        return "qcow2"
    if data[512:520] == b"EFI PART":
        return "gpt"
    if data[510:512] == b"\x55\xaa":
        return "dos"
    return None


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out: list[str] = []
    i = 0
    while i < len(field):
        digits = field[i + 1:i + 4]
        if field[i] == "\\" and len(digits) == 3 and all(c in "01234567" for c in digits):
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse /proc/PID/mountinfo; lines that do not fit the format are skipped."""
    entries: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            separator = fields.index("-", 6)
            major_text, minor_text = fields[2].split(":")
            major, minor = int(major_text), int(minor_text)
            source = fields[separator + 2]
        except (ValueError, IndexError):
            continue
        if not (0 <= major < 1 << 32 and 0 <= minor < 1 << 32):
            continue
        entries.append(MountEntry(major, minor, _unescape(fields[4]), _unescape(source)))
    return entries


def _read_text(path: str, limit: int = 1 << 16) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _devno(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        major, minor = text.strip().split(":")
        return int(major), int(minor)
    except ValueError:
        return None


@dataclass(frozen=True)
class _Node:
    """A block device or partition as sysfs or udev names it."""

    name: str
    devno: tuple[int, int]
    sys_path: str


def _sysfs_node(devno: tuple[int, int], sysfs_root: str) -> _Node | None:
    link = os.path.join(sysfs_root, "dev", "block", f"{devno[0]}:{devno[1]}")
    if not os.path.exists(link):
        return None
    sys_path = os.path.realpath(link)
    return _Node(os.path.basename(sys_path), devno, sys_path)


def _sysfs_partitions(node: _Node) -> list[_Node]:
    partitions: list[_Node] = []
    try:
        entries = sorted(os.listdir(node.sys_path))
    except OSError:
        return []
    for entry in entries:
        child = os.path.join(node.sys_path, entry)
        if entry.startswith(node.name) and os.path.exists(os.path.join(child, "partition")):
            devno = _devno(_read_text(os.path.join(child, "dev")))
            if devno is not None:
                partitions.append(_Node(entry, devno, child))
    return partitions


def _holders(node: _Node) -> list[str]:
    try:
        return sorted(os.listdir(os.path.join(node.sys_path, "holders")))
    except OSError:
        return []


def _udev_lookup(devno: tuple[int, int]) -> tuple[_Node, list[_Node], str | None] | None:
    """The device, its partitions and udev's ID_FS_TYPE, or None where udev cannot tell."""
    try:
        import pyudev
    except ImportError:
        return None
    try:
        context = pyudev.Context()
        device = pyudev.Devices.from_device_number(context, "block", os.makedev(*devno))
        node = _Node(str(device.sys_name), devno, str(device.sys_path))
        partitions = [
            _Node(str(child.sys_name), (os.major(child.device_number),
                                        os.minor(child.device_number)), str(child.sys_path))
            for child in device.children
            if child.subsystem == "block" and child.device_type == "partition"
        ]
        fs_type = device.properties.get("ID_FS_TYPE") or None
    except Exception:  # pyudev raises many kinds; sysfs is the fallback
        return None
    return node, sorted(partitions, key=lambda p: p.name), fs_type


def _swaps(swaps_path: str) -> list[str]:
    text = _read_text(swaps_path, MAX_MOUNTINFO) or ""
    return [_unescape(line.split()[0]) for line in text.splitlines()[1:] if line.split()]


def _same_node(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class _Probe:
    size: int | None
    data: bytes
    busy: bool
    error: str | None


def _probe_device(path: str) -> _Probe:
    """Size, first bytes, and whether the kernel refused an exclusive open (something holds it)."""
    busy = False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            return _Probe(None, b"", False, exc.strerror or "cannot open")
        busy = True
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc2:
            return _Probe(None, b"", True, exc2.strerror or "cannot open")
    try:
        return _Probe(os.lseek(fd, 0, os.SEEK_END), _read_probe(fd), busy, None)
    except OSError as exc:
        return _Probe(None, b"", busy, exc.strerror or "cannot read")
    finally:
        os.close(fd)


def _sysfs_size(node: _Node) -> int:
    text = _read_text(os.path.join(node.sys_path, "size"))
    try:
        return max(0, int(text or "0")) * SECTOR
    except ValueError:
        return 0


def _read_probe(fd: int) -> bytes:
    parts: list[bytes] = []
    offset = 0
    while offset < PROBE_SIZE:
        chunk = os.pread(fd, PROBE_SIZE - offset, offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


def inspect_device(path: str | os.PathLike[str], *, use_udev: bool = True,
                   sysfs_root: str = "/sys", mountinfo_path: str = "/proc/self/mountinfo",
                   swaps_path: str = "/proc/swaps") -> DeviceInfo:
    """Look up ``path``: a block device in full, a regular file by size only.

    ``use_udev=False`` forces the sysfs path (as in containers without a udev database); the
    other parameters name the kernel interfaces read, so tests can present states this machine
    cannot produce.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UsageError(f"cannot use {path}: {exc.strerror}") from None
    if stat.S_ISREG(st.st_mode):
        return DeviceInfo(path=path, size=st.st_size, is_block=False)
    if not stat.S_ISBLK(st.st_mode):
        raise UsageError(f"{path} is neither a block device nor a regular file")
    devno = (os.major(st.st_rdev), os.minor(st.st_rdev))

    udev = _udev_lookup(devno) if use_udev and sysfs_root == "/sys" else None
    if udev is not None:
        node, partitions, fs_type = udev
        source = "udev"
    else:
        sys_node = _sysfs_node(devno, sysfs_root)
        if sys_node is None:
            raise UsageError(f"{path}: no sysfs entry for block device {devno[0]}:{devno[1]}")
        node, partitions, fs_type, source = sys_node, _sysfs_partitions(sys_node), None, "sysfs"

    probe = _probe_device(path)
    size = probe.size if probe.size is not None else _sysfs_size(node)
    signature = detect_signature(probe.data) or fs_type

    nodes = [node, *partitions]
    mounts = parse_mountinfo(_read_text(mountinfo_path, MAX_MOUNTINFO) or "")
    mountpoints: list[str] = []
    for entry in mounts:
        owner = next((n for n in nodes if n.devno == (entry.major, entry.minor)), None)
        if owner is None and entry.source.startswith("/") and _same_node(entry.source, path):
            owner = node
        if owner is not None:
            label = entry.mountpoint if owner is node else f"{entry.mountpoint} ({owner.name})"
            if label not in mountpoints:
                mountpoints.append(label)
    holders = [h if n is node else f"{h} (on {n.name})" for n in nodes for h in _holders(n)]
    swap_names = []
    for swap in _swaps(swaps_path):
        for n in nodes:
            if _same_node(swap, path if n is node else os.path.join("/dev", n.name)):
                swap_names.append(n.name)
    return DeviceInfo(
        path=path, size=size, is_block=True, name=node.name,
        partitions=tuple(p.name for p in partitions), holders=tuple(holders),
        mountpoints=tuple(mountpoints), swap=tuple(swap_names), busy=probe.busy,
        signature=signature, unreadable=probe.error, source=source,
    )


def busy_error(path: str, reasons: tuple[str, ...]) -> UsageError:
    """The refusal of a device in use: reason ``DEVICE_BUSY``, ``details`` the uses found."""
    return UsageError(f"{path} is in use, refusing to overwrite it: {'; '.join(reasons)}",
                      reason=UsageFault.DEVICE_BUSY, details=reasons)


def check_target_device(path: str | os.PathLike[str], *, required_size: int,
                        allow_signature: bool = False, use_udev: bool = True) -> DeviceInfo:
    """Refuse ``path`` as a write target unless it is unused and at least ``required_size``.

    A block device that is mounted, held, partitioned, used as swap or (unless
    ``allow_signature``) carries a file-system or LUKS signature raises :func:`busy_error`
    naming each use. A regular file is only checked to exist and be large enough. Too small
    raises :class:`UsageError`.
    """
    if required_size < 0:
        raise UsageError(f"invalid required size {required_size}")
    info = inspect_device(path, use_udev=use_udev)
    reasons = info.in_use_reasons(include_signature=not allow_signature)
    if reasons:
        raise busy_error(info.path, tuple(reasons))
    if info.unreadable is not None:
        raise UsageError(f"cannot open {info.path}: {info.unreadable}")
    if info.size < required_size:
        kind = "device" if info.is_block else "file"
        raise UsageError(f"{info.path}: {kind} has {info.size} bytes, "
                         f"{required_size} needed")
    return info


__all__ = [
    "PROBE_SIZE",
    "DeviceInfo",
    "MountEntry",
    "check_target_device",
    "detect_signature",
    "inspect_device",
    "parse_mountinfo",
]

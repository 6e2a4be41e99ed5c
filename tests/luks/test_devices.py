"""imgcrypt.devices: signatures against blkid, sysfs/udev lookups, loop devices where allowed."""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imgcrypt import devices
from imgcrypt.devices import DeviceInfo
from imgcrypt.errors import UsageError, UsageFault
from tests.conftest import require_tool
from tests.helpers.headerkit import lvm2_label
from tests.helpers.util import raises_fault

MiB = 1 << 20
KNOWN_SIGNATURES = {"crypto_LUKS", "xfs", "ext2", "ext3", "ext4", "jbd", "btrfs", "LVM2_member",
                    "swap", "iso9660", "qcow2", "gpt", "dos"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def must(*args: str) -> str:
    proc = run(*args)
    assert proc.returncode == 0, f"{args} failed: {proc.stderr}"
    return proc.stdout


def first_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(devices.PROBE_SIZE)


def mbr(partitions: list[tuple[int, int]]) -> bytes:
    table = bytearray(512)
    for i, (start, sectors) in enumerate(partitions):
        table[446 + 16 * i:462 + 16 * i] = struct.pack("<B3sB3sII", 0, b"\0" * 3, 0x83,
                                                       b"\0" * 3, start, sectors)
    table[510:512] = b"\x55\xaa"
    return bytes(table)


# --- signatures, against blkid -----------------------------------------------------------


def make_signed_file(kind: str, path: Path) -> None:
    size = 32 * MiB
    with open(path, "wb") as f:
        f.truncate(size)
    if kind in ("ext2", "ext3", "ext4"):
        must(require_tool("mke2fs"), "-q", "-F", "-t", kind, str(path))
    elif kind == "swap":
        must(require_tool("mkswap"), str(path))
    elif kind in ("luks1", "luks2"):
        keyfile = path.with_suffix(".key")
        keyfile.write_bytes(b"passphrase")
        must(require_tool("cryptsetup"), "luksFormat", "--batch-mode", "--type", kind,
             "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file",
             str(keyfile), str(path))
    elif kind == "zeros":
        pass
    else:
        raise AssertionError(kind)


@pytest.mark.tools
@pytest.mark.parametrize("kind", ["ext2", "ext3", "ext4", "swap", "luks1", "luks2", "zeros"])
def test_signature_matches_blkid(tmp_path: Path, kind: str) -> None:
    blkid = require_tool("blkid")
    image = tmp_path / f"{kind}.img"
    make_signed_file(kind, image)
    theirs = run(blkid, "-p", "-o", "value", "-s", "TYPE", str(image)).stdout.strip() or None
    assert devices.detect_signature(first_bytes(image)) == theirs
    assert theirs is not None or kind == "zeros"


@pytest.mark.tools
def test_partition_table_signatures_match_blkid(tmp_path: Path) -> None:
    blkid = require_tool("blkid")
    image = tmp_path / "dos.img"
    image.write_bytes(mbr([(2048, 2048)]).ljust(4 * MiB, b"\0"))
    assert run(blkid, "-p", "-o", "value", "-s", "PTTYPE", str(image)).stdout.strip() == "dos"
    assert devices.detect_signature(first_bytes(image)) == "dos"


def test_signatures_at_their_offsets() -> None:
    def planted(offset: int, magic: bytes, size: int = devices.PROBE_SIZE) -> bytes:
        data = bytearray(size)
        data[offset:offset + len(magic)] = magic
        return bytes(data)

    assert devices.detect_signature(planted(0, b"XFSB")) == "xfs"
    assert devices.detect_signature(planted(0x10040, b"_BHRfS_M")) == "btrfs"
    # One LVM2 detector (blkid's checks: id, sector number, type, CRC), repair's as well.
    assert devices.detect_signature(planted(512, lvm2_label(1))) == "LVM2_member"
    bad_crc = bytearray(lvm2_label(1))
    bad_crc[40] ^= 1
    assert devices.detect_signature(planted(512, bytes(bad_crc))) is None
    assert devices.detect_signature(planted(512, b"LABELONE" + bytes(16) + b"LVM2 001")) is None
    assert devices.detect_signature(planted(65536 - 10, b"SWAPSPACE2")) == "swap"
    assert devices.detect_signature(planted(0x8001, b"CD001")) == "iso9660"
    assert devices.detect_signature(planted(512, b"EFI PART")) == "gpt"
    assert devices.detect_signature(planted(0, b"QFI\xfb")) == "qcow2"
    assert devices.detect_signature(b"LUKS\xba\xbe") == "crypto_LUKS"
    assert devices.detect_signature(b"") is None
    assert devices.detect_signature(bytes(devices.PROBE_SIZE)) is None
    # a truncated ext superblock is not an ext file system
    assert devices.detect_signature(planted(1080, b"\x53\xef", 1090)) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048), st.sampled_from([0, 510, 512, 1080, 4086, 0x8001, 0x10040]),
       st.sampled_from([b"", b"\x53\xef", b"LUKS\xba\xbe", b"SWAPSPACE2", b"\x55\xaa",
                        b"EFI PART", b"CD001", b"_BHRfS_M", b"XFSB"]))
def test_detect_signature_total(noise: bytes, offset: int, magic: bytes) -> None:
    data = bytearray(noise.ljust(devices.PROBE_SIZE, b"\0")[:devices.PROBE_SIZE])
    data[offset:offset + len(magic)] = magic
    for sample in (bytes(data), bytes(data[:len(noise)]), noise):
        result = devices.detect_signature(sample)
        assert result is None or result in KNOWN_SIGNATURES


# --- mountinfo ---------------------------------------------------------------------------


def test_parse_mountinfo_real_and_escaped() -> None:
    entries = devices.parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    assert any(e.mountpoint == "/" for e in entries)
    line = "36 35 98:0 /mnt1 /mnt\\040with\\134space rw,noatime master:1 - ext3 /dev/my\\040disk rw"
    assert devices.parse_mountinfo(line + "\ngarbage line\n\n") == [
        devices.MountEntry(98, 0, "/mnt with\\space", "/dev/my disk")]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400) | st.lists(
    st.sampled_from(["1", "2", "8:1", "/", "/m", "-", "ext4", "/dev/x", "rw", "\\040", " ",
                     "99999999999:1", "a:b", "\n"]), max_size=30).map("".join))
def test_parse_mountinfo_total(text: str) -> None:
    for entry in devices.parse_mountinfo(text):
        assert 0 <= entry.major < 1 << 32 and 0 <= entry.minor < 1 << 32


# --- regular files and the devices this machine has --------------------------------------


def test_regular_file_targets(tmp_path: Path) -> None:
    target = tmp_path / "volume.img"
    with open(target, "wb") as f:
        f.truncate(10 * MiB)
    info = devices.check_target_device(target, required_size=10 * MiB)
    assert info == DeviceInfo(path=str(target), size=10 * MiB, is_block=False)
    assert info.in_use_reasons() == []
    # a regular file's contents are not inspected: the caller asked to write there
    target.write_bytes(b"LUKS\xba\xbe".ljust(10 * MiB, b"\0"))
    devices.check_target_device(target, required_size=1)
    with pytest.raises(UsageError, match=f"{10 * MiB} bytes, {10 * MiB + 1} needed") as caught:
        devices.check_target_device(target, required_size=10 * MiB + 1)
    assert type(caught.value) is UsageError
    for bad in (tmp_path / "missing", tmp_path, Path("/dev/null")):
        with pytest.raises(UsageError) as caught:
            devices.check_target_device(bad, required_size=1)
        assert type(caught.value) is UsageError
    with pytest.raises(UsageError):
        devices.check_target_device(target, required_size=-1)


def block_nodes() -> list[tuple[str, str]]:
    """(kernel name, /dev path) of every block device sysfs lists and /dev has a node for."""
    found = []
    for name in sorted(os.listdir("/sys/class/block")):
        node = f"/dev/{name}"
        if os.path.exists(node) and os.path.isdir(f"/sys/class/block/{name}"):
            found.append((name, node))
    return found


def expected_mounts(node: str) -> set[str]:
    findmnt = shutil.which("findmnt")
    if findmnt is None:
        return set()
    return set(run(findmnt, "-rn", "-S", node, "-o", "TARGET").stdout.split())


def test_every_block_device_here_is_inspected_alike_by_udev_and_sysfs() -> None:
    nodes = block_nodes()
    if not nodes:
        pytest.skip("this machine exposes no block devices in /sys/class/block and /dev")
    for name, node in nodes:
        # other programs may attach or detach loop devices meanwhile: agree on a quiet moment
        for _ in range(3):
            via_udev = devices.inspect_device(node)
            via_sysfs = devices.inspect_device(node, use_udev=False)
            if via_udev == DeviceInfo(**{**via_sysfs.__dict__, "source": via_udev.source}):
                break
        assert via_sysfs.source == "sysfs"
        assert via_udev == DeviceInfo(**{**via_sysfs.__dict__, "source": via_udev.source})
        assert via_udev.name == name and via_udev.is_block
        own_mounts = {m for m in via_udev.mountpoints if " (" not in m}
        findmnt_mounts = expected_mounts(node)
        if findmnt_mounts:
            assert own_mounts == findmnt_mounts
        if via_udev.in_use_reasons(include_signature=False):
            with raises_fault(UsageError, UsageFault.DEVICE_BUSY) as caught:
                devices.check_target_device(node, required_size=0)
            assert caught.value.details == tuple(via_udev.in_use_reasons())


def test_root_disk_refused() -> None:
    root = next(e for e in devices.parse_mountinfo(Path("/proc/self/mountinfo").read_text())
                if e.mountpoint == "/")
    link = f"/sys/dev/block/{root.major}:{root.minor}"
    if not os.path.exists(link):
        pytest.skip(f"the root file system is not on a block device here ({root.source})")
    name = os.path.basename(os.path.realpath(link))
    node = f"/dev/{name}"
    if not os.path.exists(node):
        pytest.skip(f"the root disk {name} has no device node in this container's /dev")
    for use_udev in (True, False):
        with raises_fault(UsageError, UsageFault.DEVICE_BUSY, match="mounted at /") as caught:
            devices.check_target_device(node, required_size=1, use_udev=use_udev)
        assert "mounted at /" in caught.value.details
        assert caught.value.exit_code == 2


def test_holders_partitions_swap_from_sysfs(tmp_path: Path) -> None:
    # device-mapper holders, a swap partition and a mounted partition cannot be made here
    # (no device-mapper); a sysfs tree in their image stands in for the kernel's.
    nodes = block_nodes()
    if not nodes:
        pytest.skip("this machine exposes no block devices")
    name, node = nodes[-1]
    st_rdev = os.stat(node).st_rdev
    major, minor = os.major(st_rdev), os.minor(st_rdev)
    sysfs = tmp_path / "sys"
    disk = sysfs / "devices" / "virtual" / "block" / name
    (disk / "holders" / "dm-0").mkdir(parents=True)
    part = disk / f"{name}p1"
    (part / "holders" / "dm-1").mkdir(parents=True)
    (part / "partition").write_text("1\n")
    (part / "dev").write_text("259:77\n")
    (disk / f"{name}p2").mkdir()  # a partition without a dev file: ignored
    (disk / f"{name}p2" / "partition").write_text("2\n")
    (disk / "size").write_text("2048\n")
    (sysfs / "dev" / "block").mkdir(parents=True)
    (sysfs / "dev" / "block" / f"{major}:{minor}").symlink_to(disk)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"1 0 {major}:{minor} / /srv\\040data rw - ext4 {node} rw\n"
                         "2 0 259:77 / /boot rw - ext4 /dev/whatever rw\n")
    swaps = tmp_path / "swaps"
    swaps.write_text(f"Filename Type Size Used Priority\n{node} partition 1 0 -2\n")
    info = devices.inspect_device(node, use_udev=False, sysfs_root=str(sysfs),
                                  mountinfo_path=str(mountinfo), swaps_path=str(swaps))
    assert info.partitions == (f"{name}p1",)
    assert info.holders == ("dm-0", f"dm-1 (on {name}p1)")
    assert info.mountpoints == ("/srv data", f"/boot ({name}p1)")
    assert info.swap == (name,)
    if info.unreadable is not None:
        assert info.size == 2048 * 512
    reasons = info.in_use_reasons(include_signature=False)
    assert reasons == ["mounted at /srv data", f"mounted at /boot ({name}p1)", "held by dm-0",
                       f"held by dm-1 (on {name}p1)", f"used as swap ({name})",
                       f"has partitions ({name}p1)"]
    error = devices.busy_error(node, tuple(reasons))
    assert str(error).startswith(f"{node} is in use, refusing to overwrite it: mounted at /srv")
    assert isinstance(error, UsageError) and error.exit_code == 2
    assert error.reason is UsageFault.DEVICE_BUSY and error.details == tuple(reasons)

    # a device sysfs does not know is refused, not guessed at
    with pytest.raises(UsageError, match="no sysfs entry"):
        devices.inspect_device(node, use_udev=False, sysfs_root=str(tmp_path / "empty"))


# --- loop devices -------------------------------------------------------------------------


_LOOP_PROBE: list[str | None] = []


def loop_unavailable_reason(tmp_path_factory: pytest.TempPathFactory) -> str | None:
    """Why this machine cannot attach loop devices, or None when it can (probed once)."""
    if not _LOOP_PROBE:
        losetup = shutil.which("losetup") or shutil.which("losetup", path="/usr/sbin:/sbin")
        if losetup is None:
            _LOOP_PROBE.append("losetup is not installed")
        else:
            probe = tmp_path_factory.mktemp("loopprobe") / "probe.img"
            with open(probe, "wb") as f:
                f.truncate(MiB)
            proc = run(losetup, "--find", "--show", str(probe))
            if proc.returncode != 0:
                _LOOP_PROBE.append(proc.stderr.strip() or f"losetup exit {proc.returncode}")
            else:
                run(losetup, "-d", proc.stdout.strip())
                _LOOP_PROBE.append(None)
    return _LOOP_PROBE[0]


class Loops:
    """Attach files as loop devices and mount them; everything is undone at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.losetup = require_tool("losetup")
        self.attached: list[str] = []
        self.mounted: list[str] = []

    def attach(self, image: Path, *, partitions: bool = False) -> str:
        args = [self.losetup, "--find", "--show", *(["-P"] if partitions else []), str(image)]
        device = must(*args).strip()
        self.attached.append(device)
        return device

    def mount(self, device: str, name: str) -> Path:
        mountpoint = self.tmp_path / name
        mountpoint.mkdir()
        proc = run(require_tool("mount"), device, str(mountpoint))
        if proc.returncode != 0:
            pytest.skip(f"mount is not permitted here: {proc.stderr.strip()}")
        self.mounted.append(str(mountpoint))
        return mountpoint

    def close(self) -> None:
        for mountpoint in reversed(self.mounted):
            run(require_tool("umount"), mountpoint)
        for device in reversed(self.attached):
            for _ in range(20):
                if run(self.losetup, "-d", device).returncode == 0:
                    break
                time.sleep(0.1)


@pytest.fixture
def loops(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loops]:
    reason = loop_unavailable_reason(tmp_path_factory)
    if reason is not None:
        # not a missing tool: the machine (a container without loop devices) cannot have them
        pytest.skip(f"loop devices unavailable here: {reason}")
    manager = Loops(tmp_path)
    try:
        yield manager
    finally:
        manager.close()


def sparse_file(path: Path, size: int, head: bytes = b"") -> Path:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


@pytest.mark.tools
def test_blank_loop_device(tmp_path: Path, loops: Loops) -> None:
    device = loops.attach(sparse_file(tmp_path / "blank.img", 8 * MiB))
    for use_udev in (True, False):
        info = devices.check_target_device(device, required_size=8 * MiB, use_udev=use_udev)
        assert (info.size, info.is_block, info.signature, info.busy) == (8 * MiB, True, None,
                                                                         False)
        assert info.name == os.path.basename(device) and info.unreadable is None
        assert info.in_use_reasons() == []
    with pytest.raises(UsageError, match=f"device has {8 * MiB} bytes, {8 * MiB + 512} needed") \
            as caught:
        devices.check_target_device(device, required_size=8 * MiB + 512)
    assert type(caught.value) is UsageError


@pytest.mark.tools
def test_mounted_ext4_loop_device_refused(tmp_path: Path, loops: Loops) -> None:
    image = sparse_file(tmp_path / "ext4.img", 16 * MiB)
    make_signed_file("ext4", image)
    device = loops.attach(image)
    mountpoint = loops.mount(device, "mnt")
    for use_udev in (True, False):
        info = devices.inspect_device(device, use_udev=use_udev)
        assert info.mountpoints == (str(mountpoint),)
        assert info.signature == "ext4" and info.busy
        with raises_fault(UsageError, UsageFault.DEVICE_BUSY) as caught:
            devices.check_target_device(device, required_size=MiB, use_udev=use_udev)
        assert caught.value.details == (f"mounted at {mountpoint}",
                                        "carries an existing ext4 signature")
        assert f"mounted at {mountpoint}" in str(caught.value)
        with raises_fault(UsageError, UsageFault.DEVICE_BUSY) as caught:
            devices.check_target_device(device, required_size=MiB, allow_signature=True)
        assert caught.value.details == (f"mounted at {mountpoint}",)

    run(require_tool("umount"), str(mountpoint))
    loops.mounted.remove(str(mountpoint))
    with raises_fault(UsageError, UsageFault.DEVICE_BUSY) as caught:
        devices.check_target_device(device, required_size=MiB)
    assert caught.value.details == ("carries an existing ext4 signature",)
    info = devices.check_target_device(device, required_size=MiB, allow_signature=True)
    assert not info.busy and info.signature == "ext4"


@pytest.mark.tools
@pytest.mark.parametrize("version", ["luks1", "luks2"])
def test_luks_loop_device_refused(tmp_path: Path, loops: Loops, version: str) -> None:
    image = sparse_file(tmp_path / f"{version}.img", 32 * MiB)
    make_signed_file(version, image)
    device = loops.attach(image)
    for use_udev in (True, False):
        with raises_fault(UsageError, UsageFault.DEVICE_BUSY,
                          match="carries an existing LUKS header") as caught:
            devices.check_target_device(device, required_size=MiB, use_udev=use_udev)
        assert caught.value.details == ("carries an existing LUKS header",)
    assert devices.check_target_device(device, required_size=MiB,
                                       allow_signature=True).signature == "crypto_LUKS"


@pytest.mark.tools
def test_partitioned_loop_device_refused(tmp_path: Path, loops: Loops) -> None:
    image = sparse_file(tmp_path / "disk.img", 16 * MiB, mbr([(2048, 8192), (10240, 4096)]))
    device = loops.attach(image, partitions=True)
    name = os.path.basename(device)
    if not os.path.exists(f"/sys/class/block/{name}p1"):
        # this kernel leaves partition scanning to user space: add them as udev would
        must(require_tool("partx"), "-a", device)
    for _ in range(50):
        if os.path.exists(f"{device}p1"):
            break
        time.sleep(0.1)
    else:
        pytest.skip(f"partition nodes for {device} never appeared in /dev")
    with raises_fault(UsageError, UsageFault.DEVICE_BUSY) as caught:
        devices.check_target_device(device, required_size=MiB, allow_signature=True)
    assert caught.value.details == (f"has partitions ({name}p1, {name}p2)",)

    must(require_tool("mke2fs"), "-q", "-F", "-t", "ext4", f"{device}p1")
    mountpoint = loops.mount(f"{device}p1", "part")
    for use_udev in (True, False):
        info = devices.inspect_device(device, use_udev=use_udev)
        assert info.partitions == (f"{name}p1", f"{name}p2")
        assert info.mountpoints == (f"{mountpoint} ({name}p1)",)
        assert info.signature == "dos"
        with raises_fault(UsageError, UsageFault.DEVICE_BUSY) as caught:
            devices.check_target_device(device, required_size=MiB, use_udev=use_udev)
        assert caught.value.details == (f"mounted at {mountpoint} ({name}p1)",
                                        f"has partitions ({name}p1, {name}p2)",
                                        "carries an existing dos partition table")
        # the partition itself: mounted, with its own signature
        with raises_fault(UsageError, UsageFault.DEVICE_BUSY) as caught:
            devices.check_target_device(f"{device}p1", required_size=MiB, use_udev=use_udev)
        assert caught.value.details == (f"mounted at {mountpoint}",
                                        "carries an existing ext4 signature")
    with contextlib.suppress(Exception):
        run(require_tool("umount"), str(mountpoint))
        loops.mounted.remove(str(mountpoint))


def test_lvm2_label_as_blkid_sees_it(tmp_path: Path) -> None:
    """blkid reports a valid LVM2 label and ignores one with a bad CRC; so does imgcrypt."""
    blkid = require_tool("blkid")
    for crc_ok in (True, False):
        label = bytearray(lvm2_label(1))
        if not crc_ok:
            label[40] ^= 1
        image = tmp_path / f"lvm-{crc_ok}.img"
        image.write_bytes((bytes(512) + bytes(label)).ljust(4 << 20, b"\0"))
        seen = subprocess.run([blkid, "-p", "-o", "value", "-s", "TYPE", str(image)],
                              capture_output=True, text=True, timeout=60).stdout.strip()
        assert (seen == "LVM2_member") is crc_ok
        mine = devices.detect_signature(image.read_bytes()[:devices.PROBE_SIZE])
        assert (mine == "LVM2_member") is crc_ok

"""imgcrypt.qemu against the real qemu-img: formats to raw, refusals, qcow2 with built-in LUKS."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgcrypt import qemu
from imgcrypt.errors import (
    FormatError,
    FormatFault,
    ImgcryptError,
    TargetExistsError,
    ToolError,
    UnsupportedError,
    UsageError,
    WrongPassphraseError,
)
from imgcrypt.luks.options import FormatOptions, KdfOptions
from imgcrypt.qemu import luks as qemu_luks
from imgcrypt.qemu.guest import GuestSource
from tests.helpers.util import qemu_secret_args, raises_fault, run_qemu_img, secret_file

pytestmark = pytest.mark.tools

MiB = 1 << 20
GUEST_SIZE = 4 * MiB
FORMATS = ["qcow2", "vmdk", "vdi", "vhdx", "vpc"]
PASSPHRASE = b"correct horse \xe2\x9c\x93 battery staple\n"


def guest_bytes() -> bytes:
    """A guest disk with data at the start, in the middle and at the end, and holes between."""
    data = bytearray(GUEST_SIZE)
    for offset, length in ((0, 65536), (MiB + 4096, 300_000), (GUEST_SIZE - 8192, 8192)):
        data[offset:offset + length] = os.urandom(length)
    return bytes(data)


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    path = tmp_path_factory.mktemp("guest") / "guest.raw"
    data = guest_bytes()
    path.write_bytes(data)
    return path, data


def make_image(qemu_img: str, raw: Path, fmt: str, target: Path) -> Path:
    run_qemu_img(["convert", "-f", "raw", "-O", fmt, str(raw), str(target)])
    return target


def reference_raw(image: Path, fmt: str, out: Path) -> bytes:
    """The guest content as qemu-img itself exports it."""
    run_qemu_img(["convert", "-f", fmt, "-O", "raw", str(image), str(out)])
    return out.read_bytes()


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".imgcrypt-tmp")]


# --- formats to raw -------------------------------------------------------------------------


def nbd_dirs() -> set[Path]:
    import tempfile

    return set(Path(tempfile.gettempdir()).glob("imgcrypt-nbd-*"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_guest_source_is_byte_identical_to_qemu_img_convert(tmp_path: Path, qemu_img: str,
                                                            guest: tuple[Path, bytes],
                                                            fmt: str) -> None:
    raw, _ = guest
    image = make_image(qemu_img, raw, fmt, tmp_path / f"disk.{fmt}")
    reference = reference_raw(image, fmt, tmp_path / "ref.raw")
    with qemu.guest_source(image) as source:
        assert source.length == len(reference)
        out = bytearray(len(reference))
        view = memoryview(out)
        # odd, unaligned pieces, across data and zero ranges
        for at in range(0, len(out), 777_777):
            assert source.read(view[at : at + 777_777], at) == len(view[at : at + 777_777])
        assert out == reference


def test_compressed_qcow2_and_its_zero_map(tmp_path: Path, qemu_img: str,
                                           guest: tuple[Path, bytes]) -> None:
    raw, data = guest
    image = tmp_path / "compressed.qcow2"
    run_qemu_img(["convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(image)])
    with qemu.guest_source(image) as source:
        ranges = list(source.data_in(0, source.length))
        out = bytearray(source.length)
        source.read(memoryview(out), 0)
    assert out == data
    # the holes of the guest are known zeros, not read
    assert sum(end - start for start, end in ranges) < len(data) // 2
    for start, end in ranges:
        assert data[start:end] != bytes(end - start)


def test_guest_source_refuses_a_backing_file(tmp_path: Path, qemu_img: str,
                                             guest: tuple[Path, bytes]) -> None:
    raw, _ = guest
    base = make_image(qemu_img, raw, "qcow2", tmp_path / "base.qcow2")
    overlay = tmp_path / "overlay.qcow2"
    run_qemu_img(["create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(overlay)])
    before = nbd_dirs()
    with pytest.raises(UnsupportedError, match="backing file"), qemu.guest_source(overlay):
        pass
    assert nbd_dirs() <= before


def test_guest_source_without_qemu_nbd(tmp_path: Path, qemu_img: str,
                                       guest: tuple[Path, bytes]) -> None:
    raw, _ = guest
    image = make_image(qemu_img, raw, "qcow2", tmp_path / "disk.qcow2")
    tool = qemu.QemuImg(nbd_program=str(tmp_path / "no-such-qemu-nbd"))
    before = nbd_dirs()
    with pytest.raises(ToolError, match="qemu-nbd is not installed"), \
            qemu.guest_source(image, qemu_img=tool):
        pass
    assert nbd_dirs() <= before


def test_inspector_imported_only_where_used() -> None:
    # imgcrypt.qemu and its qcow2-LUKS module load without oslo.utils (the decrypt, rekey and
    # inspect commands import them for every image); the first format decision loads it
    script = ("import sys, imgcrypt.qemu, imgcrypt.qemu.luks\n"
              "assert 'oslo_utils' not in sys.modules, 'imported early'\n"
              "assert imgcrypt.qemu.sniff_format(b'QFI\\xfb\\0\\0\\0\\x03'.ljust(512, b'\\0'))"
              " == 'qcow2'\n"
              "assert 'oslo_utils.imageutils.format_inspector' in sys.modules\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


@pytest.mark.parametrize("fmt", FORMATS)
def test_raw_view_matches_qemu_img_convert(tmp_path: Path, qemu_img: str,
                                           guest: tuple[Path, bytes], fmt: str) -> None:
    raw, data = guest
    image = make_image(qemu_img, raw, fmt, tmp_path / f"disk.{fmt}")
    reference = reference_raw(image, fmt, tmp_path / "ref.raw")
    # vpc rounds the size up to its disk geometry: the guest data is a prefix, the rest zeros
    assert reference[:len(data)] == data
    assert reference[len(data):].count(0) == len(reference) - len(data)

    assert qemu.detect_format(image) == fmt
    assert qemu.sniff_format(image.read_bytes()[:qemu.SNIFF_SIZE]) == fmt
    for source_format in (None, fmt):
        before = nbd_dirs()
        with qemu.raw_view(image, source_format=source_format) as (stream, info):
            (socket_dir,) = nbd_dirs() - before
            assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700
            # a socket and qemu-nbd's stderr: no copy of the guest anywhere
            assert sum(p.stat().st_size for p in socket_dir.iterdir()) < 4096
            assert stream.read() == reference
        assert nbd_dirs() <= before
        assert info.format == fmt
        assert info.virtual_size == len(reference)
        assert not info.encrypted and info.backing_file is None


def test_raw_view_of_raw_is_the_file_itself(guest: tuple[Path, bytes], qemu_img: str) -> None:
    raw, data = guest
    assert qemu.sniff_format(data[:qemu.SNIFF_SIZE]) is None
    with qemu.raw_view(raw) as (stream, info):
        assert os.path.samefile(stream.name, raw)  # type: ignore[attr-defined]
        assert stream.read() == data
    assert (info.format, info.virtual_size) == ("raw", len(data))


def test_raw_view_with_raw_format_never_probes(tmp_path: Path, qemu_img: str) -> None:
    # A raw guest disk whose first sector is a qcow2 header pointing at a host file: named as
    # raw it stays raw bytes; probed, it would be read as a qcow2 and refused.
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"TOPSECRET" * 100)
    tricky = tmp_path / "tricky.img"
    run_qemu_img(["create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(tricky)])
    content = tricky.read_bytes()
    with qemu.raw_view(tricky, source_format="raw") as (stream, info):
        assert stream.read() == content
    assert info.format == "raw"
    with pytest.raises(UnsupportedError), qemu.raw_view(tricky):
        pass


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk"])
def test_convert_to_raw_atomic_and_refuses_existing(tmp_path: Path, qemu_img: str,
                                                    guest: tuple[Path, bytes], fmt: str) -> None:
    raw, data = guest
    image = make_image(qemu_img, raw, fmt, tmp_path / f"disk.{fmt}")
    target = tmp_path / "out.raw"
    info = qemu.convert_to_raw(image, target)
    assert info.format == fmt
    assert target.read_bytes() == data
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # plaintext: owner only
    # sparse: the holes of the guest disk take no space
    assert target.stat().st_blocks * 512 < GUEST_SIZE

    target.write_bytes(b"keep me")
    with pytest.raises(TargetExistsError):
        qemu.convert_to_raw(image, target)
    assert target.read_bytes() == b"keep me"
    qemu.convert_to_raw(image, target, source_format=fmt, force=True)
    assert target.read_bytes() == data
    with pytest.raises(UsageError):
        qemu.convert_to_raw(image, image, force=True)
    assert leftovers(tmp_path) == []


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_convert_failure_quotes_qemu_and_leaves_nothing(tmp_path: Path, qemu_img: str) -> None:
    garbage = tmp_path / "garbage.qcow2"
    garbage.write_bytes(b"not a qcow2 at all" * 100)
    target = tmp_path / "out.raw"
    with pytest.raises(ToolError) as caught:
        qemu.convert_to_raw(garbage, target, source_format="qcow2")
    message = str(caught.value)
    assert "qemu-img:" in message and "qcow2" in message and "\n" not in message
    assert not target.exists() and leftovers(tmp_path) == []
    with pytest.raises(UsageError):
        qemu.image_info(tmp_path / "missing.qcow2")
    with pytest.raises(UsageError):
        qemu.image_info(garbage, source_format="qcow2,file.filename=/etc/shadow")


def qemu_made_luks(tmp_path: Path, raw: Path) -> Path:
    """A raw LUKS image of ``raw`` written by qemu-img (PASSPHRASE, a 10 ms iteration time)."""
    keyfile = secret_file(tmp_path, "key", PASSPHRASE)
    luks = tmp_path / "disk.luks"
    run_qemu_img(["convert", "-f", "raw", *qemu_secret_args(keyfile), "-O", "luks", "-o",
                  "key-secret=s0,iter-time=10", str(raw), str(luks)])
    return luks


def test_luks_and_unknown_sources_refused(tmp_path: Path, qemu_img: str,
                                          guest: tuple[Path, bytes]) -> None:
    raw, _ = guest
    luks = qemu_made_luks(tmp_path, raw)
    assert qemu.detect_format(luks) == "luks"
    assert qemu.sniff_format(luks.read_bytes()[:qemu.SNIFF_SIZE]) == "luks"
    with pytest.raises(UnsupportedError, match="LUKS"), qemu.raw_view(luks):
        pass
    with qemu.raw_view(luks, source_format="raw") as (stream, _info):
        assert stream.read(6) == b"LUKS\xba\xbe"
    qed = make_image(qemu_img, raw, "qed", tmp_path / "disk.qed")
    assert qemu.sniff_format(qed.read_bytes()[:qemu.SNIFF_SIZE]) == "qed"
    with pytest.raises(UnsupportedError, match="qed"):
        qemu.convert_to_raw(qed, tmp_path / "out.raw")


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk"])
def test_encrypt_through_raw_view_then_qemu_decrypts(tmp_path: Path, qemu_img: str,
                                                     guest: tuple[Path, bytes], fmt: str) -> None:
    # the path `imgcrypt encrypt disk.qcow2 disk.luks` takes once wired to raw_view
    from imgcrypt.luks.options import FormatOptions
    from imgcrypt.luks.transfer import encrypt_stream

    raw, data = guest
    image = make_image(qemu_img, raw, fmt, tmp_path / f"disk.{fmt}")
    luks = tmp_path / "disk.luks"
    with qemu.raw_view(image) as (stream, info), open(luks, "wb") as out:
        result = encrypt_stream(stream, out, PASSPHRASE, FormatOptions(iterations=1000))
    assert result.payload_size == info.virtual_size == len(data)
    keyfile = secret_file(tmp_path, "key", PASSPHRASE)
    decrypted = tmp_path / "decrypted.raw"
    run_qemu_img(["convert", *qemu_secret_args(keyfile), "--image-opts",
                  f"driver=luks,file.filename={luks},key-secret=s0", "-O", "raw",
                  str(decrypted)])
    assert decrypted.read_bytes() == data


# --- images that name other host files ----------------------------------------------------


@pytest.fixture
def host_secret(tmp_path: Path) -> Path:
    path = tmp_path / "shadow"
    path.write_bytes(b"root:$6$TOPSECRET:19000::::::\n".ljust(512, b"\0"))
    return path


def test_backing_file_refused(tmp_path: Path, qemu_img: str, host_secret: Path) -> None:
    image = tmp_path / "evil.qcow2"
    run_qemu_img(["create", "-q", "-f", "qcow2", "-b", str(host_secret), "-F", "raw",
                  str(image)])
    assert qemu.detect_format(image) == "qcow2"
    target = tmp_path / "out.raw"
    for attempt in (lambda: qemu.image_info(image),
                    lambda: qemu.image_info(image, source_format="qcow2"),
                    lambda: qemu.convert_to_raw(image, target),
                    lambda: qemu_luks.encrypt(str(image), str(tmp_path / "e.qcow2"), PASSPHRASE,
                                              luks_options(), source_format="qcow2")):
        with pytest.raises(UnsupportedError, match="backing file"):
            attempt()
    with pytest.raises(UnsupportedError), qemu.raw_view(image):
        pass
    assert not target.exists() and leftovers(tmp_path) == []

    # the danger is real: allowed, the conversion reads the host file
    info = qemu.convert_to_raw(image, target, allow_backing=True)
    assert info.backing_file == str(host_secret)
    assert target.read_bytes() == host_secret.read_bytes()

    # and the json: spec used for conversions disables backing files even if a check were missed
    unbacked = tmp_path / "unbacked.raw"
    qemu.DEFAULT_QEMU_IMG.run(["convert", "-O", "raw", qemu.source_spec(image, "qcow2"),
                               str(unbacked)], what="convert")
    assert unbacked.read_bytes() == bytes(512)


def test_external_data_file_and_flat_vmdk_refused(tmp_path: Path, qemu_img: str) -> None:
    data_file = tmp_path / "data.raw"
    qcow2 = tmp_path / "datafile.qcow2"
    run_qemu_img(["create", "-q", "-f", "qcow2", "-o", f"data_file={data_file}", str(qcow2),
                  "1M"])
    with pytest.raises(UnsupportedError, match="external data file"):
        qemu.image_info(qcow2)
    flat = tmp_path / "flat.vmdk"
    run_qemu_img(["create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(flat),
                  "1M"])
    with pytest.raises(UnsupportedError, match="extent"):
        qemu.convert_to_raw(flat, tmp_path / "out.raw")
    # a vmdk descriptor pointing an extent at any host file
    descriptor = flat.read_text().replace('"flat-flat.vmdk"', '"/etc/hostname"')
    evil = tmp_path / "evil.vmdk"
    evil.write_text(descriptor)
    with pytest.raises(UnsupportedError, match="extent"), qemu.raw_view(evil):
        pass


# --- the JSON parser ----------------------------------------------------------------------


def test_parse_image_info_fields() -> None:
    info = qemu.parse_image_info(json.dumps({
        "virtual-size": 1024, "filename": "/x", "cluster-size": 65536, "format": "qcow2",
        "actual-size": 4096, "encrypted": True, "backing-filename": "b",
        "full-backing-filename": "/abs/b",
        "format-specific": {"type": "qcow2", "data": {"encrypt": {"format": "luks"}}},
    }))
    assert info == qemu.ImageInfo(
        format="qcow2", virtual_size=1024, actual_size=4096, encrypted=True,
        backing_file="/abs/b", cluster_size=65536, filename="/x",
        format_specific={"type": "qcow2", "data": {"encrypt": {"format": "luks"}}})
    assert info.encryption_format == "luks"


@pytest.mark.parametrize("text", [
    b"", b"\xff\xfe", b"null", b"[]", b'"qcow2"', b"{}", b'{"format": "raw"}',
    b'{"format": "raw", "virtual-size": -1}', b'{"format": "raw", "virtual-size": true}',
    b'{"format": "raw", "virtual-size": 1e3}', b'{"format": "raw", "virtual-size": "1"}',
    b'{"format": "raw", "virtual-size": 9223372036854775808}',
    b'{"format": "RAW!", "virtual-size": 1}', b'{"format": 7, "virtual-size": 1}',
    b'{"format": "raw", "virtual-size": 1, "encrypted": "yes"}',
    b'{"format": "raw", "virtual-size": 1, "backing-filename": 3}',
    b'{"format": "raw", "virtual-size": 1, "format-specific": []}',
    b'{"format": "raw", "virtual-size": 1, "format-specific": {"data": 1}}',
    b'{"format": "raw", "virtual-size": ' + b"9" * 5000 + b"}",
    b"[" * 100_000 + b"]" * 100_000,
    b" " * (qemu.MAX_INFO_JSON + 1),
])
def test_parse_image_info_rejects(text: bytes) -> None:
    with pytest.raises(FormatError):
        qemu.parse_image_info(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=20,
)
info_keys = st.sampled_from(["format", "virtual-size", "actual-size", "encrypted",
                             "backing-filename", "full-backing-filename", "cluster-size",
                             "filename", "format-specific"])
info_objects = st.dictionaries(info_keys, json_values | st.sampled_from(["qcow2", "raw", 512]),
                               max_size=9)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), info_objects.map(lambda o: json.dumps(o).encode()),
                 json_values.map(lambda o: json.dumps(o))))
def test_parse_image_info_never_raises_other_errors(data: bytes | str) -> None:
    try:
        info = qemu.parse_image_info(data)
    except FormatError:
        return
    assert 0 <= info.virtual_size < 2**63
    info.external_files("/nonexistent")
    assert info.encryption_format is None or isinstance(info.encryption_format, str)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600) | st.text(max_size=600))
def test_stderr_line_is_one_bounded_line(data: bytes | str) -> None:
    line = qemu.stderr_line(data)
    assert "\n" not in line and "\r" not in line
    assert 0 < len(line) <= qemu.MAX_STDERR_QUOTE + 3


# --- qemu-img behaving badly (a fake binary: faults the real one produces only by chance) ---


def fake_qemu_img(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-qemu-img"
    script.write_text(f"#!{sys.executable}\nimport sys, pathlib\n"
                      f"count = pathlib.Path({str(tmp_path / 'calls')!r})\n"
                      "n = int(count.read_text()) + 1 if count.exists() else 1\n"
                      "count.write_text(str(n))\n" + body)
    script.chmod(0o755)
    return str(script)


def calls(tmp_path: Path) -> int:
    return int((tmp_path / "calls").read_text())


def test_fake_garbage_json(tmp_path: Path) -> None:
    image = tmp_path / "x.img"
    image.write_bytes(b"x")
    tool = qemu.QemuImg(fake_qemu_img(tmp_path, "print('{\"format\": ')\n"))
    with pytest.raises(FormatError):
        qemu.image_info(image, qemu_img=tool)
    tool = qemu.QemuImg(fake_qemu_img(
        tmp_path, "print('{\"format\": \"qcow2\", \"virtual-size\": 5}')\n"))
    with pytest.raises(FormatError, match="expected raw"):
        qemu.image_info(image, source_format="raw", qemu_img=tool)


def test_fake_huge_virtual_size_refused_before_converting(
        tmp_path: Path) -> None:
    image = tmp_path / "x.qcow2"
    # a qcow2 v3 header the format inspector passes: the size is what must stop it
    image.write_bytes(b"QFI\xfb\0\0\0\x03".ljust(512, b"\0"))
    tool = qemu.QemuImg(fake_qemu_img(tmp_path, (
        "if sys.argv[1] != 'info':\n    sys.exit(99)\n"
        f"print('{{\"format\": \"qcow2\", \"virtual-size\": {2**62}}}')\n")))
    with raises_fault(FormatError, FormatFault.LIMIT_EXCEEDED), qemu.raw_view(image, qemu_img=tool):
        pass
    with raises_fault(FormatError, FormatFault.LIMIT_EXCEEDED):
        qemu.convert_to_raw(image, tmp_path / "out.raw", qemu_img=tool)
    assert calls(tmp_path) == 2 and not (tmp_path / "out.raw").exists()


def test_fake_qemu_format_the_inspector_does_not_see_refused(
        tmp_path: Path) -> None:
    # qemu-img naming a format the bytes do not carry: the cloud's inspector has the last word,
    # whether it detects the format (raw here) or checks the one given
    image = tmp_path / "x.qcow2"
    image.write_bytes(b"x")
    tool = qemu.QemuImg(fake_qemu_img(tmp_path, (
        "if sys.argv[1] != 'info':\n    sys.exit(99)\n"
        "print('{\"format\": \"qcow2\", \"virtual-size\": 1024}')\n")))
    with pytest.raises(FormatError, match="qemu-img reports format qcow2, expected raw"), \
            qemu.raw_view(image, qemu_img=tool):
        pass
    with pytest.raises(FormatError, match="not a valid qcow2"), \
            qemu.raw_view(image, source_format="qcow2", qemu_img=tool):
        pass
    assert calls(tmp_path) == 2


def test_fake_spurious_cpu_usage_failure_retried(tmp_path: Path) -> None:
    tool = qemu.QemuImg(fake_qemu_img(tmp_path, (
        "if n < 3:\n"
        "    sys.stderr.write('qemu-img: Unable to get accurate CPU usage\\n'); sys.exit(1)\n"
        "print('ok')\n")))
    assert tool.run(["create"], what="create").stdout == b"ok\n"
    assert calls(tmp_path) == 3


def test_fake_persistent_cpu_usage_failure_gives_up(tmp_path: Path) -> None:
    tool = qemu.QemuImg(fake_qemu_img(tmp_path, (
        "sys.stderr.write('qemu-img: Unable to get accurate CPU usage\\n'); sys.exit(1)\n")))
    with pytest.raises(ToolError, match="Unable to get accurate CPU usage"):
        tool.run(["create"], what="create")
    assert calls(tmp_path) == qemu.ATTEMPTS


def test_fake_error_quotes_qemu_line(tmp_path: Path) -> None:
    tool = qemu.QemuImg(fake_qemu_img(tmp_path, (
        "sys.stderr.write('qemu-img: warning: something\\n"
        "qemu-img: Could not open \\'x\\': Permission denied\\nmore\\n'); sys.exit(1)\n")))
    with pytest.raises(ToolError) as caught:
        tool.run(["info", "x"], what="info")
    assert str(caught.value) == "qemu-img info failed: qemu-img: Could not open 'x': " \
                                "Permission denied"
    assert calls(tmp_path) == 1


def test_fake_lock_failure_retried_with_force_share(tmp_path: Path) -> None:
    image = tmp_path / "x.img"
    image.write_bytes(b"x")
    tool = qemu.QemuImg(fake_qemu_img(tmp_path, (
        "if '-U' not in sys.argv:\n"
        "    sys.stderr.write('qemu-img: Could not open \\'x\\': Failed to get shared \"write\" '\n"
        "                     'lock\\nIs another process using the image [x]?\\n'); sys.exit(1)\n"
        "print('{\"format\": \"raw\", \"virtual-size\": 1}')\n")))
    assert qemu.image_info(image, source_format="raw", qemu_img=tool).virtual_size == 1
    assert calls(tmp_path) == 2


def test_fake_info_memory_and_cpu_limited(tmp_path: Path) -> None:
    image = tmp_path / "x.img"
    image.write_bytes(b"x")
    tool = qemu.QemuImg(fake_qemu_img(tmp_path, (
        "import resource\n"
        "print(resource.getrlimit(resource.RLIMIT_AS)[0], file=sys.stderr)\n"
        "hog = bytearray(1536 << 20)\n"
        "print('{\"format\": \"raw\", \"virtual-size\": 1}')\n")))
    with pytest.raises(ToolError, match="MemoryError"):
        qemu.image_info(image, qemu_img=tool)
    tool = qemu.QemuImg(fake_qemu_img(tmp_path, "while True:\n    pass\n"))
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"killed by signal \d+ \(resource limit reached\)"):
        tool.run(["info"], what="info", limits=qemu.ResourceLimits(1 << 30, 1))
    assert time.monotonic() - started < 30


def test_missing_qemu_img(tmp_path: Path) -> None:
    tool = qemu.QemuImg(str(tmp_path / "no-such-qemu-img"))
    with pytest.raises(ToolError, match="qemu-img is not installed"):
        tool.run(["--version"], what="version")
    with pytest.raises(ToolError, match="qemu-img is not installed"):
        tool.run(["--version"], what="version", limits=qemu.INFO_LIMITS)


# --- qcow2 with qemu's built-in LUKS --------------------------------------------------------


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    """A directory of this test's own for qemu secret files, to see that none stays behind."""
    directory = tmp_path / "secrets"
    directory.mkdir()
    return directory


def luks_options(iter_time_ms: int = 2000) -> FormatOptions:
    return FormatOptions(iter_time_ms=iter_time_ms)


def test_encrypted_qcow2_round_trip(tmp_path: Path, qemu_img: str, guest: tuple[Path, bytes],
                                    secrets_dir: Path) -> None:
    raw, data = guest
    tool = qemu.QemuImg(secret_dir=str(secrets_dir))
    image = tmp_path / "enc.qcow2"
    info = qemu_luks.encrypt(str(raw), str(image), PASSPHRASE, luks_options(50),
                             source_format="raw", qemu_img=tool)
    assert (info.format, info.encrypted, info.encryption_format) == ("qcow2", True, "luks")
    assert info.virtual_size == len(data)
    assert data[:65536] not in image.read_bytes()

    out = tmp_path / "out.raw"
    assert qemu_luks.decrypt(str(image), PASSPHRASE, str(out), qemu_img=tool) == len(data)
    assert out.read_bytes() == data

    # qemu-img itself opens it with the same passphrase
    keyfile = secret_file(tmp_path, "key", PASSPHRASE)
    direct = tmp_path / "direct.raw"
    run_qemu_img(["convert", *qemu_secret_args(keyfile), "--image-opts",
                  f"driver=qcow2,file.filename={image},encrypt.key-secret=s0",
                  "-O", "raw", str(direct)])
    assert direct.read_bytes() == data

    wrong = tmp_path / "wrong.raw"
    with pytest.raises(WrongPassphraseError) as caught:
        qemu_luks.decrypt(str(image), PASSPHRASE[:-1], str(wrong), qemu_img=tool)
    assert str(image) in str(caught.value) and "json:" not in str(caught.value)
    assert not wrong.exists() and leftovers(tmp_path) == []
    with pytest.raises(TargetExistsError):
        qemu_luks.decrypt(str(image), PASSPHRASE, str(out), qemu_img=tool)
    with pytest.raises(UnsupportedError, match="encrypted"), qemu.raw_view(image):
        pass
    plain = make_image(qemu_img, raw, "qcow2", tmp_path / "plain.qcow2")
    with pytest.raises(UnsupportedError, match="not encrypted"):
        qemu_luks.decrypt(str(plain), PASSPHRASE, str(tmp_path / "x.raw"), qemu_img=tool)
    with pytest.raises(UsageError):
        qemu_luks.decrypt(str(image), b"", str(tmp_path / "x.raw"), qemu_img=tool)
    assert list(secrets_dir.iterdir()) == []


def test_qemu_img_made_encrypted_qcow2_opens(tmp_path: Path, qemu_img: str,
                                             guest: tuple[Path, bytes]) -> None:
    raw, data = guest
    keyfile = secret_file(tmp_path, "key", PASSPHRASE)
    image = tmp_path / "theirs.qcow2"
    run_qemu_img(["convert", "-f", "raw", *qemu_secret_args(keyfile), "-O", "qcow2", "-o",
                  "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=20,"
                  "encrypt.cipher-alg=aes-128", str(raw), str(image)])
    out = tmp_path / "out.raw"
    assert qemu_luks.decrypt(str(image), PASSPHRASE, str(out)) == len(data)
    info = qemu.image_info(image, source_format="qcow2")
    assert info.specific_data["encrypt"]["cipher-alg"] == "aes-128"
    assert out.read_bytes() == data


def test_create_empty_encrypted_qcow2(tmp_path: Path, qemu_img: str) -> None:
    image = tmp_path / "empty.qcow2"
    info = qemu_luks.create(str(image), 3 * MiB, PASSPHRASE, luks_options(20))
    assert (info.virtual_size, info.encrypted) == (3 * MiB, True)
    out = tmp_path / "out.raw"
    qemu_luks.decrypt(str(image), PASSPHRASE, str(out))
    assert out.read_bytes() == bytes(3 * MiB)
    with pytest.raises(TargetExistsError):
        qemu_luks.create(str(image), MiB, PASSPHRASE, luks_options())
    for bad in (0, -1, True):
        with pytest.raises(UsageError):
            qemu_luks.create(str(tmp_path / "bad.qcow2"), bad, PASSPHRASE, luks_options())
    with pytest.raises(UsageError):
        qemu_luks.create(str(tmp_path / "bad.qcow2"), MiB, PASSPHRASE, luks_options(0))
    assert not (tmp_path / "bad.qcow2").exists()


def qemu_children() -> list[tuple[int, bytes]]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = next((line.split()[1] for line in status.splitlines()
                     if line.startswith("PPid:")), "")
        if ppid == str(os.getpid()) and b"qemu-img" in cmdline.split(b"\0")[0]:
            found.append((int(proc.name), cmdline))
    return found


def test_passphrase_never_on_qemu_img_command_line(tmp_path: Path, qemu_img: str,
                                                   guest: tuple[Path, bytes],
                                                   secrets_dir: Path) -> None:
    raw, _ = guest
    passphrase = b"unmistakable-passphrase-7f3a9c"
    image = tmp_path / "enc.qcow2"
    seen: list[bytes] = []
    secret_modes: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def watch(stop: threading.Event) -> None:
        while not stop.is_set():
            for _pid, cmdline in qemu_children():
                seen.append(cmdline)
                for arg in cmdline.split(b"\0"):
                    if arg.startswith(b"secret,") and b"file=" in arg:
                        path = arg.split(b"file=", 1)[1].split(b",")[0].decode()
                        try:
                            secret_modes.append((stat.S_IMODE(os.stat(path).st_mode),
                                                 stat.S_IMODE(os.stat(os.path.dirname(path))
                                                              .st_mode)))
                        except OSError:
                            pass
            time.sleep(0.002)

    def run(action: object) -> None:
        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(stop,))
        watcher.start()
        try:
            action()  # type: ignore[operator]
        except ImgcryptError as exc:
            errors.append(exc)
        finally:
            stop.set()
            watcher.join()

    # qemu benchmarks PBKDF2 for iter-time on create and spends as long again on each open
    tool = qemu.QemuImg(secret_dir=str(secrets_dir))
    run(lambda: qemu_luks.encrypt(str(raw), str(image), passphrase, luks_options(150),
                                  source_format="raw", qemu_img=tool))
    run(lambda: qemu_luks.decrypt(str(image), passphrase, str(tmp_path / "out.raw"),
                                  qemu_img=tool))
    run(lambda: qemu_luks.decrypt(str(image), b"not-" + passphrase, str(tmp_path / "bad.raw"),
                                  qemu_img=tool))
    assert [type(e) for e in errors] == [WrongPassphraseError]
    assert passphrase not in str(errors[0]).encode()
    assert len(seen) >= 3, "qemu-img was never observed running"
    assert sum(b"secret,id=s0,file=" in c for c in seen) >= 3
    for cmdline in seen:
        assert passphrase not in cmdline
        assert b"data=" not in cmdline
    assert secret_modes, "the secret file was never observed"
    assert set(secret_modes) == {(0o600, 0o700)}
    assert list(secrets_dir.iterdir()) == []


def test_secret_dir_prefers_tmpfs() -> None:
    with qemu.secret_file(PASSPHRASE) as path:
        if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
            assert path.startswith("/dev/shm/imgcrypt-secret-")


def test_secret_file_is_private_and_removed() -> None:
    with qemu.secret_file(PASSPHRASE) as path:
        assert Path(path).read_bytes() == PASSPHRASE
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert not os.path.exists(os.path.dirname(path))
    with pytest.raises(RuntimeError), qemu.secret_file(PASSPHRASE) as path:
        raise RuntimeError
    assert not os.path.exists(os.path.dirname(path))
    assert "," not in path


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=qemu.SNIFF_SIZE + 16))
def test_sniff_format_total(head: bytes) -> None:
    assert qemu.sniff_format(head) in {None, "qcow", "qcow2", "qed", "vmdk", "vhdx", "vpc", "vdi",
                                       "luks"}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"QFI\xfb\0\0\0\x03", b"QED\0", b"KDMV", b"vhdxfile", b"conectix",
                        b"LUKS\xba\xbe", b"# Disk DescriptorFile", b""]),
       st.binary(max_size=qemu.SNIFF_SIZE + 16))
def test_sniff_format_of_hostile_heads_is_a_name_or_format_error(magic: bytes,
                                                                 rest: bytes) -> None:
    # the format inspector parses what follows the magic: its faults are malformed input
    try:
        found = qemu.sniff_format(magic + rest)
    except FormatError:
        return
    assert found in {None, "qcow", "qcow2", "qed", "vmdk", "vhdx", "vpc", "vdi", "luks"}


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=60).filter(lambda t: "\0" not in t),
       st.sampled_from(["raw", "qcow2", "vmdk", "vdi"]))
def test_source_spec_round_trips_any_path(name: str, fmt: str) -> None:
    spec = qemu.source_spec(name, fmt)
    assert spec.startswith("json:") and "\n" not in spec
    obj = json.loads(spec[len("json:"):])
    assert obj["driver"] == fmt
    assert obj["file"] == {"driver": "file", "filename": os.path.abspath(name)}
    assert ("backing" in obj) == (fmt in qemu.BACKING_DRIVERS)


def test_source_spec_is_valid_json_and_escapes() -> None:
    spec = qemu.source_spec('/tmp/a,b"c', "qcow2")
    obj = json.loads(spec.removeprefix("json:"))
    assert obj == {"driver": "qcow2", "backing": None,
                   "file": {"driver": "file", "filename": '/tmp/a,b"c'}}
    assert "backing" not in json.loads(qemu.source_spec("/x", "vdi")[5:])
    with pytest.raises(UsageError):
        qemu.source_spec("/x", "qcow2,file.filename=/etc/shadow")


def test_paths_with_commas_and_colons(tmp_path: Path, qemu_img: str,
                                      guest: tuple[Path, bytes]) -> None:
    raw, data = guest
    odd = tmp_path / "a,b:c"
    odd.mkdir()
    image = make_image(qemu_img, raw, "qcow2", odd / "nbd:x,y.qcow2")
    cwd = os.getcwd()
    os.chdir(odd)
    try:
        with qemu.raw_view("nbd:x,y.qcow2") as (stream, info):
            assert stream.read() == data
    finally:
        os.chdir(cwd)
    assert info.format == "qcow2" and image.exists()


def test_subprocess_is_real_qemu_img(qemu_img: str) -> None:
    version = subprocess.run([qemu_img, "--version"], capture_output=True, text=True, check=True)
    assert qemu.DEFAULT_QEMU_IMG.run(["--version"], what="version").stdout.decode() \
        == version.stdout


# --- open_guest: a source by its format, for the transfer engine ------------------------------


def read_guest(source: BinaryIO | GuestSource) -> bytes:
    if isinstance(source, GuestSource):
        out = bytearray(source.length)
        view = memoryview(out)
        for at in range(0, len(out), 1 << 20):
            assert source.read(view[at : at + (1 << 20)], at) == len(view[at : at + (1 << 20)])
        return bytes(out)
    return source.read()


@pytest.mark.parametrize("fmt", ["raw", *FORMATS])
@pytest.mark.parametrize("named", [False, True])
def test_open_guest_reads_what_qemu_img_converts(tmp_path: Path, qemu_img: str,
                                                 guest: tuple[Path, bytes], fmt: str,
                                                 named: bool) -> None:
    raw, data = guest
    image = raw if fmt == "raw" else make_image(qemu_img, raw, fmt, tmp_path / f"disk.{fmt}")
    reference = data if fmt == "raw" else reference_raw(image, fmt, tmp_path / "ref.raw")
    with qemu.open_guest(str(image), fmt if named else None) as (source, found, size):
        assert found == fmt
        # raw: the file itself, no qemu-nbd; the size is the file's, else the virtual size
        assert isinstance(source, GuestSource) == (fmt != "raw")
        assert size == len(reference)
        assert read_guest(source) == reference


def test_open_guest_by_magic_never_probes(tmp_path: Path, qemu_img: str) -> None:
    # no magic: raw, read as it is, even where qemu's probe might see something else
    plain = tmp_path / "plain.img"
    plain.write_bytes(b"\x00" * 512 + b"QFI\xfb" + bytes(4096))
    assert qemu.format_by_magic(plain) == "raw"
    with qemu.open_guest(str(plain)) as (source, found, size):
        assert (found, size) == ("raw", plain.stat().st_size)
        assert read_guest(source) == plain.read_bytes()
    # a qcow2 header naming a host file: read as raw bytes when said raw, refused otherwise
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"TOPSECRET" * 100)
    tricky = tmp_path / "tricky.img"
    run_qemu_img(["create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(tricky)])
    with qemu.open_guest(str(tricky), "raw") as (source, found, _size):
        assert (found, read_guest(source)) == ("raw", tricky.read_bytes())
    with pytest.raises(UnsupportedError, match="other host files"), \
            qemu.open_guest(str(tricky)):
        pass


def test_open_guest_refuses_a_luks_image_unless_said_raw(tmp_path: Path, qemu_img: str,
                                                         guest: tuple[Path, bytes]) -> None:
    raw, _ = guest
    luks = qemu_made_luks(tmp_path, raw)
    message = f"{luks} is already a LUKS image; give --source-format raw to encrypt it again"
    with pytest.raises(UnsupportedError) as caught:
        qemu.format_by_magic(luks)
    assert str(caught.value) == message
    with pytest.raises(UnsupportedError, match="already a LUKS image"), \
            qemu.open_guest(str(luks)):
        pass
    with qemu.open_guest(str(luks), "raw") as (source, found, size):
        assert (found, size) == ("raw", luks.stat().st_size)
        assert read_guest(source)[:6] == b"LUKS\xba\xbe"


# --- decrypt_to: a LUKS-encrypted qcow2 to a pipe ----------------------------------------------


def test_decrypt_to_a_pipe_matches_qemu_img(tmp_path: Path, qemu_img: str,
                                            guest: tuple[Path, bytes], secrets_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    raw, data = guest
    keyfile = secret_file(tmp_path, "key", PASSPHRASE)
    image = tmp_path / "theirs.qcow2"
    run_qemu_img(["convert", "-f", "raw", *qemu_secret_args(keyfile), "-O", "qcow2", "-o",
                  "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=20",
                  str(raw), str(image)])
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # where the private directory goes, to see it removed (other processes share /tmp)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    tool = qemu.QemuImg(secret_dir=str(secrets_dir))
    read_fd, write_fd = os.pipe()
    received = bytearray()

    def drain() -> None:
        with open(read_fd, "rb") as reader:
            while chunk := reader.read(1 << 16):
                received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    with open(write_fd, "wb") as pipe:
        assert qemu_luks.decrypt_to(str(image), PASSPHRASE, pipe, qemu_img=tool) == len(data)
    reader.join(timeout=60)
    assert bytes(received) == data
    assert list(scratch.iterdir()) == [] and list(secrets_dir.iterdir()) == []

    out = io.BytesIO()
    with pytest.raises(WrongPassphraseError):
        qemu_luks.decrypt_to(str(image), PASSPHRASE[:-1], out, qemu_img=tool)
    assert out.getvalue() == b"" and list(scratch.iterdir()) == []
    plain = make_image(qemu_img, raw, "qcow2", tmp_path / "plain.qcow2")
    with pytest.raises(UnsupportedError, match="not encrypted"):
        qemu_luks.decrypt_to(str(plain), PASSPHRASE, out, qemu_img=tool)
    assert out.getvalue() == b""


# --- rekey of a qcow2 with KdfOptions: qemu takes a time budget only --------------------------


@pytest.mark.parametrize("kdf", [KdfOptions(iterations=1000), KdfOptions(pbkdf="argon2id"),
                                 KdfOptions(pbkdf_memory_kib=65536),
                                 KdfOptions(pbkdf_parallel=1)])
def test_qcow2_rekey_refuses_what_qemu_cannot_do(tmp_path: Path, qemu_img: str,
                                                 guest: tuple[Path, bytes],
                                                 kdf: KdfOptions) -> None:
    raw, _ = guest
    image = tmp_path / "enc.qcow2"
    qemu_luks.encrypt(str(raw), str(image), PASSPHRASE, luks_options(20), source_format="raw")
    before = image.read_bytes()
    with pytest.raises(UsageError, match="takes --iter-time only"):
        qemu_luks.rekey(str(image), PASSPHRASE, new_passphrase=b"other", kdf=kdf)
    assert image.read_bytes() == before


def test_qcow2_rekey_with_a_time_budget(tmp_path: Path, qemu_img: str,
                                        guest: tuple[Path, bytes]) -> None:
    raw, data = guest
    image = tmp_path / "enc.qcow2"
    qemu_luks.encrypt(str(raw), str(image), PASSPHRASE, luks_options(20), source_format="raw")
    result = qemu_luks.rekey(str(image), PASSPHRASE, new_passphrase=b"other", remove_old=True,
                             kdf=KdfOptions(iter_time_ms=20, pbkdf="pbkdf2"))
    assert (result.opened_slot, result.removed_slot) == (0, 0)
    keyfile = secret_file(tmp_path, "new", b"other")
    direct = tmp_path / "direct.raw"
    run_qemu_img(["convert", *qemu_secret_args(keyfile), "--image-opts",
                  f"driver=qcow2,file.filename={image},encrypt.key-secret=s0",
                  "-O", "raw", str(direct)])
    assert direct.read_bytes() == data
    with pytest.raises(UsageError, match="out of range"):
        qemu_luks.rekey(str(image), b"other", new_passphrase=b"third",
                        kdf=KdfOptions(iter_time_ms=0))


def test_rekey_image_goes_by_the_container(tmp_path: Path, qemu_img: str,
                                           guest: tuple[Path, bytes]) -> None:
    raw, data = guest
    image = tmp_path / "enc.qcow2"
    qemu_luks.encrypt(str(raw), str(image), PASSPHRASE, luks_options(20), source_format="raw")
    before = image.read_bytes()
    for slots in ({"opened_slot": 0}, {"new_slot": 3}):
        with pytest.raises(UsageError, match="qemu-img amend picks the keyslot"):
            qemu_luks.rekey_image(str(image), PASSPHRASE, new_passphrase=b"other", **slots)
    assert image.read_bytes() == before
    result = qemu_luks.rekey_image(str(image), PASSPHRASE, new_passphrase=b"other",
                                   kdf=KdfOptions(iter_time_ms=20))
    assert (result.opened_slot, result.added_slot, result.removed_slot) == (0, 1, None)
    assert list(qemu_luks.read_qcow2_luks(str(image)).luks.active_keyslots()) == [0, 1]

    # a LUKS container made by qemu-img: imgcrypt rewrites its header, qemu-img then opens it
    luks = qemu_made_luks(tmp_path, raw)
    result = qemu_luks.rekey_image(str(luks), PASSPHRASE, new_passphrase=b"other",
                                   remove_old=True, new_slot=5,
                                   kdf=KdfOptions(iterations=1000))
    assert (result.opened_slot, result.added_slot, result.removed_slot) == (0, 5, 0)
    other = secret_file(tmp_path, "other", b"other")
    out = tmp_path / "out.raw"
    run_qemu_img(["convert", *qemu_secret_args(other), "--image-opts",
                  f"driver=luks,file.filename={luks},key-secret=s0", "-O", "raw", str(out)])
    assert out.read_bytes() == data

"""imgcrypt's verdict on an image against oslo.utils' format inspector (what Glance, Nova and
Cinder run), on images made by the real qemu-img and cryptsetup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from oslo_utils.imageutils import format_inspector

from imgcrypt import inspector, qemu
from imgcrypt.errors import FormatError, UnsupportedError
from tests.helpers.headerkit import make_luks1, make_luks2
from tests.helpers.util import imgcrypt, qemu_secret_args, run_qemu_img, secret_file

PASSPHRASE = b"inspector verdict"


def cloud_format(path: Path) -> str:
    """The inspector's format name for the whole file, read as Glance streams an upload."""
    with open(path, "rb") as f:
        wrapper = format_inspector.InspectWrapper(f)
        while wrapper.read(1 << 16):
            pass
        wrapper.close()
    found = wrapper.format
    assert found is not None
    return str(found)


def cloud_refusals(path: Path) -> set[str]:
    """The names of the inspector's failed safety checks on ``path`` (empty: it is safe)."""
    found = format_inspector.detect_file_format(str(path))
    assert found is not None
    try:
        found.safety_check()
    except format_inspector.SafetyCheckFailed as exc:
        return set(exc.failures)
    return set()


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "guest.raw"
    path.write_bytes(os.urandom(1 << 20) + bytes(1 << 20))
    return path


def test_raw_is_raw_for_both(raw: Path) -> None:
    assert cloud_format(raw) == "raw" and cloud_refusals(raw) == set()
    assert qemu.detect_format(raw) == "raw"
    assert qemu.sniff_format(raw.read_bytes()[:qemu.SNIFF_SIZE]) is None
    with qemu.raw_view(raw) as (stream, info):
        assert info.format == "raw" and stream.read() == raw.read_bytes()


def test_qcow2_with_backing_file_refused_by_both(tmp_path: Path, qemu_img: str,
                                                 raw: Path) -> None:
    overlay = tmp_path / "overlay.qcow2"
    run_qemu_img(["create", "-q", "-f", "qcow2", "-b", str(raw), "-F", "raw", str(overlay)])
    assert cloud_format(overlay) == "qcow2"
    assert cloud_refusals(overlay) == {"backing_file"}
    assert qemu.detect_format(overlay) == "qcow2"
    with pytest.raises(UnsupportedError, match="backing file: Image has a backing file"), \
            qemu.raw_view(overlay):
        pass
    out = tmp_path / "out.luks"
    pw = secret_file(tmp_path, "pw", PASSPHRASE)
    result = imgcrypt("encrypt", overlay, out, "--passphrase-file", pw)
    assert result.returncode == UnsupportedError.exit_code == 3
    assert b"backing file" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not out.exists()


def test_qcow2_with_data_file_refused_by_both(tmp_path: Path, qemu_img: str) -> None:
    image = tmp_path / "image.qcow2"
    run_qemu_img(["create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'data.bin'}",
                  str(image), "1M"])
    assert cloud_format(image) == "qcow2"
    assert cloud_refusals(image) == {"data_file"}
    assert qemu.detect_format(image) == "qcow2"
    with pytest.raises(UnsupportedError, match="external data file"):
        qemu.convert_to_raw(image, tmp_path / "out.raw")
    assert not (tmp_path / "out.raw").exists()


def test_vmdk_with_an_extent_file(tmp_path: Path, qemu_img: str, raw: Path) -> None:
    """A difference kept on purpose: qemu-img's flat vmdk is a text descriptor naming its extent
    file. The inspector calls that text raw (a cloud storing it as raw hands qemu format=raw,
    which reads the text and nothing else); imgcrypt names it vmdk, as qemu probes it, and
    refuses it because converting it would read the extent, a host file."""
    image = tmp_path / "disk.vmdk"
    run_qemu_img(["convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat",
                  str(raw), str(image)])
    assert (tmp_path / "disk-flat.vmdk").exists()
    assert cloud_format(image) == "raw" and cloud_refusals(image) == set()
    assert qemu.detect_format(image) == "vmdk"
    with pytest.raises(UnsupportedError, match="extent"), qemu.raw_view(image):
        pass
    # the same vmdk with its extent inside (monolithicSparse): safe for both
    sparse = tmp_path / "sparse.vmdk"
    run_qemu_img(["convert", "-f", "raw", "-O", "vmdk", str(raw), str(sparse)])
    assert cloud_format(sparse) == "vmdk" and cloud_refusals(sparse) == set()
    with qemu.raw_view(sparse) as (stream, info):
        assert info.format == "vmdk" and stream.read() == raw.read_bytes()


def test_vmdk_extent_naming_a_host_path_refused_by_both(tmp_path: Path, qemu_img: str,
                                                        raw: Path) -> None:
    # qemu-img's own sparse vmdk, its embedded descriptor edited to name another file
    sparse = tmp_path / "sparse.vmdk"
    run_qemu_img(["convert", "-f", "raw", "-O", "vmdk", str(raw), str(sparse)])
    data = sparse.read_bytes()
    assert data.count(b'"sparse.vmdk"') == 1
    sparse.write_bytes(data.replace(b'"sparse.vmdk"', b'"/tmp/x.vmdk"'))
    assert cloud_format(sparse) == "vmdk"
    assert cloud_refusals(sparse) == {"descriptor"}
    with pytest.raises(UnsupportedError, match="vmdk descriptor or extent"), \
            qemu.raw_view(sparse, source_format="vmdk"):
        pass


def luks_images(tmp_path: Path, raw: Path, cryptsetup: str) -> dict[str, Path]:
    key = secret_file(tmp_path, "key", PASSPHRASE)
    qemu_luks1 = tmp_path / "qemu.luks"
    run_qemu_img(["convert", "-f", "raw", *qemu_secret_args(key), "-O", "luks", "-o",
                  "key-secret=s0,iter-time=10", str(raw), str(qemu_luks1)])
    cs_luks1 = tmp_path / "cs1.luks"
    make_luks1(cryptsetup, cs_luks1, key)
    cs_luks2 = tmp_path / "cs2.luks"
    make_luks2(cryptsetup, cs_luks2, key)
    return {"qemu-img luks1": qemu_luks1, "cryptsetup luks1": cs_luks1,
            "cryptsetup luks2": cs_luks2}


def test_luks_containers(tmp_path: Path, qemu_img: str, cryptsetup: str, raw: Path) -> None:
    """The inspector names LUKS1 and LUKS2 alike ``luks`` and refuses version 2; imgcrypt names
    both ``luks`` too, never runs that check (it reads LUKS2 itself), and refuses either as a
    source to encrypt or convert because it is a container, not a guest disk."""
    images = luks_images(tmp_path, raw, cryptsetup)
    for made_by, image in images.items():
        assert cloud_format(image) == "luks", made_by
        assert qemu.detect_format(image) == "luks", made_by
        assert qemu.sniff_format(image.read_bytes()[:qemu.SNIFF_SIZE]) == "luks", made_by
        inspector.safety_check(image, "luks")  # not the inspector's LUKS2 refusal
        with pytest.raises(UnsupportedError, match="LUKS container"), qemu.raw_view(image):
            pass
    assert cloud_refusals(images["qemu-img luks1"]) == set()
    assert cloud_refusals(images["cryptsetup luks1"]) == set()
    found = format_inspector.detect_file_format(str(images["cryptsetup luks2"]))
    assert found is not None
    with pytest.raises(format_inspector.SafetyCheckFailed) as refused:
        found.safety_check()
    assert "LUKS version 2 is not supported" in str(refused.value.failures["version"])
    # imgcrypt still reads what cryptsetup made
    shown = imgcrypt("inspect", images["cryptsetup luks2"], "--json", check=True)
    assert b'"version": 2' in shown.stdout


def test_two_formats_at_once_is_malformed() -> None:
    # a qcow2 header whose bytes also carry a VDI signature: the cloud refuses to pick one
    head = bytearray(b"QFI\xfb\0\0\0\x03".ljust(512, b"\0"))
    head[0x40:0x44] = b"\x7f\x10\xda\xbe"
    with pytest.raises(format_inspector.ImageFormatError):
        wrapper = format_inspector.InspectWrapper(iter([bytes(head)]))  # type: ignore[arg-type]
        next(wrapper)
        wrapper.close()
        _ = wrapper.format
    with pytest.raises(FormatError, match="several formats"):
        qemu.sniff_format(bytes(head))


def test_format_only_qemu_knows_is_raw_as_for_the_cloud(tmp_path: Path, qemu_img: str) -> None:
    """A difference from imgcrypt before the inspector: a parallels image, which qemu's probe
    names but the inspector does not know, was refused as an unsupported format (exit 3). The
    cloud stores it as raw and qemu then reads it with format=raw; imgcrypt now does the same and
    encrypts its bytes as the guest disk, without qemu ever probing it."""
    image = tmp_path / "disk.img"
    run_qemu_img(["create", "-q", "-f", "parallels", str(image), "1M"])
    assert cloud_format(image) == "raw" and cloud_refusals(image) == set()
    assert qemu.detect_format(image) == "raw"
    with qemu.raw_view(image) as (stream, info):
        assert info.format == "raw" and stream.read() == image.read_bytes()
    pw = secret_file(tmp_path, "pw", PASSPHRASE)
    out = tmp_path / "out.luks"
    imgcrypt("encrypt", image, out, "--passphrase-file", pw, "--iterations", "1000", check=True)
    plain = tmp_path / "plain.raw"
    imgcrypt("decrypt", out, plain, "--passphrase-file", pw, check=True)
    assert plain.read_bytes()[:image.stat().st_size] == image.read_bytes()


def test_luks2_was_raw_to_qemu_and_is_luks_now(tmp_path: Path, cryptsetup: str) -> None:
    """A difference from imgcrypt before the inspector: qemu's probe calls a LUKS2 container raw
    (qemu reads LUKS1 only), so raw_view() without a format handed its ciphertext on as the guest
    disk. The inspector names it luks, and imgcrypt refuses it as a source."""
    key = secret_file(tmp_path, "key", PASSPHRASE)
    image = tmp_path / "cs2.luks"
    make_luks2(cryptsetup, image, key)
    probed = run_qemu_img(["info", "--output=json", str(image)])
    assert '"format": "raw"' in probed.stdout
    assert cloud_format(image) == "luks"
    with pytest.raises(UnsupportedError, match="LUKS container"), qemu.raw_view(image):
        pass
    with pytest.raises(UnsupportedError, match="LUKS container"):
        qemu.convert_to_raw(image, tmp_path / "out.raw")

"""`imgcrypt encrypt` of qcow2, vmdk, vhdx, vdi and vpc sources: guest content, not container."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imgcrypt.qemu import sniff_format
from tests.helpers.util import imgcrypt, run_qemu_img, secret_file


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "vhdx", "vdi", "vpc"])
def test_non_raw_sources_encrypt_their_guest_content(tmp_path: Path, qemu_img: str,
                                                     fmt: str) -> None:
    guest = os.urandom(3 << 20) + bytes(1 << 20)
    raw = tmp_path / "guest.raw"
    raw.write_bytes(guest)
    image = tmp_path / f"disk.{fmt}"
    run_qemu_img(["convert", "-f", "raw", "-O", fmt, str(raw), str(image)])
    assert sniff_format(image.read_bytes()[:512]) == fmt
    # What qemu-img itself says the guest sees (vpc rounds the size up to its geometry).
    expected = tmp_path / "expected.raw"
    run_qemu_img(["convert", "-f", fmt, "-O", "raw", str(image), str(expected)])
    pw = secret_file(tmp_path, "pw", b"sources")
    out = tmp_path / "disk.luks"
    result = json.loads(imgcrypt("encrypt", image, out, "--passphrase-file", pw, "--iterations",
                                 "1000", "--json", check=True).stdout)
    assert result["source_format"] == fmt
    assert result["payload_size"] == expected.stat().st_size
    plain = tmp_path / "plain.raw"
    imgcrypt("decrypt", out, plain, "--passphrase-file", pw, "--size",
             str(result["payload_size"]), check=True)
    assert plain.read_bytes() == expected.read_bytes()
    assert plain.read_bytes()[: len(guest)] == guest
    # No temporary conversion is left behind.
    assert not [p for p in Path(os.environ.get("TMPDIR", "/tmp")).glob("imgcrypt-raw-*")
                if p.stat().st_uid == os.getuid() and p.stat().st_mtime > raw.stat().st_mtime]


def test_forced_raw_source_is_not_converted(tmp_path: Path, qemu_img: str) -> None:
    raw = tmp_path / "guest.raw"
    raw.write_bytes(os.urandom(1 << 20))
    image = tmp_path / "disk.qcow2"
    run_qemu_img(["convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)])
    pw = secret_file(tmp_path, "pw", b"sources")
    out = tmp_path / "out.luks"
    result = json.loads(imgcrypt("encrypt", image, out, "--passphrase-file", pw, "--iterations",
                                 "1000", "--source-format", "raw", "--json", check=True).stdout)
    assert result["source_format"] == "raw"
    assert result["payload_size"] == image.stat().st_size


def test_qcow2_with_a_backing_file_is_refused(tmp_path: Path, qemu_img: str) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(b"host secret " * 1000)
    overlay = tmp_path / "overlay.qcow2"
    run_qemu_img(["create", "-f", "qcow2", "-F", "raw", "-b", str(base), str(overlay)])
    pw = secret_file(tmp_path, "pw", b"sources")
    proc = imgcrypt("encrypt", overlay, tmp_path / "o.luks", "--passphrase-file", pw)
    assert proc.returncode == 3 and b"backing file" in proc.stderr
    assert not (tmp_path / "o.luks").exists()


def test_luks_source_needs_explicit_raw(tmp_path: Path) -> None:
    raw = tmp_path / "guest.raw"
    raw.write_bytes(os.urandom(70_000))
    pw = secret_file(tmp_path, "pw", b"sources")
    once = tmp_path / "once.luks"
    imgcrypt("encrypt", raw, once, "--passphrase-file", pw, "--iterations", "1000", check=True)
    proc = imgcrypt("encrypt", once, tmp_path / "twice", "--passphrase-file", pw)
    assert proc.returncode == 3 and b"--source-format raw" in proc.stderr
    imgcrypt("encrypt", once, tmp_path / "twice", "--passphrase-file", pw, "--iterations", "1000",
             "--source-format", "raw", check=True)

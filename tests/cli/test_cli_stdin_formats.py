"""`imgcrypt encrypt -`: an image format on stdin is refused by its magic bytes, not encrypted
as if it were the guest's raw disk; `--source-format raw` still encrypts the bytes as they are."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.util import IMGCRYPT, imgcrypt, run_qemu_img, secret_file

FAST = ("--iterations", "1000")


def _image(tmp_path: Path, fmt: str) -> Path:
    raw = tmp_path / "guest.raw"
    raw.write_bytes(os.urandom(1 << 20))
    image = tmp_path / f"disk.{fmt}"
    run_qemu_img(["convert", "-f", "raw", "-O", fmt, str(raw), str(image)])
    return image


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "vhdx", "vdi", "vpc"])
def test_image_format_piped_on_stdin_is_refused(tmp_path: Path, qemu_img: str, fmt: str) -> None:
    image = _image(tmp_path, fmt)
    pw = secret_file(tmp_path, "pw", b"stdin")
    out = tmp_path / "out.luks"
    proc = imgcrypt("encrypt", "-", out, "--passphrase-file", pw, *FAST,
                    input=image.read_bytes())
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and f"a {fmt} image" in lines[0] and "--source-format raw" in lines[0]
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".imgcrypt-tmp")]


def test_redirected_qcow2_is_refused_too(tmp_path: Path, qemu_img: str) -> None:
    image = _image(tmp_path, "qcow2")
    pw = secret_file(tmp_path, "pw", b"stdin")
    with open(image, "rb") as stdin:
        proc = subprocess.run([*IMGCRYPT, "encrypt", "-", str(tmp_path / "o.luks"),
                               "--passphrase-file", str(pw), *FAST], stdin=stdin,
                              capture_output=True, timeout=120)
    assert proc.returncode == 3 and b"a qcow2 image" in proc.stderr


def test_luks_piped_on_stdin_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "guest.raw"
    raw.write_bytes(os.urandom(100_000))
    pw = secret_file(tmp_path, "pw", b"stdin")
    once = tmp_path / "once.luks"
    imgcrypt("encrypt", raw, once, "--passphrase-file", pw, *FAST, check=True)
    proc = imgcrypt("encrypt", "-", "-", "--passphrase-file", pw, *FAST,
                    input=once.read_bytes())
    assert proc.returncode == 3 and b"a LUKS image" in proc.stderr and proc.stdout == b""


def test_explicit_raw_encrypts_the_bytes_as_they_are(tmp_path: Path, qemu_img: str) -> None:
    image = _image(tmp_path, "qcow2")
    pw = secret_file(tmp_path, "pw", b"stdin")
    out = tmp_path / "out.luks"
    imgcrypt("encrypt", "-", out, "--passphrase-file", pw, *FAST, "--source-format", "raw",
             input=image.read_bytes(), check=True)
    plain = tmp_path / "plain"
    imgcrypt("decrypt", out, plain, "--passphrase-file", pw, "--size",
             str(image.stat().st_size), check=True)
    assert plain.read_bytes() == image.read_bytes()


@pytest.mark.parametrize("size", [0, 1, 67, 511, 512, 513, 4096, 1_000_003])
def test_raw_on_stdin_round_trips_whole(tmp_path: Path, size: int) -> None:
    # the bytes read to look for a magic are not lost, whatever the input's length
    data = os.urandom(size)
    pw = secret_file(tmp_path, "pw", b"stdin")
    out = tmp_path / "out.luks"
    imgcrypt("encrypt", "-", out, "--passphrase-file", pw, *FAST, input=data, check=True)
    proc = imgcrypt("decrypt", out, "-", "--passphrase-file", pw, "--size", str(size),
                    check=True)
    assert proc.stdout == data


def test_redirected_raw_round_trips(tmp_path: Path) -> None:
    raw = tmp_path / "guest.raw"
    raw.write_bytes(os.urandom(300_001))
    pw = secret_file(tmp_path, "pw", b"stdin")
    out = tmp_path / "out.luks"
    with open(raw, "rb") as stdin:
        subprocess.run([*IMGCRYPT, "encrypt", "-", str(out), "--passphrase-file", str(pw),
                        *FAST], stdin=stdin, check=True, capture_output=True, timeout=120)
    proc = imgcrypt("decrypt", out, "-", "--passphrase-file", pw, "--size", "300001",
                    check=True)
    assert proc.stdout == raw.read_bytes()


@pytest.mark.parametrize("command", ["decrypt", "inspect"])
def test_qcow2_piped_to_decrypt_or_inspect_is_named(tmp_path: Path, qemu_img: str,
                                                    command: str) -> None:
    image = _image(tmp_path, "qcow2")
    pw = secret_file(tmp_path, "pw", b"stdin")
    args = ["-", str(tmp_path / "out.raw"), "--passphrase-file", str(pw)] \
        if command == "decrypt" else ["-"]
    proc = imgcrypt(command, *args, input=image.read_bytes())
    assert proc.returncode == 3 and b"stdin holds a qcow2 image" in proc.stderr
    assert b"give it as a file" in proc.stderr and not (tmp_path / "out.raw").exists()


def test_luks_piped_to_decrypt_and_inspect_still_works(tmp_path: Path) -> None:
    data = os.urandom(123_457)
    pw = secret_file(tmp_path, "pw", b"stdin")
    out = tmp_path / "out.luks"
    imgcrypt("encrypt", "-", out, "--passphrase-file", pw, *FAST, input=data, check=True)
    plain = imgcrypt("decrypt", "-", "-", "--passphrase-file", pw, "--size", "123457",
                     input=out.read_bytes(), check=True)
    assert plain.stdout == data
    info = imgcrypt("inspect", "-", "--json", input=out.read_bytes(), check=True)
    assert b'"luks1"' in info.stdout

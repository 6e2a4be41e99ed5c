"""`imgcrypt encrypt -` and `imgcrypt decrypt ... -` on real pipes: the bytes are those the
file paths write, whatever the sizes the pipe hands over.

A writer thread feeds stdin in uneven pieces with pauses, so the engine sees short reads of
every size; a reader drains stdout in small pieces. Sizes are chosen not to be multiples of the
engine's stream chunk (1 MiB). The checks come from the other tools: cryptsetup's dumped volume
key and payload offset with an independent dm-crypt model for what encrypt wrote, qemu-img for
the image that decrypt reads.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from imgcrypt.errors import FormatError
from tests.helpers.dmcrypt_oracle import oracle_encrypt
from tests.helpers.luksdump import parse_luks1, parse_luks2
from tests.helpers.util import (
    IMGCRYPT,
    dump_volume_key,
    qemu_secret_args,
    run_qemu_img,
    secret_file,
)

FAST = ("--iterations", "1000")
MIB = 1 << 20


def _feed(pipe: IO[bytes], data: bytes, seed: int) -> None:
    """Write ``data`` to ``pipe`` in pieces of 1 byte to 300 KiB, pausing now and then, then
    close it; a reader that went away ends the feeding."""
    rng = random.Random(seed)
    view = memoryview(data)
    try:
        while view:
            n = rng.choice((1, 7, 511, 4096, 65_537, 300_000))
            pipe.write(view[:n])
            pipe.flush()
            view = view[n:]
            if rng.random() < 0.05:
                time.sleep(0.002)
    except BrokenPipeError:
        pass
    finally:
        try:
            pipe.close()
        except BrokenPipeError:
            pass


def _run_piped(args: list[str], data: bytes, *, seed: int = 1, read_piece: int = 8191
               ) -> tuple[int, bytes, bytes]:
    """Run imgcrypt with ``data`` on stdin (fed unevenly); stdout read ``read_piece`` bytes at
    a time. Returns (exit code, stdout, stderr)."""
    proc = subprocess.Popen([*IMGCRYPT, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    writer = threading.Thread(target=_feed, args=(proc.stdin, data, seed), daemon=True)
    errors: list[bytes] = []
    stderr = proc.stderr
    drain = threading.Thread(target=lambda: errors.append(stderr.read()), daemon=True)
    writer.start()
    drain.start()
    out = bytearray()
    while piece := os.read(proc.stdout.fileno(), read_piece):
        out += piece
    code = proc.wait(timeout=300)
    writer.join(timeout=60)
    drain.join(timeout=60)
    return code, bytes(out), errors[0]


def _padded(data: bytes, sector: int) -> bytes:
    return data + bytes(-len(data) % sector)


@pytest.mark.parametrize("size", [MIB + 777, 3 * MIB - 1, 4097])
@pytest.mark.parametrize("fmt", ["luks1", "luks2-4096"])
def test_piped_encrypt_is_what_cryptsetup_reads(tmp_path: Path, cryptsetup: str, size: int,
                                                fmt: str) -> None:
    data = os.urandom(size)
    pw = secret_file(tmp_path, "pw", b"piped")
    image = tmp_path / "out.luks"
    extra = ["--format", "luks1"] if fmt == "luks1" else \
        ["--format", "luks2", "--pbkdf", "pbkdf2", "--sector-size", "4096"]
    code, out, err = _run_piped(["encrypt", "-", str(image), "--passphrase-file", str(pw),
                                 *FAST, *extra], data, seed=size)
    assert code == 0, err
    assert out.startswith(b"encrypted - -> ")  # the summary; the image went to the file
    key = dump_volume_key(cryptsetup, image, pw)
    dumped = subprocess.run([cryptsetup, "luksDump", str(image)], capture_output=True,
                            text=True, check=True, timeout=120).stdout
    if fmt == "luks1":
        offset, sector = parse_luks1(dumped)["payload_offset"], 512
    else:
        segment = parse_luks2(dumped)["segments"][0]
        offset, sector = segment["offset"], segment["sector_size"]
    expected = oracle_encrypt("aes-xts-plain64", key, _padded(data, sector), sector)
    written = image.read_bytes()
    assert len(written) == offset + len(expected)
    assert written[offset:] == expected


@pytest.mark.parametrize("size", [2 * MIB + 513, 5 * MIB - 512, 1000])
def test_piped_decrypt_to_a_pipe_is_what_qemu_img_wrote(tmp_path: Path, qemu_img: str,
                                                         size: int) -> None:
    data = os.urandom(size)
    raw = tmp_path / "guest.raw"
    raw.write_bytes(data)
    pw = secret_file(tmp_path, "pw", b"qemu wrote it")
    image = tmp_path / "qemu.luks"
    run_qemu_img(["convert", "-f", "raw", "-O", "luks", *qemu_secret_args(pw), "-o",
                  "key-secret=s0,iter-time=10", str(raw), str(image)])
    code, out, err = _run_piped(["decrypt", "-", "-", "--passphrase-file", str(pw),
                                 "--size", str(size)], image.read_bytes(), seed=size,
                                read_piece=size % 9973 + 1)
    assert code == 0, err
    assert out == data
    # and without --size, the whole payload as qemu-img sees it (padded to the sector)
    code, whole, err = _run_piped(["decrypt", "-", "-", "--passphrase-file", str(pw)],
                                  image.read_bytes(), seed=size + 1)
    assert code == 0, err
    seen = tmp_path / "seen.raw"
    run_qemu_img(["convert", *qemu_secret_args(pw), "--image-opts",
                  f"driver=luks,key-secret=s0,file.filename={image}", "-O", "raw", str(seen)])
    assert whole == seen.read_bytes()


@pytest.fixture
def piped_image(tmp_path: Path) -> tuple[Path, Path, bytes]:
    data = os.urandom(3 * MIB + 1234)
    pw = secret_file(tmp_path, "pw", b"cut short")
    image = tmp_path / "img.luks"
    code, _, err = _run_piped(["encrypt", "-", str(image), "--passphrase-file", str(pw), *FAST,
                               "--format", "luks1"], data)
    assert code == 0, err
    return image, pw, data


@pytest.mark.parametrize("cut", ["in the header", "in the payload", "mid-sector"])
def test_a_writer_that_stops_early_is_a_truncated_image(tmp_path: Path,
                                                        piped_image: tuple[Path, Path, bytes],
                                                        cut: str) -> None:
    image, pw, data = piped_image
    whole = image.read_bytes()
    keep = {"in the header": 1000, "in the payload": len(whole) - MIB,
            "mid-sector": len(whole) - 400}[cut]
    # A LUKS1 payload runs to the end of the image (a partial last sector is left out, as a
    # loop device does): on a stream, the size the image service recorded (os_decrypt_size)
    # is what tells a cut payload from a shorter image.
    size = ["--size", str(len(data))] if cut != "in the header" else []
    target = tmp_path / "out" / "plain.raw"
    target.parent.mkdir()
    code, out, err = _run_piped(["decrypt", "-", str(target), "--passphrase-file", str(pw),
                                 *size], whole[:keep])
    assert code == FormatError.exit_code, err
    text = err.decode()
    assert text.startswith("imgcrypt: ") and text.count("\n") == 1, text
    assert "Traceback" not in text
    assert out == b""
    assert list(target.parent.iterdir()) == []  # no partial output, no temporary file


def test_a_writer_that_stops_early_fails_a_decrypt_to_stdout_too(
        piped_image: tuple[Path, Path, bytes]) -> None:
    image, pw, data = piped_image
    whole = image.read_bytes()
    code, out, err = _run_piped(["decrypt", "-", "-", "--passphrase-file", str(pw),
                                 "--size", str(len(data))], whole[: len(whole) - 400])
    assert code == FormatError.exit_code, err
    assert err.decode().count("\n") == 1 and b"Traceback" not in err
    assert data.startswith(out)  # what went out before the end was seen is the right plaintext


F_GETPIPE_SZ = 1032


@pytest.mark.parametrize("command", ["encrypt", "encrypt --source-format raw", "decrypt"])
def test_the_pipes_get_a_1_mib_buffer(tmp_path: Path, command: str) -> None:
    # A pipe's size belongs to the pipe, so the end this test keeps shows what imgcrypt set
    # on its end: 16 times Linux's default 64 KiB, fewer wake-ups on both sides.
    import fcntl

    pw = secret_file(tmp_path, "pw", b"wide")
    image = tmp_path / "img.luks"
    plaintext = os.urandom(MIB + 3)
    if command == "decrypt":
        code, _, err = _run_piped(["encrypt", "-", str(image), "--passphrase-file", str(pw),
                                   *FAST], plaintext)
        assert code == 0, err
    # This process keeps the read end open throughout, so the pipe outlives imgcrypt and its
    # size can be read afterwards.
    read_end, write_end = os.pipe()
    try:
        if command == "decrypt":
            proc = subprocess.Popen([*IMGCRYPT, "decrypt", str(image), "-", "--passphrase-file",
                                     str(pw)], stdout=write_end, stderr=subprocess.PIPE)
            os.close(write_end)
            write_end = -1
            received = bytearray()
            while chunk := os.read(read_end, MIB):
                received += chunk
            err = proc.communicate(timeout=300)[1]
            # A payload from a pipe of unknown size ends on a 512-byte sector, as
            # cryptsetup's does; without --size the zeros after the plaintext come out too.
            assert received == plaintext + bytes(512 - 3)
        else:
            proc = subprocess.Popen([*IMGCRYPT, *command.split(), "-", str(image),
                                     "--passphrase-file", str(pw), *FAST], stdin=read_end,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            os.write(write_end, os.urandom(100_000))
            os.close(write_end)
            write_end = -1
            err = proc.communicate(timeout=300)[1]
        assert proc.returncode == 0, err
        assert fcntl.fcntl(read_end, F_GETPIPE_SZ) == MIB
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)

"""Helpers for tests that drive real tools and the imgcrypt console script."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgcrypt.errors import Fault, ImgcryptError

IMGCRYPT = [sys.executable, "-m", "imgcrypt"]


def imgcrypt(*args: str | os.PathLike[str], input: bytes | None = None, check: bool = False,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([*IMGCRYPT, *map(str, args)], input=input, capture_output=True,
                          env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"imgcrypt {args} failed ({proc.returncode}): {proc.stderr.decode()}")
    return proc


@contextlib.contextmanager
def raises_fault(kind: type[ImgcryptError], reason: Fault, match: str | None = None
                 ) -> Iterator[pytest.ExceptionInfo[ImgcryptError]]:
    """``pytest.raises(kind, match=match)`` that also requires the error's ``reason``."""
    with pytest.raises(kind, match=match) as info:
        yield info
    assert info.value.reason is reason, f"reason {info.value.reason!r}, not {reason!r}"


@contextlib.contextmanager
def large_source(name: str) -> Iterator[Path]:
    """A 1 GiB random raw image in /dev/shm: encrypt is still writing it when interrupted.
    Removed afterwards."""
    src = Path("/dev/shm") / f"imgcrypt-{name}-{os.getpid()}.raw"
    try:
        with open(src, "wb") as f:
            for _ in range(64):
                f.write(os.urandom(16 << 20))
        yield src
    finally:
        src.unlink(missing_ok=True)


def interrupt_once_writing(proc: subprocess.Popen[bytes], directory: Path) -> bytes:
    """Wait until the temporary output in ``directory`` exists and is growing, then send
    SIGINT (Ctrl-C); the command's stderr."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        temps = [p for p in directory.iterdir() if p.name.endswith(".imgcrypt-tmp")]
        if temps and temps[0].stat().st_size > (8 << 20):
            break
        time.sleep(0.02)
    else:
        pytest.fail("encrypt never started writing")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return err


def secret_file(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def qemu_secret_args(path: Path, ident: str = "s0") -> list[str]:
    return ["--object", f"secret,id={ident},file={path}"]


def run_qemu_img(args: list[str], *, attempts: int = 20) -> subprocess.CompletedProcess[str]:
    """qemu-img with a retry of its known spurious 'Unable to get accurate CPU usage' failure."""
    proc: subprocess.CompletedProcess[str] | None = None
    for _ in range(attempts):
        proc = subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=300)
        if proc.returncode == 0 or "accurate CPU usage" not in proc.stderr:
            break
        time.sleep(0.1)
    assert proc is not None
    if proc.returncode != 0:
        raise AssertionError(f"qemu-img {args} failed: {proc.stderr}")
    return proc


def dump_volume_key(cryptsetup: str, image: Path, keyfile: Path) -> bytes:
    out = subprocess.run(
        [cryptsetup, "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", str(keyfile),
         str(image)], capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    lines = out.splitlines()
    hexdigits = ""
    collecting = False
    for line in lines:
        if line.startswith(("MK dump:", "Volume key:")) or line.strip().startswith("MK dump"):
            collecting = True
            line = line.split(":", 1)[1]
        elif collecting and not line.startswith(("\t", " ")):
            break
        if collecting:
            hexdigits += "".join(line.split())
    return bytes.fromhex(hexdigits)


def test_passphrase(cryptsetup: str, image: Path, keyfile: Path) -> int:
    return subprocess.run(
        [cryptsetup, "open", "--test-passphrase", "--key-file", str(keyfile), str(image)],
        capture_output=True, timeout=120,
    ).returncode


test_passphrase.__test__ = False  # type: ignore[attr-defined]


def qemu_opens(image: Path, passphrase: Path) -> bool:
    """Whether qemu-img can read guest data with ``passphrase`` (``info`` never unlocks)."""
    out = image.with_suffix(".probe")
    proc = subprocess.run(["qemu-img", "convert", *qemu_secret_args(passphrase),
                           "--image-opts",
                           f"driver=qcow2,encrypt.key-secret=s0,file.filename={image}",
                           "-O", "raw", str(out)], capture_output=True, text=True, timeout=120)
    out.unlink(missing_ok=True)
    if proc.returncode != 0:
        assert "Invalid password" in proc.stderr, proc.stderr
    return proc.returncode == 0

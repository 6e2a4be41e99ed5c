"""Concurrency: 16 threads at once give the single-threaded results; two re-keys of one image
at once never corrupt it (rekey_file holds an exclusive flock for the whole change)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from fuzz import seeds, targets
from imgcrypt.crypto.sectors import CipherSpec, SectorCipher
from imgcrypt.errors import ImgcryptError
from imgcrypt.luks.options import FormatOptions
from imgcrypt.luks.reader import open_payload
from imgcrypt.luks.transfer import decrypt_stream, encrypt_stream
from imgcrypt.luks.unlock import unlock_stream
from tests.conftest import require_tool
from tests.helpers.util import secret_file
from tests.helpers.util import test_passphrase as cryptsetup_opens

THREADS = 16
ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def all_at_once(work: Callable[[int], T], count: int = THREADS) -> list[T]:
    barrier = threading.Barrier(count)

    def run(index: int) -> T:
        barrier.wait()
        return work(index)

    with concurrent.futures.ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def test_sixteen_threads_encrypt_and_decrypt() -> None:
    def work(index: int) -> tuple[bool, bool, bool]:
        rng = random.Random(index)
        data = rng.randbytes(rng.randint(1, 3 << 20))
        passphrase = f"thread {index}".encode()
        options = FormatOptions(iterations=1000, key_size=rng.choice((256, 512)),
                                cipher=rng.choice(("aes-xts-plain64", "aes-cbc-essiv:sha256"))
                                if index % 2 else "aes-xts-plain64")
        if options.cipher.startswith("aes-cbc"):
            options = FormatOptions(iterations=1000, key_size=256, cipher=options.cipher)
        image = io.BytesIO()
        encrypt_stream(io.BytesIO(data), image, passphrase, options)
        plain = io.BytesIO()
        decrypt_stream(io.BytesIO(image.getvalue()), plain, passphrase, size=len(data))
        with open_payload(io.BytesIO(image.getvalue()), passphrase, size=len(data)) as reader:
            start = rng.randrange(len(data))
            reader.seek(start)
            piece = reader.read(70_000)
        wrong = False
        try:
            unlock_stream(io.BytesIO(image.getvalue()), b"not " + passphrase)
        except ImgcryptError:
            wrong = True
        return plain.getvalue() == data, piece == data[start : start + 70_000], wrong

    assert all_at_once(work) == [(True, True, True)] * THREADS


def test_one_sector_cipher_shared_by_sixteen_threads() -> None:
    cipher = SectorCipher(CipherSpec.parse("aes-xts-plain64"), bytes(range(64)))
    inputs = [random.Random(i).randbytes(512 * 256) for i in range(THREADS)]
    expected = [cipher.encrypt(data, i * 1000) for i, data in enumerate(inputs)]

    def work(index: int) -> bool:
        ok = True
        for _ in range(20):
            out = cipher.encrypt(inputs[index], index * 1000)
            ok &= out == expected[index]
            ok &= cipher.decrypt(out, index * 1000) == inputs[index]
        return ok

    assert all(all_at_once(work))


def test_sixteen_threads_sign_and_verify() -> None:
    from imgcrypt.signing import GlanceSigner, ImageVerifier, ImgcryptSigner, check_certificate

    ed = check_certificate([seeds.ed25519_certificate()], clock=targets._now)
    p384 = check_certificate([seeds.p384_certificate()], clock=targets._now)

    def work(index: int) -> tuple[bool, bool]:
        image = random.Random(index).randbytes(200_000 + index)
        if index % 2:
            signer: ImgcryptSigner | GlanceSigner = ImgcryptSigner(
                seeds.ed25519_key(), certificate_uuid=seeds.CERT_UUID)
            checked = ed
        else:
            signer = GlanceSigner(seeds.p384_key(), certificate_uuid=seeds.CERT_UUID)
            checked = p384
        for start in range(0, len(image), 65536):
            signer.update(image[start : start + 65536])
        props = signer.finalize()
        verifier = ImageVerifier(props, checked)
        verifier.update(image)
        verifier.finalize()
        tampered = ImageVerifier(props, checked)
        tampered.update(image[:-1] + bytes([image[-1] ^ 1]))
        try:
            tampered.finalize()
        except ImgcryptError:
            return True, True
        return True, False

    assert all_at_once(work) == [(True, True)] * THREADS


# -- two processes re-keying one image ---------------------------------------------------------


@pytest.fixture
def rekey_setup(tmp_path: Path) -> dict[str, Path]:
    pw = {name: secret_file(tmp_path, name, f"passphrase {name}".encode())
          for name in ("old", "a", "b")}
    image = tmp_path / "image.luks"
    with open(image, "wb") as f:
        encrypt_stream(io.BytesIO(os.urandom(1 << 20)), f, b"passphrase old",
                       FormatOptions(iterations=1000))
    return {"dir": tmp_path, "image": image, **pw}


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "imgcrypt", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _opens(image: Path, path: Path, cryptsetup: str) -> bool:
    ours = True
    try:
        with open(image, "rb") as f:
            unlock_stream(f, path.read_bytes())
    except ImgcryptError:
        ours = False
    theirs = cryptsetup_opens(cryptsetup, image, path) == 0
    assert ours == theirs, f"imgcrypt and cryptsetup disagree on {path.name}"
    return ours


def _payload_hash(image: Path) -> str:
    with open(image, "rb") as f:
        f.seek(2 << 20)
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("round_", range(3))
def test_two_processes_change_the_same_image(rekey_setup: dict[str, Path], round_: int) -> None:
    cryptsetup = require_tool("cryptsetup")
    s = rekey_setup
    payload = _payload_hash(s["image"])
    procs = {name: _start(["rekey", str(s["image"]), "--passphrase-file", str(s["old"]),
                           "--change", "--new-passphrase-file", str(s[name]), "--iterations",
                           str(1000 + round_)]) for name in ("a", "b")}
    results = {name: (p.wait(timeout=300), p.communicate()[1].decode()) for name, p in
               procs.items()}
    winners = [name for name, (code, _) in results.items() if code == 0]
    assert len(winners) == 1, results
    loser = "b" if winners == ["a"] else "a"
    code, stderr = results[loser]
    assert code == 4 and stderr.count("\n") == 1 and stderr.startswith("imgcrypt: error:")
    assert _opens(s["image"], s[winners[0]], cryptsetup)
    assert not _opens(s["image"], s["old"], cryptsetup)
    assert not _opens(s["image"], s[loser], cryptsetup)
    assert _payload_hash(s["image"]) == payload


@pytest.mark.parametrize("round_", range(2))
def test_two_processes_add_to_the_same_image(rekey_setup: dict[str, Path], round_: int) -> None:
    cryptsetup = require_tool("cryptsetup")
    s = rekey_setup
    payload = _payload_hash(s["image"])
    procs = [_start(["rekey", str(s["image"]), "--passphrase-file", str(s["old"]), "--add",
                     "--new-passphrase-file", str(s[name]), "--iterations", "1000"])
             for name in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.communicate()[1]
    for name in ("old", "a", "b"):
        assert _opens(s["image"], s[name], cryptsetup), name
    with open(s["image"], "rb") as f:
        from imgcrypt.luks.unlock import read_header

        header, _ = read_header(f)
    assert len(header.active_keyslots()) == 3
    assert _payload_hash(s["image"]) == payload

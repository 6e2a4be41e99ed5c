"""LUKS1 against the real tools: cryptsetup, qemu-img and grub-fstest, both directions."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from imgcrypt.crypto.sectors import CipherSpec, SectorCipher
from imgcrypt.luks.options import FormatOptions
from imgcrypt.luks.transfer import encrypt_stream
from imgcrypt.luks.unlock import read_header, unlock_stream
from tests.helpers.util import (
    dump_volume_key,
    imgcrypt,
    qemu_secret_args,
    run_qemu_img,
    secret_file,
)
from tests.helpers.util import test_passphrase as cs_test_passphrase

PASS = b"interop passphrase \xe2\x9c\x93"


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    return secret_file(tmp_path, "pass", PASS)


def make_image(tmp_path: Path, payload: bytes, **options: object) -> tuple[Path, bytes]:
    key_size = int(options.get("key_size", 512))  # type: ignore[call-overload]
    master = os.urandom(key_size // 8)
    image = tmp_path / "img.luks"
    with open(image, "wb") as f:
        encrypt_stream(io.BytesIO(payload), f, PASS,
                       FormatOptions(iterations=1000, **options),  # type: ignore[arg-type]
                       master_key=master)
    return image, master


@pytest.mark.parametrize(("key_size", "hash_name"), [(512, "sha256"), (256, "sha1"),
                                                     (512, "sha512")])
def test_cryptsetup_opens_ours_and_sees_our_master_key(
        tmp_path: Path, keyfile: Path, cryptsetup: str, key_size: int, hash_name: str) -> None:
    image, master = make_image(tmp_path, os.urandom(8192), key_size=key_size, hash=hash_name)
    assert cs_test_passphrase(cryptsetup, image, keyfile) == 0
    assert dump_volume_key(cryptsetup, image, keyfile) == master
    wrong = secret_file(tmp_path, "wrong", b"not it")
    assert cs_test_passphrase(cryptsetup, image, wrong) != 0


@pytest.mark.parametrize("length", [1 << 20, 777_777])
def test_qemu_img_decrypts_ours_byte_for_byte(tmp_path: Path, keyfile: Path, qemu_img: str,
                                               length: int) -> None:
    payload = os.urandom(length)
    image, _ = make_image(tmp_path, payload)
    out = tmp_path / "out.raw"
    run_qemu_img(["convert", *qemu_secret_args(keyfile), "--image-opts",
                  f"driver=luks,key-secret=s0,file.filename={image}", "-O", "raw", str(out)])
    data = out.read_bytes()
    padded = -(-length // 512) * 512
    assert len(data) == padded
    assert data == payload + bytes(padded - length)


def test_grub_decrypts_ours_byte_for_byte(tmp_path: Path, grub_fstest: str) -> None:
    payload = os.urandom(300 * 512)
    image, _ = make_image(tmp_path, payload)
    out = tmp_path / "grub.out"
    proc = subprocess.run([grub_fstest, "-C", str(image), "cp", "(crypto0)0+300", str(out)],
                          input=PASS, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == payload


@pytest.mark.parametrize("qemu_opts", [
    "",  # qemu's defaults: aes-256-xts-plain64, sha256
    "cipher-alg=aes-128,cipher-mode=xts,hash-alg=sha1",
    "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=essiv,ivgen-hash-alg=sha256",
    "cipher-alg=aes-256,cipher-mode=cbc,ivgen-alg=plain64",
    "cipher-alg=aes-128,cipher-mode=cbc,ivgen-alg=plain",
    "cipher-alg=aes-256,cipher-mode=xts,ivgen-alg=plain",
])
def test_we_decrypt_qemu_img_images(tmp_path: Path, keyfile: Path, qemu_img: str,
                                    qemu_opts: str) -> None:
    payload = os.urandom(3 << 20)
    src = tmp_path / "src.raw"
    src.write_bytes(payload)
    image = tmp_path / "qemu.luks"
    opts = "key-secret=s0,iter-time=10" + (f",{qemu_opts}" if qemu_opts else "")
    run_qemu_img(["convert", "-f", "raw", *qemu_secret_args(keyfile), "-O", "luks", "-o", opts,
                  str(src), str(image)])
    out = tmp_path / "out.raw"
    proc = imgcrypt("decrypt", image, out, "--passphrase-file", keyfile, check=True)
    assert proc.returncode == 0
    assert out.read_bytes() == payload
    with open(image, "rb") as f:
        header, _ = read_header(f)
    # qemu packs the payload right after the keyslots (sector 4040, 2056 or 1032 by key size)
    # where cryptsetup aligns it to 1 MiB: the reader must trust the header.
    assert header.payload_offset % 4096 == 0
    assert header.payload_offset >= header.region_size


@pytest.mark.parametrize(("cipher", "key_size", "hash_name"), [
    ("aes-xts-plain64", 512, "sha256"),
    ("aes-xts-plain64", 256, "sha1"),
    ("aes-cbc-essiv:sha256", 256, "sha512"),
    ("aes-cbc-plain64", 128, "sha256"),
])
def test_we_open_cryptsetup_luks1_and_decrypt_independent_data(
        tmp_path: Path, keyfile: Path, cryptsetup: str, qemu_img: str, openssl: str,
        cipher: str, key_size: int, hash_name: str) -> None:
    image = tmp_path / "cs.luks"
    with open(image, "wb") as f:
        f.truncate(4 << 20)
    subprocess.run([cryptsetup, "luksFormat", "--type", "luks1", "--batch-mode",
                    "--cipher", cipher, "--key-size", str(key_size), "--hash", hash_name,
                    "--pbkdf-force-iterations", "1000", "--key-file", str(keyfile), str(image)],
                   check=True, capture_output=True, timeout=120)
    master = dump_volume_key(cryptsetup, image, keyfile)
    with open(image, "rb") as f:
        opened = unlock_stream(f, PASS)
    assert opened.master_key == master

    # Data written through qemu's own LUKS driver into cryptsetup's container.
    payload = os.urandom(64 * 1024)
    src = tmp_path / "payload.raw"
    src.write_bytes(payload)
    run_qemu_img(["convert", "-n", "-f", "raw", *qemu_secret_args(keyfile), str(src),
                  "--target-image-opts", f"driver=luks,key-secret=s0,file.filename={image}"])
    out = tmp_path / "out.raw"
    imgcrypt("decrypt", image, out, "--passphrase-file", keyfile, check=True)
    assert out.read_bytes()[: len(payload)] == payload

    if cipher == "aes-cbc-plain64":
        # One sector encrypted by openssl itself with the dumped key; IV = LE sector number.
        # (openssl enc has no XTS; the XTS path is checked against qemu and cryptsetup above.)
        sector = os.urandom(512)
        enc = subprocess.run([openssl, "enc", f"-aes-{key_size}-cbc", "-K", master.hex(),
                              "-iv", (7).to_bytes(16, "little").hex(), "-nopad"],
                             input=sector, capture_output=True, check=True).stdout
        cipher_obj = SectorCipher(CipherSpec.parse(cipher), master)
        assert cipher_obj.decrypt(enc, 7) == sector
        assert cipher_obj.encrypt(sector, 7) == enc

"""qcow2 with qemu's built-in LUKS: imgcrypt inspects, decrypts, re-keys and writes them, and
qemu-img agrees byte for byte."""

from __future__ import annotations

import json
import os
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgcrypt.errors import FormatError
from imgcrypt.keys.local import LocalKeyStore
from imgcrypt.qemu.qcow2 import (
    EXT_CRYPTO_HEADER,
    V3_LAYOUT,
    CryptHeader,
    Qcow2Header,
    parse_header,
)
from tests.helpers.util import imgcrypt, qemu_opens, qemu_secret_args, run_qemu_img, secret_file

ITER = ("--iter-time", "10")


def qemu_luks_qcow2(tmp_path: Path, guest: bytes, passphrase: Path, name: str = "q.qcow2",
                    extra: str = "") -> Path:
    raw = tmp_path / f"{name}.guest"
    raw.write_bytes(guest)
    image = tmp_path / name
    run_qemu_img(["convert", *qemu_secret_args(passphrase), "-f", "raw", "-O", "qcow2", "-o",
                  f"encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10{extra}",
                  str(raw), str(image)])
    return image


def qemu_guest(tmp_path: Path, image: Path, passphrase: Path) -> bytes:
    """What qemu-img itself reads out of a LUKS qcow2 with ``passphrase``."""
    out = tmp_path / "qemu-view.raw"
    out.unlink(missing_ok=True)
    run_qemu_img(["convert", *qemu_secret_args(passphrase), "--image-opts",
                  f"driver=qcow2,encrypt.key-secret=s0,file.filename={image}", "-O", "raw",
                  str(out)])
    return out.read_bytes()


@pytest.fixture
def pw(tmp_path: Path) -> Path:
    return secret_file(tmp_path, "pw", b"qcow2 passphrase")


# -- the qcow2 header as a declared layout -------------------------------------------------


def v3_header(*, cluster_bits: int = 16, crypt_method: int = 2, extensions: bytes = b"",
              header_length: int = 104, backing_offset: int = 0) -> bytes:
    values = dict.fromkeys((f.name for f in V3_LAYOUT.fields), 0)
    values.update(magic=b"QFI\xfb", version=3, cluster_bits=cluster_bits, size=1 << 20,
                  crypt_method=crypt_method, header_length=header_length,
                  backing_file_offset=backing_offset, refcount_order=4)
    head = V3_LAYOUT.pack(values).ljust(header_length, b"\0")
    return head + extensions + bytes(8)


def crypto_ext(offset: int, length: int) -> bytes:
    return struct.pack(">II", EXT_CRYPTO_HEADER, 16) + struct.pack(">QQ", offset, length)


def test_header_with_crypto_extension() -> None:
    data = v3_header(extensions=crypto_ext(65536, 2068480))
    head = parse_header(data, 65536 + 2068480)
    assert head == Qcow2Header(version=3, cluster_size=65536, virtual_size=1 << 20,
                               crypt_method=2, has_backing_file=False,
                               crypt_header=CryptHeader(65536, 2068480))


@pytest.mark.parametrize(("data", "size", "message"), [
    (v3_header(), 1 << 22, "no crypto header extension"),
    (v3_header(extensions=crypto_ext(65536, 2068480)), 65536 + 2068479, "beyond the end"),
    (v3_header(extensions=crypto_ext(100, 4096)), 1 << 22, "cluster of its own"),
    (v3_header(extensions=crypto_ext(65536, 1 << 40)), 1 << 62, "out of range"),
    (v3_header(cluster_bits=30), 1 << 22, "cluster_bits"),
    (v3_header(header_length=99), 1 << 22, "header_length"),
    (v3_header(crypt_method=0, extensions=crypto_ext(65536, 4096)), 1 << 22, "without LUKS"),
    (v3_header(extensions=crypto_ext(65536, 4096) * 2), 1 << 22, "twice"),
    (v3_header(extensions=struct.pack(">II", 7, 0xFFFFFFF0)), 1 << 22, "longer"),
    (v3_header(backing_offset=1 << 20), 1 << 22, "backing file name"),
    (b"QFI\xfb\0\0\0\x09" + bytes(200), 1 << 22, "version 9"),
    (b"QFI\xfb\0\0\0\x03", 8, "truncated"),
    (b"LUKS\xba\xbe" + bytes(100), 1 << 22, "bad magic"),
])
def test_hostile_headers_are_refused(data: bytes, size: int, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        parse_header(data, size)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=0, max_size=600), size=st.integers(0, 1 << 40),
       prefix=st.sampled_from([b"QFI\xfb\0\0\0\x03", b"QFI\xfb\0\0\0\x02", b""]))
def test_any_bytes_parse_or_fail_typed(data: bytes, size: int, prefix: bytes) -> None:
    try:
        head = parse_header(prefix + data, size)
    except FormatError:
        return
    if head.crypt_header is not None:
        assert head.crypt_header.offset + head.crypt_header.length <= size


@settings(max_examples=200, deadline=None)
@given(flip=st.integers(0, 300), value=st.integers(0, 255))
def test_mutated_real_shape_parses_or_fails_typed(flip: int, value: int) -> None:
    data = bytearray(v3_header(extensions=crypto_ext(65536, 2068480)))
    if flip < len(data):
        data[flip] = value
    try:
        parse_header(bytes(data), 65536 + 2068480)
    except FormatError:
        pass


# -- against qemu-img -----------------------------------------------------------------------


def test_inspect_shows_the_luks_header_qemu_img_wrote(tmp_path: Path, qemu_img: str,
                                                      pw: Path) -> None:
    image = qemu_luks_qcow2(tmp_path, os.urandom(1 << 20), pw)
    raw_before = image.read_bytes()
    info = json.loads(imgcrypt("inspect", image, "--json", check=True).stdout)
    qemu = json.loads(run_qemu_img(["info", "--output=json", "-f", "qcow2",
                                    str(image)]).stdout)
    encrypt = qemu["format-specific"]["data"]["encrypt"]
    assert info["container"] == "qcow2" and info["format"] == "luks1"
    assert info["uuid"] == encrypt["uuid"] and info["virtual_size"] == 1 << 20
    assert info["cipher"] == "aes-xts-plain64" and info["key_size"] == 512
    assert info["mk_digest_iterations"] == encrypt["master-key-iters"]
    active = {i: s for i, s in enumerate(encrypt["slots"]) if s["active"]}
    assert [(s["slot"], s["iterations"], s["key_material_offset"]) for s in info["keyslots"]] \
        == [(i, s["iters"], s["key-offset"]) for i, s in active.items()]
    assert image.read_bytes() == raw_before
    human = imgcrypt("inspect", image, check=True).stdout.decode()
    assert human.startswith("qcow2 image with qemu's built-in LUKS1 encryption")


def test_inspect_plain_qcow2_says_not_encrypted(tmp_path: Path, qemu_img: str) -> None:
    image = tmp_path / "plain.qcow2"
    run_qemu_img(["create", "-q", "-f", "qcow2", str(image), "1M"])
    proc = imgcrypt("inspect", image)
    assert proc.returncode == 3 and b"not encrypted" in proc.stderr


def test_decrypt_qemu_img_qcow2_to_the_guest_raw(tmp_path: Path, qemu_img: str,
                                                 pw: Path) -> None:
    guest = os.urandom(3 << 20) + bytes(1 << 20)
    image = qemu_luks_qcow2(tmp_path, guest, pw)
    before = image.read_bytes()
    out = tmp_path / "guest.raw"
    result = json.loads(imgcrypt("decrypt", image, out, "--passphrase-file", pw, "--json",
                                 check=True).stdout)
    assert result["bytes_written"] == len(guest) and out.read_bytes() == guest
    piped = imgcrypt("decrypt", image, "-", "--passphrase-file", pw, check=True)
    assert piped.stdout == guest
    assert image.read_bytes() == before


def test_decrypt_with_a_wrong_passphrase_leaves_nothing(tmp_path: Path, qemu_img: str,
                                                        pw: Path) -> None:
    image = qemu_luks_qcow2(tmp_path, os.urandom(1 << 20), pw)
    bad = secret_file(tmp_path, "bad", b"not it")
    proc = imgcrypt("decrypt", image, tmp_path / "out.raw", "--passphrase-file", bad)
    assert proc.returncode == 4 and len(proc.stderr.decode().strip().splitlines()) == 1
    assert not (tmp_path / "out.raw").exists()
    assert not [p for p in tmp_path.iterdir() if "imgcrypt-tmp" in p.name]


@pytest.mark.parametrize(("key_size", "cipher_alg"), [("512", "aes-256"), ("256", "aes-128")])
def test_encrypt_to_qcow2_that_qemu_img_reads(tmp_path: Path, qemu_img: str, pw: Path,
                                              key_size: str, cipher_alg: str) -> None:
    guest = os.urandom(2 << 20) + bytes(65536) + os.urandom(4096)
    src = tmp_path / "disk.raw"
    src.write_bytes(guest)
    out = tmp_path / "out.qcow2"
    result = json.loads(imgcrypt("encrypt", src, out, "--target-format", "qcow2",
                                 "--passphrase-file", pw, "--key-size", key_size, *ITER,
                                 "--json", check=True).stdout)
    assert result["format"] == "qcow2" and result["encryption"] == "luks1"
    qemu = json.loads(run_qemu_img(["info", "--output=json", "-f", "qcow2", str(out)]).stdout)
    encrypt = qemu["format-specific"]["data"]["encrypt"]
    assert qemu["encrypted"] is True and encrypt["format"] == "luks"
    assert (encrypt["cipher-alg"], encrypt["cipher-mode"], encrypt["ivgen-alg"],
            encrypt["hash-alg"]) == (cipher_alg, "xts", "plain64", "sha256")
    assert result["uuid"] == encrypt["uuid"]
    assert qemu_guest(tmp_path, out, pw) == guest
    back = tmp_path / "back.raw"
    imgcrypt("decrypt", out, back, "--passphrase-file", pw, check=True)
    assert back.read_bytes() == guest


def test_encrypt_qcow2_source_to_qcow2(tmp_path: Path, qemu_img: str, pw: Path) -> None:
    guest = os.urandom(1 << 20)
    raw = tmp_path / "g.raw"
    raw.write_bytes(guest)
    plain = tmp_path / "plain.qcow2"
    run_qemu_img(["convert", "-f", "raw", "-O", "qcow2", str(raw), str(plain)])
    out = tmp_path / "enc.qcow2"
    result = json.loads(imgcrypt("encrypt", plain, out, "--target-format", "qcow2",
                                 "--passphrase-file", pw, *ITER, "--json", check=True).stdout)
    assert result["source_format"] == "qcow2"
    assert qemu_guest(tmp_path, out, pw) == guest


def test_qcow2_name_without_target_format_is_refused(tmp_path: Path, pw: Path) -> None:
    src = tmp_path / "disk.raw"
    src.write_bytes(os.urandom(100_000))
    keystore = tmp_path / "ks"
    for args in (("--passphrase-file", str(pw)), ("--new-key", "--keystore", str(keystore))):
        proc = imgcrypt("encrypt", src, tmp_path / "out.qcow2", *args, *ITER)
        assert proc.returncode == 2 and b"--target-format qcow2" in proc.stderr
        assert not (tmp_path / "out.qcow2").exists()
    assert not keystore.exists() or LocalKeyStore(keystore).list() == []
    # said explicitly, a raw LUKS container may have any name
    imgcrypt("encrypt", src, tmp_path / "out.qcow2", "--target-format", "luks",
             "--passphrase-file", pw, "--iterations", "1000", check=True)
    assert (tmp_path / "out.qcow2").read_bytes()[:6] == b"LUKS\xba\xbe"


@pytest.mark.parametrize("option", [("--format", "luks2"), ("--iterations", "1000"),
                                    ("--sector-size", "4096"), ("--hash", "sha256,data=x")])
def test_what_qemu_cannot_write_is_a_usage_error(tmp_path: Path, pw: Path,
                                                 option: tuple[str, str]) -> None:
    src = tmp_path / "disk.raw"
    src.write_bytes(os.urandom(4096))
    proc = imgcrypt("encrypt", src, tmp_path / "o.qcow2", "--target-format", "qcow2",
                    "--passphrase-file", pw, *option)
    assert proc.returncode == 2 and not (tmp_path / "o.qcow2").exists()


def test_rekey_change_then_qemu_opens_with_the_new_secret_only(tmp_path: Path, qemu_img: str,
                                                              pw: Path) -> None:
    guest = os.urandom(1 << 20)
    image = qemu_luks_qcow2(tmp_path, guest, pw)
    new = secret_file(tmp_path, "new", b"the new qcow2 passphrase")
    result = json.loads(imgcrypt("rekey", image, "--passphrase-file", pw, "--change",
                                 "--new-passphrase-file", new, *ITER, "--json",
                                 check=True).stdout)
    assert (result["opened_slot"], result["added_slot"], result["removed_slot"]) == (0, 1, 0)
    assert qemu_opens(image, new) and not qemu_opens(image, pw)
    assert qemu_guest(tmp_path, image, new) == guest
    slots = json.loads(imgcrypt("inspect", image, "--json", check=True).stdout)["keyslots"]
    assert [s["slot"] for s in slots] == [1]


def test_rekey_add_and_remove_slot(tmp_path: Path, qemu_img: str, pw: Path) -> None:
    image = qemu_luks_qcow2(tmp_path, os.urandom(1 << 20), pw)
    new = secret_file(tmp_path, "new", b"second")
    imgcrypt("rekey", image, "--passphrase-file", pw, "--add", "--new-passphrase-file", new,
             *ITER, check=True)
    assert qemu_opens(image, new) and qemu_opens(image, pw)
    imgcrypt("rekey", image, "--passphrase-file", new, "--remove-slot", "0", check=True)
    assert qemu_opens(image, new) and not qemu_opens(image, pw)
    bad = secret_file(tmp_path, "bad", b"wrong")
    proc = imgcrypt("rekey", image, "--passphrase-file", bad, "--add",
                    "--new-passphrase-file", pw, *ITER)
    assert proc.returncode == 4 and qemu_opens(image, new) and not qemu_opens(image, pw)


def test_key_manager_secret_opens_the_qcow2(tmp_path: Path, qemu_img: str) -> None:
    src = tmp_path / "disk.raw"
    guest = os.urandom(1 << 20)
    src.write_bytes(guest)
    keystore = tmp_path / "ks"
    out = tmp_path / "k.qcow2"
    result = json.loads(imgcrypt("encrypt", src, out, "--target-format", "qcow2", "--new-key",
                                 "--keystore", keystore, *ITER, "--json", check=True).stdout)
    key_id = result["key_id"]
    assert result["properties"]["os_decrypt_size"] == str(len(guest))
    # the passphrase is the lowercase hex of a symmetric key, as os-brick computes it
    key = LocalKeyStore(keystore).get(key_id).payload_bytes
    hexpw = secret_file(tmp_path, "hex", key.hex().encode("ascii"))
    assert qemu_guest(tmp_path, out, hexpw) == guest
    back = tmp_path / "back.raw"
    imgcrypt("decrypt", out, back, "--key-id", key_id, "--keystore", keystore, check=True)
    assert back.read_bytes() == guest



def test_secret_files_are_private_and_removed(tmp_path: Path, qemu_img: str) -> None:
    # in process, with a secret directory of this test's own: every qemu-img run of decrypt,
    # encrypt and rekey leaves nothing behind (other processes share /dev/shm)
    from imgcrypt import qemu
    from imgcrypt.luks.options import FormatOptions
    from imgcrypt.qemu import luks as qemu_luks

    directory = tmp_path / "secrets"
    directory.mkdir()
    seen: list[tuple[int, int]] = []

    class Spy(qemu.QemuImg):
        def run(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[bytes]:
            for arg in args:
                if arg.startswith("secret,"):
                    path = arg.split("file=", 1)[1]
                    assert os.path.dirname(os.path.dirname(path)) == str(directory)
                    seen.append((os.stat(path).st_mode & 0o777,
                                 os.stat(os.path.dirname(path)).st_mode & 0o777))
            assert not any("data=" in a for a in args)
            return super().run(args, **kw)

    spy = Spy(secret_dir=str(directory))
    src = tmp_path / "g.raw"
    src.write_bytes(os.urandom(1 << 20))
    image = tmp_path / "g.qcow2"
    qemu_luks.encrypt(str(src), str(image), b"one", FormatOptions(iter_time_ms=10),
                      source_format="raw", qemu_img=spy)
    qemu_luks.rekey(str(image), b"one", new_passphrase=b"two", remove_old=True, iter_time_ms=10,
                    qemu_img=spy)
    qemu_luks.decrypt(str(image), b"two", str(tmp_path / "back.raw"), qemu_img=spy)
    assert (tmp_path / "back.raw").read_bytes() == src.read_bytes()
    assert len(seen) >= 5 and set(seen) == {(0o600, 0o700)}
    assert list(directory.iterdir()) == []


def test_rekey_qcow2_from_one_key_manager_secret_to_another(tmp_path: Path,
                                                            qemu_img: str) -> None:
    from imgcrypt.keys.manager import KeyOrder

    store = LocalKeyStore(tmp_path / "ks")
    old_id, new_id = store.create_key(KeyOrder()), store.create_key(KeyOrder())
    old_hex = secret_file(tmp_path, "old", store.get(old_id).payload_bytes.hex().encode())
    new_hex = secret_file(tmp_path, "new", store.get(new_id).payload_bytes.hex().encode())
    guest = os.urandom(1 << 20)
    image = qemu_luks_qcow2(tmp_path, guest, old_hex)
    imgcrypt("rekey", image, "--key-id", old_id, "--change", "--new-key-id", new_id,
             "--keystore", store.directory, *ITER, check=True)
    assert not qemu_opens(image, old_hex) and qemu_guest(tmp_path, image, new_hex) == guest

"""Issue 23: the client side against a hostile neighbour, a hostile image and a hostile cloud.

Every test here is written from the attacker's side. The neighbour shares a directory with the
victim and can rename files in it; the moments it acts at are made deterministic by wrapper
programs named ``qemu-img`` and ``qemu-nbd`` first on PATH, which do the neighbour's move and
then run the real tool (the real qemu-img and qemu-nbd do all the work: only the moment is
chosen, as a real race could be won).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgcrypt import fileio, qemu
from imgcrypt.errors import ImgcryptError
from tests.helpers.hostile_glance import HostileGlance
from tests.helpers.util import IMGCRYPT, run_qemu_img, secret_file

PASSPHRASE = b"client side passphrase"
MARKER = b"THE VICTIM'S PRIVATE BYTES. " * 64  # 1792 bytes, easy to find in any output
GUEST = 1 << 20

# The neighbour, between imgcrypt's checks and qemu's use. ATTACK_PLANT: plant a symlink to
# ATTACK_VICTIM at every temporary output name in that directory (outputs of qemu-img).
# ATTACK_SWAP=FROM:TO renames FROM over TO (a source swapped after it was checked).
WRAPPER = """#!/bin/sh
case "$1" in
  convert|create|--read-only)
    if [ -n "$ATTACK_PLANT" ]; then
      for f in "$ATTACK_PLANT"/.*imgcrypt-tmp; do
        [ -e "$f" ] || [ -L "$f" ] || continue
        rm -f "$f"; ln -s "$ATTACK_VICTIM" "$f"
      done
    fi
    if [ -n "$ATTACK_SWAP" ]; then
      mv -f "${ATTACK_SWAP%%:*}" "${ATTACK_SWAP#*:}" 2>/dev/null
    fi
    ;;
esac
exec REAL "$@"
"""


@pytest.fixture
def neighbour(tmp_path: Path, qemu_img: str) -> dict[str, str]:
    """An environment whose qemu-img and qemu-nbd let the neighbour act first."""
    bin_dir = tmp_path / "neighbour-bin"
    bin_dir.mkdir()
    for tool in ("qemu-img", "qemu-nbd"):
        real = shutil.which(tool)
        assert real is not None
        wrapper = bin_dir / tool
        wrapper.write_text(WRAPPER.replace("REAL", real))
        wrapper.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


def cli(env: dict[str, str], *args: str | os.PathLike[str],
        umask: int = 0o022) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*IMGCRYPT, *map(str, args)], capture_output=True, env=env,
                          timeout=300, preexec_fn=lambda: os.umask(umask))


def guest_bytes() -> bytes:
    data = bytearray(os.urandom(64)) * (GUEST // 64)
    data[:8] = b"GUESTOS!"
    return bytes(data)


def victim_file(directory: Path) -> Path:
    victim = directory / "victim-file"
    victim.write_bytes(b"the victim's own file, untouched\n")
    victim.chmod(0o640)
    return victim


def assert_untouched(victim: Path) -> None:
    assert victim.read_bytes() == b"the victim's own file, untouched\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o640


# -- 1. one output writer: qemu-img writes into a file imgcrypt created -----------------------

def encrypted_qcow2(tmp_path: Path, data: bytes) -> tuple[Path, Path]:
    keyfile = secret_file(tmp_path, "pass", PASSPHRASE)
    raw = tmp_path / "guest.raw"
    raw.write_bytes(data)
    image = tmp_path / "enc.qcow2"
    run_qemu_img(["convert", "--object", f"secret,id=s0,file={keyfile}", "-f", "raw", "-O",
                  "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
                  str(raw), str(image)])
    return image, keyfile


@pytest.mark.parametrize("path", ["decrypt-qcow2", "encrypt-qcow2"])
def test_a_symlink_planted_at_the_temporary_name_receives_nothing(
        tmp_path: Path, neighbour: dict[str, str], path: str) -> None:
    """Before: qemu-img wrote the temporary file by name, so the neighbour's symlink received
    the plaintext (decrypt) and the victim's file was overwritten and chmodded."""
    data = guest_bytes()
    shared = tmp_path / "shared"
    shared.mkdir()
    victim = victim_file(tmp_path)
    image, keyfile = encrypted_qcow2(tmp_path, data)
    env = {**neighbour, "ATTACK_PLANT": str(shared), "ATTACK_VICTIM": str(victim)}
    if path == "decrypt-qcow2":
        target = shared / "out.raw"
        proc = cli(env, "decrypt", image, target, "--passphrase-file", keyfile)
    else:
        target = shared / "out.qcow2"
        proc = cli(env, "encrypt", tmp_path / "guest.raw", target, "--target-format", "qcow2",
                   "--passphrase-file", keyfile, "--iter-time", "10")
    assert_untouched(victim)
    assert proc.returncode == 1, proc.stderr
    assert b"replaced by another process" in proc.stderr
    assert not target.exists() and not target.is_symlink()


def test_library_conversion_never_follows_a_planted_symlink(tmp_path: Path,
                                                            qemu_img: str) -> None:
    data = guest_bytes()
    raw = tmp_path / "guest.raw"
    raw.write_bytes(data)
    source = tmp_path / "guest.qcow2"
    run_qemu_img(["convert", "-f", "raw", "-O", "qcow2", str(raw), str(source)])
    victim = victim_file(tmp_path)
    tool_dir = tmp_path / "bin"
    tool_dir.mkdir()
    real = shutil.which("qemu-img")
    assert real is not None
    planter = tool_dir / "qemu-img"
    planter.write_text(WRAPPER.replace("REAL", real).replace(
        '"$ATTACK_PLANT"', f'"{tmp_path}"').replace('"$ATTACK_VICTIM"', f'"{victim}"')
        .replace('[ -n "$ATTACK_PLANT" ]', "true"))
    planter.chmod(0o755)
    with pytest.raises(ImgcryptError, match="replaced by another process"):
        qemu.convert_to_raw(source, tmp_path / "out.raw",
                            qemu_img=qemu.QemuImg(program=str(planter)))
    assert_untouched(victim)
    assert not (tmp_path / "out.raw").exists()


def test_every_output_is_0600_under_umask_022(tmp_path: Path, neighbour: dict[str, str],
                                              cryptsetup: str) -> None:
    data = guest_bytes()
    image, keyfile = encrypted_qcow2(tmp_path, data)
    raw = tmp_path / "guest.raw"
    qcow = tmp_path / "plain.qcow2"
    run_qemu_img(["convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)])
    outputs = {
        "encrypt-luks": ("encrypt", raw, tmp_path / "a.luks", "--iter-time", "10"),
        "encrypt-from-qcow2 (qemu-nbd)": ("encrypt", qcow, tmp_path / "b.luks",
                                          "--iter-time", "10"),
        "encrypt-qcow2 (qemu-img)": ("encrypt", raw, tmp_path / "c.qcow2", "--target-format",
                                     "qcow2", "--iter-time", "10"),
        "decrypt-qcow2 (qemu-img)": ("decrypt", image, tmp_path / "d.raw"),
    }
    for name, (command, *args) in outputs.items():
        proc = cli(neighbour, command, *args, "--passphrase-file", keyfile)
        assert proc.returncode == 0, (name, proc.stderr)
        target = Path(args[1])
        assert stat.S_IMODE(target.stat().st_mode) == 0o600, name
    proc = cli(neighbour, "decrypt", tmp_path / "a.luks", tmp_path / "e.raw",
               "--passphrase-file", keyfile)
    assert proc.returncode == 0 and (tmp_path / "e.raw").read_bytes() == data
    assert stat.S_IMODE((tmp_path / "e.raw").stat().st_mode) == 0o600
    info = qemu.convert_to_raw(qcow, tmp_path / "f.raw")
    assert info.format == "qcow2" and stat.S_IMODE((tmp_path / "f.raw").stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*imgcrypt-tmp"))


def test_the_writer_refuses_a_swapped_temporary_name(tmp_path: Path) -> None:
    """The one writer: the name is checked against the descriptor before and after the
    rename; the bytes written are erased through the descriptor when someone swapped it."""
    victim = victim_file(tmp_path)
    target = tmp_path / "out.raw"
    with pytest.raises(ImgcryptError, match="replaced by another process"), \
            fileio.atomic_file(target) as out:
        os.write(out.fd, b"secret plaintext")
        os.unlink(out.temp)
        os.symlink(victim, out.temp)
    assert_untouched(victim)
    assert not target.exists()


# -- 2. sources opened once: checked and read through one open file --------------------------

def hostile_pair(tmp_path: Path) -> tuple[Path, Path, Path, bytes]:
    """(the honest source, the hostile image swapped in later, the victim's private file,
    the honest guest bytes). The hostile qcow2's guest *is* the victim's file (an external
    raw data file), which the victim can read and the neighbour cannot."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = guest_bytes()
    raw = tmp_path / "guest.raw"
    raw.write_bytes(data)
    honest = tmp_path / "shared" / "disk.qcow2"
    honest.parent.mkdir(exist_ok=True)
    run_qemu_img(["convert", "-f", "raw", "-O", "qcow2", str(raw), str(honest)])
    private = tmp_path / "private.key"
    hostile = tmp_path / "shared" / "hostile.qcow2"
    # qemu-img create zeroes the data file: the victim's bytes are what it holds afterwards
    run_qemu_img(["create", "-q", "-f", "qcow2", "-o",
                  f"data_file={private},data_file_raw=on,preallocation=metadata", str(hostile),
                  str(GUEST)])
    private.write_bytes(MARKER * (GUEST // len(MARKER)) + bytes(GUEST % len(MARKER)))
    return honest, hostile, private, data


def decrypted(env: dict[str, str], image: Path, keyfile: Path, out: Path) -> bytes:
    proc = cli(env, "decrypt", image, out, "--passphrase-file", keyfile)
    assert proc.returncode == 0, proc.stderr
    return out.read_bytes()


@pytest.mark.parametrize("target_format", ["luks", "qcow2"])
def test_a_source_swapped_after_its_checks_never_reaches_the_output(
        tmp_path: Path, neighbour: dict[str, str], target_format: str) -> None:
    """Before: qemu-nbd (LUKS target) and qemu-img convert (qcow2 target) opened the source
    by name again after the checks, so the swapped-in image's data file (the victim's private
    bytes) was encrypted into the output."""
    honest, hostile, _private, data = hostile_pair(tmp_path)
    keyfile = secret_file(tmp_path, "pass", PASSPHRASE)
    target = tmp_path / f"out.{target_format}"
    env = {**neighbour, "ATTACK_SWAP": f"{hostile}:{honest}"}
    proc = cli(env, "encrypt", honest, target, "--target-format", target_format,
               "--source-format", "qcow2", "--passphrase-file", keyfile, "--iter-time", "10")
    assert not hostile.exists()  # the neighbour did swap it in
    assert proc.returncode == 0, proc.stderr
    plain = decrypted(dict(os.environ), target, keyfile, tmp_path / "plain.raw")
    assert MARKER[:64] not in plain
    assert plain == data


def test_library_readers_read_the_file_they_checked(tmp_path: Path, qemu_img: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """open_guest and convert_to_raw: the swap lands exactly between the check and the use."""
    honest, hostile, _private, data = hostile_pair(tmp_path)
    from imgcrypt.qemu import guest as guest_module

    real_info = guest_module.image_info

    def checked_then_swapped(*args: object, **kwargs: object) -> qemu.ImageInfo:
        info = real_info(*args, **kwargs)  # type: ignore[arg-type]
        if hostile.exists():
            os.replace(hostile, honest)
        return info

    monkeypatch.setattr(guest_module, "image_info", checked_then_swapped)
    with qemu.open_guest(honest) as (source, fmt, size):
        assert fmt == "qcow2" and size == GUEST
        buffer = bytearray(GUEST)
        assert not isinstance(source, bytes)
        source.read(memoryview(buffer), 0)  # type: ignore[union-attr,call-arg]
    assert bytes(buffer) == data
    honest2, hostile2, _, data2 = hostile_pair(tmp_path / "again")
    hostile = hostile2
    honest = honest2
    qemu.convert_to_raw(honest2, tmp_path / "again" / "out.raw")
    out = (tmp_path / "again" / "out.raw").read_bytes()
    assert MARKER[:64] not in out and out == data2


# -- 3. the size guard: refused before a byte is written ---------------------------------------

def written_files(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in directory.iterdir()}


def test_a_60_tib_qcow2_is_refused_before_a_byte_is_written(tmp_path: Path,
                                                             qemu_img: str) -> None:
    """Before: encrypt read the 60 TiB guest through qemu-nbd and wrote ciphertext until the
    disk was full (no free-space check, no limit a person could set)."""
    bomb = tmp_path / "bomb.qcow2"
    run_qemu_img(["create", "-q", "-f", "qcow2", str(bomb), "60T"])
    assert bomb.stat().st_size < 2 << 20
    keyfile = secret_file(tmp_path, "pass", PASSPHRASE)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "bomb.luks"
    start = time.monotonic()
    proc = subprocess.run([*IMGCRYPT, "encrypt", str(bomb), str(target), "--passphrase-file",
                           str(keyfile), "--iter-time", "10"], capture_output=True, timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode == 3, proc.stderr
    assert b"file system has" in proc.stderr
    assert written_files(out) == {}  # nothing created, not even a temporary file
    assert elapsed < 5, elapsed  # the interpreter's start and qemu-img info included
    assert b"shape of a decompression bomb" in proc.stderr


def test_max_size_is_honoured_by_encrypt_and_decrypt(tmp_path: Path, qemu_img: str) -> None:
    data = guest_bytes()
    raw = tmp_path / "guest.raw"
    raw.write_bytes(data)
    keyfile = secret_file(tmp_path, "pass", PASSPHRASE)
    out = tmp_path / "out"
    out.mkdir()

    def imgcrypt(*args: str | os.PathLike[str], stdin: bytes | None = None
                 ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*IMGCRYPT, *map(str, args), "--passphrase-file", str(keyfile)],
                              input=stdin, capture_output=True, timeout=120)

    refused = [
        ("encrypt", raw, out / "a.luks", "--iter-time", "10", "--max-size", "1M"),
        ("encrypt", raw, out / "b.qcow2", "--target-format", "qcow2", "--iter-time", "10",
         "--max-size", "1M"),
    ]
    for args in refused:
        proc = imgcrypt(*args)
        assert proc.returncode == 3 and b"--max-size" in proc.stderr, (args, proc.stderr)
        assert written_files(out) == {}
    proc = imgcrypt("encrypt", "-", out / "c.luks", "--source-format", "raw", "--iter-time",
                    "10", "--max-size", "4M", stdin=data * 8)
    assert proc.returncode == 3 and b"--max-size" in proc.stderr, proc.stderr
    assert written_files(out) == {}
    ok = imgcrypt("encrypt", raw, out / "d.luks", "--iter-time", "10", "--max-size", "32M")
    assert ok.returncode == 0, ok.stderr
    proc = imgcrypt("decrypt", out / "d.luks", out / "e.raw", "--max-size", "1023K")
    assert proc.returncode == 3 and b"--max-size" in proc.stderr
    assert not (out / "e.raw").exists()
    proc = imgcrypt("decrypt", out / "d.luks", out / "e.raw", "--max-size", "1M")
    assert proc.returncode == 0 and (out / "e.raw").read_bytes() == data
    image, _ = encrypted_qcow2(tmp_path, data)
    proc = imgcrypt("decrypt", image, out / "f.raw", "--max-size", "1000000")
    assert proc.returncode == 3 and b"--max-size" in proc.stderr
    assert not (out / "f.raw").exists()


# -- 4. download trusts nothing ---------------------------------------------------------------

@pytest.fixture
def glance() -> Iterator[HostileGlance]:
    server = HostileGlance()
    yield server
    server.close()


def download(glance: HostileGlance, home: Path, image_id: str, target: Path, *extra: str,
             timeout: float = 60) -> tuple[subprocess.CompletedProcess[bytes], float]:
    start = time.monotonic()
    proc = subprocess.run([*IMGCRYPT, "download", image_id, str(target), *extra],
                          capture_output=True, env=glance.env(str(home)), timeout=timeout,
                          preexec_fn=lambda: os.umask(0o022))
    return proc, time.monotonic() - start


def no_output(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(("out", ".out"))]


def test_download_reads_exactly_the_declared_size(tmp_path: Path,
                                                  glance: HostileGlance) -> None:
    """Before: the body was read until the server stopped: 4 MiB more were written after the
    declared megabyte, and a server that never stops kept the command writing forever."""
    data = guest_bytes()
    for how in ("more", "forever"):
        served = glance.add(how, data, how)
        target = tmp_path / f"out-{how}.raw"
        proc, elapsed = download(glance, tmp_path, how, target, "--encrypted")
        assert proc.returncode == 0, proc.stderr
        assert target.read_bytes() == data, how
        assert elapsed < 20
        assert served.sent >= len(data)


def test_download_refuses_every_transfer_fault(tmp_path: Path, glance: HostileGlance) -> None:
    """Before: a truncated body was written with exit 0 when the record had only the md5
    checksum, changed bytes too; a server announcing a longer body was read to its end."""
    data = guest_bytes()
    changed = bytearray(data)
    changed[4096] ^= 1
    glance.add("truncate", data, "truncate")
    glance.add("length", data, "length")
    glance.add("md5-only", data, stored=bytes(changed))
    glance.add("md5-only-truncated", data, "truncate")
    glance.add("hash", data, stored=bytes(changed), os_hash_algo="sha512",
               os_hash_value=hashlib.sha512(data).hexdigest())
    for image_id in ("truncate", "length", "md5-only", "md5-only-truncated", "hash"):
        proc, _ = download(glance, tmp_path, image_id, tmp_path / "out.raw")
        assert proc.returncode == 4, (image_id, proc.stderr)
        assert proc.stderr.count(b"\n") == 1 and b"Traceback" not in proc.stderr
        assert no_output(tmp_path), image_id
    glance.add("no-size", data, size=None)
    proc, _ = download(glance, tmp_path, "no-size", tmp_path / "out.raw")
    assert proc.returncode == 3 and b"declares no size" in proc.stderr
    assert no_output(tmp_path)


def test_download_timeouts(tmp_path: Path, glance: HostileGlance) -> None:
    """Before: no timeout at all: a silent or trickling server hung the command."""
    data = guest_bytes()[:4096]
    glance.add("silent", data, "silent")
    glance.add("trickle", data, "trickle")
    proc, elapsed = download(glance, tmp_path, "silent", tmp_path / "out.raw",
                             "--read-timeout", "2")
    assert proc.returncode == 1 and b"nothing received for 2 s" in proc.stderr, proc.stderr
    assert elapsed < 15 and no_output(tmp_path)
    proc, elapsed = download(glance, tmp_path, "trickle", tmp_path / "out.raw",
                             "--read-timeout", "2", "--timeout", "3")
    assert proc.returncode == 1 and b"not complete within 3 s" in proc.stderr, proc.stderr
    assert elapsed < 15 and no_output(tmp_path)


def test_download_writes_plaintext_0600_and_says_what_was_checked(
        tmp_path: Path, glance: HostileGlance) -> None:
    data = guest_bytes()
    glance.add("honest", data, os_hash_algo="sha512",
               os_hash_value=hashlib.sha512(data).hexdigest())
    target = tmp_path / "out.raw"
    proc, _ = download(glance, tmp_path, "honest", target)
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == data
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert b"checked: size, os_hash_value, checksum" in proc.stdout
    assert b"not signed" in proc.stdout
    proc, _ = download(glance, tmp_path, "honest", tmp_path / "out2.raw", "--max-size", "1023K")
    assert proc.returncode == 3 and b"--max-size" in proc.stderr
    assert not (tmp_path / "out2.raw").exists()


def test_download_can_require_a_trust_anchor(tmp_path: Path, glance: HostileGlance) -> None:
    data = guest_bytes()
    glance.add("unsigned", data)
    proc, _ = download(glance, tmp_path, "unsigned", tmp_path / "out.raw", "--require-trust")
    assert proc.returncode == 2 and b"trust anchor is required" in proc.stderr
    ca = tmp_path / "ca.pem"
    ca.write_bytes(self_signed_pem())
    proc, _ = download(glance, tmp_path, "unsigned", tmp_path / "out.raw", "--require-trust",
                       "--trust", str(ca))
    assert proc.returncode == 4, proc.stderr
    assert no_output(tmp_path)
    config = tmp_path / ".config" / "imgcrypt"
    config.mkdir(parents=True)
    (config / "imgcrypt.toml").write_text(f'[download]\ntrust = ["{ca}"]\nrequire_trust = true\n')
    proc, _ = download(glance, tmp_path, "unsigned", tmp_path / "out.raw")
    assert proc.returncode == 4, proc.stderr  # the deployment's setting applies
    assert no_output(tmp_path)


def self_signed_pem() -> bytes:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "release CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA384()))
    return cert.public_bytes(serialization.Encoding.PEM)


# -- 5. terminal escapes: every command, stdout and stderr --------------------------------------

HOSTILE = "\x1b[2K\x1b[1A\r\x07\x9b31m\u202e\u2066\x00\nFORGED: valid, signed by CN=release"
# Raw control characters: C0 but the newline that ends a line, DEL, C1 (UTF-8 \xc2\x80-\x9f),
# and the bidi / isolate format characters.
RAW_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xaa-\xae]"
                         rb"|\xe2\x81[\xa6-\xa9]")


def assert_clean(what: str, proc: subprocess.CompletedProcess[bytes]) -> None:
    for stream in (proc.stdout, proc.stderr):
        found = RAW_CONTROL.search(stream)
        assert found is None, (what, stream)
        assert not any(line.startswith(b"FORGED") for line in stream.splitlines()), (what,
                                                                                       stream)


def test_no_command_lets_a_hostile_string_reach_the_terminal(tmp_path: Path,
                                                              glance: HostileGlance) -> None:
    """Before: verify printed the names of unsigned properties raw on stderr; keys list/show
    printed key-manager names raw (a newline forged a line), download and upload the cloud's."""
    from tests.helpers.pki import NOW, cert_pem, key, key_pem, make_cert

    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(4096))
    signer = key("p384")
    (tmp_path / "k.pem").write_bytes(key_pem(signer))
    (tmp_path / "c.pem").write_bytes(cert_pem(make_cert(signer, "CN=signer" + HOSTILE[:12])))
    props = tmp_path / "props.json"
    run = lambda *args: subprocess.run([*IMGCRYPT, *map(str, args)],  # noqa: E731
                                       capture_output=True, timeout=120,
                                       env={**os.environ, "HOME": str(tmp_path)})
    assert run("sign", image, "--key", tmp_path / "k.pem", "--cert", tmp_path / "c.pem",
               "--properties-out", props, "--mode", "imgcrypt").returncode == 0
    document = json.loads(props.read_text())
    document[HOSTILE] = HOSTILE  # an unsigned property an image owner added
    props.write_text(json.dumps(document))
    proc = run("verify", image, "--properties", props, "--cert", tmp_path / "c.pem", "--at",
               NOW.isoformat())
    assert proc.returncode == 0, proc.stderr
    assert b"ignored properties" in proc.stderr
    assert_clean("verify", proc)
    store = tmp_path / "keys"
    created = run("keys", "create", "--key-manager", "local", "--keystore", store, "--type",
                  "passphrase", "--name", HOSTILE.replace("\x00", ""), "--json")
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["key_id"]
    for args in (("list",), ("show", key_id)):
        proc = run("keys", *args, "--key-manager", "local", "--keystore", store)
        assert proc.returncode == 0, proc.stderr
        assert b"\\x1b[2K" in proc.stdout
        assert_clean(f"keys {args[0]}", proc)
    data = guest_bytes()[:4096]
    glance.add("x", data, name=HOSTILE, checksum="0" * 32, os_hash_algo=HOSTILE)
    for extra in ([], ["--json"]):
        proc, _ = download(glance, tmp_path, "x", tmp_path / "out.raw", *extra)
        assert proc.returncode == 3, proc.stderr
        assert_clean("download", proc)
    glance.add("y", data, name=HOSTILE)
    proc, _ = download(glance, tmp_path, "y", tmp_path / "out.raw")
    assert proc.returncode == 0, proc.stderr
    assert_clean("download", proc)
    glance.created_status = "active" + HOSTILE
    proc = subprocess.run([*IMGCRYPT, "upload", str(image), "--name", "plain"],
                          capture_output=True, env=glance.env(str(tmp_path)), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert b"\\x1b[2K" in proc.stdout
    assert_clean("upload", proc)


# -- 6. LUKS2 metadata as large as cryptsetup takes --------------------------------------------

def test_luks2_json_with_300000_values_opens_as_cryptsetup_opens_it(tmp_path: Path,
                                                                     cryptsetup: str) -> None:
    """Before: refused ("LUKS2 JSON metadata has too many values", exit 3) although cryptsetup
    loads it: a token of 300,000 values in a 4 MiB metadata area."""
    keyfile = secret_file(tmp_path, "pass", PASSPHRASE)
    image = tmp_path / "many.img"
    image.write_bytes(bytes(32 << 20))

    def cs(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([cryptsetup, *map(str, args)], capture_output=True, timeout=120)

    assert cs("luksFormat", "-q", "--type", "luks2", "--luks2-metadata-size", "4M",
              "--luks2-keyslots-size", "8M", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
              "1000", "--key-file", keyfile, image).returncode == 0
    token = tmp_path / "token.json"
    token.write_text(json.dumps({"type": "user-many", "keyslots": [], "v": [0] * 300_000},
                                separators=(",", ":")))
    assert cs("token", "import", "--json-file", token, image).returncode == 0
    dump = cs("luksDump", image)
    assert dump.returncode == 0 and b"user-many" in dump.stdout
    assert cs("open", "--test-passphrase", "--key-file", keyfile, image).returncode == 0
    from imgcrypt.luks.unlock import read_header

    with open(image, "rb") as f:
        header, _ = read_header(f)
    assert header.version == 2
    start = time.monotonic()
    proc = subprocess.run([*IMGCRYPT, "inspect", str(image), "--json"], capture_output=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 10
    assert json.loads(proc.stdout)["version"] == 2
    out = tmp_path / "out.raw"
    proc = subprocess.run([*IMGCRYPT, "decrypt", str(image), str(out), "--passphrase-file",
                           str(keyfile)], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size == image.stat().st_size - header.payload_offset


def test_a_decrypting_download_reads_exactly_the_declared_size(
        tmp_path: Path, glance: HostileGlance, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: decrypting, the body after the payload was drained until the server stopped
    (read forever from one that never does). The key comes from the real local keystore
    instead of the cloud's Barbican (the lookup is the only thing wired for the test)."""
    import io

    from imgcrypt import imageservice
    from imgcrypt.errors import VerificationError
    from imgcrypt.keys.local import LocalKeyStore
    from imgcrypt.keys.properties import encryption_properties
    from imgcrypt.keys.secret import Secret
    from imgcrypt.luks.options import FormatOptions
    from imgcrypt.luks.transfer import encrypt_stream
    from imgcrypt.service.download import open_download

    store = LocalKeyStore(tmp_path / "keys")
    key_id = store.store(Secret(payload=b"download passphrase", secret_type="passphrase"))
    plain = guest_bytes()
    container = io.BytesIO()
    encrypt_stream(io.BytesIO(plain), container, b"download passphrase",
                   FormatOptions(version=1, iterations=1000))
    stored = container.getvalue()
    properties = encryption_properties(key_id, 1, len(plain))
    for how in ("forever", "more", "truncate"):
        glance.add(how, stored, how, **properties)
    for name, value in glance.env(str(tmp_path)).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(imageservice, "key_manager", lambda conn: store)
    conn = imageservice.connect()
    for how in ("forever", "more"):
        out = io.BytesIO()
        start = time.monotonic()
        result = open_download(conn, how).write_to(out)
        assert time.monotonic() - start < 20
        assert result.decrypted and out.getvalue() == plain
        assert result.hashes == ("size", "checksum")
    with pytest.raises(VerificationError, match="ended after"):
        open_download(conn, "truncate").write_to(io.BytesIO())

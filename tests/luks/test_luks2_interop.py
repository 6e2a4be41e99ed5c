"""LUKS2 against the real tools: cryptsetup both ways, openssl for data, grub-fstest."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from imgcrypt.crypto.sectors import SectorCipher
from imgcrypt.errors import UnsupportedError, UsageError, WrongPassphraseError
from imgcrypt.luks.container import RegionUpdate, bytes_to_parse, parse_header
from imgcrypt.luks.luks2 import Luks2Header
from imgcrypt.luks.options import KdfOptions
from imgcrypt.luks.rekey import rekey_file
from tests.helpers.luksdump import parse_luks1
from tests.helpers.util import dump_volume_key, secret_file
from tests.helpers.util import test_passphrase as cs_test_passphrase
from tests.luks.test_luks2_support import PASS, cheap_kdf, make_region, rewrite_json

pytestmark = pytest.mark.tools

COMBOS = [(kdf, sector, key) for kdf in ("argon2id", "argon2i", "pbkdf2")
          for sector in (512, 4096) for key in (256, 512)]
OTHER = b"second passphrase"


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    return secret_file(tmp_path, "pass", PASS)


def read_header(image: Path) -> tuple[Luks2Header, bytes]:
    data = image.read_bytes()
    header = parse_header(data[: bytes_to_parse(data[:4096])])
    assert isinstance(header, Luks2Header)
    return header, data[: header.region_size]


def write_image(tmp_path: Path, region: bytes, payload: bytes = b"") -> Path:
    image = tmp_path / "img.luks2"
    image.write_bytes(region + payload + bytes(-len(payload) % 4096 or 0) + bytes(65536))
    return image


def apply_to_file(image: Path, update: RegionUpdate) -> None:
    """Write an update's steps in order, as the streaming layer does."""
    with open(image, "r+b") as f:
        for start, end in update.steps:
            f.seek(start)
            f.write(update.region[start:end])


def cs(cryptsetup: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cryptsetup, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def cs_format(cryptsetup: str, image: Path, keyfile: Path, *extra: str,
              luks_type: str = "luks2") -> None:
    # LUKS2: 16 MiB of metadata and keyslots (cryptsetup's default) plus room for a little
    # data; LUKS1: its ~2 MiB header and keyslots, likewise.
    with open(image, "wb") as f:
        f.truncate((16 << 20) + (1 << 20) if luks_type == "luks2" else 4 << 20)
    proc = cs(cryptsetup, "luksFormat", "--type", luks_type, "--batch-mode", "--key-file",
              keyfile, *extra, image)
    assert proc.returncode == 0, proc.stderr


def kdf_flags(kdf: str) -> list[str]:
    if kdf == "pbkdf2":
        return ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--hash", "sha256"]
    return ["--pbkdf", kdf, "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32768",
            "--pbkdf-parallel", "1"]


def openssl_ecb(openssl: str, key: bytes, data: bytes) -> bytes:
    algorithm = f"aes-{len(key) * 8}-ecb"
    return subprocess.run(
        [openssl, "enc", "-e", f"-{algorithm}", "-nopad", "-nosalt", "-K", key.hex()],
        input=data, capture_output=True, timeout=60, check=True,
    ).stdout


def _double(tweak: int) -> int:
    """Multiply by x in GF(2^128), the XTS tweak update (IEEE 1619, little-endian)."""
    tweak <<= 1
    if tweak >> 128:
        tweak = (tweak ^ 0x87) & ((1 << 128) - 1)
    return tweak


def openssl_xts_encrypt(openssl: str, key: bytes, sector_size: int, first_iv: int,
                        plain: bytes) -> bytes:
    """XTS built from openssl's AES-ECB (openssl 3.0 ``enc`` refuses XTS itself): IV of
    sector k is ``first_iv + k * sector_size / 512`` as dm-crypt's plain64 counts it."""
    half = len(key) // 2
    count = len(plain) // sector_size
    step = sector_size // 512
    ivs = b"".join((first_iv + k * step).to_bytes(16, "little") for k in range(count))
    encrypted_ivs = openssl_ecb(openssl, key[half:], ivs)
    tweaks = []
    for k in range(count):
        t = int.from_bytes(encrypted_ivs[16 * k : 16 * k + 16], "little")
        for _ in range(sector_size // 16):
            tweaks.append(t)
            t = _double(t)
    blocks = [int.from_bytes(plain[i : i + 16], "little") for i in range(0, len(plain), 16)]
    masked = b"".join((b ^ t).to_bytes(16, "little") for b, t in zip(blocks, tweaks, strict=True))
    out = openssl_ecb(openssl, key[:half], masked)
    return b"".join(
        (int.from_bytes(out[i : i + 16], "little") ^ t).to_bytes(16, "little")
        for i, t in zip(range(0, len(out), 16), tweaks, strict=True)
    )


# -- imgcrypt -> cryptsetup ------------------------------------------------------------------


@pytest.mark.parametrize(("kdf", "sector_size", "key_bits"), COMBOS)
def test_cryptsetup_opens_ours_and_sees_our_master_key(
        tmp_path: Path, keyfile: Path, cryptsetup: str, kdf: str, sector_size: int,
        key_bits: int) -> None:
    region, mk = make_region(os.urandom(key_bits // 8), kdf=kdf, sector_size=sector_size)
    image = write_image(tmp_path, region)
    assert cs_test_passphrase(cryptsetup, image, keyfile) == 0
    assert dump_volume_key(cryptsetup, image, keyfile) == mk
    wrong = secret_file(tmp_path, "wrong", b"not it")
    assert cs_test_passphrase(cryptsetup, image, wrong) != 0
    dump = cs(cryptsetup, "luksDump", image).stdout
    assert f"sector: {sector_size} [bytes]" in dump
    assert f"PBKDF:      {kdf}" in dump


@pytest.mark.parametrize("metadata_size", [16384, 262144, 4 << 20])
def test_cryptsetup_accepts_every_metadata_size(tmp_path: Path, keyfile: Path,
                                                cryptsetup: str, metadata_size: int) -> None:
    region, mk = make_region(metadata_size=metadata_size, keyslots_size=1 << 20,
                             label="imgcrypt test")
    image = write_image(tmp_path, region)
    assert cs_test_passphrase(cryptsetup, image, keyfile) == 0
    assert dump_volume_key(cryptsetup, image, keyfile) == mk
    dump = cs(cryptsetup, "luksDump", image).stdout
    assert f"Metadata area: \t{metadata_size} [bytes]" in dump
    assert "imgcrypt test" in dump


def test_cryptsetup_accepts_our_keyslot_changes_and_kept_tokens(
        tmp_path: Path, keyfile: Path, cryptsetup: str) -> None:
    region, mk = make_region(keyslots_size=(1 << 20) - 32768)

    def decorate(obj: dict[str, object]) -> None:
        obj["tokens"] = {"0": {"type": "x-imgcrypt-test", "keyslots": ["0"], "note": "kept"}}
        obj["config"]["flags"] = ["allow-discards"]  # type: ignore[index]

    region = rewrite_json(region, decorate)
    header = Luks2Header.parse(region)
    added = header.add_keyslot(region, mk, OTHER, cheap_kdf("argon2id"))
    removed = Luks2Header.parse(added.region).remove_keyslot(added.region, 0)
    image = write_image(tmp_path, removed.region)
    other = secret_file(tmp_path, "other", OTHER)
    assert cs_test_passphrase(cryptsetup, image, other) == 0
    assert cs_test_passphrase(cryptsetup, image, keyfile) != 0
    assert dump_volume_key(cryptsetup, image, other) == mk
    dump = cs(cryptsetup, "luksDump", image).stdout
    assert "x-imgcrypt-test" in dump
    assert "allow-discards" in dump
    # cryptsetup now changes the header itself, and we still read what it wrote.
    proc = cs(cryptsetup, "luksAddKey", "--batch-mode", "--key-file", other,
              *kdf_flags("pbkdf2"), image, keyfile)
    assert proc.returncode == 0, proc.stderr
    header2, region2 = read_header(image)
    assert header2.unlock(region2, PASS)[1] == mk
    assert header2.describe()["tokens"]["0"]["note"] == "kept"


# -- cryptsetup -> imgcrypt ------------------------------------------------------------------


def check_data_round_trip(openssl: str, header: Luks2Header, mk: bytes) -> None:
    """Sectors encrypted by openssl with IV iv_tweak + k * sector_size / 512 decrypt to plain."""
    size = header.sector_size
    plain = os.urandom(3 * size)
    encrypted = openssl_xts_encrypt(openssl, mk, size, header.iv_tweak, plain)
    cipher = SectorCipher(header.cipher, mk, size)
    assert cipher.decrypt(encrypted, header.iv_tweak) == plain
    assert cipher.encrypt(plain, header.iv_tweak) == encrypted


@pytest.mark.parametrize(("kdf", "sector_size", "key_bits"), COMBOS)
def test_we_open_cryptsetup_images_and_decrypt_openssl_data(
        tmp_path: Path, keyfile: Path, cryptsetup: str, openssl: str, kdf: str,
        sector_size: int, key_bits: int) -> None:
    image = tmp_path / "cs.img"
    cs_format(cryptsetup, image, keyfile, *kdf_flags(kdf), "--sector-size", str(sector_size),
              "--key-size", str(key_bits), "--cipher", "aes-xts-plain64")
    header, region = read_header(image)
    slot, mk = header.unlock(region, PASS)
    assert slot == 0
    assert mk == dump_volume_key(cryptsetup, image, keyfile)
    assert (header.sector_size, header.key_bytes * 8) == (sector_size, key_bits)
    assert header.describe()["keyslots"][0]["kdf"] == kdf
    with pytest.raises(WrongPassphraseError):
        header.unlock(region, b"nope")
    check_data_round_trip(openssl, header, mk)


def test_we_open_cryptsetup_defaults(tmp_path: Path, keyfile: Path, cryptsetup: str,
                                     openssl: str) -> None:
    image = tmp_path / "cs.img"
    # cryptsetup's defaults except a cheaper argon2id; it picks 4096-byte sectors on files.
    cs_format(cryptsetup, image, keyfile, "--pbkdf-memory", "32768", "--iter-time", "100",
              "--label", "from cryptsetup", "--subsystem", "tests")
    header, region = read_header(image)
    info = header.describe()
    assert info["sector_size"] == 4096
    assert info["keyslots"][0]["kdf"] == "argon2id"
    assert (info["label"], info["subsystem"]) == ("from cryptsetup", "tests")
    assert info["payload_offset"] == 16 << 20
    mk = header.unlock(region, PASS)[1]
    assert mk == dump_volume_key(cryptsetup, image, keyfile)
    check_data_round_trip(openssl, header, mk)


def test_we_rekey_cryptsetup_images_and_cryptsetup_agrees(
        tmp_path: Path, keyfile: Path, cryptsetup: str) -> None:
    image = tmp_path / "cs.img"
    cs_format(cryptsetup, image, keyfile, *kdf_flags("argon2id"))
    proc = cs(cryptsetup, "luksAddKey", "--batch-mode", "--key-file", keyfile,
              *kdf_flags("pbkdf2"), image, secret_file(tmp_path, "third", b"third"))
    assert proc.returncode == 0, proc.stderr
    proc = cs(cryptsetup, "config", "--priority", "prefer", "--key-slot", "1", image)
    assert proc.returncode == 0, proc.stderr
    header, region = read_header(image)
    assert header.describe()["keyslots"][1]["priority"] == "prefer"
    mk = header.unlock(region, b"third")[1]
    added = header.add_keyslot(region, mk, OTHER, cheap_kdf("argon2i"))
    removed = Luks2Header.parse(added.region).remove_keyslot(added.region, 0)
    for update in (added, removed):
        apply_to_file(image, update)
    other = secret_file(tmp_path, "other", OTHER)
    assert cs_test_passphrase(cryptsetup, image, other) == 0
    assert cs_test_passphrase(cryptsetup, image, keyfile) != 0
    assert dump_volume_key(cryptsetup, image, other) == mk


def test_we_open_cryptsetup_image_with_damaged_primary(tmp_path: Path, keyfile: Path,
                                                       cryptsetup: str) -> None:
    image = tmp_path / "cs.img"
    cs_format(cryptsetup, image, keyfile, *kdf_flags("pbkdf2"), "--luks2-metadata-size",
              "64k", "--luks2-keyslots-size", "1m")
    data = bytearray(image.read_bytes())
    data[4096 + 10] ^= 0xFF
    image.write_bytes(data)
    header, region = read_header(image)
    assert header.hdr_size == 65536
    assert header.describe()["header_copies"] == {"primary": "damaged", "secondary": "valid"}
    mk = header.unlock(region, PASS)[1]
    apply_to_file(image, header.add_keyslot(region, mk, OTHER, cheap_kdf()))
    assert read_header(image)[0].describe()["header_copies"]["primary"] == "valid"
    assert cs_test_passphrase(cryptsetup, image, secret_file(tmp_path, "o", OTHER)) == 0
    assert cs_test_passphrase(cryptsetup, image, keyfile) == 0


# -- imgcrypt -> grub ------------------------------------------------------------------------


@pytest.mark.parametrize("sector_size", [512, 4096])
@pytest.mark.parametrize("key_bits", [256, 512])
def test_grub_decrypts_our_images(tmp_path: Path, grub_fstest: str, sector_size: int,
                                  key_bits: int) -> None:
    region, mk = make_region(os.urandom(key_bits // 8), kdf="pbkdf2", sector_size=sector_size)
    header = Luks2Header.parse(region)
    payload = os.urandom(256 * 1024)
    encrypted = SectorCipher(header.cipher, mk, header.sector_size).encrypt(payload,
                                                                            header.iv_tweak)
    image = tmp_path / "grub.img"
    image.write_bytes(region + encrypted)
    out = tmp_path / "out.raw"
    proc = subprocess.run(
        [grub_fstest, "-C", str(image), "cp", f"(crypto0)0+{len(payload) // 512}", str(out)],
        input=PASS + b"\n", capture_output=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == payload


@pytest.mark.parametrize("sector_size", [512, 4096])
def test_grub_decrypts_what_we_write_into_cryptsetup_images(
        tmp_path: Path, keyfile: Path, cryptsetup: str, grub_fstest: str,
        sector_size: int) -> None:
    image = tmp_path / "cs.img"
    cs_format(cryptsetup, image, keyfile, *kdf_flags("pbkdf2"), "--sector-size",
              str(sector_size))
    header, region = read_header(image)
    mk = header.unlock(region, PASS)[1]
    payload = os.urandom(128 * 1024)
    with open(image, "r+b") as f:
        f.seek(header.payload_offset)
        f.write(SectorCipher(header.cipher, mk, header.sector_size).encrypt(payload,
                                                                           header.iv_tweak))
    out = tmp_path / "out.raw"
    proc = subprocess.run(
        [grub_fstest, "-C", str(image), "cp", f"(crypto0)0+{len(payload) // 512}", str(out)],
        input=PASS + b"\n", capture_output=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == payload


def test_we_open_and_rekey_a_luks1_image_cryptsetup_converted(
        tmp_path: Path, keyfile: Path, cryptsetup: str) -> None:
    # Converted headers keep LUKS1's sha1 and its 20-byte master-key digest.
    image = tmp_path / "conv.img"
    cs_format(cryptsetup, image, keyfile, "--pbkdf-force-iterations", "1000", "--hash", "sha1",
              luks_type="luks1")
    proc = cs(cryptsetup, "convert", "--batch-mode", "--type", "luks2", image)
    assert proc.returncode == 0, proc.stderr
    header, region = read_header(image)
    assert header.describe()["digests"][0]["hash"] == "sha1"
    mk = header.unlock(region, PASS)[1]
    assert mk == dump_volume_key(cryptsetup, image, keyfile)
    apply_to_file(image, header.add_keyslot(region, mk, OTHER, cheap_kdf("argon2id")))
    assert cs_test_passphrase(cryptsetup, image, secret_file(tmp_path, "o", OTHER)) == 0


def test_reencryption_requirement_reads_but_refuses_writes(
        tmp_path: Path, keyfile: Path, cryptsetup: str) -> None:
    image = tmp_path / "reenc.img"
    cs_format(cryptsetup, image, keyfile, *kdf_flags("pbkdf2"))
    proc = cs(cryptsetup, "reencrypt", "--init-only", "--batch-mode", "--key-file", keyfile,
              *kdf_flags("pbkdf2"), image)
    assert proc.returncode == 0, proc.stderr
    header, region = read_header(image)
    info = header.describe()
    assert info["requirements"] == ["online-reencrypt-v2"]
    assert any(k["type"] == "reencrypt" for k in info["keyslots"])
    slot, mk = header.unlock(region, PASS)
    # Segment 0 (the data as it is now) belongs to digest 0 and keyslot 0; cryptsetup dumps the
    # new key of keyslot 1 (digest 1, the backup-final segment) instead.
    assert slot == 0 and header.verify_master_key(mk)
    new_key = dump_volume_key(cryptsetup, image, keyfile)
    digest1 = next(d for d in header.metadata.digests if d.id == 1)
    assert 2 in digest1.segments and new_key != mk
    assert hashlib.pbkdf2_hmac("sha256", new_key, digest1.salt, digest1.iterations,
                               len(digest1.digest)) == digest1.digest
    with pytest.raises(UnsupportedError, match="online-reencrypt-v2"):
        header.add_keyslot(region, mk, OTHER, cheap_kdf())
    with pytest.raises(UnsupportedError, match="online-reencrypt-v2"):
        header.remove_keyslot(region, 0)


# --- rekey_file completes the new keyslot's KDF from the image's own header -----------------


@pytest.mark.parametrize("pbkdf", [None, "argon2i", "pbkdf2"])
def test_rekey_file_kdf_options_on_a_cryptsetup_luks2_image(
        tmp_path: Path, keyfile: Path, cryptsetup: str, pbkdf: str | None) -> None:
    image = tmp_path / "cs.img"
    cs_format(cryptsetup, image, keyfile, *kdf_flags("pbkdf2"), "--hash", "sha512")
    payload = image.read_bytes()[16 << 20:]
    iterations = 1000 if pbkdf == "pbkdf2" else 4
    options = KdfOptions(iterations=iterations, pbkdf=pbkdf, pbkdf_memory_kib=32768,
                         pbkdf_parallel=1)
    result = rekey_file(str(image), PASS, new_passphrase=OTHER, kdf=options)
    assert (result.opened_slot, result.added_slot, result.removed_slot) == (0, 1, None)
    metadata = json.loads(cs(cryptsetup, "luksDump", "--dump-json-metadata", image).stdout)
    kdf = metadata["keyslots"]["1"]["kdf"]
    # a LUKS2 image's default is argon2id, whatever FormatOptions' LUKS1 default says
    assert kdf["type"] == (pbkdf or "argon2id")
    if pbkdf == "pbkdf2":
        # LUKS2 keyslots take the hash asked (FormatOptions' sha256), not the header's sha512
        assert (kdf["hash"], kdf["iterations"]) == ("sha256", 1000)
    else:
        assert (kdf["time"], kdf["memory"], kdf["cpus"]) == (4, 32768, 1)
    other = secret_file(tmp_path, "other", OTHER)
    assert cs_test_passphrase(cryptsetup, image, other) == 0
    assert dump_volume_key(cryptsetup, image, other) == dump_volume_key(cryptsetup, image,
                                                                        keyfile)
    assert image.read_bytes()[16 << 20:] == payload


def test_rekey_file_kdf_options_on_a_cryptsetup_luks1_image(
        tmp_path: Path, keyfile: Path, cryptsetup: str) -> None:
    image = tmp_path / "cs1.img"
    cs_format(cryptsetup, image, keyfile, "--hash", "sha512", "--pbkdf-force-iterations", "1000",
              luks_type="luks1")
    result = rekey_file(str(image), PASS, new_passphrase=OTHER, remove_old=True,
                        kdf=KdfOptions(iterations=1234))
    assert (result.opened_slot, result.added_slot, result.removed_slot) == (0, 1, 0)
    dump = parse_luks1(cs(cryptsetup, "luksDump", image).stdout)
    # LUKS1: pbkdf2 with the header's one hash
    assert dump["hash"] == "sha512"
    assert [(s["slot"], s["iterations"]) for s in dump["keyslots"]] == [(1, 1234)]
    other = secret_file(tmp_path, "other", OTHER)
    assert cs_test_passphrase(cryptsetup, image, other) == 0
    assert cs_test_passphrase(cryptsetup, image, keyfile) != 0


def test_rekey_file_kdf_options_refused_for_luks1_argon2(
        tmp_path: Path, keyfile: Path, cryptsetup: str) -> None:
    image = tmp_path / "cs1.img"
    cs_format(cryptsetup, image, keyfile, "--pbkdf-force-iterations", "1000", luks_type="luks1")
    before = image.read_bytes()
    with pytest.raises(UsageError, match="LUKS1 keyslots use pbkdf2"):
        rekey_file(str(image), PASS, new_passphrase=OTHER,
                   kdf=KdfOptions(iterations=4, pbkdf="argon2id", pbkdf_memory_kib=32768))
    assert image.read_bytes() == before

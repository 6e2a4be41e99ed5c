"""Recovery and repair like cryptsetup's, refusals of what imgcrypt cannot decrypt, and the
trailing partial sector a loop device would ignore. Checked with cryptsetup and the CLI."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import headerkit as hk
from tests.helpers.util import imgcrypt, secret_file

FAST = ("--iterations", "1000")


@pytest.fixture
def work(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "disk.raw"
    src.write_bytes(os.urandom(300_000))
    return {"dir": tmp_path, "src": src,
            "pw": secret_file(tmp_path, "pw", b"recovery passphrase")}


def encrypt(work: dict[str, Path], fmt: str = "luks2") -> Path:
    out = work["dir"] / f"disk.{fmt}"
    imgcrypt("encrypt", work["src"], out, "--passphrase-file", work["pw"], "--format", fmt,
             "--pbkdf", "pbkdf2", *FAST, check=True)
    return out


def decrypt(work: dict[str, Path], image: Path, name: str) -> subprocess.CompletedProcess[bytes]:
    return imgcrypt("decrypt", image, work["dir"] / name, "--passphrase-file", work["pw"])


def test_damaged_primary_opens_from_the_secondary(work: dict[str, Path]) -> None:
    image = encrypt(work)
    decrypt(work, image, "a.raw").check_returncode()
    image.write_bytes(hk.put(image.read_bytes(), 0, bytes(6)))
    proc = decrypt(work, image, "b.raw")
    assert proc.returncode == 0, proc.stderr
    assert (work["dir"] / "b.raw").read_bytes() == (work["dir"] / "a.raw").read_bytes()


def test_foreign_signature_blocks_recovery_until_repair(cryptsetup: str,
                                                        work: dict[str, Path]) -> None:
    image = encrypt(work)
    decrypt(work, image, "a.raw").check_returncode()
    good = image.read_bytes()
    hdr = hk.hdr_size(good)
    damaged = hk.put(hk.put(good, 0, bytes(6)), 512, hk.lvm2_label(1))
    image.write_bytes(damaged)
    # cryptsetup refuses to auto-recover ("ambiguous signatures"), and so does imgcrypt.
    assert not hk.cryptsetup_verdict(cryptsetup, damaged, work["dir"])
    for args in (["inspect", image], ["decrypt", image, work["dir"] / "b.raw",
                                      "--passphrase-file", work["pw"]]):
        proc = imgcrypt(*args)
        assert proc.returncode == 3
        assert "luks2-foreign-signature" in proc.stderr.decode()
    assert not (work["dir"] / "b.raw").exists()

    fixed = imgcrypt("repair", image, "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["rewritten"] == "primary"
    repaired = image.read_bytes()
    assert repaired[hdr:] == damaged[hdr:]  # the secondary copy and the payload untouched
    assert hk.luks2_json(repaired, 0) == hk.luks2_json(repaired, 1)
    assert hk.cryptsetup_verdict(cryptsetup, repaired, work["dir"])
    key = secret_file(work["dir"], "key", b"recovery passphrase")
    opened = subprocess.run([cryptsetup, "open", "--test-passphrase", "--key-file", str(key),
                             str(image)], capture_output=True)
    assert opened.returncode == 0, opened.stderr
    assert decrypt(work, image, "c.raw").returncode == 0
    assert (work["dir"] / "c.raw").read_bytes() == (work["dir"] / "a.raw").read_bytes()
    again = imgcrypt("repair", image)
    assert again.returncode == 0 and b"nothing to repair" in again.stdout


def test_repair_rewrites_a_stale_secondary(cryptsetup: str, work: dict[str, Path]) -> None:
    image = encrypt(work)
    good = image.read_bytes()
    stale = hk.with_binary(good, 16, (0).to_bytes(8, "big"), copies=(1,))
    image.write_bytes(stale)
    proc = imgcrypt("repair", image)
    assert proc.returncode == 0 and b"rewrote the secondary" in proc.stdout
    repaired = image.read_bytes()
    hdr = hk.hdr_size(repaired)
    assert repaired[:hdr] == stale[:hdr]  # the good primary untouched
    assert repaired[8:24] == repaired[hdr + 8 : hdr + 24]  # same hdr_size and seqid
    assert hk.cryptsetup_verdict(cryptsetup, repaired, work["dir"])


def test_repair_refuses_a_header_without_any_valid_copy(work: dict[str, Path]) -> None:
    image = encrypt(work)
    data = image.read_bytes()
    image.write_bytes(hk.put(hk.put(data, 100, b"\1"), hk.hdr_size(data) + 100, b"\1"))
    proc = imgcrypt("repair", image)
    assert proc.returncode == 3 and b"luks2-checksum" in proc.stderr


def _crypt(offset: int, size: str) -> dict[str, Any]:
    return {"type": "crypt", "offset": str(offset), "size": size, "iv_tweak": "0",
            "encryption": "aes-xts-plain64", "sector_size": 512}


def _integrity(o: dict[str, Any]) -> None:
    o["segments"]["0"]["integrity"] = {"type": "hmac(sha256)", "journal_encryption": "none",
                                       "journal_integrity": "none"}


def _split(first_type: str, digest_segments: list[str]) -> Any:
    def edit(o: dict[str, Any]) -> None:
        offset = int(o["segments"]["0"]["offset"])
        first = _crypt(offset, "65536") if first_type == "crypt" else {
            "type": first_type, "offset": str(offset), "size": "65536"}
        o["segments"] = {"0": first, "1": _crypt(offset + 65536, "dynamic")}
        o["digests"]["0"]["segments"] = digest_segments
    return edit


UNDECRYPTABLE = {
    "integrity": _integrity,
    "two-crypt-segments": _split("crypt", ["0", "1"]),
    "linear-before-crypt": _split("linear", ["1"]),
    "unknown-segment-type": lambda o: o["segments"]["0"].update(type="x-future"),
    "serpent": lambda o: o["segments"]["0"].update(encryption="serpent-xts-plain64"),
    "digest-length": lambda o: o["digests"]["0"].update(
        digest=base64.b64encode(bytes(24)).decode()),
}


@pytest.mark.parametrize("case", sorted(UNDECRYPTABLE))
def test_decrypt_refuses_what_it_cannot_decrypt(cryptsetup: str, work: dict[str, Path],
                                                case: str) -> None:
    image = encrypt(work)
    edited = hk.with_json(image.read_bytes(), UNDECRYPTABLE[case])
    image.write_bytes(edited)
    assert hk.cryptsetup_verdict(cryptsetup, edited, work["dir"])  # a valid header
    shown = imgcrypt("inspect", image)
    assert shown.returncode == 0, shown.stderr
    assert b"NOT DECRYPTABLE" in shown.stdout
    proc = decrypt(work, image, "out.raw")
    assert proc.returncode == 3, proc.stderr
    assert not (work["dir"] / "out.raw").exists()


@pytest.mark.parametrize("fmt", ["luks1", "luks2"])
def test_trailing_partial_sector_is_ignored_with_a_warning(work: dict[str, Path],
                                                           fmt: str) -> None:
    image = encrypt(work, fmt)
    decrypt(work, image, "whole.raw").check_returncode()
    longer = work["dir"] / "longer.img"
    longer.write_bytes(image.read_bytes() + b"\x55" * 100)
    proc = decrypt(work, longer, "file.raw")
    assert proc.returncode == 0, proc.stderr
    assert b"ignoring the last 100 bytes" in proc.stderr
    assert (work["dir"] / "file.raw").read_bytes() == (work["dir"] / "whole.raw").read_bytes()
    piped = imgcrypt("decrypt", "-", work["dir"] / "pipe.raw", "--passphrase-file", work["pw"],
                     input=longer.read_bytes())
    assert piped.returncode == 0, piped.stderr
    assert b"ignoring the last 100 bytes" in piped.stderr
    assert (work["dir"] / "pipe.raw").read_bytes() == (work["dir"] / "whole.raw").read_bytes()


def test_repair_is_crash_safe_at_every_point_of_its_write(work: dict[str, Path]) -> None:
    """Repair writes only the bad copy; torn after any number of sectors, a valid copy is
    left and a new repair completes the job."""
    from imgcrypt.luks.luks2 import Luks2Header
    from imgcrypt.luks.repair import plan_repair

    image = encrypt(work)
    uuid = Luks2Header.parse(image.read_bytes()).uuid
    damaged = hk.put(hk.put(image.read_bytes(), 0, bytes(6)), 512, hk.lvm2_label(1))
    plan = plan_repair(damaged)
    assert plan is not None
    offset, copy, which, _ = plan
    assert (offset, which) == (0, "primary")
    for done in range(0, len(copy), 512):
        torn = hk.put(damaged, offset, copy[:done])
        assert Luks2Header.parse(torn, repairing=True).uuid == uuid
        again = plan_repair(torn)
        assert again is None or again[0] == 0  # done, or the primary still to write
    assert plan_repair(hk.put(damaged, offset, copy)) is None

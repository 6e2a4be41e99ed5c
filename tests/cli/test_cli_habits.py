"""Options and output a cryptsetup user already knows: --key-file, --type, --key-slot, sectors."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers.util import imgcrypt, secret_file

FAST = ["--pbkdf", "pbkdf2", "--iterations", "1000"]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "disk.raw").write_bytes(bytes(range(256)) * 4096)
    return {"dir": tmp_path, "src": tmp_path / "disk.raw",
            "pw": secret_file(tmp_path, "pw", b"first"),
            "pw2": secret_file(tmp_path, "pw2", b"second")}


def luks_dump(cryptsetup: str, image: Path) -> str:
    return subprocess.run([cryptsetup, "luksDump", str(image)], capture_output=True, text=True,
                          check=True, timeout=60).stdout


def opens(cryptsetup: str, image: Path, keyfile: Path, slot: int | None = None) -> bool:
    extra = [] if slot is None else ["--key-slot", str(slot)]
    return subprocess.run([cryptsetup, "open", "--test-passphrase", "--key-file", str(keyfile),
                           *extra, str(image)], capture_output=True, timeout=60).returncode == 0


def test_type_and_key_file_aliases(files: dict[str, Path], cryptsetup: str) -> None:
    target = files["dir"] / "t.luks"
    imgcrypt("encrypt", files["src"], target, "--type", "luks2", "--key-file", files["pw"],
             *FAST, check=True)
    assert re.search(r"^Version:\s+2$", luks_dump(cryptsetup, target), re.M)
    assert opens(cryptsetup, target, files["pw"])
    assert imgcrypt("encrypt", files["src"], files["dir"] / "u.luks", "--type", "plain",
                    "--key-file", files["pw"]).returncode == 2


def test_key_slot_for_rekey_and_decrypt(files: dict[str, Path], cryptsetup: str) -> None:
    target = files["dir"] / "t.luks"
    imgcrypt("encrypt", files["src"], target, "--key-file", files["pw"], "--iterations", "1000",
             check=True)
    proc = imgcrypt("rekey", target, "--key-file", files["pw"], "--add", "--new-key-file",
                    files["pw2"], "--key-slot", "5", "--iterations", "1000", "--json",
                    check=True)
    assert json.loads(proc.stdout)["added_slot"] == 5
    assert re.search(r"^Key Slot 5: ENABLED$", luks_dump(cryptsetup, target), re.M)
    assert opens(cryptsetup, target, files["pw2"], slot=5)
    # decrypt --key-slot tries only that keyslot, as cryptsetup open --key-slot does.
    assert imgcrypt("decrypt", target, files["dir"] / "a.raw", "--key-file", files["pw2"],
                    "--key-slot", "0").returncode == 4
    assert imgcrypt("decrypt", target, files["dir"] / "b.raw", "--key-file", files["pw2"],
                    "--key-slot", "5").returncode == 0
    # rekey --change --key-slot N changes the passphrase of keyslot N only.
    assert imgcrypt("rekey", target, "--key-file", files["pw2"], "--change", "--key-slot", "0",
                    "--new-key-file", files["pw"], "--iterations", "1000").returncode == 4


@pytest.mark.parametrize(("fmt", "slot", "dumped"), [
    ("luks1", 3, r"^Key Slot 3: ENABLED$"), ("luks2", 7, r"^\s+7: luks2$")])
def test_key_slot_for_encrypt(files: dict[str, Path], cryptsetup: str, fmt: str, slot: int,
                              dumped: str) -> None:
    """encrypt --key-slot N puts the passphrase in keyslot N, as luksFormat --key-slot does."""
    target = files["dir"] / "t.luks"
    imgcrypt("encrypt", files["src"], target, "--type", fmt, "--key-file", files["pw"],
             "--key-slot", str(slot), *FAST, check=True)
    dump = luks_dump(cryptsetup, target)
    assert re.search(dumped, dump, re.M), dump
    assert opens(cryptsetup, target, files["pw"], slot=slot)
    assert not opens(cryptsetup, target, files["pw"], slot=0)
    assert imgcrypt("encrypt", files["src"], files["dir"] / "u.luks", "--type", fmt,
                    "--key-file", files["pw"], "--key-slot", "32", *FAST).returncode == 2
    assert not (files["dir"] / "u.luks").exists()


def test_inspect_shows_offsets_in_sectors_like_luks_dump(
        files: dict[str, Path], cryptsetup: str) -> None:
    target = files["dir"] / "t.luks"
    imgcrypt("encrypt", files["src"], target, "--key-file", files["pw"], "--iterations", "1000",
             check=True)
    dump = luks_dump(cryptsetup, target)
    payload = int(re.search(r"^Payload offset:\s+(\d+)$", dump, re.M).group(1))  # type: ignore[union-attr]
    material = int(re.search(r"Key material offset:\s+(\d+)", dump).group(1))  # type: ignore[union-attr]
    shown = imgcrypt("inspect", target, check=True).stdout.decode()
    assert re.search(rf"payload offset\s+{payload} sectors \({payload * 512} bytes", shown)
    assert f"key material offset {material} sectors ({material * 512} bytes" in shown
    info = json.loads(imgcrypt("inspect", target, "--json", check=True).stdout)
    assert info["payload_offset"] == payload * 512
    assert info["payload_offset_sectors"] == payload
    assert info["keyslots"][0]["key_material_offset_sectors"] == material

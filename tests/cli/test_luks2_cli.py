"""LUKS2 through the command line: exit codes and messages for damaged and hostile headers."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from imgcrypt.crypto.sectors import SectorCipher
from imgcrypt.luks.luks2 import Luks2Header
from tests.helpers.util import imgcrypt, secret_file
from tests.luks.test_luks2_support import PASS, make_region, rewrite_json


def _image(tmp_path: Path, region: bytes, payload: bytes = b"") -> Path:
    path = tmp_path / "img.luks2"
    path.write_bytes(region + payload)
    return path


def test_inspect_and_decrypt_a_healthy_image(tmp_path: Path) -> None:
    region, mk = make_region(sector_size=4096)
    header = Luks2Header.parse(region)
    payload = os.urandom(5 * 4096)
    image = _image(tmp_path, region,
                   SectorCipher(header.cipher, mk, 4096).encrypt(payload, header.iv_tweak))
    proc = imgcrypt("inspect", image, "--json", check=True)
    info = json.loads(proc.stdout)
    assert (info["format"], info["sector_size"], info["metadata_size"]) == ("luks2", 4096, 16384)
    assert info["header_copies"] == {"primary": "valid", "secondary": "valid"}
    out = tmp_path / "out.raw"
    imgcrypt("decrypt", "--passphrase-file", secret_file(tmp_path, "p", PASS), "--no-progress",
             image, out, check=True)
    assert out.read_bytes() == payload
    wrong = imgcrypt("decrypt", "--passphrase-file", secret_file(tmp_path, "w", b"nope"),
                     "--no-progress", image, tmp_path / "w.raw")
    assert wrong.returncode == 4
    assert wrong.stderr.decode().startswith("imgcrypt: error:")


def test_inspect_reports_a_damaged_primary(tmp_path: Path) -> None:
    region, _ = make_region()
    damaged = bytearray(region)
    damaged[4096 + 30] ^= 1
    proc = imgcrypt("inspect", _image(tmp_path, bytes(damaged)), "--json", check=True)
    assert json.loads(proc.stdout)["header_copies"] == {"primary": "damaged",
                                                        "secondary": "valid"}


def test_cli_exit_codes_for_broken_headers(tmp_path: Path) -> None:
    region, _ = make_region()
    both = bytearray(region)
    both[4096 + 30] ^= 1
    both[16384 + 4096 + 30] ^= 1
    hostile = rewrite_json(region, lambda o: o["keyslots"]["0"]["kdf"].update(
        {"type": "argon2id", "time": 4, "memory": 1 << 40, "cpus": 1}))
    unterminated = rewrite_json(region, nul=False)
    for name, data, words in [("both", bytes(both), "checksum"),
                              ("hostile", hostile, "memory"),
                              ("nul", unterminated, "NUL")]:
        image = tmp_path / f"{name}.img"
        image.write_bytes(data)
        start = time.perf_counter()
        proc = imgcrypt("decrypt", "--passphrase-file", secret_file(tmp_path, "p", PASS),
                        "--no-progress", image, tmp_path / f"{name}.raw")
        assert time.perf_counter() - start < 10  # interpreter start-up dominates
        assert proc.returncode == 3, (name, proc.stderr)
        err = proc.stderr.decode()
        assert err.startswith("imgcrypt: error:") and err.count("\n") == 1
        assert words in err
        assert PASS.decode() not in err

"""The encrypt / decrypt / inspect / rekey commands through the console script."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.util import IMGCRYPT, imgcrypt, run_qemu_img, secret_file
from tests.helpers.util import test_passphrase as cs_test_passphrase

FAST = ("--iterations", "1000")


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "disk.raw"
    src.write_bytes(os.urandom(1_000_001))
    return {
        "dir": tmp_path,
        "src": src,
        "pw": secret_file(tmp_path, "pw", b"first passphrase"),
        "pw2": secret_file(tmp_path, "pw2", b"second passphrase"),
        "bad": secret_file(tmp_path, "bad", b"not the passphrase"),
    }


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".imgcrypt-tmp")]


def encrypt(files: dict[str, Path], *extra: str) -> Path:
    out = files["dir"] / "disk.luks"
    imgcrypt("encrypt", files["src"], out, "--passphrase-file", files["pw"], *FAST, *extra,
             check=True)
    return out


def test_encrypt_inspect_decrypt_round_trip(files: dict[str, Path]) -> None:
    before = hashlib.sha256(files["src"].read_bytes()).hexdigest()
    out = files["dir"] / "disk.luks"
    proc = imgcrypt("encrypt", files["src"], out, "--passphrase-file", files["pw"], *FAST,
                    "--json", check=True)
    result = json.loads(proc.stdout)
    assert result["format"] == "luks1" and result["payload_size"] == 1_000_001
    assert result["cipher"] == "aes-xts-plain64" and result["key_size"] == 512
    assert proc.stderr == b""

    info = json.loads(imgcrypt("inspect", out, "--json", check=True).stdout)
    assert info["format"] == "luks1" and info["sector_size"] == 512
    assert info["payload_offset"] == 2 << 20 and info["uuid"] == result["uuid"]
    assert info["keyslots"] == [{"slot": 0, "kdf": "pbkdf2", "hash": "sha256",
                                 "iterations": 1000, "stripes": 4000,
                                 "key_material_offset": 4096,
                                 "key_material_offset_sectors": 8}]

    plain = files["dir"] / "plain.raw"
    imgcrypt("decrypt", out, plain, "--passphrase-file", files["pw"], "--size", "1000001",
             check=True)
    assert plain.read_bytes() == files["src"].read_bytes()
    assert hashlib.sha256(files["src"].read_bytes()).hexdigest() == before


def test_human_inspect_output(files: dict[str, Path]) -> None:
    out = encrypt(files)
    text = imgcrypt("inspect", out, check=True).stdout.decode()
    assert text.startswith("LUKS1 image\n") and "aes-xts-plain64" in text
    assert "0: kdf pbkdf2" in text


def test_stdin_to_stdout_pipeline(files: dict[str, Path]) -> None:
    data = files["src"].read_bytes()
    enc = imgcrypt("encrypt", "-", "-", "--passphrase-file", files["pw"], *FAST, input=data,
                   check=True)
    assert enc.stdout[:6] == b"LUKS\xba\xbe"
    dec = imgcrypt("decrypt", "-", "-", "--passphrase-file", files["pw"], "--size",
                   str(len(data)), input=enc.stdout, check=True)
    assert dec.stdout == data


def test_wrong_passphrase_exit_4_and_no_target(files: dict[str, Path]) -> None:
    out = encrypt(files)
    target = files["dir"] / "never.raw"
    proc = imgcrypt("decrypt", out, target, "--passphrase-file", files["bad"])
    assert proc.returncode == 4
    assert proc.stderr.decode() == "imgcrypt: error: no keyslot opens with this passphrase\n"
    assert not target.exists() and leftovers(files["dir"]) == []


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda b: b"XXXXXX" + b[6:], "bad magic"),
    (lambda b: b[:300], "truncated"),
    (lambda b: b[:6] + b"\x00\x09" + b[8:], "unsupported LUKS version 9"),
])
def test_malformed_input_exit_3(files: dict[str, Path], mangle: object, message: str) -> None:
    good = encrypt(files).read_bytes()
    bad = files["dir"] / "bad.luks"
    bad.write_bytes(mangle(good))  # type: ignore[operator]
    original = bad.read_bytes()
    for command in (["inspect", bad], ["decrypt", bad, files["dir"] / "o", "--passphrase-file",
                                       files["pw"]]):
        proc = imgcrypt(*command)
        assert proc.returncode == 3, proc.stderr
        err = proc.stderr.decode()
        assert err.startswith("imgcrypt: error: ") and err.count("\n") == 1
        assert message in err and "Traceback" not in err
    assert not (files["dir"] / "o").exists() and bad.read_bytes() == original


def test_other_cipher_is_inspected_but_not_decrypted(files: dict[str, Path]) -> None:
    """cryptsetup loads a twofish header: inspect shows it, marked; decrypt refuses, exit 3."""
    bad = files["dir"] / "twofish.luks"
    good = encrypt(files).read_bytes()
    bad.write_bytes(good[:8] + b"twofish".ljust(32, b"\0") + good[40:])
    shown = imgcrypt("inspect", bad)
    assert shown.returncode == 0, shown.stderr
    assert b"twofish-xts-plain64" in shown.stdout and b"NOT DECRYPTABLE" in shown.stdout
    proc = imgcrypt("decrypt", bad, files["dir"] / "o", "--passphrase-file", files["pw"])
    assert proc.returncode == 3
    assert "unsupported cipher twofish" in proc.stderr.decode()
    assert not (files["dir"] / "o").exists()


def test_existing_target_refused_without_force(files: dict[str, Path]) -> None:
    out = encrypt(files)
    before = out.read_bytes()
    proc = imgcrypt("encrypt", files["src"], out, "--passphrase-file", files["pw"], *FAST)
    assert proc.returncode == 2 and b"exists" in proc.stderr
    assert out.read_bytes() == before
    imgcrypt("encrypt", files["src"], out, "--passphrase-file", files["pw"], *FAST, "--force",
             check=True)
    assert out.read_bytes() != before


def test_usage_errors_exit_2(files: dict[str, Path]) -> None:
    assert imgcrypt("encrypt").returncode == 2
    assert imgcrypt("encrypt", files["src"], "x", "--key-size", "384").returncode == 2
    proc = imgcrypt("encrypt", files["src"], files["dir"] / "y", "--cipher", "serpent-xts-plain64",
                    "--passphrase-file", files["pw"])
    assert proc.returncode == 3 and b"serpent" in proc.stderr
    assert imgcrypt("frobnicate").returncode == 2


def test_missing_source_exit_1_without_traceback(files: dict[str, Path]) -> None:
    proc = imgcrypt("encrypt", files["dir"] / "nope", files["dir"] / "out",
                    "--passphrase-file", files["pw"], *FAST)
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    assert proc.stderr.startswith(b"imgcrypt: error: ")
    assert not (files["dir"] / "out").exists()


def test_no_passphrase_source_is_a_usage_error(files: dict[str, Path]) -> None:
    # Without a controlling terminal and without a file there is nobody to ask: refuse at once.
    proc = subprocess.run([*IMGCRYPT, "encrypt", str(files["src"]), str(files["dir"] / "o"),
                           *FAST], capture_output=True, start_new_session=True, timeout=60)
    assert proc.returncode == 2
    assert b"--passphrase-file" in proc.stderr
    assert not (files["dir"] / "o").exists()


def test_rekey_cli_and_cryptsetup_agree(files: dict[str, Path], cryptsetup: str) -> None:
    out = encrypt(files)
    payload_before = out.read_bytes()[2 << 20 :]
    proc = imgcrypt("rekey", out, "--passphrase-file", files["pw"], "--change",
                    "--new-passphrase-file", files["pw2"], *FAST, "--json", check=True)
    assert json.loads(proc.stdout) == {"target": str(out), "opened_slot": 0, "added_slot": 1,
                                       "removed_slot": 0}
    assert out.read_bytes()[2 << 20 :] == payload_before
    assert cs_test_passphrase(cryptsetup, out, files["pw2"]) == 0
    assert cs_test_passphrase(cryptsetup, out, files["pw"]) != 0
    proc = imgcrypt("rekey", out, "--passphrase-file", files["pw"], "--add",
                    "--new-passphrase-file", files["pw"], *FAST)
    assert proc.returncode == 4
    imgcrypt("rekey", out, "--passphrase-file", files["pw2"], "--add",
             "--new-passphrase-file", files["pw"], *FAST, check=True)
    assert cs_test_passphrase(cryptsetup, out, files["pw"]) == 0
    imgcrypt("rekey", out, "--passphrase-file", files["pw"], "--remove-slot", "1", check=True)
    assert cs_test_passphrase(cryptsetup, out, files["pw2"]) != 0
    proc = imgcrypt("rekey", out, "--passphrase-file", files["pw"], "--remove-slot", "0")
    assert proc.returncode == 2 and b"last keyslot" in proc.stderr


def test_properties_command(files: dict[str, Path]) -> None:
    out = files["dir"] / "disk.luks"
    keystore = files["dir"] / "keys"
    result = json.loads(imgcrypt("encrypt", files["src"], out, "--new-key", "--keystore",
                                 keystore, *FAST, "--json", check=True).stdout)
    key_id = result["key_id"]
    assert result["properties"]["os_decrypt_size"] == "1000001"
    signature = files["dir"] / "sig.json"
    signature.write_text(json.dumps({"img_signature": "abc", "img_signature_key_type": "RSA-PSS"}))
    ks = ["--keystore", str(keystore)]  # properties checks that the key opens the image
    props = json.loads(imgcrypt("properties", out, "--key-id", key_id, "--signature", signature,
                                "--size", "1000001", "--json", *ks, check=True).stdout)
    assert props == {**result["properties"], "disk_format": "raw", "container_format": "bare",
                     "img_signature": "abc", "img_signature_key_type": "RSA-PSS"}
    text = imgcrypt("properties", out, "--key-id", key_id, "--size", "payload", *ks,
                    check=True).stdout.decode()
    assert f"--property os_encrypt_key_id={key_id}" in text
    # --size payload: the person says the whole (sector-padded) payload is the plaintext.
    assert "--property os_decrypt_size=1000448" in text
    assert "disk_format" not in text
    # An encrypted image needs its key id; a raw one must not be given one.
    assert imgcrypt("properties", out).returncode == 2
    assert imgcrypt("properties", files["src"], "--key-id", key_id).returncode == 3
    bad = files["dir"] / "bad.json"
    bad.write_text('{"os_encrypt_key_id": "00000000-0000-4000-8000-000000000000"}')
    proc = imgcrypt("properties", out, "--key-id", key_id, "--signature", bad, "--size",
                    "payload", *ks)
    assert proc.returncode == 3 and b"differently" in proc.stderr


def test_decrypt_with_key_id_from_keystore(files: dict[str, Path]) -> None:
    out = files["dir"] / "disk.luks"
    keystore = files["dir"] / "keys"
    key_id = json.loads(imgcrypt("encrypt", files["src"], out, "--new-key", "--keystore",
                                 keystore, *FAST, "--json", check=True).stdout)["key_id"]
    plain = files["dir"] / "plain"
    imgcrypt("decrypt", out, plain, "--key-id", key_id, "--keystore", keystore, "--size",
             "1000001", check=True)
    assert plain.read_bytes() == files["src"].read_bytes()
    proc = imgcrypt("decrypt", out, files["dir"] / "p2", "--key-id",
                    "00000000-0000-4000-8000-000000000000", "--keystore", keystore)
    assert proc.returncode == 5 and not (files["dir"] / "p2").exists()


def test_rekey_with_key_manager_ids(files: dict[str, Path], cryptsetup: str) -> None:
    out = files["dir"] / "disk.luks"
    keystore = files["dir"] / "keys"
    old_id = json.loads(imgcrypt("encrypt", files["src"], out, "--new-key", "--keystore",
                                 keystore, *FAST, "--json", check=True).stdout)["key_id"]
    new_id = json.loads(imgcrypt("keys", "--json", "create", "--keystore", keystore,
                                 check=True).stdout)["key_id"]
    imgcrypt("rekey", out, "--key-id", old_id, "--change", "--new-key-id", new_id, "--keystore",
             keystore, *FAST, check=True)
    for key_id, opens in ((new_id, 0), (old_id, 2)):
        shown = json.loads(imgcrypt("keys", "--json", "show", key_id, "--reveal", "--keystore",
                                    keystore, check=True).stdout)
        keyfile = secret_file(files["dir"], key_id, shown["luks_passphrase"].encode())
        assert cs_test_passphrase(cryptsetup, out, keyfile) == opens
    plain = files["dir"] / "plain"
    imgcrypt("decrypt", out, plain, "--key-id", new_id, "--keystore", keystore, "--size",
             "1000001", check=True)
    assert plain.read_bytes() == files["src"].read_bytes()
    proc = imgcrypt("decrypt", out, files["dir"] / "p2", "--key-id", old_id, "--keystore",
                    keystore)
    assert proc.returncode == 4


def test_rekey_refuses_a_file_and_a_key_id_for_one_passphrase(files: dict[str, Path]) -> None:
    out = encrypt(files)
    before = out.read_bytes()
    for extra, which in ((["--key-id", "00000000-0000-4000-8000-000000000000",
                           "--passphrase-file", str(files["pw"]),
                           "--new-passphrase-file", str(files["pw2"])], "current"),
                         (["--passphrase-file", str(files["pw"]),
                           "--new-key-id", "00000000-0000-4000-8000-000000000000",
                           "--new-passphrase-file", str(files["pw2"])], "new")):
        proc = imgcrypt("rekey", out, "--add", *extra, "--keystore", files["dir"] / "keys",
                        *FAST)
        assert proc.returncode == 2
        assert proc.stderr.decode().strip() == (
            f"imgcrypt: error: give either a file or a key id for the {which} passphrase")
    assert out.read_bytes() == before


def test_decrypt_to_a_file_leaves_holes_like_qemu_img(tmp_path: Path, qemu_img: str) -> None:
    plain = bytearray(16 << 20)
    plain[5 << 20 : 6 << 20] = os.urandom(1 << 20)
    raw = tmp_path / "sparse-guest.raw"
    raw.write_bytes(plain)
    pw = secret_file(tmp_path, "pw", b"holes")
    image = tmp_path / "holes.luks"
    imgcrypt("encrypt", raw, image, "--passphrase-file", pw, "--iterations", "1000", check=True)
    ours = tmp_path / "ours.raw"
    imgcrypt("decrypt", image, ours, "--passphrase-file", pw, check=True)
    theirs = tmp_path / "theirs.raw"
    run_qemu_img(["convert", "-f", "raw", "-O", "raw", str(raw), str(theirs)])
    assert ours.read_bytes() == theirs.read_bytes() == plain
    assert ours.stat().st_blocks <= theirs.stat().st_blocks + 8
    assert ours.stat().st_blocks * 512 < 2 << 20

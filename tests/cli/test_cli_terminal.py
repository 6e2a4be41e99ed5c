"""A person at a real terminal: prompts typed through a pseudo-terminal, checked by cryptsetup."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect
import pytest

from tests.helpers.util import imgcrypt, large_source, secret_file, test_passphrase

TYPED = "correct horse battery staple"


def spawn(*args: str | Path, cwd: Path, timeout: float = 120) -> pexpect.spawn:
    """imgcrypt on a fresh pseudo-terminal that is its controlling terminal, like a shell's."""
    child = pexpect.spawn(sys.executable, ["-m", "imgcrypt", *map(str, args)], cwd=str(cwd),
                          timeout=timeout, env={**os.environ, "COLUMNS": "100"})
    child.setecho(True)  # what a shell gives: the prompt must switch echo off itself
    return child


def finish(child: pexpect.spawn) -> tuple[int, str]:
    shown = child.read().decode(errors="replace")
    child.close()
    assert child.exitstatus is not None, child.signalstatus
    return child.exitstatus, shown


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(1 << 20))
    return path


def test_encrypt_prompts_twice_without_echo_and_cryptsetup_opens_it(
        tmp_path: Path, disk: Path, cryptsetup: str) -> None:
    child = spawn("encrypt", disk, "t.luks", "--iterations", "1000", cwd=tmp_path)
    child.expect("Passphrase: ")
    child.sendline(TYPED)
    child.expect("Verify passphrase: ")
    child.sendline(TYPED)
    code, shown = finish(child)
    assert code == 0, shown
    assert TYPED not in shown  # no echo
    keyfile = secret_file(tmp_path, "typed", TYPED.encode())
    assert test_passphrase(cryptsetup, tmp_path / "t.luks", keyfile) == 0
    wrong = secret_file(tmp_path, "typed-nl", TYPED.encode() + b"\n")
    assert test_passphrase(cryptsetup, tmp_path / "t.luks", wrong) != 0


def test_mismatched_confirmation_is_refused(tmp_path: Path, disk: Path) -> None:
    child = spawn("encrypt", disk, "t.luks", "--iterations", "1000", cwd=tmp_path)
    child.expect("Passphrase: ")
    child.sendline(TYPED)
    child.expect("Verify passphrase: ")
    child.sendline(TYPED + "x")
    code, shown = finish(child)
    assert code == 2 and "passphrases do not match" in shown
    assert not (tmp_path / "t.luks").exists()


def test_decrypt_prompts_once(tmp_path: Path, disk: Path) -> None:
    pw = secret_file(tmp_path, "pw", TYPED.encode())
    imgcrypt("encrypt", disk, tmp_path / "t.luks", "--passphrase-file", pw, "--iterations",
             "1000", check=True)
    child = spawn("decrypt", "t.luks", "t.raw", cwd=tmp_path)
    child.expect("Passphrase: ")
    child.sendline(TYPED)
    code, shown = finish(child)
    assert code == 0, shown
    assert "Verify" not in shown
    assert (tmp_path / "t.raw").read_bytes()[: 1 << 20] == disk.read_bytes()


def test_ctrl_c_at_the_prompt_restores_echo_and_exits_130(tmp_path: Path, disk: Path) -> None:
    child = spawn("encrypt", disk, "t.luks", "--iterations", "1000", cwd=tmp_path)
    child.expect("Passphrase: ")
    child.send("half typed")
    child.sendintr()
    code, shown = finish(child)
    assert (code, "interrupted" in shown) == (130, True), shown
    assert "half typed" not in shown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw"]


def test_progress_bar_shows_the_total_on_a_terminal(tmp_path: Path) -> None:
    src = tmp_path / "big.raw"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
    pw = secret_file(tmp_path, "pw", TYPED.encode())
    imgcrypt("encrypt", src, tmp_path / "big.luks", "--passphrase-file", pw, "--iterations",
             "1000", check=True)
    child = spawn("decrypt", "big.luks", "big.out", "--passphrase-file", "pw", cwd=tmp_path)
    code, shown = finish(child)
    assert code == 0, shown
    assert "/64.0M" in shown  # "decrypt: 100%|...| 64.0M/64.0M": a bar with its total


def test_sign_prompts_for_the_private_key_passphrase(tmp_path: Path, disk: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "signer.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(TYPED.encode())))
    child = spawn("sign", disk, "--key", "signer.key", "--cert-uuid",
                  "0b6c1c6e-5a3a-4c1e-9d3f-2f5b1a7c9e11", "--properties-out", "sig.json",
                  cwd=tmp_path)
    child.expect("passphrase for signer.key: ")
    child.sendline(TYPED)
    code, shown = finish(child)
    assert code == 0, shown
    assert TYPED not in shown
    assert "img_signature" in (tmp_path / "sig.json").read_text()


def test_passphrase_file_is_read_exactly_for_luks_and_for_the_signing_key(
        tmp_path: Path, disk: Path, cryptsetup: str) -> None:
    """One rule for every passphrase file: its bytes exactly, as cryptsetup's --key-file."""
    with_newline = secret_file(tmp_path, "nl", TYPED.encode() + b"\n")
    imgcrypt("encrypt", disk, tmp_path / "t.luks", "--passphrase-file", with_newline,
             "--iterations", "1000", check=True)
    assert test_passphrase(cryptsetup, tmp_path / "t.luks", with_newline) == 0
    exact = secret_file(tmp_path, "exact", TYPED.encode())
    assert test_passphrase(cryptsetup, tmp_path / "t.luks", exact) != 0

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "signer.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(TYPED.encode())))
    base = ["sign", disk, "--key", tmp_path / "signer.key", "--cert-uuid",
            "0b6c1c6e-5a3a-4c1e-9d3f-2f5b1a7c9e11"]
    assert imgcrypt(*base, "--key-passphrase-file", exact).returncode == 0
    proc = imgcrypt(*base, "--key-passphrase-file", with_newline)
    assert proc.returncode == 4
    assert "ends in a newline" in proc.stderr.decode()
    # --key-file is cryptsetup's name for the same thing.
    proc = imgcrypt("decrypt", tmp_path / "t.luks", tmp_path / "t.raw", "--key-file",
                    with_newline)
    assert proc.returncode == 0, proc.stderr


def test_rekey_prompts_for_the_current_and_twice_for_the_new(
        tmp_path: Path, disk: Path, cryptsetup: str) -> None:
    pw = secret_file(tmp_path, "pw", TYPED.encode())
    imgcrypt("encrypt", disk, tmp_path / "t.luks", "--passphrase-file", pw, "--iterations",
             "1000", check=True)
    child = spawn("rekey", "t.luks", "--change", "--iterations", "1000", cwd=tmp_path)
    child.expect("Current passphrase: ")
    child.sendline(TYPED)
    child.expect("New passphrase: ")
    child.sendline("a new one")
    child.expect("Verify passphrase: ")
    child.sendline("a new one")
    code, shown = finish(child)
    assert code == 0, shown
    assert test_passphrase(cryptsetup, tmp_path / "t.luks", pw) != 0
    new = secret_file(tmp_path, "new", b"a new one")
    assert test_passphrase(cryptsetup, tmp_path / "t.luks", new) == 0


def test_ctrl_c_on_the_terminal_during_encrypt_with_a_new_key(tmp_path: Path) -> None:
    """Typed Ctrl-C while the progress bar runs: exit 130, no target, and no orphan key."""
    with large_source("tty") as src:
        child = spawn("encrypt", src, "t.luks", "--new-key", "--keystore", "keys",
                      "--iterations", "1000", cwd=tmp_path)
        child.expect("encrypt: +[0-9]+%")  # the progress bar is running
        child.sendintr()
        code, shown = finish(child)
        assert (code, "interrupted" in shown) == (130, True), shown
        assert not (tmp_path / "t.luks").exists()
        assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []
        listed = imgcrypt("keys", "list", "--json", "--keystore", tmp_path / "keys", check=True)
        assert b'"secrets": []' in listed.stdout

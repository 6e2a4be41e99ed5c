"""The command line as a person meets it: help, progress on a terminal, Ctrl-C."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.util import IMGCRYPT, imgcrypt, interrupt_once_writing, large_source, secret_file

COMMANDS = ["encrypt", "decrypt", "inspect", "rekey", "sign", "verify", "keys", "properties"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    proc = imgcrypt(command, "--help")
    assert proc.returncode == 0
    text = proc.stdout.decode()
    assert f"usage: imgcrypt {command}" in text and "example" in text


def test_top_level_help_lists_commands_and_exit_codes() -> None:
    text = imgcrypt("--help", check=True).stdout.decode()
    for command in COMMANDS:
        assert command in text
    assert "130 interrupted" in text
    assert imgcrypt("--version", check=True).stdout.decode().startswith("imgcrypt ")


def run_with_tty_stderr(args: list[str], timeout: float = 120) -> tuple[int, bytes]:
    """Run with stderr on a pseudo-terminal (stdout captured apart) and collect what it shows."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            shown += data
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.stdout is not None
    proc.stdout.read()
    return proc.wait(timeout=10), shown


def test_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    src = tmp_path / "big.raw"
    with open(src, "wb") as f:
        f.truncate(256 << 20)
    pw = secret_file(tmp_path, "pw", b"progress")
    code, shown = run_with_tty_stderr([*IMGCRYPT, "encrypt", str(src), str(tmp_path / "a.luks"),
                                       "--passphrase-file", str(pw), "--iterations", "1000"])
    assert code == 0
    assert b"encrypt" in shown and b"B/s" in shown and b"256M" in shown
    code, shown = run_with_tty_stderr([*IMGCRYPT, "encrypt", str(src), str(tmp_path / "b.luks"),
                                       "--passphrase-file", str(pw), "--iterations", "1000",
                                       "--no-progress"])
    assert code == 0 and b"B/s" not in shown
    # Not a terminal: nothing on stderr at all.
    proc = imgcrypt("decrypt", tmp_path / "a.luks", tmp_path / "a.raw", "--passphrase-file", pw)
    assert proc.returncode == 0 and b"B/s" not in proc.stderr


def test_ctrl_c_during_encrypt_leaves_nothing(tmp_path: Path) -> None:
    with large_source("sigint") as src:
        pw = secret_file(tmp_path, "pw", b"interrupt me")
        target = tmp_path / "out.luks"
        proc = subprocess.Popen([*IMGCRYPT, "encrypt", str(src), str(target),
                                 "--passphrase-file", str(pw), "--iterations", "1000"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err = interrupt_once_writing(proc, tmp_path)
        assert proc.returncode == 130
        assert err == b"imgcrypt: error: interrupted\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pw"]


def test_public_api_names_resolve() -> None:
    import imgcrypt

    for name in imgcrypt.__all__:
        assert getattr(imgcrypt, name) is not None


def test_no_arguments_prints_the_usage() -> None:
    proc = imgcrypt()
    assert proc.returncode == 2
    text = proc.stderr.decode()
    assert text.startswith("usage: imgcrypt") and "encrypt" in text and "properties" in text


def test_missing_target_directory_names_the_target(tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    src.write_bytes(b"\0" * 4096)
    pw = secret_file(tmp_path, "pw", b"pw")
    target = tmp_path / "no-such-dir" / "t.luks"
    proc = imgcrypt("encrypt", src, target, "--passphrase-file", pw, "--iterations", "1000")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and str(target) in err and "imgcrypt-tmp" not in err


def test_missing_passphrase_file_is_a_usage_error(tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    src.write_bytes(b"\0" * 4096)
    proc = imgcrypt("encrypt", src, tmp_path / "t.luks", "--passphrase-file", tmp_path / "nope")
    assert proc.returncode == 2
    assert str(tmp_path / "nope") in proc.stderr.decode()
    assert not (tmp_path / "t.luks").exists()


def test_decrypt_to_a_closed_pipe_exits_quietly_with_141(tmp_path: Path) -> None:
    src = tmp_path / "disk.raw"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
    pw = secret_file(tmp_path, "pw", b"pw")
    imgcrypt("encrypt", src, tmp_path / "t.luks", "--passphrase-file", pw, "--iterations",
             "1000", check=True)
    line = (f"{' '.join(IMGCRYPT)} decrypt {tmp_path / 't.luks'} - --passphrase-file {pw} "
            "| head -c 10 > /dev/null; echo ${PIPESTATUS[0]}")
    proc = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "141"
    assert proc.stderr == ""

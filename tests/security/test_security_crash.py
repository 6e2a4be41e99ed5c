"""Crash safety: SIGKILL at every commit point and at random times; full disks.

The quick version of the kill-point runs of ``make fuzz`` (scripts/fuzz.py); the invariants are
those of :mod:`fuzz.crash`: source unchanged, output absent or complete and correct, a re-keyed
image opens with the old or the new passphrase (imgcrypt and cryptsetup agree), a keystore
never holds a half-written secret.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuzz import crash
from tests.helpers.util import imgcrypt, secret_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> crash.Campaign:
    from tests.conftest import require_tool

    cryptsetup = require_tool("cryptsetup")
    workspace = crash.Workspace(tmp_path_factory.mktemp("kill"), size=4 << 20,
                                cryptsetup=cryptsetup, seed=7)
    return crash.run_campaign(workspace, crash.KINDS, 2, rng=random.Random(7))


def test_no_kill_point_breaks_an_invariant(campaign: crash.Campaign) -> None:
    failures = campaign.failures()
    assert not failures, "\n".join(f"{o.kind} {o.point}: {o.problems}" for o in failures)


def test_enough_kill_points_were_tried(campaign: crash.Campaign) -> None:
    summary = campaign.summary()
    total = sum(int(entry["kill_points"]) for entry in summary.values())  # type: ignore[call-overload]
    killed = sum(int(entry["killed"]) for entry in summary.values())  # type: ignore[call-overload]
    print(f"kill points: {total} tried, {killed} killed: {summary}")
    assert total >= 30 and killed >= 30
    assert set(summary) == set(crash.KINDS)


@pytest.mark.parametrize("kind", ["rekey", "rekey-luks2"])
def test_rekey_kills_hit_every_phase(campaign: crash.Campaign, kind: str) -> None:
    """Kills landed before the new keyslot, between add and remove, and after the remove."""
    states = {o.state for o in campaign.outcomes if o.kind == kind and o.killed}
    assert {"old", "old+new", "new"} <= states
    assert "neither" not in states


def test_outputs_are_absent_or_complete(campaign: crash.Campaign) -> None:
    for kind in ("encrypt", "decrypt"):
        states = {o.state for o in campaign.outcomes if o.kind == kind and o.killed}
        assert states <= {"absent", "complete"}
        assert "absent" in states


# -- disk full -----------------------------------------------------------------------------------


def _limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), not a fatal signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _run_limited(args: list[str], limit: int) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "imgcrypt", *args], capture_output=True,
                          env=env, timeout=300, preexec_fn=lambda: _limit_file_size(limit))


def _assert_clean_failure(proc: subprocess.CompletedProcess[bytes], target: Path,
                          code: int = 1) -> None:
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("imgcrypt: error: "), lines
    assert "Traceback" not in proc.stderr.decode()
    assert not target.exists()
    leftovers = [p.name for p in target.parent.iterdir()
                 if p.name.endswith((".imgcrypt-tmp", ".part"))]
    assert not leftovers


@pytest.fixture
def image(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(3 << 20))
    pw = secret_file(tmp_path, "pw", b"disk full passphrase")
    luks = tmp_path / "src.luks"
    imgcrypt("encrypt", src, luks, "--passphrase-file", pw, "--iterations", "1000", check=True)
    return {"src": src, "pw": pw, "luks": luks, "dir": tmp_path}


def test_file_size_limit_on_encrypt_and_decrypt(image: dict[str, Path]) -> None:
    out = image["dir"] / "out"
    out.mkdir()
    before = image["src"].read_bytes()
    proc = _run_limited(["encrypt", str(image["src"]), str(out / "x.luks"), "--passphrase-file",
                         str(image["pw"]), "--iterations", "1000"], 1 << 20)
    _assert_clean_failure(proc, out / "x.luks")
    proc = _run_limited(["decrypt", str(image["luks"]), str(out / "x.raw"), "--passphrase-file",
                         str(image["pw"])], 1 << 20)
    _assert_clean_failure(proc, out / "x.raw")
    assert image["src"].read_bytes() == before


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str) -> Iterator[Path]:
    directory.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                           str(directory)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_no_space_left_on_encrypt_decrypt_and_keystore(image: dict[str, Path]) -> None:
    with small_tmpfs(image["dir"] / "full", "2m") as full:
        # issue 23: a planned size beyond the free space is refused before writing (exit 3)
        proc = imgcrypt("encrypt", image["src"], full / "x.luks", "--passphrase-file",
                        image["pw"], "--iterations", "1000")
        _assert_clean_failure(proc, full / "x.luks", code=3)
        assert "file system has" in proc.stderr.decode()
        proc = imgcrypt("decrypt", image["luks"], full / "x.raw", "--passphrase-file",
                        image["pw"])
        _assert_clean_failure(proc, full / "x.raw", code=3)
        # a stream of unknown size still meets the full disk while writing
        proc = imgcrypt("encrypt", "-", full / "x.luks", "--source-format", "raw",
                        "--passphrase-file", image["pw"], "--iterations", "1000",
                        input=image["src"].read_bytes())
        _assert_clean_failure(proc, full / "x.luks")
        assert "No space left on device" in proc.stderr.decode()
        # Fill the file system, then ask the keystore on it for a new secret.
        store = full / "keystore"
        proc = imgcrypt("keys", "create", "--key-manager", "local", "--keystore", store,
                        "--type", "passphrase", "--json")
        assert proc.returncode == 0, proc.stderr
        existing = sorted(p.name for p in store.iterdir() if p.suffix == ".json")
        with open(full / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(bytes(512))
        proc = imgcrypt("keys", "create", "--key-manager", "local", "--keystore", store,
                        "--type", "passphrase", "--json")
        lines = proc.stderr.decode().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("imgcrypt: ")
        assert sorted(p.name for p in store.iterdir() if p.suffix == ".json") == existing
        assert not [p for p in store.iterdir() if p.name.endswith(".part")]

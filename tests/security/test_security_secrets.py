"""Secret hygiene: passphrases and key bytes never reach argv, environment, logs, errors, reprs.

Processes are watched from /proc while they run (imgcrypt and every process it starts); logs
are captured at DEBUG from every logger; every imgcrypt object that holds a secret has its repr
and str checked; temporary secret files are checked for mode 0600 and for being gone.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from fuzz import seeds
from imgcrypt.cli.main import main as cli_main
from imgcrypt.errors import WrongPassphraseError
from imgcrypt.luks.options import FormatOptions
from imgcrypt.luks.transfer import encrypt_stream
from imgcrypt.luks.unlock import unlock_stream
from tests.helpers.util import secret_file

ROOT = Path(__file__).resolve().parents[2]
PASS = b"Correct-Horse-Battery-Staple-\xc3\xa9"
NEW = b"Another-Secret-Passphrase-42"


def forms(secret: bytes) -> list[bytes]:
    """The ways a secret could leak: raw, hex (both cases), base64, Python repr."""
    out = [secret, secret.hex().encode(), secret.hex().upper().encode(),
           base64.b64encode(secret), repr(secret)[2:-1].encode()]
    if len(secret) >= 16:
        out += [secret[:16], secret[-16:]]
    return [f for f in out if len(f) >= 8]


def assert_absent(haystack: bytes | str, secrets: Iterable[bytes], where: str) -> None:
    data = haystack.encode("utf-8", "surrogateescape") if isinstance(haystack, str) else haystack
    for secret in secrets:
        for form in forms(secret):
            assert form not in data, f"a secret appears in {where}"


def master_key(image: Path, passphrase: bytes) -> bytes:
    with open(image, "rb") as f:
        return unlock_stream(f, passphrase).master_key


# -- /proc of every process while it runs --------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    found = {pid}
    frontier = [pid]
    while frontier:
        current = frontier.pop()
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    for child in f.read().split():
                        if int(child) not in found:
                            found.add(int(child))
                            frontier.append(int(child))
        except OSError:
            continue
    return found


def watch(args: list[str], cwd: Path) -> tuple[int, list[bytes], set[int]]:
    """Run the CLI; snapshot cmdline and environ of it and its children until it exits."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(cwd)}
    proc = subprocess.Popen([sys.executable, "-m", "imgcrypt", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    snapshots: list[bytes] = []
    seen: set[int] = set()
    while proc.poll() is None:
        for pid in _descendants(proc.pid):
            seen.add(pid)
            for name in ("cmdline", "environ"):
                try:
                    with open(f"/proc/{pid}/{name}", "rb") as f:
                        snapshots.append(f.read())
                except OSError:
                    pass
        time.sleep(0.002)
    out, err = proc.communicate()
    snapshots += [out, err]
    return proc.returncode, snapshots, seen


@pytest.fixture
def work(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "disk.raw"
    src.write_bytes(os.urandom(12 << 20))
    return {"dir": tmp_path, "src": src, "pw": secret_file(tmp_path, "pw", PASS),
            "new": secret_file(tmp_path, "new", NEW)}


def test_proc_cmdline_and_environ_of_encrypt_decrypt_rekey(work: dict[str, Path]) -> None:
    d = work["dir"]
    image = d / "disk.luks"
    runs = [
        ["encrypt", str(work["src"]), str(image), "--passphrase-file", str(work["pw"]),
         "--iterations", "1000"],
        ["decrypt", str(image), str(d / "plain.raw"), "--passphrase-file", str(work["pw"])],
        ["rekey", str(image), "--passphrase-file", str(work["pw"]), "--add",
         "--new-passphrase-file", str(work["new"]), "--iterations", "1000"],
        ["inspect", str(image), "--json"],
    ]
    all_snapshots: list[bytes] = []
    for args in runs:
        code, snapshots, _ = watch(args, d)
        assert code == 0, snapshots[-1]
        assert len(snapshots) > 2, "the process was never observed running"
        all_snapshots += snapshots
    key = master_key(image, PASS)
    for snapshot in all_snapshots:
        assert_absent(snapshot, [PASS, NEW, key], "/proc cmdline/environ or output")


def test_proc_with_key_manager_secret(work: dict[str, Path]) -> None:
    """--new-key: the passphrase is the hex of a key the keystore made; it stays inside."""
    from imgcrypt.keys.local import LocalKeyStore
    from imgcrypt.keys.rules import passphrase_for

    d = work["dir"]
    image = d / "disk.luks"
    store = d / "keystore"
    code, snapshots, _ = watch(["encrypt", str(work["src"]), str(image), "--new-key",
                                "--key-manager", "local", "--keystore", str(store),
                                "--iterations", "1000", "--json"], d)
    assert code == 0, snapshots[-1]
    (info,) = LocalKeyStore(store).list()
    assert info.secret_id is not None
    secret = LocalKeyStore(store).get(info.secret_id)
    passphrase = passphrase_for(secret)
    key = master_key(image, passphrase)
    for snapshot in snapshots:
        assert_absent(snapshot, [passphrase, secret.payload_bytes, key], "/proc or output")
    for path in store.iterdir():
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path.name} has mode {mode:o}"
    assert stat.S_IMODE(store.stat().st_mode) & 0o077 == 0


# -- logs at every level, errors, output -------------------------------------------------------


def test_logs_errors_and_output_at_debug(work: dict[str, Path], caplog: pytest.LogCaptureFixture,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.DEBUG)
    saved = {name: logging.getLogger(name).level for name in logging.root.manager.loggerDict}
    for name in saved:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        _run_everything_at_debug(work, caplog, capsys)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _run_everything_at_debug(work: dict[str, Path], caplog: pytest.LogCaptureFixture,
                             capsys: pytest.CaptureFixture[str]) -> None:
    d = work["dir"]
    image = d / "disk.luks"
    bad = secret_file(d, "bad", b"Wrong-Passphrase-Value-123")
    codes = [
        cli_main(["encrypt", str(work["src"]), str(image), "--passphrase-file", str(work["pw"]),
                  "--iterations", "1000"]),
        cli_main(["decrypt", str(image), str(d / "plain.raw"), "--passphrase-file",
                  str(work["pw"])]),
        cli_main(["rekey", str(image), "--passphrase-file", str(work["pw"]), "--change",
                  "--new-passphrase-file", str(work["new"]), "--iterations", "1000"]),
        cli_main(["decrypt", str(image), str(d / "again.raw"), "--passphrase-file", str(bad)]),
        cli_main(["rekey", str(image), "--passphrase-file", str(work["pw"]), "--add",
                  "--new-passphrase-file", str(bad), "--iterations", "1000"]),
    ]
    assert codes == [0, 0, 0, 4, 4]
    key = master_key(image, NEW)
    captured = capsys.readouterr()
    secrets = [PASS, NEW, b"Wrong-Passphrase-Value-123", key]
    assert_absent(caplog.text, secrets, "log records")
    for record in caplog.records:
        assert_absent(repr(record.args) + record.getMessage(), secrets, "a log record")
    assert_absent(captured.out + captured.err, secrets, "command output")


def test_exception_messages_and_reprs() -> None:
    image = seeds.luks1_region()
    with pytest.raises(WrongPassphraseError) as info:
        unlock_stream(io.BytesIO(image), b"Wrong-Passphrase-Value-123")
    text = str(info.value) + repr(info.value) + repr(info.value.args)
    assert_absent(text, [b"Wrong-Passphrase-Value-123"], "the exception")

    opened = unlock_stream(io.BytesIO(image), seeds.PASSPHRASE)
    secrets = [seeds.PASSPHRASE, opened.master_key]
    objects: list[object] = [opened, opened.header, opened.cipher(), *opened.header.keyslots,
                             opened.header.describe()]  # type: ignore[attr-defined]
    from imgcrypt.crypto.kdf import Argon2, Pbkdf2

    objects += [Pbkdf2("sha256", 1000, opened.master_key), Argon2("argon2id", 1, 64, 1,
                                                                 opened.master_key)]
    v2 = unlock_stream(io.BytesIO(seeds.luks2_region()), seeds.PASSPHRASE)
    secrets.append(v2.master_key)
    objects += [v2, v2.header, v2.cipher(), v2.header.describe(),
                *v2.header.metadata.keyslots,  # type: ignore[attr-defined]
                *v2.header.metadata.digests,  # type: ignore[attr-defined]
                v2.header.binary]  # type: ignore[attr-defined]
    from imgcrypt.luks.luks1 import Luks1Header
    from imgcrypt.luks.options import new_region

    region = new_region(FormatOptions(iterations=1000), opened.master_key * 2, seeds.PASSPHRASE)
    header = Luks1Header.parse(region)
    update = header.add_keyslot(region, opened.master_key * 2, b"Third-Passphrase-99",
                                Pbkdf2("sha256", 1000, b""))
    objects += [update, opened.header.remove_keyslot(opened.region, 0)]
    secrets.append(b"Third-Passphrase-99")
    from imgcrypt.keys.local import LocalKeyStore
    from imgcrypt.keys.rules import passphrase_for
    from imgcrypt.keys.secret import PASSPHRASE, Secret

    secret = Secret(opened.master_key, algorithm="AES", bit_length=256, mode="XTS")
    text_secret = Secret("Text-Secret-Payload-77", secret_type=PASSPHRASE)
    objects += [secret, text_secret, LocalKeyStore("/nonexistent")]
    secrets += [passphrase_for(secret), b"Text-Secret-Payload-77"]
    for obj in objects:
        assert_absent(repr(obj) + str(obj), secrets, f"repr of {type(obj).__name__}")


def test_keystore_temporary_file_is_private_and_removed(tmp_path: Path) -> None:
    """Killed right before the rename, the keystore's temporary file is 0600; a normal run
    leaves none, and imgcrypt writes nothing to TMPDIR."""
    workspace_dir = tmp_path / "ws"
    workspace_dir.mkdir()
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    store = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmpdir))
    args = ["keys", "create", "--key-manager", "local", "--keystore", str(store), "--type",
            "passphrase"]
    log = tmp_path / "events"
    subprocess.run([sys.executable, "-m", "fuzz.killhook", "0", str(log), "--", *args],
                   env=env, check=True, capture_output=True, cwd=workspace_dir)
    events = log.read_text().splitlines()
    assert [p for p in store.iterdir() if p.name.endswith(".part")] == []
    before_replace = next(int(line.split()[0]) for line in events if "replace:before" in line)
    proc = subprocess.run([sys.executable, "-m", "fuzz.killhook", str(before_replace), "-",
                           "--", *args], env=env, capture_output=True, cwd=workspace_dir)
    assert proc.returncode == -9
    parts = [p for p in store.iterdir() if p.name.endswith(".part")]
    assert len(parts) == 1
    assert stat.S_IMODE(parts[0].stat().st_mode) == 0o600
    assert list(tmpdir.iterdir()) == []


def test_encrypt_with_stream_api_leaves_no_secret_in_output_header(tmp_path: Path) -> None:
    """The image holds the key only inside the encrypted keyslot: no plain copy anywhere."""
    out = io.BytesIO()
    key = os.urandom(64)
    encrypt_stream(io.BytesIO(bytes(1 << 16)), out, PASS, FormatOptions(iterations=1000),
                   master_key=key)
    assert_absent(out.getvalue(), [key, PASS], "the encrypted image")


# -- qemu-img: started by imgcrypt, watched from /proc -----------------------------------------


def test_qemu_img_gets_the_passphrase_only_through_a_private_file(tmp_path: Path) -> None:
    """qemu.luks.encrypt and qemu.luks.decrypt run qemu-img: its argv and environment never
    hold the passphrase; the secret file is 0600 in a 0700 directory while qemu-img runs and is
    gone afterwards."""
    from tests.conftest import require_tool

    require_tool("qemu-img")
    import threading

    from imgcrypt.luks.options import FormatOptions
    from imgcrypt.qemu import luks as qemu_luks

    source = tmp_path / "guest.raw"
    source.write_bytes(os.urandom(8 << 20))
    observed: list[bytes] = []
    secret_files: dict[str, int] = {}
    done = threading.Event()

    def watch_children() -> None:
        me = os.getpid()
        while not done.is_set():
            for pid in _descendants(me) - {me}:
                for name in ("cmdline", "environ"):
                    try:
                        with open(f"/proc/{pid}/{name}", "rb") as f:
                            data = f.read()
                    except OSError:
                        continue
                    observed.append(data)
                    if name == "cmdline" and b"secret,id=s0,file=" in data:
                        path = data.split(b"secret,id=s0,file=")[1].split(b"\0")[0].decode()
                        try:
                            secret_files[path] = (stat.S_IMODE(os.stat(path).st_mode) << 12
                                                  | stat.S_IMODE(os.stat(
                                                      os.path.dirname(path)).st_mode))
                        except OSError:
                            pass
            time.sleep(0.001)

    watcher = threading.Thread(target=watch_children)
    watcher.start()
    try:
        qcow2 = tmp_path / "guest.qcow2"
        qemu_luks.encrypt(str(source), str(qcow2), PASS, FormatOptions(iter_time_ms=100),
                          source_format="raw")
        qemu_luks.decrypt(str(qcow2), PASS, str(tmp_path / "back.raw"))
    finally:
        done.set()
        watcher.join()
    assert (tmp_path / "back.raw").read_bytes() == source.read_bytes()
    assert any(b"qemu-img" in o for o in observed), "qemu-img was never observed running"
    for snapshot in observed:
        assert_absent(snapshot, [PASS], "qemu-img's /proc cmdline/environ")
    assert secret_files, "no secret file was observed while qemu-img ran"
    for path, modes in secret_files.items():
        assert modes >> 12 == 0o600 and modes & 0o7777 == 0o700, f"{path}: {modes:o}"
        assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))


def test_proc_of_encrypt_from_qcow2(work: dict[str, Path]) -> None:
    """encrypt with a qcow2 source runs qemu-img convert; nothing secret reaches it."""
    from tests.conftest import require_tool

    require_tool("qemu-img")
    d = work["dir"]
    qcow2 = d / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(work["src"]),
                    str(qcow2)], check=True, capture_output=True)
    for _attempt in range(3):
        (d / "q.luks").unlink(missing_ok=True)
        code, snapshots, pids = watch(["encrypt", str(qcow2), str(d / "q.luks"),
                                       "--passphrase-file", str(work["pw"]), "--iterations",
                                       "1000"], d)
        assert code == 0, snapshots[-1]
        if len(pids) > 1:
            break
    assert len(pids) > 1, "qemu-img was never observed as a child"
    key = master_key(d / "q.luks", PASS)
    for snapshot in snapshots:
        assert_absent(snapshot, [PASS, key], "/proc of imgcrypt and qemu-img")


@pytest.mark.barbican
def test_barbican_client_logs_no_secret_at_debug(barbican: object,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """barbicanclient and keystoneauth log HTTP traffic at DEBUG: with every logger at DEBUG,
    storing and fetching a secret through imgcrypt's Barbican adapter logs no payload."""
    from imgcrypt.keys.barbican import BarbicanKeyManager
    from imgcrypt.keys.rules import passphrase_for
    from imgcrypt.keys.secret import PASSPHRASE, Secret

    caplog.set_level(logging.DEBUG)
    names = ["", "barbicanclient", "keystoneauth", "urllib3", "requests", "imgcrypt"]
    saved = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        manager = BarbicanKeyManager.standalone(barbican.endpoint,  # type: ignore[attr-defined]
                                                barbican.project_id)  # type: ignore[attr-defined]
        key = os.urandom(64)
        key_id = manager.store(Secret(key, algorithm="AES", bit_length=512, mode="XTS"))
        text_id = manager.store(Secret("Barbican-Text-Secret-31", secret_type=PASSPHRASE))
        fetched = manager.get(key_id)
        assert fetched.payload_bytes == key
        assert manager.get(text_id).payload_bytes == b"Barbican-Text-Secret-31"
        secrets = [key, passphrase_for(fetched), b"Barbican-Text-Secret-31"]
        assert_absent(caplog.text, secrets, "DEBUG logs of the Barbican client")
        for record in caplog.records:
            assert_absent(record.getMessage(), secrets, "a Barbican client log record")
        assert_absent(repr(manager) + repr(fetched), secrets, "reprs")
        manager.delete(key_id, force=True)
        manager.delete(text_id, force=True)
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)

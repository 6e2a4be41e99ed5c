"""LocalKeyStore: permissions, atomic writes, corrupted and foreign files; `imgcrypt keys` on it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgcrypt.cli.main import main
from imgcrypt.errors import (
    FormatError,
    KeyManagerError,
    SecretInUseError,
    SecretNotFoundError,
    UsageError,
)
from imgcrypt.keys.local import LocalKeyStore
from imgcrypt.keys.manager import Consumer, KeyManager, KeyOrder
from imgcrypt.keys.rules import passphrase_for
from imgcrypt.keys.secret import SECRET_TYPES, Secret

ROOT = Path(__file__).resolve().parents[2]
CONSUMER = Consumer("glance", "image", "11111111-2222-3333-4444-555555555555")


@pytest.fixture
def store(tmp_path: Path) -> LocalKeyStore:
    return LocalKeyStore(tmp_path / "keys")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_is_a_key_manager(store: LocalKeyStore) -> None:
    assert isinstance(store, KeyManager)
    assert store.supports_consumers


def test_directory_and_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0)  # the most permissive umask must not leak into the keystore
    try:
        store = LocalKeyStore(tmp_path / "a" / "keys")
        key_id = store.create_key(KeyOrder())
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "a" / "keys") == 0o700
    assert mode_of(tmp_path / "a" / "keys" / f"{key_id}.json") == 0o600
    assert sorted(p.name for p in (tmp_path / "a" / "keys").iterdir()) == [
        ".lock", f"{key_id}.json"]


def test_round_trip_and_uuid_ids(store: LocalKeyStore) -> None:
    sym = store.create_key(KeyOrder(name="vm1"))
    phrase = store.create_key(KeyOrder(secret_type="passphrase", mode=None))
    assert len(sym) == 36 and sym.count("-") == 4
    secret = store.get(sym)
    assert (secret.secret_id, secret.name, secret.secret_type, secret.algorithm,
            secret.bit_length, secret.mode) == (sym, "vm1", "symmetric", "AES", 512, "XTS")
    assert len(secret.payload_bytes) == 64
    assert passphrase_for(store.get(phrase)) == store.get(phrase).payload_bytes
    assert [i.secret_id for i in store.list()] == sorted([sym, phrase])
    assert store.describe(sym).created is not None
    assert store.get(sym.upper()).secret_id == sym


FIXTURE_OK = [HealthCheck.function_scoped_fixture]


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    payload=st.one_of(st.binary(min_size=1, max_size=200), st.text(min_size=1, max_size=50)),
    secret_type=st.sampled_from(SECRET_TYPES),
    name=st.one_of(st.none(), st.text(max_size=30)),
    bits=st.one_of(st.none(), st.integers(min_value=1, max_value=4096)),
    mode=st.one_of(st.none(), st.sampled_from(["XTS", "CBC"])),
)
def test_store_get_round_trip(store: LocalKeyStore, payload: bytes | str, secret_type: str,
                              name: str | None, bits: int | None, mode: str | None) -> None:
    secret = Secret(payload=payload, secret_type=secret_type, algorithm="AES", bit_length=bits,
                    mode=mode, name=name)
    key_id = store.store(secret)
    back = store.get(key_id)
    assert back == secret.with_id(key_id)
    assert type(back.payload) is type(payload)


def test_not_found_and_bad_ids(store: LocalKeyStore) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(SecretNotFoundError):
        store.get(missing)
    store.create_key(KeyOrder())
    with pytest.raises(SecretNotFoundError):
        store.get(missing)
    with pytest.raises(SecretNotFoundError):
        store.delete(missing)
    for bad in ("../../etc/passwd", "x", "", "0" * 5000):
        with pytest.raises(UsageError):
            store.get(bad)


def test_consumers_block_deletion(store: LocalKeyStore) -> None:
    key_id = store.create_key(KeyOrder())
    store.add_consumer(key_id, CONSUMER)
    store.add_consumer(key_id, CONSUMER)  # idempotent
    assert store.list_consumers(key_id) == [CONSUMER]
    with pytest.raises(SecretInUseError) as info:
        store.delete(key_id)
    assert info.value.exit_code == 5
    store.get(key_id)
    store.remove_consumer(key_id, CONSUMER)
    store.delete(key_id)
    with pytest.raises(SecretNotFoundError):
        store.get(key_id)
    other = store.create_key(KeyOrder())
    store.add_consumer(other, CONSUMER)
    store.delete(other, force=True)
    assert store.list() == []


def test_atomic_write_keeps_the_old_file_on_failure(store: LocalKeyStore,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    key_id = store.create_key(KeyOrder())
    path = store.directory / f"{key_id}.json"
    before = path.read_bytes()

    # A full disk or an I/O error at fsync time cannot be produced on demand here: inject it.
    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        store.add_consumer(key_id, CONSUMER)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in store.directory.iterdir()) == [".lock", f"{key_id}.json"]
    assert store.list_consumers(key_id) == []


def test_corrupted_file(store: LocalKeyStore) -> None:
    key_id = store.create_key(KeyOrder())
    path = store.directory / f"{key_id}.json"
    good = path.read_bytes()
    for damage in (good[: len(good) // 2], b"\xff\xfe", b"", b"[1, 2]", b"{}"):
        path.write_bytes(damage)
        with pytest.raises(FormatError) as info:
            store.get(key_id)
        assert info.value.exit_code == 3
        with pytest.raises(FormatError):
            store.list()
    document = json.loads(good)
    for field, value in (("payload", "!!!"), ("secret_type", "weird"), ("bit_length", -1),
                         ("secret_id", "00000000-0000-4000-8000-000000000000"),
                         ("version", 99), ("consumers", [{"service": 1}]),
                         ("payload_is_text", True)):
        changed = dict(document, **{field: value})
        if field == "payload_is_text":
            changed["payload"] = "/w=="  # 0xff is not UTF-8
        path.write_text(json.dumps(changed))
        with pytest.raises(FormatError):
            store.get(key_id)


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(garbage=st.binary(max_size=300))
def test_arbitrary_file_contents_give_typed_errors(store: LocalKeyStore, garbage: bytes) -> None:
    key_id = "00000000-0000-4000-8000-000000000001"
    store.directory.mkdir(mode=0o700, exist_ok=True)
    path = store.directory / f"{key_id}.json"
    path.write_bytes(garbage)
    os.chmod(path, 0o600)
    try:
        store.get(key_id)
    except FormatError:
        pass


def test_foreign_files(store: LocalKeyStore, tmp_path: Path) -> None:
    key_id = store.create_key(KeyOrder())
    # Files that are not named like a secret are not ours and are left alone by list().
    (store.directory / "README.txt").write_text("hello")
    (store.directory / "notes.json").write_text("{}")
    assert [i.secret_id for i in store.list()] == [key_id]
    # A secret-named file in someone else's format is refused.
    foreign_id = "00000000-0000-4000-8000-000000000002"
    foreign = store.directory / f"{foreign_id}.json"
    foreign.write_text(json.dumps({"format": "other-tool", "key": "abc"}))
    os.chmod(foreign, 0o600)
    with pytest.raises(FormatError, match="not an imgcrypt keystore file"):
        store.get(foreign_id)
    foreign.unlink()
    # A symlink (even to a valid secret file) and a directory are refused.
    target = tmp_path / "elsewhere.json"
    target.write_bytes((store.directory / f"{key_id}.json").read_bytes())
    os.chmod(target, 0o600)
    foreign.symlink_to(target)
    with pytest.raises(FormatError):
        store.get(foreign_id)
    foreign.unlink()
    foreign.mkdir()
    with pytest.raises(FormatError):
        store.get(foreign_id)
    foreign.rmdir()
    # An oversized file is not read whole.
    foreign.write_bytes(b" " * (2 << 20))
    os.chmod(foreign, 0o600)
    with pytest.raises(FormatError, match="larger"):
        store.get(foreign_id)


def test_loose_permissions_are_refused(store: LocalKeyStore) -> None:
    key_id = store.create_key(KeyOrder())
    path = store.directory / f"{key_id}.json"
    os.chmod(path, 0o644)
    with pytest.raises(KeyManagerError, match="other users") as loose_file:
        store.get(key_id)
    os.chmod(path, 0o600)
    os.chmod(store.directory, 0o755)
    with pytest.raises(KeyManagerError, match="chmod 700") as loose_directory:
        store.get(key_id)
    # One fault, one exit code: a keystore that is not private, file or directory.
    assert loose_file.value.exit_code == loose_directory.value.exit_code == 5
    with pytest.raises(KeyManagerError):
        store.create_key(KeyOrder())
    os.chmod(store.directory, 0o700)
    store.get(key_id)


def test_default_directory_follows_the_user_data_dir(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    store = LocalKeyStore()
    assert store.directory == tmp_path / "data" / "imgcrypt" / "keys"
    key_id = store.create_key(KeyOrder())
    assert (tmp_path / "data" / "imgcrypt" / "keys" / f"{key_id}.json").exists()


# -- the command line, local keystore -------------------------------------------------------------


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imgcrypt", *argv], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120, check=False)


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    return env


def test_cli_keys_local(tmp_path: Path, cli_env: dict[str, str]) -> None:
    ks = str(tmp_path / "ks")
    created = run_cli("keys", "create", "--keystore", ks, "--name", "vm1", "--json", env=cli_env)
    assert created.returncode == 0, created.stderr
    key_id = json.loads(created.stdout)["key_id"]
    secret = LocalKeyStore(ks).get(key_id)

    shown = run_cli("keys", "show", key_id, "--keystore", ks, "--json", env=cli_env)
    assert shown.returncode == 0
    data = json.loads(shown.stdout)
    assert data["secret"]["bit_length"] == 512 and data["secret"]["mode"] == "XTS"
    assert "payload_base64" not in data and secret.payload_bytes.hex() not in shown.stdout
    human = run_cli("keys", "show", key_id, "--keystore", ks, env=cli_env)
    assert secret.payload_bytes.hex() not in human.stdout and key_id in human.stdout

    revealed = run_cli("keys", "show", key_id, "--keystore", ks, "--reveal", "--json",
                       env=cli_env)
    data = json.loads(revealed.stdout)
    assert data["luks_passphrase"] == secret.payload_bytes.hex()

    listed = run_cli("keys", "list", "--keystore", ks, env=cli_env)
    assert key_id in listed.stdout and "vm1" in listed.stdout

    LocalKeyStore(ks).add_consumer(key_id, CONSUMER)
    refused = run_cli("keys", "delete", key_id, "--keystore", ks, env=cli_env)
    assert refused.returncode == 5
    assert refused.stderr.startswith("imgcrypt: error: ") and refused.stderr.count("\n") == 1
    forced = run_cli("keys", "delete", key_id, "--keystore", ks, "--force", env=cli_env)
    assert forced.returncode == 0
    missing = run_cli("keys", "show", key_id, "--keystore", ks, env=cli_env)
    assert missing.returncode == 5
    bad = run_cli("keys", "show", "not-a-uuid", "--keystore", ks, env=cli_env)
    assert bad.returncode == 2


def test_cli_payload_file_and_passphrase(tmp_path: Path, cli_env: dict[str, str]) -> None:
    ks = str(tmp_path / "ks")
    keyfile = tmp_path / "pw"
    keyfile.write_bytes(b"correct horse")
    made = run_cli("keys", "create", "--keystore", ks, "--type", "passphrase",
                   "--payload-file", str(keyfile), "--json", env=cli_env)
    assert made.returncode == 0, made.stderr
    key_id = json.loads(made.stdout)["key_id"]
    assert passphrase_for(LocalKeyStore(ks).get(key_id)) == b"correct horse"
    assert "correct horse" not in made.stdout


def test_cli_config_file_picks_the_manager(tmp_path: Path, cli_env: dict[str, str]) -> None:
    config_dir = Path(cli_env["XDG_CONFIG_HOME"]) / "imgcrypt"
    config_dir.mkdir(parents=True)
    ks = tmp_path / "from-config"
    (config_dir / "imgcrypt.toml").write_text(f'[keys]\nkey_manager = "local"\nkeystore = "{ks}"\n')
    made = run_cli("keys", "create", "--json", env=cli_env)
    assert made.returncode == 0, made.stderr
    assert (ks / f"{json.loads(made.stdout)['key_id']}.json").exists()
    (config_dir / "imgcrypt.toml").write_text("[keys]\nnonsense = 1\n")
    assert run_cli("keys", "list", env=cli_env).returncode == 2


def test_cli_in_process_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "list", "--key-manager", "castellan"]) == 2
    assert "--castellan-config" in capsys.readouterr().err
    assert main(["keys", "list", "--key-manager", "barbican", "--project-id", "p"]) == 2
    assert main(["keys", "list", "--key-manager", "barbican",
                 "--barbican-endpoint", "http://127.0.0.1:1"]) == 2
    assert main(["keys", "list", "--key-manager", "castellan",
                 "--castellan-config", str(tmp_path / "missing.conf")]) == 2


def test_cli_json_before_or_after_the_action(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    ks = str(tmp_path / "ks")
    for argv in (["keys", "--json", "list", "--keystore", ks],
                 ["keys", "list", "--keystore", ks, "--json"]):
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out) == {"key_manager": "local", "secrets": []}
    assert main(["keys", "list", "--keystore", ks]) == 0
    assert capsys.readouterr().out == "no secrets\n"


def test_a_key_that_opens_image_files_is_deleted_only_with_force(
        store: LocalKeyStore, tmp_path: Path) -> None:
    """imgcrypt.keys.consumers: the consumer entries the local keystore keeps for image files,
    and the refusal to delete a key that still opens one (naming the files)."""
    from imgcrypt.errors import SecretInUseError
    from imgcrypt.keys.consumers import (
        consumer_name,
        file_consumer_for,
        unregister_file_consumer,
    )
    from imgcrypt.keys.lease import KeyLease
    from imgcrypt.keys.rules import delete_secret

    key_id = store.create_key(KeyOrder(secret_type="passphrase", mode=None))
    assert file_consumer_for(store, "-") is None  # stdout has no path to record
    for path in ("a.luks", str(tmp_path / "b.luks"), "-"):
        with KeyLease.existing(store, key_id) as lease:  # the one way a consumer is added
            lease.consume_as(file_consumer_for(store, path))
    names = sorted(consumer_name(c) for c in store.list_consumers(key_id))
    assert names == sorted([os.path.abspath("a.luks"), str(tmp_path / "b.luks")])
    with pytest.raises(SecretInUseError, match=r"still opens .*b\.luks"):
        delete_secret(store, key_id, force=False)
    unregister_file_consumer(store, key_id, "a.luks")
    assert [consumer_name(c) for c in store.list_consumers(key_id)] == [str(tmp_path / "b.luks")]
    delete_secret(store, key_id, force=True)
    assert store.list() == []
    other = Consumer("glance", "image", "0f3e")
    assert consumer_name(other) == "glance/image/0f3e"

"""End to end: a Barbican secret -> imgcrypt encrypt --key-id -> cryptsetup opens it.

The passphrase rule decides whether today's clouds can open our images: a symmetric secret's
LUKS passphrase is the lowercase hex of the key; a passphrase secret is used as is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgcrypt.keys.barbican import BarbicanKeyManager
from imgcrypt.keys.local import LocalKeyStore
from imgcrypt.keys.manager import KeyOrder
from imgcrypt.keys.secret import Secret
from tests.helpers.barbican_server import BarbicanServer

pytestmark = [pytest.mark.barbican, pytest.mark.tools]

ROOT = Path(__file__).resolve().parents[2]


def make_source(path: Path) -> None:
    path.write_bytes(os.urandom(1 << 20))


def encrypt(src: Path, dst: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(dst.parent / "config")
    return subprocess.run(
        [sys.executable, "-m", "imgcrypt", "encrypt", str(src), str(dst), *extra,
         "--iterations", "1000", "--json"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, check=False,
    )


def opens(cryptsetup: str, image: Path, key: bytes, keyfile: Path) -> bool:
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    try:
        result = subprocess.run(
            [cryptsetup, "open", "--test-passphrase", "--key-file", str(keyfile), str(image)],
            capture_output=True, timeout=120, check=False,
        )
    finally:
        keyfile.unlink()
    return result.returncode == 0


def barbican_args(server: BarbicanServer, key_id: str) -> list[str]:
    return ["--key-id", key_id, "--key-manager", "barbican",
            "--barbican-endpoint", server.endpoint, "--project-id", server.project_id]


def test_symmetric_secret_opens_with_hexlified_key(barbican: BarbicanServer, cryptsetup: str,
                                                  tmp_path: Path) -> None:
    manager = BarbicanKeyManager.standalone(barbican.endpoint, barbican.project_id)
    key_id = manager.create_key(KeyOrder())
    key = manager.get(key_id).payload_bytes
    src, dst = tmp_path / "disk.raw", tmp_path / "disk.luks"
    make_source(src)
    result = encrypt(src, dst, *barbican_args(barbican, key_id))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["key_id"] == key_id
    props = data["properties"]
    assert props["cinder_encryption_key_id"] == key_id
    assert props["os_encrypt_key_id"] == key_id
    assert props["os_encrypt_format"] == "LUKSv1"
    assert props["os_decrypt_size"] == str(1 << 20)
    keyfile = tmp_path / "keyfile"
    assert opens(cryptsetup, dst, key.hex().encode("ascii"), keyfile)
    assert not opens(cryptsetup, dst, key, keyfile)  # the raw key bytes are not the passphrase
    assert not keyfile.exists()


def test_passphrase_secret_opens_with_raw_passphrase(barbican: BarbicanServer, cryptsetup: str,
                                                    tmp_path: Path) -> None:
    manager = BarbicanKeyManager.standalone(barbican.endpoint, barbican.project_id)
    phrase = b"a passphrase somebody chose"
    key_id = manager.store(Secret(payload=phrase, secret_type="passphrase"))
    src, dst = tmp_path / "disk.raw", tmp_path / "disk.luks"
    make_source(src)
    result = encrypt(src, dst, *barbican_args(barbican, key_id))
    assert result.returncode == 0, result.stderr
    keyfile = tmp_path / "keyfile"
    assert opens(cryptsetup, dst, phrase, keyfile)
    assert not opens(cryptsetup, dst, phrase.hex().encode("ascii"), keyfile)


def test_new_key_in_local_keystore(cryptsetup: str, tmp_path: Path) -> None:
    src, dst = tmp_path / "disk.raw", tmp_path / "disk.luks"
    make_source(src)
    keystore = tmp_path / "ks"
    result = encrypt(src, dst, "--new-key", "--keystore", str(keystore))
    assert result.returncode == 0, result.stderr
    key_id = json.loads(result.stdout)["key_id"]
    key = LocalKeyStore(keystore).get(key_id).payload_bytes
    assert opens(cryptsetup, dst, key.hex().encode("ascii"), tmp_path / "keyfile")


def test_key_manager_errors_exit_5(barbican: BarbicanServer, tmp_path: Path) -> None:
    src, dst = tmp_path / "disk.raw", tmp_path / "disk.luks"
    make_source(src)
    missing = encrypt(src, dst, *barbican_args(barbican, "00000000-0000-4000-8000-00000000dead"))
    assert missing.returncode == 5, missing.stderr
    assert not dst.exists()

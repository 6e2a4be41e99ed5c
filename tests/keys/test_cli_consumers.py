"""The local keystore knows which images a key opens: no lock-out, no orphan keys."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.util import (
    IMGCRYPT,
    imgcrypt,
    interrupt_once_writing,
    large_source,
    secret_file,
    test_passphrase,
)


@pytest.fixture
def store(tmp_path: Path) -> list[str]:
    return ["--keystore", str(tmp_path / "keys")]


def keys_in(store: list[str]) -> list[str]:
    proc = imgcrypt("keys", "list", "--json", *store, check=True)
    return [s["key_id"] for s in json.loads(proc.stdout)["secrets"]]


def new_image(tmp_path: Path, store: list[str], name: str = "t.luks") -> str:
    src = tmp_path / "disk.raw"
    if not src.exists():
        src.write_bytes(os.urandom(1 << 20))
    proc = imgcrypt("encrypt", src, tmp_path / name, "--new-key", "--iterations", "1000",
                    "--json", *store, check=True)
    return str(json.loads(proc.stdout)["key_id"])


def test_keys_delete_refuses_a_key_an_image_needs_and_names_it(
        tmp_path: Path, store: list[str]) -> None:
    key_id = new_image(tmp_path, store)
    proc = imgcrypt("keys", "delete", key_id, *store)
    assert proc.returncode == 5
    err = proc.stderr.decode()
    assert str(tmp_path / "t.luks") in err and "--force" in err
    assert keys_in(store) == [key_id]
    # The image still opens with the key.
    assert imgcrypt("decrypt", tmp_path / "t.luks", tmp_path / "t.raw", "--key-id", key_id,
                    *store).returncode == 0
    shown = json.loads(imgcrypt("keys", "show", key_id, "--json", *store, check=True).stdout)
    assert shown["consumers"] == [{"service": "imgcrypt", "resource_type": "file",
                                   "resource_id": str(tmp_path / "t.luks")}]
    assert imgcrypt("keys", "delete", key_id, "--force", *store).returncode == 0
    assert keys_in(store) == []


def test_rekey_moves_the_consumer_to_the_new_key(
        tmp_path: Path, store: list[str], cryptsetup: str) -> None:
    old = new_image(tmp_path, store)
    new = json.loads(imgcrypt("keys", "create", "--json", *store, check=True).stdout)["key_id"]
    imgcrypt("rekey", tmp_path / "t.luks", "--key-id", old, "--change", "--new-key-id", new,
             "--iterations", "1000", *store, check=True)
    assert imgcrypt("keys", "delete", old, *store).returncode == 0  # no image needs it now
    assert imgcrypt("keys", "delete", new, *store).returncode == 5
    reveal = json.loads(imgcrypt("keys", "show", new, "--reveal", "--json", *store,
                                 check=True).stdout)
    keyfile = secret_file(tmp_path, "k", reveal["luks_passphrase"].encode())
    assert test_passphrase(cryptsetup, tmp_path / "t.luks", keyfile) == 0


def test_failed_encrypt_deletes_the_key_it_created(tmp_path: Path, store: list[str]) -> None:
    new_image(tmp_path, store)  # t.luks exists, with its key
    before = keys_in(store)
    # Target exists.
    proc = imgcrypt("encrypt", tmp_path / "disk.raw", tmp_path / "t.luks", "--new-key",
                    "--iterations", "1000", *store)
    assert proc.returncode == 2
    # Missing source.
    proc = imgcrypt("encrypt", tmp_path / "nothing.raw", tmp_path / "u.luks", "--new-key",
                    "--iterations", "1000", *store)
    assert proc.returncode != 0
    assert keys_in(store) == before


def test_ctrl_c_during_encrypt_deletes_the_new_key(tmp_path: Path, store: list[str]) -> None:
    with large_source("consumer") as src:
        proc = subprocess.Popen([*IMGCRYPT, "encrypt", str(src), str(tmp_path / "out.luks"),
                                 "--new-key", "--iterations", "1000", *store],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        interrupt_once_writing(proc, tmp_path)
        assert proc.returncode == 130
        assert keys_in(store) == []
        assert not (tmp_path / "out.luks").exists()


def test_encrypt_force_over_an_image_leaves_the_old_key_no_record_of_it(
        tmp_path: Path, store: list[str]) -> None:
    """The file another key opened is gone once ``encrypt --force`` replaces it: that key no
    longer opens anything there, so deleting it locks nobody out, and keys show says so."""
    first = new_image(tmp_path, store)
    src = tmp_path / "disk.raw"
    proc = imgcrypt("encrypt", src, tmp_path / "t.luks", "--new-key", "--iterations", "1000",
                    "--force", "--json", *store, check=True)
    second = str(json.loads(proc.stdout)["key_id"])
    shown = json.loads(imgcrypt("keys", "show", first, "--json", *store, check=True).stdout)
    assert shown["consumers"] == []
    assert imgcrypt("keys", "delete", first, *store).returncode == 0
    refused = imgcrypt("keys", "delete", second, *store)
    assert refused.returncode == 5 and str(tmp_path / "t.luks") in refused.stderr.decode()
    assert imgcrypt("decrypt", tmp_path / "t.luks", tmp_path / "t.raw", "--key-id", second,
                    *store).returncode == 0

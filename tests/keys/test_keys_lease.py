"""The key lease: the one place a key is obtained, its consumer registered, and both undone
when the work fails. Runs against the real local keystore; the only fault injected is a key
manager that refuses to delete, which a healthy keystore cannot be made to do on demand."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imgcrypt.cli.main import main
from imgcrypt.errors import FormatError, KeyManagerUnavailableError, UsageError
from imgcrypt.keys.consumers import file_consumer, image_consumer
from imgcrypt.keys.lease import LEFTOVER_NOTE, KeyLease, leftover_notes
from imgcrypt.keys.local import LocalKeyStore
from imgcrypt.keys.manager import KeyOrder
from imgcrypt.keys.rules import passphrase_for
from tests.helpers.util import imgcrypt


class Unreachable(LocalKeyStore):
    """A keystore that goes away after handing out a key: deletions fail."""

    def delete(self, key_id: str, *, force: bool = False) -> None:
        raise KeyManagerUnavailableError("the key manager went away")


def ids(store: LocalKeyStore) -> set[str]:
    return {s.secret_id for s in store.list()}


def test_a_new_key_outlives_its_lease_only_if_the_work_succeeds(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path / "ks")
    with KeyLease.new(store, KeyOrder()) as lease:
        lease.consume_as(file_consumer("a.luks"))
        assert lease.passphrase == passphrase_for(store.get(lease.key_id))
        assert store.list_consumers(lease.key_id) == []  # not before the work is done
    assert ids(store) == {lease.key_id}
    assert store.list_consumers(lease.key_id) == [file_consumer("a.luks")]
    assert lease.consumer_registered and lease.leftovers == ()
    assert lease.passphrase.decode() not in repr(lease)

    with pytest.raises(RuntimeError), KeyLease.new(store, KeyOrder()) as failed:
        failed.consume_as(image_consumer("img-1"))
        raise RuntimeError("the work failed")
    assert failed.created and failed.rolled_back and not failed.consumer_registered
    assert ids(store) == {lease.key_id}  # the failed run's key is gone


def test_an_existing_key_is_never_deleted(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path / "ks")
    key_id = store.create_key(KeyOrder())
    with pytest.raises(RuntimeError), KeyLease.existing(store, key_id) as lease:
        lease.consume_as(image_consumer("img-1"))
        raise RuntimeError("refused")
    assert ids(store) == {key_id} and store.list_consumers(key_id) == []
    assert not lease.created


def test_a_failed_rollback_is_recorded_and_noted_not_swallowed(tmp_path: Path) -> None:
    store = Unreachable(tmp_path / "ks")
    with pytest.raises(RuntimeError) as raised, KeyLease.new(store, KeyOrder()) as lease:
        raise RuntimeError("the work failed")
    assert [leftover.key_id for leftover in lease.leftovers] == [lease.key_id]
    assert lease.leftovers[0].consumer is None
    assert "went away" in lease.leftovers[0].error
    notes = leftover_notes(raised.value)
    assert len(notes) == 1 and lease.key_id in notes[0] and notes[0].startswith(LEFTOVER_NOTE)
    assert ids(store) == {lease.key_id}  # still there: the note is how a person learns of it


def test_a_consumer_that_cannot_be_registered_rolls_the_key_back(tmp_path: Path) -> None:
    class NoConsumers(LocalKeyStore):
        def add_consumer(self, key_id: str, consumer: object) -> None:
            raise KeyManagerUnavailableError("consumers are down")

    store = NoConsumers(tmp_path / "ks")
    with pytest.raises(KeyManagerUnavailableError), KeyLease.new(store, KeyOrder()) as lease:
        lease.consume_as(image_consumer("img-1"))
    assert ids(store) == set() and lease.rolled_back


def test_cli_new_key_with_a_passphrase_file_leaves_no_key(tmp_path: Path) -> None:
    """The conflict leaves no key: it is refused before --new-key makes one (before the lease
    the key stayed, an orphan; then it was made and rolled back)."""
    src = tmp_path / "disk.raw"
    src.write_bytes(os.urandom(1 << 16))
    pw = tmp_path / "pw"
    pw.write_bytes(b"lease test passphrase\n")
    store = ["--keystore", str(tmp_path / "ks")]
    proc = imgcrypt("encrypt", src, tmp_path / "t.luks", "--new-key", "--passphrase-file", pw,
                    "--iterations", "1000", *store)
    assert proc.returncode == UsageError.exit_code
    listed = imgcrypt("keys", "list", "--json", *store, check=True)
    assert json.loads(listed.stdout)["secrets"] == []


def test_cli_warns_of_a_key_it_could_not_roll_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(LocalKeyStore, "delete", Unreachable.delete)
    src = tmp_path / "disk.raw"
    src.write_bytes(os.urandom(1 << 16))
    # The key is made, then the image would not fit under --max-size: the command fails
    # inside the lease, whose rollback cannot delete the key.
    code = main(["encrypt", str(src), str(tmp_path / "t.luks"), "--new-key", "--max-size",
                 "1M", "--keystore", str(tmp_path / "ks")])
    assert code == FormatError.exit_code
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("imgcrypt: warning: left behind: key ") and "went away" in err[0]
    assert err[1].startswith("imgcrypt: error: ") and "the output would be" in err[1]

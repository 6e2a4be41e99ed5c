"""The Barbican and castellan adapters against a real Barbican server.

The server is started by tests/helpers/barbican_server.py.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from imgcrypt.errors import (
    KeyManagerError,
    KeyManagerFault,
    KeyManagerUnavailableError,
    SecretInUseError,
    SecretNotFoundError,
)
from imgcrypt.keys.barbican import BarbicanKeyManager
from imgcrypt.keys.castellan import CastellanKeyManager
from imgcrypt.keys.manager import Consumer, KeyManager, KeyOrder
from imgcrypt.keys.rules import DeletionOutcome, apply_deletion_policy, passphrase_for
from imgcrypt.keys.secret import Secret
from tests.helpers.barbican_server import BarbicanServer, free_port
from tests.helpers.util import raises_fault

pytestmark = pytest.mark.barbican

ROOT = Path(__file__).resolve().parents[2]
IMAGE = Consumer("image", "image", "11111111-2222-3333-4444-555555555555")
SNAPSHOT = Consumer("image", "image", "66666666-7777-8888-9999-000000000000")
MISSING = "00000000-0000-4000-8000-00000000dead"


@pytest.fixture(scope="module")
def direct(barbican: BarbicanServer) -> BarbicanKeyManager:
    return BarbicanKeyManager.standalone(barbican.endpoint, barbican.project_id)


def castellan_conf(tmp_path: Path, endpoint: str, project_id: str) -> Path:
    conf = tmp_path / "castellan.conf"
    conf.write_text(
        "[key_manager]\nbackend = barbican\n\n"
        f"[barbican]\nbarbican_endpoint = {endpoint}\nnumber_of_retries = 10\n"
        "retry_delay = 1\n\n"
        f"[imgcrypt]\nproject_id = {project_id}\n"
    )
    return conf


@pytest.fixture(scope="module")
def via_castellan(barbican: BarbicanServer, tmp_path_factory: pytest.TempPathFactory
                  ) -> CastellanKeyManager:
    conf = castellan_conf(tmp_path_factory.mktemp("castellan"), barbican.endpoint,
                          barbican.project_id)
    return CastellanKeyManager.from_config_file(conf)


@pytest.fixture(params=["barbican", "castellan"])
def manager(request: pytest.FixtureRequest, direct: BarbicanKeyManager,
            via_castellan: CastellanKeyManager) -> KeyManager:
    chosen: KeyManager = direct if request.param == "barbican" else via_castellan
    return chosen


# -- both adapters, same server -------------------------------------------------------------------


def test_store_and_fetch_symmetric(manager: KeyManager, direct: BarbicanKeyManager) -> None:
    assert isinstance(manager, KeyManager)
    payload = os.urandom(64)
    key_id = manager.store(Secret(payload=payload, algorithm="AES", bit_length=512, mode="XTS",
                                  name="sym"))
    secret = manager.get(key_id)
    assert secret.payload_bytes == payload
    assert (secret.secret_id, secret.secret_type, secret.algorithm, secret.bit_length,
            secret.name) == (key_id, "symmetric", "AES", 512, "sym")
    assert passphrase_for(secret) == payload.hex().encode()
    # castellan carries no mode; Barbican itself keeps it.
    assert direct.get(key_id).mode == ("XTS" if manager is direct else None)
    assert key_id in {info.secret_id for info in manager.list()}
    assert manager.describe(key_id).bit_length == 512


def test_store_and_fetch_passphrase(manager: KeyManager) -> None:
    key_id = manager.store(Secret(payload=b"correct horse battery", secret_type="passphrase"))
    secret = manager.get(key_id)
    assert secret.secret_type == "passphrase"
    assert passphrase_for(secret) == b"correct horse battery"


def test_text_passphrase_from_another_client(manager: KeyManager,
                                             barbican: BarbicanServer) -> None:
    # Other clouds store passphrases as text/plain; the client hands those back as str.
    from barbicanclient import client

    raw = client.Client(endpoint=barbican.endpoint, project_id=barbican.project_id)
    ref = raw.secrets.create(payload="pässwörd", secret_type="passphrase").store()
    secret = manager.get(ref.rpartition("/")[2])
    assert passphrase_for(secret) == "pässwörd".encode()


def test_orders(manager: KeyManager) -> None:
    key_id = manager.create_key(KeyOrder(name="ordered"))
    secret = manager.get(key_id)
    assert (secret.secret_type, secret.algorithm, secret.bit_length) == ("symmetric", "AES", 512)
    assert len(secret.payload_bytes) == 64
    assert len(passphrase_for(secret)) == 128
    small = manager.get(manager.create_key(KeyOrder(bit_length=256, mode=None)))
    assert len(small.payload_bytes) == 32
    phrase = manager.get(manager.create_key(KeyOrder(secret_type="passphrase", mode=None)))
    assert phrase.secret_type == "passphrase"
    assert passphrase_for(phrase) == phrase.payload_bytes


def test_consumers_and_refused_deletion(manager: KeyManager) -> None:
    assert manager.supports_consumers
    key_id = manager.create_key(KeyOrder())
    manager.add_consumer(key_id, IMAGE)
    manager.add_consumer(key_id, SNAPSHOT)
    assert sorted(c.resource_id for c in manager.list_consumers(key_id)) == sorted(
        [IMAGE.resource_id, SNAPSHOT.resource_id])
    with pytest.raises(SecretInUseError) as info:
        manager.delete(key_id)
    assert info.value.exit_code == 5
    manager.get(key_id)

    report = apply_deletion_policy(manager, key_id, "on_image_deletion", consumer=IMAGE)
    assert report.outcome is DeletionOutcome.KEPT_CONSUMED and report.consumer_removed
    assert SNAPSHOT.resource_id in report.reason
    report = apply_deletion_policy(manager, key_id, "on_image_deletion", consumer=SNAPSHOT)
    assert report.deleted, report
    with pytest.raises(SecretNotFoundError):
        manager.get(key_id)


def test_forced_deletion(manager: KeyManager) -> None:
    key_id = manager.create_key(KeyOrder())
    manager.add_consumer(key_id, IMAGE)
    manager.delete(key_id, force=True)
    with pytest.raises(SecretNotFoundError):
        manager.describe(key_id)


def test_policy_reports_instead_of_raising(manager: KeyManager) -> None:
    key_id = manager.create_key(KeyOrder())
    report = apply_deletion_policy(manager, key_id, "do_not_delete")
    assert report.outcome is DeletionOutcome.KEPT_BY_POLICY
    report = apply_deletion_policy(manager, key_id, "on_image_deletion",
                                   other_references=["snapshot-1"])
    assert report.outcome is DeletionOutcome.KEPT_REFERENCED
    manager.get(key_id)
    report = apply_deletion_policy(manager, MISSING, "on_image_deletion")
    assert report.outcome is DeletionOutcome.ALREADY_GONE


def test_not_found(manager: KeyManager) -> None:
    for call in (manager.get, manager.describe, manager.delete, manager.list_consumers):
        with pytest.raises(SecretNotFoundError) as info:
            call(MISSING)
        assert info.value.exit_code == 5
    with pytest.raises(SecretNotFoundError):
        manager.add_consumer(MISSING, IMAGE)


def test_server_down(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    managers: list[KeyManager] = [
        BarbicanKeyManager.standalone(dead, "p"),
        CastellanKeyManager.from_config_file(castellan_conf(tmp_path, dead, "p")),
    ]
    for manager in managers:
        with pytest.raises(KeyManagerUnavailableError) as info:
            manager.get(MISSING)
        assert info.value.exit_code == 5
        with pytest.raises(KeyManagerUnavailableError):
            manager.create_key(KeyOrder())
        report = apply_deletion_policy(manager, MISSING, "on_image_deletion")
        assert report.outcome is DeletionOutcome.UNAVAILABLE


# -- castellan specifics --------------------------------------------------------------------------


def test_castellan_object_mapping(via_castellan: CastellanKeyManager,
                                  direct: BarbicanKeyManager) -> None:
    private = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imgcrypt test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(private.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(private, hashes.SHA384()))
    der = cert.public_bytes(serialization.Encoding.DER)
    cert_id = via_castellan.store(Secret(payload=der, secret_type="certificate"))
    back = via_castellan.get(cert_id)
    assert (back.secret_type, back.payload_bytes) == ("certificate", der)
    # Barbican itself holds PEM; castellan converts to DER on the way out.
    assert direct.get(cert_id).payload_bytes == cert.public_bytes(serialization.Encoding.PEM)

    opaque_id = via_castellan.store(Secret(payload=b"\x00blob", secret_type="opaque"))
    assert via_castellan.get(opaque_id).secret_type == "opaque"
    assert passphrase_for(via_castellan.get(opaque_id)) == b"00626c6f62"

    public_der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_id = via_castellan.store(Secret(payload=public_der, secret_type="public",
                                           algorithm="EC", bit_length=384))
    assert via_castellan.get(public_id).payload_bytes == public_der
    assert via_castellan.get(public_id).secret_type == "public"


def test_castellan_payload_that_does_not_match_its_type(
        via_castellan: CastellanKeyManager) -> None:
    with pytest.raises(KeyManagerError) as info:
        via_castellan.store(Secret(payload=b"not DER at all", secret_type="certificate"))
    assert "not DER" not in str(info.value)


def test_castellan_backend_without_consumers() -> None:
    # castellan's Vault backend has no consumer support; it needs no server to say so.
    from castellan.key_manager.vault_key_manager import VaultKeyManager
    from oslo_config import cfg

    vault = CastellanKeyManager(VaultKeyManager(cfg.ConfigOpts()), context=None)
    assert not vault.supports_consumers
    with raises_fault(KeyManagerError, KeyManagerFault.CONSUMERS_UNSUPPORTED):
        vault.add_consumer(MISSING, IMAGE)
    forced = CastellanKeyManager(VaultKeyManager(cfg.ConfigOpts()), context=None,
                                 supports_consumers=True)
    with raises_fault(KeyManagerError, KeyManagerFault.CONSUMERS_UNSUPPORTED):
        forced.add_consumer(MISSING, IMAGE)  # castellan itself raises NotImplementedError


def test_castellan_without_consumers_still_deletes(barbican: BarbicanServer,
                                                    via_castellan: CastellanKeyManager,
                                                    tmp_path: Path) -> None:
    # The same Barbican through an adapter told it has no consumers: the policy still works.
    from castellan.key_manager import barbican_key_manager  # noqa: F401

    plain = CastellanKeyManager.from_config_file(
        castellan_conf(tmp_path, barbican.endpoint, barbican.project_id))
    blind = CastellanKeyManager(plain._manager, plain._context, supports_consumers=False)
    key_id = blind.create_key(KeyOrder())
    assert apply_deletion_policy(blind, key_id, "on_image_deletion", consumer=IMAGE).deleted


# -- the command line -----------------------------------------------------------------------------


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = "/nonexistent-imgcrypt-config"
    return subprocess.run([sys.executable, "-m", "imgcrypt", *argv], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120, check=False)


def test_cli_against_barbican(barbican: BarbicanServer, direct: BarbicanKeyManager,
                              tmp_path: Path) -> None:
    where = ["--key-manager", "barbican", "--barbican-endpoint", barbican.endpoint,
             "--project-id", barbican.project_id]
    made = run_cli("keys", "create", *where, "--json")
    assert made.returncode == 0, made.stderr
    key_id = json.loads(made.stdout)["key_id"]
    payload = direct.get(key_id).payload_bytes

    shown = run_cli("keys", "show", key_id, *where, "--json")
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["secret"]["mode"] == "XTS"
    assert payload.hex() not in shown.stdout
    revealed = run_cli("keys", "show", key_id, *where, "--reveal", "--json")
    assert json.loads(revealed.stdout)["luks_passphrase"] == payload.hex()
    assert key_id in run_cli("keys", "list", *where).stdout

    direct.add_consumer(key_id, IMAGE)
    refused = run_cli("keys", "delete", key_id, *where)
    assert refused.returncode == 5
    assert refused.stderr.startswith("imgcrypt: error: ") and refused.stderr.count("\n") == 1
    direct.remove_consumer(key_id, IMAGE)
    assert run_cli("keys", "delete", key_id, *where).returncode == 0
    missing = run_cli("keys", "show", key_id, *where)
    assert missing.returncode == 5 and "no secret" in missing.stderr

    conf = castellan_conf(tmp_path, barbican.endpoint, barbican.project_id)
    via = ["--key-manager", "castellan", "--castellan-config", str(conf)]
    made = run_cli("keys", "create", *via, "--type", "passphrase", "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["secret"]["secret_type"] == "passphrase"
    assert run_cli("keys", "show", MISSING, *via).returncode == 5


def test_cli_server_down(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    down = run_cli("keys", "show", MISSING, "--key-manager", "barbican",
                   "--barbican-endpoint", dead, "--project-id", str(uuid.uuid4()))
    assert down.returncode == 5
    assert "cannot reach" in down.stderr and down.stderr.count("\n") == 1
    conf = castellan_conf(tmp_path, dead, "p")
    down = run_cli("keys", "list", "--key-manager", "castellan", "--castellan-config", str(conf))
    assert down.returncode == 5, down.stderr

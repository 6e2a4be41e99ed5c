"""Secrets become LUKS passphrases exactly as castellan + os-brick make them in Nova and Cinder."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imgcrypt.errors import UnusableSecretError
from imgcrypt.keys.rules import passphrase_for
from imgcrypt.keys.secret import Secret
from tests.helpers.pki import cert_pem, key, make_cert
from tests.helpers.util import imgcrypt

# Barbican stores private/public/certificate secrets as PEM; castellan's Barbican backend
# (_get_secret_data, called here as castellan ships it) turns them into DER, wraps the result in
# its managed objects, and os-brick's get_passphrase_from_secret makes the passphrase.
CLOUD_SIDE = r"""
import base64, json, sys, warnings
warnings.simplefilter("ignore")
from castellan.common.objects import (opaque_data, passphrase, private_key, public_key,
                                      symmetric_key, x_509)
from castellan.key_manager.barbican_key_manager import BarbicanKeyManager
from os_brick.utils import get_passphrase_from_secret

class Stored:  # what python-barbicanclient hands castellan: type and payload
    def __init__(self, secret_type, payload):
        self.secret_type, self.payload = secret_type, payload

out = []
for item in json.load(sys.stdin):
    stored = Stored(item["type"], base64.b64decode(item["payload"]))
    try:
        data = BarbicanKeyManager._get_secret_data(None, stored)
        managed = {
            "passphrase": lambda d: passphrase.Passphrase(d),
            "symmetric": lambda d: symmetric_key.SymmetricKey("AES", len(d) * 8, d),
            "opaque": lambda d: opaque_data.OpaqueData(d),
            "certificate": lambda d: x_509.X509(d),
            "private": lambda d: private_key.PrivateKey("RSA", 2048, d),
            "public": lambda d: public_key.PublicKey("RSA", 2048, d),
        }[item["type"]](data)
        out.append(get_passphrase_from_secret(managed).encode("utf-8").hex())
    except Exception as exc:
        out.append("error: " + type(exc).__name__)
json.dump(out, sys.stdout)
"""


def cloud_passphrases(secrets: list[tuple[str, bytes]]) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", CLOUD_SIDE], capture_output=True, text=True, timeout=120,
        input=json.dumps([{"type": t, "payload": base64.b64encode(p).decode()}
                          for t, p in secrets]),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert isinstance(result, list)
    return result


def ours(secret_type: str, payload: bytes) -> str:
    try:
        return passphrase_for(Secret(payload=payload, secret_type=secret_type)).hex()
    except UnusableSecretError:
        return "refused"


def test_every_secret_type_gives_the_passphrase_os_brick_gives() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem_private = rsa_key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    pem_public = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    secrets = [
        ("symmetric", os.urandom(64)),
        ("opaque", os.urandom(40)),
        ("passphrase", "corréct horse".encode()),
        ("certificate", cert_pem(make_cert(key("p384")))),
        ("private", pem_private),
        ("public", pem_public),
    ]
    assert [ours(t, p) for t, p in secrets] == cloud_passphrases(secrets)


def test_secrets_the_cloud_cannot_use_are_refused() -> None:
    secrets = [("passphrase", b"\xff\xfe not utf-8"), ("certificate", b"not a certificate")]
    assert all(r.startswith("error") for r in cloud_passphrases(secrets))
    assert [ours(t, p) for t, p in secrets] == ["refused", "refused"]


def test_cli_refuses_a_non_utf8_passphrase_secret(tmp_path: Path) -> None:
    store = ["--keystore", str(tmp_path / "keys")]
    (tmp_path / "bad").write_bytes(b"\xff\xfe\xfd")
    proc = imgcrypt("keys", "create", "--type", "passphrase", "--payload-file",
                    tmp_path / "bad", *store)
    assert proc.returncode == 2 and b"UTF-8" in proc.stderr
    assert imgcrypt("keys", "list", "--json", *store, check=True).stdout.count(b"key_id") == 0


def test_der_certificate_is_stored_as_pem(tmp_path: Path) -> None:
    store = ["--keystore", str(tmp_path / "keys")]
    certificate = make_cert(key("p384"))
    (tmp_path / "c.der").write_bytes(certificate.public_bytes(serialization.Encoding.DER))
    created = json.loads(imgcrypt("keys", "create", "--type", "certificate", "--payload-file",
                                  tmp_path / "c.der", "--json", *store, check=True).stdout)
    shown = json.loads(imgcrypt("keys", "show", created["key_id"], "--reveal", "--json", *store,
                                check=True).stdout)
    assert base64.b64decode(shown["payload_base64"]) == cert_pem(certificate)
    (tmp_path / "junk").write_bytes(b"neither PEM nor DER")
    assert imgcrypt("keys", "create", "--type", "certificate", "--payload-file",
                    tmp_path / "junk", *store).returncode == 3
    private = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "k.der").write_bytes(private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    created = json.loads(imgcrypt("keys", "create", "--type", "private", "--payload-file",
                                  tmp_path / "k.der", "--json", *store, check=True).stdout)
    shown = json.loads(imgcrypt("keys", "show", created["key_id"], "--reveal", "--json", *store,
                                check=True).stdout)
    assert base64.b64decode(shown["payload_base64"]).startswith(b"-----BEGIN PRIVATE KEY-----")


def test_der_payloads_from_the_castellan_adapter_give_the_same_passphrase() -> None:
    certificate = make_cert(key("p384"))
    pem = cert_pem(certificate)
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert ours("certificate", der) == ours("certificate", pem) == der.hex().encode().hex()

"""A small image catalogue in a real Glance, for the ``imgcrypt catalogue`` tests.

The Glance runs without import plugins (as a cloud whose images predate imgcrypt: nothing was
checked at upload, nobody registered consumers) but with imgcrypt's consumer filter in its
paste pipeline. Images are made with the real tools (cryptsetup for LUKS1, Barbican for keys,
``imgcrypt sign`` for signatures) and uploaded with a plain PUT, each tagged with a batch
property so a test can select its own images with ``--filter``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.openstack_servers import Glance, Keystone, KeystoneBarbican, start_glance, stop

BATCH = "catalogue_batch"
IMAGE_SIZE = 3 << 20


@pytest.fixture(scope="session")
def catalogue_glance(tmp_path_factory: pytest.TempPathFactory, keystone: Keystone,
                     keystone_barbican: KeystoneBarbican) -> Iterator[Glance]:
    glance = start_glance(tmp_path_factory.mktemp("glance-catalogue"), keystone,
                          keystone_barbican, ())
    try:
        yield glance
    finally:
        for process in glance.processes:
            stop(process)


def connection(keystone: Keystone, glance: Glance) -> Any:
    import openstack

    creds = keystone.credentials("demo")
    return openstack.connect(
        auth_url=creds["OS_AUTH_URL"], username="demo", password=creds["OS_PASSWORD"],
        project_name="demo", user_domain_id="default", project_domain_id="default",
        region_name="RegionOne", load_yaml_config=False, load_envvars=False,
        image_endpoint_override=glance.endpoint)


def cli_env(keystone: Keystone, glance: Glance, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(keystone.credentials("demo"))
    env["OS_IMAGE_ENDPOINT_OVERRIDE"] = glance.endpoint
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / "config")
    env["XDG_STATE_HOME"] = str(home / "state")
    return env


def imgcrypt(env: dict[str, str], *args: str, timeout: float = 600
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imgcrypt", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False, cwd=env["HOME"])


def json_lines(text: str) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Records by image id, and the summary line."""
    records: dict[str, dict[str, Any]] = {}
    summary: dict[str, Any] = {}
    for line in text.splitlines():
        data = json.loads(line)
        if "summary" in data:
            summary = data
        else:
            records[data["image_id"]] = data
    return records, summary


@dataclass
class Catalogue:
    """The images of one batch, by role: name -> image id; keys by name -> key id."""

    batch: str
    images: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    cert_id: str = ""

    def ids(self, *names: str) -> set[str]:
        return {self.images[n] for n in names}


def _luks1(cryptsetup: str, path: Path, passphrase: bytes, workdir: Path) -> None:
    keyfile = workdir / f"{path.name}.key"
    keyfile.write_bytes(passphrase)
    with path.open("wb") as f:
        f.truncate(IMAGE_SIZE)
    subprocess.run([cryptsetup, "luksFormat", "--type", "luks1", "--batch-mode",
                    "--pbkdf-force-iterations", "1000", "--key-file", str(keyfile), str(path)],
                   check=True, capture_output=True, timeout=120)
    keyfile.unlink()


def _plain(path: Path) -> None:
    path.write_bytes(os.urandom(IMAGE_SIZE))


def enc_props(key_id: str, *, cinder: bool = True, standard: bool = True) -> dict[str, str]:
    props = {}
    if cinder:
        props.update({"cinder_encryption_key_id": key_id,
                      "cinder_encryption_key_deletion_policy": "on_image_deletion"})
    if standard:
        props.update({"os_encrypt_key_id": key_id, "os_encrypt_format": "LUKSv1",
                      "os_encrypt_key_deletion_policy": "on_image_deletion"})
    return props


def build_catalogue(keystone: Keystone, glance: Glance, workdir: Path, cryptsetup: str,
                    openssl: str, *, unique: int = 6, plain: int = 6,
                    signed: bool = True) -> Catalogue:
    """Shared keys A (3 images) and B (2), ``unique`` images under their own keys (the first
    two with Cinder's properties only, the third with os_encrypt_* only), ``plain`` plaintext
    images, two claiming encryption with plaintext bytes, one LUKS image claiming nothing, one
    naming a key that does not open it, one naming a key that does not exist, one whose two
    property families disagree and, with ``signed``, a signed image and a signed one tampered
    with in the store."""
    from imgcrypt.catalogue.cloud import CatalogueImages
    from imgcrypt.keys.barbican import BarbicanKeyManager
    from imgcrypt.keys.manager import KeyOrder
    from imgcrypt.keys.rules import passphrase_for

    conn = connection(keystone, glance)
    images = CatalogueImages(conn)
    barbican = BarbicanKeyManager.from_session(conn.session, region_name="RegionOne")
    cat = Catalogue(batch=str(uuid.uuid4()))
    workdir.mkdir(parents=True, exist_ok=True)
    passphrases: dict[str, bytes] = {}

    def key(name: str) -> str:
        if name not in cat.keys:
            cat.keys[name] = barbican.create_key(KeyOrder(bit_length=256))
            passphrases[name] = passphrase_for(barbican.get(cat.keys[name]))
        return cat.keys[name]

    def upload(name: str, path: Path, props: dict[str, str]) -> str:
        image = images.create(f"{cat.batch[:8]}-{name}", "raw", "bare",
                              {**props, BATCH: cat.batch})
        with path.open("rb") as f:
            images.upload(image.image_id, f, path.stat().st_size, stage=False)
        cat.images[name] = image.image_id
        return image.image_id

    def luks(name: str, key_name: str, props: dict[str, str]) -> None:
        path = workdir / f"{name}.img"
        key(key_name)
        _luks1(cryptsetup, path, passphrases[key_name], workdir)
        upload(name, path, props)
        path.unlink()

    for i in range(3):
        luks(f"shared-a{i}", "A", enc_props(key("A")))
    for i in range(2):
        luks(f"shared-b{i}", "B", enc_props(key("B")))
    for i in range(unique):
        props = enc_props(key(f"U{i}"), cinder=i != 2, standard=i > 1)
        luks(f"unique{i}", f"U{i}", props)
    for i in range(plain):
        path = workdir / f"plain{i}.img"
        _plain(path)
        upload(f"plain{i}", path, {})
    for i in range(2):
        path = workdir / f"liar{i}.img"
        _plain(path)
        upload(f"liar{i}", path, enc_props(key(f"L{i}")))
    luks("undeclared", "X", {})
    luks("wrong-key", "W", enc_props(key("A")))  # made with W's passphrase, names A
    missing = str(uuid.uuid4())
    path = workdir / "missing.img"
    _luks1(cryptsetup, path, b"no key manager holds this", workdir)
    upload("missing-key", path, enc_props(missing))
    luks("disagree", "D", {**enc_props(key("D"), standard=False),
                           "os_encrypt_key_id": key("A")})
    if signed:
        _signed_images(cat, keystone, glance, workdir, openssl, upload)
    return cat


def _signed_images(cat: Catalogue, keystone: Keystone, glance: Glance, workdir: Path,
                   openssl: str, upload: Any) -> None:
    env = cli_env(keystone, glance, workdir)
    signer_key, cert = workdir / "signer.key", workdir / "signer.crt"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:secp384r1", "-nodes", "-keyout", str(signer_key), "-out",
                    str(cert), "-days", "30", "-subj", "/CN=imgcrypt catalogue signer",
                    "-addext", "keyUsage=critical,digitalSignature"], check=True,
                   capture_output=True)
    made = imgcrypt(env, "keys", "create", "--type", "certificate", "--payload-file", str(cert),
                    "--key-manager", "barbican", "--json")
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    cat.cert_id = str(created.get("key_id") or created.get("secret_id") or created["id"])
    for name in ("signed", "tampered"):
        path = workdir / f"{name}.img"
        _plain(path)
        out = workdir / f"{name}.sig.json"
        signed = imgcrypt(env, "sign", str(path), "--key", str(signer_key), "--cert-id",
                          cat.cert_id, "--key-manager", "barbican", "--mode", "glance",
                          "--hash", "SHA-384", "--properties-out", str(out))
        assert signed.returncode == 0, signed.stderr
        props = json.loads(out.read_text())
        upload(name, path, {str(k): str(v) for k, v in props.get("properties", props).items()})
    from tests.cloud.test_glance_e2e import flip_stored_byte

    flip_stored_byte(glance, cat.images["tampered"])

"""imgcrypt against a real Glance 33, a real Barbican and a real Keystone.

A person encrypts, signs and ``imgcrypt upload``s; Glance runs ``imgcrypt_verify`` in its
import flow; ``imgcrypt download`` brings the plaintext back. Every service is the real one
(see tests/helpers/openstack_servers.py); nothing stands in.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.openstack_client import (
    Person,
    barbican_of,
    connection,
    demo_person,
    images_of,
)
from tests.helpers.openstack_servers import (
    Glance,
    Keystone,
    KeystoneBarbican,
    start_glance,
    stop,
)

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.barbican, pytest.mark.tools, pytest.mark.glance]

VERIFY_PLUGINS = ("imgcrypt_verify",)
VERIFY_CONF = """\
[imgcrypt]
require_signature = true
allowed_luks_versions = 1

[image_format]
disk_formats = ami,ari,aki,vhd,vhdx,vmdk,raw,qcow2,vdi,iso,ploop,luks
"""
ENCRYPT_PLUGINS = ("image_conversion", "imgcrypt_encrypt", "imgcrypt_verify")
ENCRYPT_CONF = """\
[imgcrypt]
encrypt_pbkdf2_iterations = 1000

[image_conversion]
output_format = raw
"""


@pytest.fixture(scope="session")
def glance_verify(tmp_path_factory: pytest.TempPathFactory, keystone: Keystone,
                  keystone_barbican: KeystoneBarbican) -> Iterator[Glance]:
    """Glance with imgcrypt_verify; signatures required, LUKS1 only. In the catalog."""
    glance = start_glance(tmp_path_factory.mktemp("glance-verify"), keystone,
                          keystone_barbican, VERIFY_PLUGINS, VERIFY_CONF, register=True)
    try:
        yield glance
    finally:
        for process in glance.processes:
            stop(process)


@pytest.fixture(scope="session")
def glance_encrypt(tmp_path_factory: pytest.TempPathFactory, keystone: Keystone,
                   keystone_barbican: KeystoneBarbican,
                   glance_verify: Glance) -> Iterator[Glance]:
    """Glance with image_conversion, then imgcrypt_encrypt, then imgcrypt_verify."""
    glance = start_glance(tmp_path_factory.mktemp("glance-encrypt"), keystone,
                          keystone_barbican, ENCRYPT_PLUGINS, ENCRYPT_CONF)
    try:
        yield glance
    finally:
        for process in glance.processes:
            stop(process)


@pytest.fixture
def person(tmp_path: Path, keystone: Keystone, glance_verify: Glance) -> Person:
    return demo_person(tmp_path, keystone)


def make_plain(path: Path, size: int = 3 << 20) -> bytes:
    data = os.urandom(size - 1000) + b"imgcrypt plaintext" + bytes(982)
    path.write_bytes(data)
    return data


def make_signer(workdir: Path, person: Person, openssl: str) -> str:
    """An ECDSA P-384 key and self-signed certificate; the certificate (PEM) in Barbican."""
    key, cert = workdir / "signer.key", workdir / "signer.crt"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:secp384r1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "30", "-subj", "/CN=imgcrypt test signer", "-addext",
                    "keyUsage=critical,digitalSignature"], check=True, capture_output=True)
    created = person.json("keys", "create", "--type", "certificate", "--payload-file",
                          str(cert), "--key-manager", "barbican")
    return str(created.get("key_id") or created.get("secret_id") or created["id"])


def encrypt_and_sign(person: Person, plain: Path, image: Path, cert_id: str, *,
                     fmt: str = "luks1", sign: bool = True) -> tuple[str, list[str]]:
    """``imgcrypt encrypt`` with a new Barbican key, then the properties and signatures;
    returns the key id and the property files to upload with."""
    encrypted = person.json("encrypt", str(plain), str(image), "--new-key", "--key-manager",
                            "barbican", "--format", fmt, "--iterations", "1000",
                            *(["--pbkdf", "pbkdf2"] if fmt == "luks2" else []))
    key = str(encrypted["key_id"])
    return key, describe_and_sign(person, image, key, cert_id, sign=sign,
                                  size=plain.stat().st_size)


def describe_and_sign(person: Person, image: Path, key: str, cert_id: str, *,
                      sign: bool = True, disk_format: str = "raw", size: int,
                      claimed_key: str | None = None) -> list[str]:
    """The properties naming ``key`` (or ``claimed_key`` in its place), and Glance-mode and
    imgcrypt-mode signatures over them."""
    enc = image.with_suffix(".enc.json")
    enc.write_text(person.run("properties", str(image), "--key-id", key, "--key-manager",
                              "barbican", "--size", str(size), "--json").stdout)
    if claimed_key is not None:
        # `imgcrypt properties` refuses a key that does not open the image; a hostile uploader
        # writes the property document by hand.
        enc.write_text(enc.read_text().replace(key, claimed_key))
    files = [str(enc)]
    if sign:
        described = json.loads(enc.read_text())
        bound = {**described.get("properties", described), "disk_format": disk_format,
                 "container_format": "bare"}
        glance_sig = image.with_suffix(".glance.json")
        modern_sig = image.with_suffix(".imgcrypt.json")
        signer = ["--key", str(person.workdir / "signer.key"), "--cert-id", cert_id,
                  "--key-manager", "barbican", "--force"]
        person.run("sign", str(image), *signer, "--mode", "glance", "--hash", "SHA-384",
                   "--properties-out", str(glance_sig))
        bound_args = [a for k, v in sorted(bound.items()) for a in ("--property", f"{k}={v}")]
        person.run("sign", str(image), *signer, "--mode", "imgcrypt", *bound_args,
                   "--properties-out", str(modern_sig))
        files += [str(glance_sig), str(modern_sig)]
    return files


def upload_args(image: Path, name: str, files: list[str]) -> list[str]:
    args = ["upload", str(image), "--name", name]
    for f in files:
        args += ["--properties", f]
    return args


def flip_stored_byte(glance: Glance, image_id: str) -> None:
    """Change one bit of the image data as Glance's file store holds it (a disk fault or an
    attacker with the store), 100 bytes before its end."""
    stored = glance.workdir / "images" / image_id
    with stored.open("r+b") as f:
        f.seek(-100, os.SEEK_END)
        byte = f.read(1)
        f.seek(-100, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x80]))

def test_encrypt_sign_upload_share_delete_download(person: Person, keystone: Keystone,
                                                   glance_verify: Glance, openssl: str) -> None:
    plain = person.workdir / "plain.raw"
    data = make_plain(plain)
    cert_id = make_signer(person.workdir, person, openssl)
    image = person.workdir / "disk.luks"
    key_id, files = encrypt_and_sign(person, plain, image, cert_id)

    first = person.json(*upload_args(image, "first", files))
    assert first["status"] == "active"
    assert first["method"] == "glance-direct"
    assert first["verdict"] == "accepted"
    images = images_of(keystone)
    shown = images.get(first["image_id"]).properties
    assert shown["imgcrypt_signature"] == "glance,imgcrypt"
    assert shown["imgcrypt_luks_version"] == "1"
    assert shown["imgcrypt_key_check"] == "opens"
    assert shown["imgcrypt_consumer"] == "registered"
    assert glance_verify.staging_files() == []

    second = person.json(*upload_args(image, "second", files))
    assert second["status"] == "active"
    barbican = barbican_of(keystone)
    consumers = {c.resource_id for c in barbican.list_consumers(key_id)}
    assert consumers == {first["image_id"], second["image_id"]}

    # Glance deletes cinder_encryption_key_id's key with the image (on_image_deletion);
    # while the second image is a consumer, Barbican refuses and the key survives.
    images.delete(first["image_id"])
    assert barbican.describe(key_id).secret_id == key_id
    assert {c.resource_id for c in barbican.list_consumers(key_id)} == {second["image_id"]}

    out = person.workdir / "downloaded.raw"
    got = person.json("download", second["image_id"], str(out))
    assert got["decrypted"] is True and got["hash_checked"] is True
    assert got["signature"] == ["glance", "imgcrypt"]
    assert out.read_bytes() == data

    images.delete(second["image_id"])
    from imgcrypt.errors import SecretNotFoundError

    with pytest.raises(SecretNotFoundError):
        barbican.describe(key_id)


def refused(person: Person, image: Path, files: list[str], glance: Glance) -> str:
    result = person.run(*upload_args(image, "refused", files), check=False)
    assert result.returncode == 4, result.stderr
    assert glance.staging_files() == []
    return result.stderr


def test_tampered_image_is_refused(person: Person, keystone: Keystone, glance_verify: Glance,
                                   openssl: str) -> None:
    plain = person.workdir / "plain.raw"
    make_plain(plain)
    cert_id = make_signer(person.workdir, person, openssl)
    image = person.workdir / "disk.luks"
    key_id, files = encrypt_and_sign(person, plain, image, cert_id)
    with image.open("r+b") as f:
        f.seek(-5000, os.SEEK_END)
        byte = f.read(1)
        f.seek(-5000, os.SEEK_END)
        f.write(bytes([byte[0] ^ 1]))
    message = refused(person, image, files, glance_verify)
    assert "imgcrypt_verify refused the image" in message
    assert "signature" in message
    assert barbican_of(keystone).list_consumers(key_id) == []


def test_luks2_under_a_luks1_policy_is_refused(person: Person, keystone: Keystone,
                                               glance_verify: Glance, openssl: str) -> None:
    plain = person.workdir / "plain.raw"
    make_plain(plain)
    cert_id = make_signer(person.workdir, person, openssl)
    image = person.workdir / "disk2.luks"
    _, files = encrypt_and_sign(person, plain, image, cert_id, fmt="luks2")
    message = refused(person, image, files, glance_verify)
    assert "LUKSv2 images are not accepted here (allowed: LUKSv1)" in message


def test_a_key_that_does_not_open_the_header_is_refused(person: Person, keystone: Keystone,
                                                        glance_verify: Glance,
                                                        openssl: str) -> None:
    plain = person.workdir / "plain.raw"
    make_plain(plain)
    cert_id = make_signer(person.workdir, person, openssl)
    image = person.workdir / "disk.luks"
    key_id, _ = encrypt_and_sign(person, plain, image, cert_id)
    other = person.json("keys", "create", "--key-manager", "barbican")
    other_id = str(other.get("key_id") or other.get("secret_id") or other["id"])
    # Properties and both signatures name the other key: all consistent, but the key.
    files = describe_and_sign(person, image, key_id, cert_id, claimed_key=other_id,
                              size=plain.stat().st_size)
    message = refused(person, image, files, glance_verify)
    assert f"key {other_id} does not open the image's LUKS header" in message


def test_unsigned_image_under_a_signature_policy_is_refused(person: Person, keystone: Keystone,
                                                            glance_verify: Glance,
                                                            openssl: str) -> None:
    plain = person.workdir / "plain.raw"
    make_plain(plain)
    image = person.workdir / "disk.luks"
    _, files = encrypt_and_sign(person, plain, image, "", sign=False)
    message = refused(person, image, files, glance_verify)
    assert "this deployment requires signed images" in message


def test_plaintext_import_is_converted_then_encrypted(person: Person, keystone: Keystone,
                                                      glance_encrypt: Glance, qemu_img: str,
                                                      cryptsetup: str) -> None:
    raw = person.workdir / "plain.raw"
    data = make_plain(raw, 4 << 20)
    qcow2 = person.workdir / "plain.qcow2"
    subprocess.run([qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
                   check=True, capture_output=True)
    override = {"OS_IMAGE_ENDPOINT_OVERRIDE": glance_encrypt.endpoint}
    uploaded = person.json("upload", str(qcow2), "--name", "plain", "--disk-format", "qcow2",
                           **override)
    assert uploaded["status"] == "active"
    assert uploaded["verdict"] == "accepted"
    image = images_of(keystone, glance_encrypt).get(uploaded["image_id"]).properties
    assert image["disk_format"] == "raw"  # image_conversion ran first
    assert image["os_encrypt_format"] == "LUKSv1"
    assert image["os_decrypt_size"] == str(len(data))
    key_id = image["os_encrypt_key_id"]
    assert image["cinder_encryption_key_id"] == key_id
    assert image["imgcrypt_key_check"] == "opens"
    barbican = barbican_of(keystone)
    assert [c.resource_id for c in barbican.list_consumers(key_id)] == [uploaded["image_id"]]
    assert glance_encrypt.staging_files() == []

    luks = person.workdir / "stored.luks"
    person.json("download", uploaded["image_id"], str(luks), "--encrypted", **override)
    dump = subprocess.run([cryptsetup, "luksDump", str(luks)], capture_output=True,
                          text=True, check=True).stdout
    version_line = next(line for line in dump.splitlines() if line.startswith("Version:"))
    assert version_line.split() == ["Version:", "1"]
    # The passphrase Nova and Cinder derive: the Barbican key's lowercase hex.
    key_hex = barbican.get(key_id).payload_bytes.hex().encode()
    key_file = person.workdir / "key.hex"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_hex)
    subprocess.run([cryptsetup, "open", "--test-passphrase", "--key-file", str(key_file),
                    str(luks)], check=True, capture_output=True)
    out = person.workdir / "qemu.raw"
    subprocess.run([qemu_img, "convert", "--object", f"secret,id=s0,file={key_file}",
                    "--image-opts", f"driver=luks,key-secret=s0,file.filename={luks}",
                    "-O", "raw", str(out)], check=True, capture_output=True)
    assert out.read_bytes()[:len(data)] == data
    assert out.stat().st_size >= len(data)

    decrypted = person.workdir / "decrypted.raw"
    person.json("download", uploaded["image_id"], str(decrypted), **override)
    assert decrypted.read_bytes() == data


def test_a_luks_image_is_never_converted(person: Person, keystone: Keystone,
                                         glance_encrypt: Glance, openssl: str) -> None:
    """With image_conversion enabled, Glance refuses a LUKS image labelled raw ("Image format
    mismatch") instead of converting it; imgcrypt_encrypt never sees it."""
    plain = person.workdir / "plain.raw"
    make_plain(plain)
    image = person.workdir / "disk.luks"
    _, files = encrypt_and_sign(person, plain, image, "", sign=False)
    result = person.run(*upload_args(image, "luks", files), check=False,
                        OS_IMAGE_ENDPOINT_OVERRIDE=glance_encrypt.endpoint)
    assert result.returncode == 4, result.stderr
    assert "Image format mismatch" in glance_encrypt.log_path.read_text()
    assert glance_encrypt.store_files() == [] or all(
        not name.startswith(image.name) for name in glance_encrypt.store_files())


@pytest.mark.parametrize("disk_format", ["raw", "luks"])
def test_disk_format_and_virtual_size(person: Person, keystone: Keystone, glance_verify: Glance,
                                      openssl: str, disk_format: str) -> None:
    """The disk_format question, with evidence from Glance itself: a LUKS1 image is accepted
    as ``raw`` (virtual size = the whole container, header included) and, where the
    deployment lists ``luks`` in ``[image_format] disk_formats``, as ``luks`` (virtual size =
    the payload, which is what a volume created from it needs)."""
    plain = person.workdir / "plain.raw"
    data = make_plain(plain)
    cert_id = make_signer(person.workdir, person, openssl)
    image = person.workdir / "disk.luks"
    encrypted = person.json("encrypt", str(plain), str(image), "--new-key", "--key-manager",
                            "barbican", "--iterations", "1000")
    files = describe_and_sign(person, image, str(encrypted["key_id"]), cert_id,
                              disk_format=disk_format, size=len(data))
    uploaded = person.json(*upload_args(image, disk_format, files), "--disk-format",
                           disk_format)
    assert uploaded["status"] == "active"
    shown = images_of(keystone).get(uploaded["image_id"]).properties
    assert shown["disk_format"] == disk_format
    assert shown["size"] == image.stat().st_size
    header = person.json("inspect", str(image))
    payload = image.stat().st_size - int(header["payload_offset"])
    assert payload == len(data)
    expected = image.stat().st_size if disk_format == "raw" else payload
    assert shown["virtual_size"] == expected


def test_encrypt_listed_before_conversion_fails_every_import(
        tmp_path_factory: pytest.TempPathFactory, person: Person, keystone: Keystone,
        keystone_barbican: KeystoneBarbican, qemu_img: str) -> None:
    """imgcrypt_encrypt refuses to run before image_conversion: the import fails at start
    with the reason as the task's message, and nothing is stored."""
    glance = start_glance(tmp_path_factory.mktemp("glance-misordered"), keystone,
                          keystone_barbican, ("imgcrypt_encrypt", "image_conversion"),
                          ENCRYPT_CONF)
    try:
        raw = person.workdir / "plain.raw"
        make_plain(raw)
        result = person.run("upload", str(raw), "--name", "misordered", check=False,
                            OS_IMAGE_ENDPOINT_OVERRIDE=glance.endpoint)
        assert result.returncode == 4, result.stderr
        assert "list image_conversion first (convert, then encrypt)" in result.stderr
        assert glance.store_files() == []
    finally:
        for process in glance.processes:
            stop(process)


def test_plain_upload_path_and_tampered_download(person: Person, keystone: Keystone,
                                                 glance_verify: Glance, openssl: str) -> None:
    """Without glance-direct (``--method upload``) the CLI uploads the data and registers the
    consumer itself; a stored image changed behind Glance's back fails ``imgcrypt download``
    with exit 4 and leaves no target."""
    plain = person.workdir / "plain.raw"
    make_plain(plain)
    cert_id = make_signer(person.workdir, person, openssl)
    image = person.workdir / "disk.luks"
    key_id, files = encrypt_and_sign(person, plain, image, cert_id)
    uploaded = person.json(*upload_args(image, "direct", files), "--method", "upload")
    assert uploaded["status"] == "active"
    assert uploaded["method"] == "upload"
    assert uploaded["consumer_registered"] is True
    assert uploaded["verdict"] is None  # no import, so no import plugin ran
    consumers = barbican_of(keystone).list_consumers(key_id)
    assert [c.resource_id for c in consumers] == [uploaded["image_id"]]

    flip_stored_byte(glance_verify, uploaded["image_id"])
    target = person.workdir / "out.raw"
    result = person.run("download", uploaded["image_id"], str(target), check=False)
    assert result.returncode == 4, result.stderr
    assert result.stderr.startswith("imgcrypt: error:")
    assert result.stderr.count("\n") == 1
    assert "signature" in result.stderr or "os_hash_value" in result.stderr, result.stderr
    assert not target.exists()
    assert [p.name for p in person.workdir.iterdir() if p.name.startswith("out.raw")] == []


_README_CONF_CHECK = """\
import sys
from oslo_config import cfg
from glance.async_.flows import api_image_import  # registers [image_import_opts]
from imgcrypt.glance import options
conf = cfg.CONF
options.register(conf)
conf(args=[], default_config_files=[sys.argv[1]])
print(conf.image_import_opts.image_import_plugins, conf.imgcrypt.allowed_luks_versions,
      conf.imgcrypt.require_signature, conf.imgcrypt.encrypt_key_deletion_policy)
"""


def test_readme_glance_configuration_loads_in_glance(tmp_path: Path) -> None:
    """The glance-api.conf of Walkthrough 4, read by oslo.config in Glance's environment."""
    from tests.helpers.openstack_servers import GLANCE_VENV, require_venv

    python = require_venv(GLANCE_VENV, "install-glance.sh")
    readme = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```ini\n")[1:]]
    conf = next(b for b in blocks if "[imgcrypt]" in b)
    (tmp_path / "glance-api.conf").write_text(conf)
    result = subprocess.run([str(python), "-c", _README_CONF_CHECK,
                             str(tmp_path / "glance-api.conf")], capture_output=True, text=True,
                            timeout=120, check=False, env={"PATH": os.environ["PATH"],
                                                           "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[0] == (
        "['image_conversion', 'imgcrypt_encrypt', 'imgcrypt_verify'] [1] False "
        "on_image_deletion")


def test_the_library_download_decrypts_checks_and_refuses_tampering(
        person: Person, keystone: Keystone, glance_verify: Glance, openssl: str) -> None:
    """imgcrypt.service.download without the CLI, against the real Glance and Barbican: the
    guest's bytes back, hash and both signatures checked; a stored byte changed behind
    Glance's back fails ``write_to``."""
    from imgcrypt.errors import VerificationError
    from imgcrypt.service.download import open_download

    plain = person.workdir / "plain.raw"
    data = make_plain(plain)
    cert_id = make_signer(person.workdir, person, openssl)
    image = person.workdir / "disk.luks"
    _key_id, files = encrypt_and_sign(person, plain, image, cert_id)
    uploaded = person.json(*upload_args(image, "library", files), "--method", "upload")
    conn = connection(keystone, glance_verify)

    download = open_download(conn, uploaded["image_id"])
    assert download.decrypt and download.size == image.stat().st_size
    out = io.BytesIO()
    result = download.write_to(out)
    assert out.getvalue() == data and result.bytes_written == len(data)
    assert result.decrypted and result.hash_checked
    assert result.signature is not None
    assert sorted(s.scheme for s in result.signature.schemes) == ["glance", "imgcrypt"]

    kept = io.BytesIO()
    assert not open_download(conn, uploaded["image_id"], keep_encrypted=True).write_to(
        kept).decrypted
    assert kept.getvalue() == image.read_bytes()

    flip_stored_byte(glance_verify, uploaded["image_id"])
    with pytest.raises(VerificationError):
        open_download(conn, uploaded["image_id"]).write_to(io.BytesIO())


def test_the_library_upload_registers_the_consumer_and_takes_it_back_on_failure(
        person: Person, keystone: Keystone, glance_verify: Glance, openssl: str) -> None:
    """imgcrypt.service.publish without the CLI, against the real Glance and Barbican: a staged
    import through imgcrypt_verify ends active with the image as the key's consumer; an upload
    whose bytes were changed after signing is refused by imgcrypt_verify during the import, and
    the refused image does not stay a consumer."""
    from imgcrypt.errors import ImgcryptError
    from imgcrypt.imageprops import upload_properties
    from imgcrypt.service.publish import open_upload

    plain = person.workdir / "plain.raw"
    make_plain(plain)
    cert_id = make_signer(person.workdir, person, openssl)
    image = person.workdir / "disk.luks"
    key_id, files = encrypt_and_sign(person, plain, image, cert_id)
    properties: dict[str, str] = {}
    for f in files:
        properties.update(upload_properties(Path(f).read_bytes()))
    conn = connection(keystone, glance_verify)
    barbican = barbican_of(keystone)

    upload = open_upload(properties, lambda: conn)
    assert upload.staged and upload.method == "glance-direct"
    with image.open("rb") as f:
        result = upload.send(f, image.stat().st_size, name="library-upload", disk_format="raw",
                             container_format="bare", timeout=300)
    assert result.image.status == "active" and result.consumer_registered
    assert [c.resource_id for c in barbican.list_consumers(key_id)] == [result.image.image_id]

    tampered = bytearray(image.read_bytes())
    tampered[-5000] ^= 1
    with pytest.raises(ImgcryptError, match="imgcrypt_verify refused the image"):
        open_upload(properties, lambda: conn).send(
            io.BytesIO(tampered), len(tampered), name="tampered", disk_format="raw",
            container_format="bare", timeout=300)
    assert [c.resource_id for c in barbican.list_consumers(key_id)] == [result.image.image_id]


def test_a_refused_deletion_keeps_the_image_s_hold_on_its_key(person: Person,
                                                              keystone: Keystone,
                                                              glance_verify: Glance,
                                                              openssl: str) -> None:
    """imgcrypt_consumers releases the image's consumer before Glance deletes; when Glance
    refuses (a protected image), the consumer is registered again (through the key lease), so
    the key still cannot be deleted from under the image."""
    plain = person.workdir / "plain.raw"
    make_plain(plain, 1 << 20)
    image = person.workdir / "kept.luks"
    cert_id = make_signer(person.workdir, person, openssl)  # this deployment wants signatures
    key_id, files = encrypt_and_sign(person, plain, image, cert_id)
    uploaded = person.json(*upload_args(image, "kept", files))
    image_id = uploaded["image_id"]
    barbican = barbican_of(keystone)
    assert {c.resource_id for c in barbican.list_consumers(key_id)} == {image_id}
    images = images_of(keystone)
    sdk = connection(keystone).image
    sdk.update_image(image_id, is_protected=True)
    with pytest.raises(Exception, match=r"(?i)protected|forbidden|403"):
        images.delete(image_id)
    assert {c.resource_id for c in barbican.list_consumers(key_id)} == {image_id}
    sdk.update_image(image_id, is_protected=False)
    images.delete(image_id)
    from imgcrypt.errors import SecretNotFoundError

    with pytest.raises(SecretNotFoundError):  # nothing else held it: it went with the image
        barbican.describe(key_id)

"""``imgcrypt properties`` and ``verify --properties`` as the README and openstack use them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.pki import cert_pem, key, key_pem, make_cert
from tests.helpers.util import imgcrypt


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, object]:
    store = ["--keystore", str(tmp_path / "keys")]
    (tmp_path / "disk.raw").write_bytes(os.urandom(1 << 20))
    proc = imgcrypt("encrypt", tmp_path / "disk.raw", tmp_path / "disk.luks", "--new-key",
                    "--iterations", "1000", "--json", *store, check=True)
    signer = key("ed25519")
    (tmp_path / "ed25519.key").write_bytes(key_pem(signer))
    (tmp_path / "ed25519.crt").write_bytes(cert_pem(make_cert(signer)))
    return {"dir": tmp_path, "store": store, "key_id": json.loads(proc.stdout)["key_id"]}


def sign_modern(setup: dict[str, object], *bind: str) -> Path:
    d = setup["dir"]
    assert isinstance(d, Path)
    imgcrypt("sign", d / "disk.luks", "--key", d / "ed25519.key", "--cert", d / "ed25519.crt",
             "--mode", "imgcrypt", *bind, "--properties-out", d / "modern.json", check=True)
    return d / "modern.json"


def attach(setup: dict[str, object], *extra: str | Path) -> subprocess.CompletedProcess[bytes]:
    d, store = setup["dir"], setup["store"]
    assert isinstance(d, Path) and isinstance(store, list)
    return imgcrypt("properties", d / "disk.luks", "--key-id", str(setup["key_id"]), *store,
                    "--size", str(1 << 20), *extra)


def verify(setup: dict[str, object], props: Path) -> subprocess.CompletedProcess[bytes]:
    d = setup["dir"]
    assert isinstance(d, Path)
    return imgcrypt("verify", d / "disk.luks", "--properties", props, "--cert",
                    d / "ed25519.crt")


def test_readme_walkthrough_2_with_walkthrough_1_properties_verifies(
        setup: dict[str, object]) -> None:
    """Bind two properties, as walkthrough 2 does; the rest were bound as absent."""
    key_id = str(setup["key_id"])
    modern = sign_modern(setup, "--property", f"os_encrypt_key_id={key_id}",
                         "--property", "os_encrypt_format=LUKSv1")
    proc = attach(setup, "--signature", modern, "--json")
    assert proc.returncode == 0, proc.stderr
    merged = json.loads(proc.stdout)
    assert "cinder_encryption_key_id" not in merged and "os_decrypt_size" not in merged
    assert merged["os_encrypt_key_id"] == key_id
    assert "cinder_encryption_key_id" in proc.stderr.decode()  # says what it left out and why
    d = setup["dir"]
    assert isinstance(d, Path)
    (d / "all.json").write_bytes(proc.stdout)
    done = verify(setup, d / "all.json")
    assert done.returncode == 0, done.stderr


def test_binding_every_encryption_property_from_a_file(setup: dict[str, object]) -> None:
    d = setup["dir"]
    assert isinstance(d, Path)
    (d / "enc.json").write_bytes(attach(setup, "--json", "--deletion-policy",
                                        "do_not_delete").stdout)
    modern = sign_modern(setup, "--bind", str(d / "enc.json"))
    proc = attach(setup, "--deletion-policy", "do_not_delete", "--signature", modern, "--json")
    assert proc.returncode == 0, proc.stderr
    merged = json.loads(proc.stdout)
    assert merged["cinder_encryption_key_id"] == setup["key_id"]
    (d / "all.json").write_bytes(proc.stdout)
    assert verify(setup, d / "all.json").returncode == 0


def test_properties_checks_the_key(setup: dict[str, object]) -> None:
    d, store = setup["dir"], setup["store"]
    assert isinstance(d, Path) and isinstance(store, list)
    proc = imgcrypt("properties", d / "disk.luks", "--key-id",
                    "0b6c1c6e-5a3a-4c1e-9d3f-2f5b1a7c9e11", *store)
    assert proc.returncode == 5 and proc.stdout == b""
    other = json.loads(imgcrypt("keys", "create", "--json", *store, check=True).stdout)["key_id"]
    proc = imgcrypt("properties", d / "disk.luks", "--key-id", other, *store)
    assert proc.returncode == 4 and proc.stdout == b""
    assert b"does not open" in proc.stderr


@pytest.mark.parametrize("hostile", [
    {"img_signature": "x --public --file /etc/shadow --property z="},
    {"img_signature": "abc*"},
    {"img_signature": "a'b"},
    {"unknown_name": "abc"},
    {"img_signature_hash_method": "SHA-256\n--public"},
])
def test_properties_refuses_what_could_smuggle_options(
        setup: dict[str, object], hostile: dict[str, str]) -> None:
    d = setup["dir"]
    assert isinstance(d, Path)
    (d / "third-party.json").write_text(json.dumps(hostile))
    proc = attach(setup, "--signature", d / "third-party.json")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == b""


def test_properties_output_splits_into_exactly_the_arguments(setup: dict[str, object]) -> None:
    """``$(imgcrypt properties ...)`` unquoted in a shell gives --property k=v pairs only."""
    out = attach(setup).stdout.decode()
    words = out.split()
    assert words[0::2] == ["--property"] * (len(words) // 2)
    assert all("=" in w for w in words[1::2])
    shell = subprocess.run(["sh", "-c", 'set -- $1; for a; do echo "$a"; done', "sh", out],
                           capture_output=True, text=True, check=True).stdout.split("\n")[:-1]
    assert shell == words


def test_verify_names_unknown_properties_and_reads_openstack_image_show(
        setup: dict[str, object]) -> None:
    d = setup["dir"]
    assert isinstance(d, Path)
    (d / "enc.json").write_bytes(attach(setup, "--json").stdout)
    modern = sign_modern(setup, "--bind", str(d / "enc.json"))
    enc = json.loads((d / "enc.json").read_text())
    signature = json.loads(modern.read_text())
    # What `openstack image show -f json` prints: integers, nulls, lists, nested properties.
    shown = {
        "container_format": "bare", "disk_format": "raw", "checksum": None,
        "id": "9e1c4c0a-1111-4c4c-9c9c-0a0a0a0a0a0a",
        "min_disk": 0, "min_ram": 0, "name": "my-image", "protected": False, "size": 1234,
        "tags": [], "visibility": "private",
        "properties": {**enc, **signature, "os_hidden": False, "x_unsigned_extra": "hello"},
    }
    (d / "show.json").write_text(json.dumps(shown))
    proc = verify(setup, d / "show.json")
    assert proc.returncode == 0, proc.stderr
    assert "x_unsigned_extra" in proc.stderr.decode()
    assert "min_disk" not in proc.stderr.decode()
    proc = imgcrypt("verify", d / "disk.luks", "--properties", d / "show.json", "--cert",
                    d / "ed25519.crt", "--json")
    assert json.loads(proc.stdout)["ignored_properties"] == ["x_unsigned_extra"]


def test_properties_refuses_a_signature_file_that_names_a_property_twice(
        setup: dict[str, object]) -> None:
    """One document, one meaning: Python's json would keep the last of two values silently,
    so a reader that does not look (another tool, a reviewer) could see the first one."""
    d = setup["dir"]
    assert isinstance(d, Path)
    signed = json.loads(sign_modern(setup).read_text())
    name, value = "imgcrypt_sign_hash", signed["imgcrypt_sign_hash"]
    body = json.dumps(signed)[:-1] + f', "{name}": "{value}"' + "}"
    (d / "twice.json").write_text(body)
    proc = attach(setup, "--signature", d / "twice.json")
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == b""
    assert f"{name!r} more than once".encode() in proc.stderr


def test_upload_reads_property_files_and_pairs_as_sign_and_verify_do(tmp_path: Path) -> None:
    """Refused before any request to a cloud (none is configured here): a document naming a
    property twice is refused as verify and sign --bind refuse it, and so is --property NAME
    given twice, as sign refuses it. Before, upload kept the last value of either silently."""
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(4096))
    (tmp_path / "twice.json").write_bytes(b'{"os_encrypt_key_id": "a", "os_encrypt_key_id": "b"}')
    signer = key("ed25519")
    (tmp_path / "signer.key").write_bytes(key_pem(signer))
    (tmp_path / "signer.crt").write_bytes(cert_pem(make_cert(signer)))
    sign = ["sign", image, "--key", tmp_path / "signer.key", "--cert", tmp_path / "signer.crt",
            "--mode", "imgcrypt"]
    for command in (["upload", image, "--name", "x", "--properties"],
                    ["verify", image, "--cert", tmp_path / "signer.crt", "--properties"],
                    [*sign, "--bind"]):
        proc = imgcrypt(*command, tmp_path / "twice.json")
        assert proc.returncode == 4, (command[0], proc.stderr)
        assert proc.stderr == b"imgcrypt: error: property 'os_encrypt_key_id' appears more " \
                              b"than once\n", command[0]
    for command in (["upload", image, "--name", "x"], sign):
        proc = imgcrypt(*command, "--property", "a=1", "--property", "a=2")
        assert proc.returncode == 2, (command[0], proc.stderr)
        assert proc.stderr == b"imgcrypt: error: --property a given twice\n", command[0]


def test_os_decrypt_size_is_one_number(tmp_path: Path) -> None:
    """The README's order (encrypt, then properties for the upload) on a 3,146,505-byte image:
    properties used to publish the payload rounded up to 3,146,752 bytes, and a download gave
    back 247 zeros the image never had. Now it asks for --size, in one line, exit 2; with the
    size encrypt printed, what decrypt gives back is the image, byte for byte."""
    store = ["--keystore", str(tmp_path / "keys")]
    plain = os.urandom(3_146_505)
    (tmp_path / "disk.raw").write_bytes(plain)
    encrypted = json.loads(imgcrypt("encrypt", tmp_path / "disk.raw", tmp_path / "disk.luks",
                                    "--new-key", "--iterations", "1000", "--json", *store,
                                    check=True).stdout)
    key_id = encrypted["key_id"]
    assert encrypted["properties"]["os_decrypt_size"] == "3146505"

    refused = imgcrypt("properties", tmp_path / "disk.luks", "--key-id", key_id, *store)
    assert refused.returncode == 2 and refused.stdout == b""
    lines = refused.stderr.decode().splitlines()
    assert len(lines) == 1 and "--size" in lines[0] and "3146752" in lines[0]

    size = encrypted["properties"]["os_decrypt_size"]
    published = json.loads(imgcrypt("properties", tmp_path / "disk.luks", "--key-id", key_id,
                                    "--size", size, "--json", *store, check=True).stdout)
    assert published == {**encrypted["properties"], "disk_format": "raw",
                         "container_format": "bare"}
    imgcrypt("decrypt", tmp_path / "disk.luks", tmp_path / "back.raw", "--key-id", key_id,
             "--size", published["os_decrypt_size"], *store, check=True)
    assert (tmp_path / "back.raw").read_bytes() == plain
    bad = imgcrypt("properties", tmp_path / "disk.luks", "--key-id", key_id, "--size", "lots",
                   *store)
    assert bad.returncode == 2 and b"neither a number of bytes nor 'payload'" in bad.stderr

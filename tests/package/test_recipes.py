"""The recipes a person calls from Python, end to end on real files, the real local keystore
and cryptsetup: what ``imgcrypt encrypt --new-key`` (and decrypt, rekey, sign, verify) do on
the command line, as one call each."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import imgcrypt
from imgcrypt.errors import SecretNotFoundError, UsageError, WrongPassphraseError
from imgcrypt.keys.consumers import file_consumer
from imgcrypt.keys.local import LocalKeyStore
from imgcrypt.keys.rules import passphrase_for
from tests.helpers.pki import cert_pem, key, make_cert

FAST = imgcrypt.FormatOptions(iterations=1000)


@pytest.fixture
def store(tmp_path: Path) -> LocalKeyStore:
    return LocalKeyStore(tmp_path / "keys")


def plain_image(tmp_path: Path, size: int = 3_146_505) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / "disk.raw"
    path.write_bytes(data)
    return path, data


def cs_opens(cryptsetup: str, image: Path, passphrase: bytes, tmp_path: Path) -> bool:
    keyfile = tmp_path / "keyfile"
    keyfile.write_bytes(passphrase)
    return subprocess.run([cryptsetup, "open", "--test-passphrase", "--key-file", str(keyfile),
                           str(image)], capture_output=True, timeout=120).returncode == 0


def test_encrypt_under_a_new_key_then_decrypt(tmp_path: Path, store: LocalKeyStore,
                                              cryptsetup: str) -> None:
    src, data = plain_image(tmp_path)
    image = imgcrypt.encrypt_image(str(src), str(tmp_path / "disk.luks"), key_manager=store,
                                   new_key=imgcrypt.DEFAULT_KEY_ORDER, options=FAST)
    assert image.key_created and image.luks_version == 1 and image.decrypt_size == len(data)
    properties = image.property_dict()
    assert properties["os_decrypt_size"] == str(len(data))
    assert properties["os_encrypt_key_id"] == image.key_id
    assert properties["cinder_encryption_key_deletion_policy"] == "on_image_deletion"
    assert image.key_id is not None
    assert store.list_consumers(image.key_id) == [file_consumer(str(tmp_path / "disk.luks"))]
    assert cs_opens(cryptsetup, tmp_path / "disk.luks",
                    passphrase_for(store.get(image.key_id)), tmp_path)

    back = imgcrypt.decrypt_image(str(tmp_path / "disk.luks"), str(tmp_path / "back.raw"),
                                  key_manager=store, key_id=image.key_id,
                                  size=image.decrypt_size)
    assert back.size == len(data) and (tmp_path / "back.raw").read_bytes() == data


def test_a_failed_encrypt_leaves_no_key_and_no_target(tmp_path: Path,
                                                      store: LocalKeyStore) -> None:
    with pytest.raises(FileNotFoundError):
        imgcrypt.encrypt_image(str(tmp_path / "absent.raw"), str(tmp_path / "disk.luks"),
                               key_manager=store, new_key=imgcrypt.DEFAULT_KEY_ORDER,
                               options=FAST)
    assert store.list() == [] and not (tmp_path / "disk.luks").exists()


def test_passphrase_and_existing_key(tmp_path: Path, store: LocalKeyStore) -> None:
    src, data = plain_image(tmp_path, 1 << 20)
    made = imgcrypt.encrypt_image(str(src), str(tmp_path / "p.luks"), passphrase=b"pw",
                                  options=imgcrypt.FormatOptions(version=2, iterations=4,
                                                                 pbkdf_memory_kib=1024))
    assert made.key_id is None and made.properties == () and made.luks_version == 2
    with pytest.raises(WrongPassphraseError):
        imgcrypt.decrypt_image(str(tmp_path / "p.luks"), str(tmp_path / "x"), passphrase=b"no")
    assert not (tmp_path / "x").exists()
    imgcrypt.decrypt_image(str(tmp_path / "p.luks"), str(tmp_path / "p.raw"), passphrase=b"pw")
    assert (tmp_path / "p.raw").read_bytes() == data
    key_id = store.create_key(imgcrypt.KeyOrder())
    image = imgcrypt.encrypt_image(str(src), str(tmp_path / "k.luks"), key_manager=store,
                                   key_id=key_id, options=FAST)
    assert image.key_id == key_id and not image.key_created
    for wrong in ({}, {"key_id": key_id, "passphrase": b"pw"}):
        with pytest.raises(UsageError, match="exactly one of"):
            imgcrypt.encrypt_image(str(src), str(tmp_path / "y"), key_manager=store,
                                   options=FAST, **wrong)  # type: ignore[arg-type]
    with pytest.raises(SecretNotFoundError):
        imgcrypt.encrypt_image(str(src), str(tmp_path / "z.luks"), key_manager=store,
                               key_id="00000000-0000-4000-8000-000000000000", options=FAST)
    assert not (tmp_path / "z.luks").exists()


def test_rekey_moves_the_image_to_a_new_key(tmp_path: Path, store: LocalKeyStore,
                                            cryptsetup: str) -> None:
    src, _ = plain_image(tmp_path, 1 << 20)
    target = tmp_path / "disk.luks"
    image = imgcrypt.encrypt_image(str(src), str(target), key_manager=store,
                                   new_key=imgcrypt.DEFAULT_KEY_ORDER, options=FAST)
    assert image.key_id is not None
    old = passphrase_for(store.get(image.key_id))
    moved = imgcrypt.rekey_image(str(target), key_manager=store, key_id=image.key_id,
                                 new_key=imgcrypt.DEFAULT_KEY_ORDER,
                                 kdf=imgcrypt.KdfOptions(iterations=1000))
    assert moved.key_created and moved.key_id != image.key_id
    assert cs_opens(cryptsetup, target, passphrase_for(store.get(moved.key_id)), tmp_path)
    assert not cs_opens(cryptsetup, target, old, tmp_path)
    assert store.list_consumers(moved.key_id) == [file_consumer(str(target))]
    assert store.list_consumers(image.key_id) == []
    # A re-key that fails (the old key does not open the image) deletes the key made for it.
    before = {s.secret_id for s in store.list()}
    with pytest.raises(WrongPassphraseError):
        imgcrypt.rekey_image(str(target), key_manager=store, key_id=image.key_id,
                             new_key=imgcrypt.DEFAULT_KEY_ORDER,
                             kdf=imgcrypt.KdfOptions(iterations=1000))
    assert {s.secret_id for s in store.list()} == before


def test_sign_then_verify_binding_the_encryption_properties(tmp_path: Path,
                                                            store: LocalKeyStore) -> None:
    src, _ = plain_image(tmp_path, 1 << 20)
    image = imgcrypt.encrypt_image(str(src), str(tmp_path / "disk.luks"), key_manager=store,
                                   new_key=imgcrypt.DEFAULT_KEY_ORDER, options=FAST)
    signer = key("ed25519")
    (tmp_path / "signer.crt").write_bytes(cert_pem(make_cert(signer)))
    signature = imgcrypt.sign_image(str(tmp_path / "disk.luks"), signer,
                                    bind=image.property_dict())
    assert signature.mode == "imgcrypt"
    properties = {**image.property_dict(), **signature.property_dict()}
    sources = imgcrypt.CertificateSources(cert_file=str(tmp_path / "signer.crt"))
    result = imgcrypt.verify_image(str(tmp_path / "disk.luks"), properties,
                                   certificates=sources)
    assert result.size == (tmp_path / "disk.luks").stat().st_size
    properties["os_decrypt_size"] = "1"  # a bound property changed
    with pytest.raises(imgcrypt.VerificationError):
        imgcrypt.verify_image(str(tmp_path / "disk.luks"), properties, certificates=sources)


def test_every_name_the_readme_presents_as_public_is_the_public_api() -> None:
    """The README's Python API table is exactly ``imgcrypt.__all__``, each name importable; the
    hazmat names it shows come from ``imgcrypt.hazmat``, which says it is the expert layer."""
    import re

    import imgcrypt.hazmat

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("<!-- public-api -->")[1].split("<!-- /public-api -->")[0]
    documented = set(re.findall(r"`([A-Za-z_]+)`", table))
    assert documented == set(imgcrypt.__all__) - {"__version__"}
    namespace: dict[str, object] = {}
    for name in sorted(documented):
        exec(f"from imgcrypt import {name}", namespace)  # as a reader would write it
        assert namespace[name] is getattr(imgcrypt, name)
    expert = readme.split("`imgcrypt.hazmat` is the expert layer")[1].split("\n\n")[0]
    shown = set(re.findall(r"`([A-Za-z_]+)`", expert))
    assert shown and shown <= set(imgcrypt.hazmat.__all__)
    for name in imgcrypt.hazmat.__all__:
        assert getattr(imgcrypt.hazmat, name) is not None
    assert "expert layer" in (imgcrypt.hazmat.__doc__ or "")
    # The primitives are not presented as recipes.
    assert not {"parse_header", "encrypt_stream", "KdfLimits"} & set(imgcrypt.__all__)


def test_rekey_moves_a_qcow2_with_qemu_luks_to_a_new_key(tmp_path: Path, store: LocalKeyStore,
                                                         qemu_img: str) -> None:
    """The re-key recipe takes what ``imgcrypt rekey`` takes: a qcow2 with qemu's built-in
    LUKS is re-keyed by qemu-img amend, and qemu-img opens it with the new key only."""
    from tests.helpers.util import qemu_opens, run_qemu_img, secret_file

    src, _ = plain_image(tmp_path, 1 << 20)
    old = secret_file(tmp_path, "old", b"qcow2 old passphrase")
    target = tmp_path / "disk.qcow2"
    run_qemu_img(["convert", "--object", f"secret,id=s0,file={old}", "-f", "raw", "-O", "qcow2",
                  "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
                  str(src), str(target)])
    moved = imgcrypt.rekey_image(str(target), passphrase=old.read_bytes(), key_manager=store,
                                 new_key=imgcrypt.DEFAULT_KEY_ORDER,
                                 kdf=imgcrypt.KdfOptions(iter_time_ms=10))
    assert moved.key_id is not None and moved.key_created
    new = secret_file(tmp_path, "new", passphrase_for(store.get(moved.key_id)))
    assert qemu_opens(target, new)
    assert not qemu_opens(target, old)
    assert store.list_consumers(moved.key_id) == [file_consumer(str(target))]


def test_decrypt_opens_a_qcow2_with_qemu_luks(tmp_path: Path, store: LocalKeyStore,
                                              qemu_img: str) -> None:
    """As ``imgcrypt decrypt`` does, the recipe hands a qcow2 with qemu's built-in LUKS to
    qemu-img and writes the guest's raw disk."""
    from tests.helpers.util import run_qemu_img, secret_file

    src, data = plain_image(tmp_path, 1 << 20)
    key_id = store.create_key(imgcrypt.DEFAULT_KEY_ORDER)
    pw = secret_file(tmp_path, "pw", passphrase_for(store.get(key_id)))
    image = tmp_path / "disk.qcow2"
    run_qemu_img(["convert", "--object", f"secret,id=s0,file={pw}", "-f", "raw", "-O", "qcow2",
                  "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
                  str(src), str(image)])
    out = imgcrypt.decrypt_image(str(image), str(tmp_path / "out.raw"), key_manager=store,
                                 key_id=key_id)
    assert (out.container, out.luks_version, out.size) == ("qcow2", 1, len(data))
    assert (tmp_path / "out.raw").read_bytes() == data
    with pytest.raises(WrongPassphraseError):
        imgcrypt.decrypt_image(str(image), str(tmp_path / "no.raw"), passphrase=b"wrong")
    assert not (tmp_path / "no.raw").exists()


def test_encrypting_around_the_caller_s_own_streams(tmp_path: Path,
                                                     store: LocalKeyStore) -> None:
    """``encrypting`` is the key lifecycle without the files: the caller's streams, the new
    key deleted when the caller's block fails, the properties when it succeeds."""
    import io

    data = os.urandom(70_000)
    with pytest.raises(OSError, match="the caller's disk is full"), \
            imgcrypt.encrypting("nowhere.luks", key_manager=store,
                                new_key=imgcrypt.DEFAULT_KEY_ORDER) as job:
        raise OSError("the caller's disk is full")
    assert job.key_created and store.list() == []
    out = io.BytesIO()
    target = str(tmp_path / "mine.luks")
    with imgcrypt.encrypting(target, key_manager=store,
                             new_key=imgcrypt.DEFAULT_KEY_ORDER) as job:
        job.encrypt(io.BytesIO(data), out, FAST)
    image = job.image
    assert image.decrypt_size == len(data) and image.image_size == len(out.getvalue())
    assert image.property_dict()["os_decrypt_size"] == str(len(data))
    assert image.key_id is not None
    assert store.list_consumers(image.key_id) == [file_consumer(target)]
    plain = io.BytesIO()
    out.seek(0)
    opened = imgcrypt.unlock_image(out, key_manager=store, key_id=image.key_id)
    assert opened.decrypt(out, plain, size=image.decrypt_size) == len(data)
    assert plain.getvalue() == data

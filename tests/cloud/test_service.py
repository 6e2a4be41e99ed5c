"""Service flows end to end: a person prepares an image, an image service and a volume service
handle it. Run against the local keystore and, for the full story, against a real Barbican."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from imgcrypt.errors import (
    FormatError,
    FormatFault,
    SecretNotFoundError,
    UnsupportedError,
    UsageError,
    UsageFault,
    VerificationError,
    WrongPassphraseError,
)
from imgcrypt.keys.barbican import BarbicanKeyManager
from imgcrypt.keys.local import LocalKeyStore
from imgcrypt.keys.manager import KeyManager, KeyOrder
from imgcrypt.keys.properties import encryption_properties
from imgcrypt.keys.rules import DeletionOutcome, passphrase_for
from imgcrypt.keys.secret import EncryptionSpec, KeySizeMeaning, Secret
from imgcrypt.luks.options import FormatOptions
from imgcrypt.luks.transfer import encrypt_stream
from imgcrypt.luks.unlock import unlock_stream
from imgcrypt.service.flows import (
    create_volume_from_image,
    delete_hook,
    download_hook,
    upload_volume_as_image,
)
from imgcrypt.service.upload import UploadInspector, UploadPolicy, inspect_upload
from tests.helpers.barbican_server import BarbicanServer
from tests.helpers.prepared import FAST, chunked, prepare_image, signing_identity
from tests.helpers.util import imgcrypt, raises_fault, secret_file
from tests.helpers.util import test_passphrase as cs_test_passphrase

SPEC = EncryptionSpec("luks", "aes-xts-plain64", 512, KeySizeMeaning.WHOLE_XTS_KEY)


@pytest.fixture
def keystore(tmp_path: Path) -> LocalKeyStore:
    return LocalKeyStore(tmp_path / "keys")


def test_upload_accepts_a_prepared_image_and_passes_bytes_through(keystore: LocalKeyStore) -> None:
    payload = os.urandom(300_000)
    image, properties = prepare_image(keystore, payload)
    inspector = UploadInspector(properties, key_manager=keystore, image_id="img-1")
    passed = b"".join(inspector.wrap(chunked(image)))
    verdict = inspector.finalize()
    assert passed == image
    assert verdict.os_hash_value == hashlib.sha512(image).hexdigest()
    assert verdict.checksum == hashlib.md5(image).hexdigest()
    assert verdict.luks_version == 1 and verdict.signature is not None
    assert verdict.consumer_registered
    key_id = properties["os_encrypt_key_id"]
    assert [c.resource_id for c in keystore.list_consumers(key_id)] == ["img-1"]


def test_upload_rejections(keystore: LocalKeyStore) -> None:
    run_upload_rejections(keystore)


def run_upload_rejections(keystore: KeyManager) -> None:
    payload = os.urandom(100_000)
    image, properties = prepare_image(keystore, payload)
    tampered = bytearray(image)
    tampered[-5] ^= 1
    with pytest.raises(VerificationError):
        inspect_upload(chunked(bytes(tampered)), properties, key_manager=keystore)
    with pytest.raises(VerificationError):
        inspect_upload(chunked(image[:-512]), properties, key_manager=keystore)

    unsigned_image, unsigned = prepare_image(keystore, payload, sign=False)
    # Claims encryption but the bytes are a raw disk.
    with raises_fault(FormatError, FormatFault.ENCRYPTION_CLAIM, match="not a LUKS image"):
        inspect_upload(chunked(payload), unsigned, key_manager=keystore)
    # Claims LUKSv2 but is LUKSv1.
    with raises_fault(FormatError, FormatFault.ENCRYPTION_CLAIM, match="claims LUKSv2"):
        inspect_upload(chunked(unsigned_image), {**unsigned, "os_encrypt_format": "LUKSv2"},
                       key_manager=keystore)
    # The key it names does not exist.
    missing = {**unsigned, "os_encrypt_key_id": "00000000-0000-4000-8000-000000000000",
               "cinder_encryption_key_id": "00000000-0000-4000-8000-000000000000"}
    with pytest.raises(SecretNotFoundError):
        UploadInspector(missing, key_manager=keystore)
    # A LUKS image whose properties declare nothing is reported.
    verdict = inspect_upload(chunked(unsigned_image), {"disk_format": "raw"})
    assert verdict.luks_version == 1 and verdict.encryption is None
    assert "declare no encryption" in verdict.warnings[0]


def test_luks2_refused_under_luks1_only_policy(keystore: KeyManager) -> None:
    image, properties = prepare_image(keystore, os.urandom(50_000), version=2, sign=False)
    with raises_fault(UnsupportedError, FormatFault.LUKS_VERSION_REFUSED):
        inspect_upload(chunked(image), properties, key_manager=keystore)
    policy = UploadPolicy(allowed_luks_versions=frozenset({1, 2}))
    verdict = inspect_upload(chunked(image), properties, key_manager=keystore, policy=policy)
    assert verdict.luks_version == 2


def test_volume_lifecycle_local(keystore: LocalKeyStore, tmp_path: Path, cryptsetup: str) -> None:
    run_volume_lifecycle(keystore, tmp_path, cryptsetup)


def run_volume_lifecycle(manager: KeyManager, tmp_path: Path,
                         cryptsetup: str) -> tuple[Path, str, bytes]:
    payload = os.urandom(2_000_000)
    image, properties = prepare_image(manager, payload)
    image_key = properties["os_encrypt_key_id"]
    volume = tmp_path / "volume.img"
    result = create_volume_from_image(chunked(image), properties, str(volume), spec=SPEC,
                                      key_manager=manager,
                                      kdf=None if False else _fast_kdf())
    assert result.mode == "copy" and result.key_created and result.key_id != image_key
    assert result.verdict.signature is not None
    assert volume.read_bytes()[2 << 20 :] == image[2 << 20 :]  # payload copied, not re-encrypted

    volume_pass = secret_file(tmp_path, "vol", passphrase_for(manager.get(result.key_id)))
    image_pass = secret_file(tmp_path, "img", passphrase_for(manager.get(image_key)))
    assert cs_test_passphrase(cryptsetup, volume, volume_pass) == 0
    assert cs_test_passphrase(cryptsetup, volume, image_pass) != 0
    with open(volume, "rb") as f:
        with pytest.raises(WrongPassphraseError):
            unlock_stream(f, image_pass.read_bytes())

    upload = upload_volume_as_image(str(volume), result.key_id, manager)
    new_image = b"".join(upload.chunks())
    assert upload.properties["os_encrypt_key_id"] not in (image_key, result.key_id)
    assert upload.properties["os_decrypt_size"] == str(len(new_image) - (2 << 20))
    verdict = inspect_upload(chunked(new_image), upload.properties, key_manager=manager,
                             image_id="img-2")
    assert verdict.consumer_registered == manager.supports_consumers
    downloaded = b"".join(download_hook(chunked(new_image), upload.properties, manager))
    assert downloaded[: len(payload)] == payload

    original = b"".join(download_hook(chunked(image), properties, manager))
    assert original == payload

    # An image that never registered as a consumer: its properties cannot delete the key.
    other = upload_volume_as_image(str(volume), result.key_id, manager)
    report = delete_hook(other.properties, manager, image_id="never-registered")
    assert report is not None and report.outcome is DeletionOutcome.KEPT_UNBOUND, report
    manager.describe(other.properties["os_encrypt_key_id"])
    # The uploaded image's key is still consumed by img-2 for another image id ...
    if manager.supports_consumers:
        inspect_upload(chunked(new_image), upload.properties, key_manager=manager,
                       image_id="img-3")
    kept = delete_hook(upload.properties, manager, image_id="img-3")
    assert kept is not None and not kept.deleted
    assert "still has consumers: image/image/img-2" in kept.reason
    # ... and goes once img-2 itself is deleted.
    report = delete_hook(upload.properties, manager, image_id="img-2")
    assert report is not None and report.deleted, report
    with pytest.raises(SecretNotFoundError):
        manager.get(upload.properties["os_encrypt_key_id"])
    manager.get(result.key_id)  # the volume's key is untouched
    return volume, result.key_id, payload


def _fast_kdf() -> object:
    from imgcrypt.crypto.kdf import Pbkdf2

    return Pbkdf2("sha256", FAST, os.urandom(32))


def test_signed_volume_upload_binds_the_new_key(keystore: LocalKeyStore, tmp_path: Path) -> None:
    payload = os.urandom(200_000)
    image, properties = prepare_image(keystore, payload, sign=False)
    volume = tmp_path / "volume.img"
    result = create_volume_from_image(chunked(image), properties, str(volume), spec=SPEC,
                                      key_manager=keystore, kdf=_fast_kdf())
    assert result.key_id is not None
    key, cert_id = signing_identity(keystore)
    upload = upload_volume_as_image(str(volume), result.key_id, keystore, signing_key=key,
                                    certificate_uuid=cert_id)
    data = b"".join(upload.chunks())
    assert upload.properties["imgcrypt_sign_algorithm"] == "ed25519"
    verdict = inspect_upload(chunked(data), upload.properties, key_manager=keystore)
    assert verdict.signature is not None and verdict.luks_version == 1
    # Pointing the signed image at another key is caught: the key id is bound.
    other = keystore.create_key(KeyOrder())
    swapped = {**upload.properties, "os_encrypt_key_id": other, "cinder_encryption_key_id": other}
    with pytest.raises(VerificationError):
        inspect_upload(chunked(data), swapped, key_manager=keystore)


def test_encrypted_image_into_unencrypted_type(keystore: LocalKeyStore, tmp_path: Path) -> None:
    payload = os.urandom(70_000)
    image, properties = prepare_image(keystore, payload, sign=False)
    target = tmp_path / "plain-volume"
    with raises_fault(UsageError, UsageFault.VOLUME_TYPE_MISMATCH):
        create_volume_from_image(chunked(image), properties, str(target), spec=None,
                                 key_manager=keystore)
    assert not target.exists()
    result = create_volume_from_image(chunked(image), properties, str(target), spec=None,
                                      key_manager=keystore, decrypt=True)
    assert result.mode == "decrypt" and target.read_bytes() == payload


def test_secret_not_fitting_spec_is_refused_before_writing(keystore: LocalKeyStore,
                                                           tmp_path: Path) -> None:
    key_id = keystore.store(Secret(payload=os.urandom(32), algorithm="AES", bit_length=256,
                                   mode="XTS"))
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(os.urandom(1000)), out, passphrase_for(keystore.get(key_id)),
                   FormatOptions(iterations=FAST))
    properties = encryption_properties(key_id, 1, 1000)
    target = tmp_path / "never"
    with raises_fault(UsageError, UsageFault.SPEC_MISMATCH, match="bit length is 256"):
        create_volume_from_image(chunked(out.getvalue()), properties, str(target), spec=SPEC,
                                 key_manager=keystore, volume_key="clone")
    assert not target.exists()


def test_unencrypted_image_into_encrypted_type_is_encrypted(keystore: LocalKeyStore,
                                                           tmp_path: Path,
                                                           cryptsetup: str) -> None:
    payload = os.urandom(40_000)
    target = tmp_path / "vol"
    result = create_volume_from_image(chunked(payload), {"disk_format": "raw"}, str(target),
                                      spec=SPEC, key_manager=keystore, kdf=_fast_kdf())
    assert result.mode == "encrypt" and result.key_id is not None
    keyfile = secret_file(tmp_path, "k", passphrase_for(keystore.get(result.key_id)))
    assert cs_test_passphrase(cryptsetup, target, keyfile) == 0


def test_eight_concurrent_uploads(keystore: LocalKeyStore) -> None:
    good_image, good_props = prepare_image(keystore, os.urandom(8_000_000))
    flipped = bytearray(good_image)
    flipped[3_000_000] ^= 0x80
    bad = bytes(flipped)
    results: dict[int, str] = {}

    def upload(index: int) -> None:
        data = good_image if index % 2 == 0 else bad
        try:
            inspect_upload(chunked(data), good_props, key_manager=keystore)
            results[index] = "ok"
        except VerificationError:
            results[index] = "rejected"

    tracemalloc.start()
    threads = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert results == {i: "ok" if i % 2 == 0 else "rejected" for i in range(8)}
    # Each hook keeps only the LUKS1 header and the keyslot material its key must open
    # (about 260 KB for a 512-bit key); while it unlocks, the header region cryptsetup's rules
    # describe (every keyslot area, about 2 MiB) exists once or twice; and the chunk in hand.
    # 8 images of 10 MiB (80 MiB in all) pass through in 64 KiB chunks.
    assert peak < 32 * 1024 * 1024, peak


@pytest.mark.barbican
def test_volume_lifecycle_against_real_barbican(barbican: BarbicanServer, tmp_path: Path,
                                                cryptsetup: str) -> None:
    manager = BarbicanKeyManager.standalone(barbican.endpoint, barbican.project_id)
    run_upload_rejections(manager)
    test_luks2_refused_under_luks1_only_policy(manager)
    volume, key_id, payload = run_volume_lifecycle(manager, tmp_path, cryptsetup)
    # The volume decrypts through the command line with its own key from Barbican.
    out = tmp_path / "volume.raw"
    imgcrypt("decrypt", volume, out, "--key-id", key_id, "--key-manager", "barbican",
             "--barbican-endpoint", barbican.endpoint, "--project-id", barbican.project_id,
             "--size", str(len(payload)), check=True)
    assert out.read_bytes() == payload


def test_decrypted_volume_file_keeps_the_image_holes(keystore: LocalKeyStore,
                                                     tmp_path: Path) -> None:
    # 8 MiB of which 64 KiB are data: the volume file gets holes, as qemu-img convert makes.
    payload = bytearray(8 << 20)
    payload[1 << 20 : (1 << 20) + 65536] = os.urandom(65536)
    image, properties = prepare_image(keystore, bytes(payload), sign=False)
    target = tmp_path / "sparse-volume"
    result = create_volume_from_image(chunked(image), properties, str(target), spec=None,
                                      key_manager=keystore, decrypt=True)
    assert result.mode == "decrypt" and result.bytes_written == len(payload)
    assert target.read_bytes() == payload
    assert target.stat().st_blocks * 512 <= 65536 + 2 * 4096

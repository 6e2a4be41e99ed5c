"""Issue 14: a hostile image owner in a cloud. Each attack as the owner would run it, with
images made by cryptsetup (not by imgcrypt's writer) and cryptsetup deciding what opens."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fuzz.targets import _luks2_with_checksums
from imgcrypt import fileio
from imgcrypt.crypto.cost import check_unlock_cost, kdf_cost, pbkdf2_cost
from imgcrypt.crypto.kdf import DEFAULT_LIMITS, Argon2, Pbkdf2
from imgcrypt.errors import (
    CertificateError,
    CertificateFault,
    FormatError,
    FormatFault,
    ImgcryptError,
    KeyManagerError,
    VerificationError,
    VerificationFault,
)
from imgcrypt.keys.barbican import BarbicanKeyManager
from imgcrypt.keys.local import LocalKeyStore
from imgcrypt.keys.manager import KeyManager
from imgcrypt.keys.properties import encryption_properties
from imgcrypt.keys.rules import DeletionOutcome, passphrase_for
from imgcrypt.keys.secret import EncryptionSpec, KeySizeMeaning, Secret
from imgcrypt.luks.transfer import decrypt_stream
from imgcrypt.service.flows import create_volume_from_image, delete_hook, download_hook
from imgcrypt.service.upload import UPLOAD_UNLOCK_LIMITS, UploadInspector, inspect_upload
from imgcrypt.signing import GlanceSigner, ImgcryptSigner
from imgcrypt.signing.certs import CertificatePolicy, check_certificate
from tests.helpers.barbican_server import BarbicanServer
from tests.helpers.util import IMGCRYPT, dump_volume_key, raises_fault, secret_file

SPEC = EncryptionSpec("luks", "aes-xts-plain64", 512, KeySizeMeaning.WHOLE_XTS_KEY)
MIB = 1 << 20


def chunked(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def cs(cryptsetup: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cryptsetup, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def opens(cryptsetup: str, image: Path, keyfile: Path, slot: int | None = None) -> bool:
    extra = ["--key-slot", str(slot)] if slot is not None else []
    return cs(cryptsetup, "open", "--test-passphrase", *extra, "--key-file", keyfile,
              image).returncode == 0


def author_image(cryptsetup: str, tmp_path: Path, version: int, manager: KeyManager,
                 payload: bytes) -> tuple[Path, dict[str, str], Path]:
    """The author's image, made by cryptsetup: keyslot 0 opens with the key the properties
    name, and the author keeps a second keyslot (``luksAddKey``) with a passphrase of their own.
    The payload is written in clear into the data area the way an honest container would not
    hold it; only the header matters here."""
    key_id = manager.store(Secret(payload=os.urandom(64), secret_type="symmetric",
                                  algorithm="AES", bit_length=512, mode="XTS"))
    shared = secret_file(tmp_path, f"shared{version}", passphrase_for(manager.get(key_id)))
    private = secret_file(tmp_path, f"private{version}", b"the author keeps this one")
    image = tmp_path / f"author{version}.img"
    image.write_bytes(bytes(18 * MIB))
    kdf = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
    proc = cs(cryptsetup, "luksFormat", "--batch-mode", "--type", f"luks{version}", *kdf,
              "--key-file", shared, "--key-slot", "0", image)
    assert proc.returncode == 0, proc.stderr
    proc = cs(cryptsetup, "luksAddKey", "--batch-mode", *kdf, "--key-file", shared,
              "--new-key-slot", "5", image, private)
    assert proc.returncode == 0, proc.stderr
    with open(image, "r+b") as f:
        f.seek(16 * MIB)
        f.write(payload)
    assert opens(cryptsetup, image, private, 5)
    properties = {"disk_format": "raw", "container_format": "bare",
                  **encryption_properties(key_id, version, 2 * MIB)}
    return image, properties, private


def fast_kdf() -> Pbkdf2:
    return Pbkdf2("sha256", 1000, os.urandom(32))


@pytest.mark.parametrize("volume_key", ["new", "clone"])
@pytest.mark.parametrize("version", [1, 2])
def test_volume_keeps_none_of_the_authors_keyslots(tmp_path: Path, cryptsetup: str,
                                                   version: int, volume_key: str) -> None:
    manager = LocalKeyStore(tmp_path / "keys")
    image, properties, private = author_image(cryptsetup, tmp_path, version, manager,
                                              os.urandom(2 * MIB))
    volume = tmp_path / "volume.img"
    result = create_volume_from_image(chunked(image.read_bytes()), properties, str(volume),
                                      spec=SPEC, key_manager=manager, kdf=fast_kdf(),
                                      volume_key=volume_key)
    assert result.key_id is not None
    own = secret_file(tmp_path, "own", passphrase_for(manager.get(result.key_id)))
    assert opens(cryptsetup, volume, own)
    # The author's second keyslot opens neither by trial nor when named.
    assert not opens(cryptsetup, volume, private)
    assert not opens(cryptsetup, volume, private, 5)
    dump = cs(cryptsetup, "luksDump", volume).stdout
    if version == 1:
        assert dump.count("ENABLED") == 1, dump
    else:
        assert dump.split("Keyslots:")[1].split("Tokens:")[0].count(": luks2") == 1, dump
    # The author's keyslot material is overwritten, not only disabled: put the author's old
    # header back in front of the volume's keyslot area and the private passphrase still fails.
    forged = tmp_path / "forged.img"
    data = bytearray(volume.read_bytes())
    original = image.read_bytes()
    header_bytes = 4096 if version == 1 else 2 * 16384
    data[:header_bytes] = original[:header_bytes]
    forged.write_bytes(bytes(data))
    assert opens(cryptsetup, image, private, 5)
    assert not opens(cryptsetup, forged, private, 5)


@pytest.mark.parametrize("version", [1, 2])
def test_volume_with_its_own_master_key(tmp_path: Path, cryptsetup: str, version: int) -> None:
    manager = LocalKeyStore(tmp_path / "keys")
    payload = os.urandom(2 * MIB)
    image, properties, _ = author_image(cryptsetup, tmp_path, version, manager, payload)
    image_pass = secret_file(tmp_path, "image-pass",
                             passphrase_for(manager.get(properties["os_encrypt_key_id"])))
    image_master = dump_volume_key(cryptsetup, image, image_pass)
    volume = tmp_path / "volume.img"
    result = create_volume_from_image(chunked(image.read_bytes()), properties, str(volume),
                                      spec=SPEC, key_manager=manager, kdf=fast_kdf(),
                                      master_key="new")
    assert result.mode == "reencrypt" and result.key_id is not None
    # The upload checks saw every byte, not only the os_decrypt_size the payload was cut to.
    assert result.verdict.size == image.stat().st_size
    own = secret_file(tmp_path, "own", passphrase_for(manager.get(result.key_id)))
    volume_master = dump_volume_key(cryptsetup, volume, own)
    assert len(volume_master) == 64 and volume_master != image_master
    assert not opens(cryptsetup, volume, image_pass)
    # The payload is the image's, decrypted and encrypted again under the new master key.
    with open(image, "rb") as src:
        expected = io.BytesIO()
        decrypt_stream(src, expected, image_pass.read_bytes())
    with open(volume, "rb") as src:
        got = io.BytesIO()
        decrypt_stream(src, got, own.read_bytes())
    assert got.getvalue()[: 2 * MIB] == expected.getvalue()[: 2 * MIB]


# -- item 7: LUKS claims that cannot be true ------------------------------------------------


def honest_upload(cryptsetup: str, tmp_path: Path,
                  manager: KeyManager) -> tuple[bytes, dict[str, str]]:
    image, properties, _ = author_image(cryptsetup, tmp_path, 1, manager, os.urandom(MIB))
    properties["os_decrypt_size"] = str(MIB)
    return image.read_bytes()[: 3 * MIB], properties  # header region + 1 MiB of payload


def test_upload_refuses_a_header_only_image(tmp_path: Path, cryptsetup: str) -> None:
    manager = LocalKeyStore(tmp_path / "keys")
    data, properties = honest_upload(cryptsetup, tmp_path, manager)
    payload_offset = 2 * MIB  # cryptsetup's LUKS1 layout
    inspect_upload(chunked(data), properties, key_manager=manager)  # the honest one passes
    for cut in (4096, payload_offset):
        with raises_fault(FormatError, FormatFault.ENCRYPTION_CLAIM):
            inspect_upload(chunked(data[:cut]), properties, key_manager=manager)


def test_upload_refuses_a_payload_offset_beyond_the_image(tmp_path: Path,
                                                          cryptsetup: str) -> None:
    manager = LocalKeyStore(tmp_path / "keys")
    data, properties = honest_upload(cryptsetup, tmp_path, manager)
    forged = bytearray(data[: 2 * MIB])  # header and keyslots, no payload of its own
    forged[104:108] = (0xFFFFFFFF).to_bytes(4, "big")  # payload offset: 2 TiB, in sectors
    unsized = {k: v for k, v in properties.items() if k != "os_decrypt_size"}
    with raises_fault(FormatError, FormatFault.ENCRYPTION_CLAIM, match="payload"):
        inspect_upload(chunked(bytes(forged)), unsized, key_manager=manager)


def test_upload_refuses_a_decrypt_size_beyond_the_payload(tmp_path: Path,
                                                          cryptsetup: str) -> None:
    manager = LocalKeyStore(tmp_path / "keys")
    data, properties = honest_upload(cryptsetup, tmp_path, manager)
    inspect_upload(chunked(data), {**properties, "os_decrypt_size": str(MIB)},
                   key_manager=manager)
    with raises_fault(FormatError, FormatFault.ENCRYPTION_CLAIM, match="os_decrypt_size"):
        inspect_upload(chunked(data), {**properties, "os_decrypt_size": str(MIB + 1)},
                       key_manager=manager)


# -- item 2: keys bound to what they open ---------------------------------------------------


def run_someone_elses_key(manager: KeyManager, cryptsetup: str, tmp_path: Path) -> None:
    victim_data, victim_props = honest_upload(cryptsetup, tmp_path / "victim", manager)
    victim_key = victim_props["os_encrypt_key_id"]
    inspect_upload(chunked(victim_data), victim_props, key_manager=manager, image_id="victim")
    # The attacker uploads an image of their own whose properties name the victim's key.
    attacker_data, attacker_props = honest_upload(cryptsetup, tmp_path / "attacker", manager)
    hostile = {**attacker_props, "os_encrypt_key_id": victim_key,
               "cinder_encryption_key_id": victim_key}
    with raises_fault(VerificationError, VerificationFault.KEY_BINDING):
        inspect_upload(chunked(attacker_data), hostile, key_manager=manager, image_id="attacker")
    assert [c.resource_id for c in manager.list_consumers(victim_key)] == ["victim"]
    # Deleting an image that never consumed the key leaves the key alone ...
    report = delete_hook(hostile, manager, image_id="attacker")
    assert report is not None and not report.deleted and report.outcome is \
        DeletionOutcome.KEPT_UNBOUND, report
    manager.describe(victim_key)
    # ... and so does an image whose id the hook does not know.
    report = delete_hook(hostile, manager)
    assert report is not None and not report.deleted
    manager.describe(victim_key)
    # The victim's own deletion removes it.
    report = delete_hook(victim_props, manager, image_id="victim")
    assert report is not None and report.deleted, report


def test_upload_refuses_a_key_that_does_not_open_the_header(tmp_path: Path,
                                                            cryptsetup: str) -> None:
    (tmp_path / "victim").mkdir()
    (tmp_path / "attacker").mkdir()
    run_someone_elses_key(LocalKeyStore(tmp_path / "keys"), cryptsetup, tmp_path)


@pytest.mark.barbican
def test_key_binding_against_real_barbican(barbican: BarbicanServer, tmp_path: Path,
                                           cryptsetup: str) -> None:
    (tmp_path / "victim").mkdir()
    (tmp_path / "attacker").mkdir()
    manager = BarbicanKeyManager.standalone(barbican.endpoint, barbican.project_id)
    run_someone_elses_key(manager, cryptsetup, tmp_path)


def member_of(barbican: BarbicanServer, project_id: str) -> BarbicanKeyManager:
    """A Barbican client acting with a user's token: role ``member`` of ``project_id``."""
    def factory() -> object:
        from barbicanclient import client
        from keystoneauth1 import session

        sess = session.Session(additional_headers={"X-Roles": "member"})
        return client.Client(session=sess, endpoint=barbican.endpoint, project_id=project_id)

    return BarbicanKeyManager(factory)


@pytest.mark.barbican
def test_key_of_another_project_refused_with_the_users_token(
        barbican: BarbicanServer, tmp_path: Path, cryptsetup: str) -> None:
    victim = member_of(barbican, str(uuid.uuid4()))
    attacker = member_of(barbican, str(uuid.uuid4()))
    data, properties = honest_upload(cryptsetup, tmp_path, victim)
    inspect_upload(chunked(data), properties, key_manager=victim, image_id="victim")
    # The attacker re-uploads a copy of the victim's image (its header opens with the victim's
    # key) under the victim's key id: with the attacker's own token Barbican refuses the key.
    with pytest.raises(KeyManagerError):
        inspect_upload(chunked(data), properties, key_manager=attacker, image_id="copy")
    with pytest.raises(KeyManagerError):
        list(download_hook(chunked(data), properties, attacker))
    report = delete_hook(properties, attacker, image_id="copy")
    assert report is not None and not report.deleted
    assert [c.resource_id for c in victim.list_consumers(properties["os_encrypt_key_id"])] == \
        ["victim"]


# -- item 3: KDF caps as cost ----------------------------------------------------------------


def cryptsetup_luks2(cryptsetup: str, tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    keyfile = secret_file(tmp_path, "pw", b"passphrase")
    image = tmp_path / "hostile2.img"
    image.write_bytes(bytes(18 * MIB))
    kdf = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", *extra]
    proc = cs(cryptsetup, "luksFormat", "--batch-mode", "--type", "luks2", *kdf,
              "--key-file", keyfile, image)
    assert proc.returncode == 0, proc.stderr
    proc = cs(cryptsetup, "luksAddKey", "--batch-mode", *kdf, "--key-file", keyfile,
              image, secret_file(tmp_path, "pw2", b"second"))
    assert proc.returncode == 0, proc.stderr
    return image, keyfile


def rewrite_luks2_json(image: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit the JSON of both metadata copies of a cryptsetup-made header, checksums repaired."""
    data = bytearray(image.read_bytes())
    hdr_size = int.from_bytes(data[8:16], "big")
    text = bytes(data[4096:hdr_size]).split(b"\0", 1)[0]
    obj = json.loads(text)
    change(obj)
    new = json.dumps(obj).encode()
    assert len(new) < hdr_size - 4096
    for offset in (0, hdr_size):
        data[offset + 4096 : offset + hdr_size] = new + bytes(hdr_size - 4096 - len(new))
    image.write_bytes(_luks2_with_checksums(bytes(data)))


def decrypt_refused_fast(image: Path, keyfile: Path, tmp_path: Path) -> str:
    """``imgcrypt decrypt`` on the hostile image: exit 3, in seconds, not hours."""
    start = time.monotonic()
    try:
        proc = subprocess.run([*IMGCRYPT, "decrypt", str(image), str(tmp_path / "out.raw"),
                               "--passphrase-file", str(keyfile)], capture_output=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("imgcrypt spent its KDF budget on a hostile header instead of refusing it")
    assert proc.returncode == 3, proc.stderr
    assert time.monotonic() - start < 30
    assert not (tmp_path / "out.raw").exists()
    return proc.stderr.decode()


def test_luks2_digest_of_512_bytes_with_sha3(tmp_path: Path, cryptsetup: str) -> None:
    image, keyfile = cryptsetup_luks2(cryptsetup, tmp_path)  # keyslots: pbkdf2-sha256, 1000

    def hostile(size: int) -> Callable[[dict[str, Any]], None]:
        def edit(obj: dict[str, Any]) -> None:
            # Just under the old count caps: 2 x (1000 + 99,000,000) iterations in all; the
            # digest is checked after each keyslot, with the right passphrase too.
            digest = obj["digests"]["0"]
            digest.update(hash="sha3-256", iterations=99_000_000,
                          digest=base64.b64encode(os.urandom(size)).decode())
        return edit

    # 512 bytes of digest (16 SHA3 blocks an iteration) breaks cryptsetup's digest-length rule.
    original = image.read_bytes()
    rewrite_luks2_json(image, hostile(512))
    assert "digest 0 is 512 bytes" in decrypt_refused_fast(image, keyfile, tmp_path)
    # At the hash's own length it is a valid header, and SHA3's cost per iteration (about 6
    # SHA-256 iterations) puts 99 million of them over the budget.
    image.write_bytes(original)
    rewrite_luks2_json(image, hostile(32))
    assert "budget" in decrypt_refused_fast(image, keyfile, tmp_path)


def test_luks1_sha1_with_a_64_byte_key(tmp_path: Path, cryptsetup: str) -> None:
    keyfile = secret_file(tmp_path, "pw", b"passphrase")
    image = tmp_path / "hostile1.img"
    image.write_bytes(bytes(4 * MIB))
    kdf = ["--pbkdf-force-iterations", "1000", "--hash", "sha1", "--key-size", "512"]
    assert cs(cryptsetup, "luksFormat", "--batch-mode", "--type", "luks1", *kdf,
              "--key-file", keyfile, image).returncode == 0
    assert cs(cryptsetup, "luksAddKey", "--batch-mode", *kdf, "--key-file", keyfile, image,
              secret_file(tmp_path, "pw2", b"second")).returncode == 0
    data = bytearray(image.read_bytes())
    for slot in (0, 1):  # 2 x 99,000,000 + 2 x 1000 digest iterations: under the old caps
        at = 208 + 48 * slot + 4
        data[at : at + 4] = (99_000_000).to_bytes(4, "big")
    image.write_bytes(bytes(data))
    assert "budget" in decrypt_refused_fast(image, keyfile, tmp_path)


def test_argon2_at_the_old_total_cap(tmp_path: Path, cryptsetup: str) -> None:
    image, keyfile = cryptsetup_luks2(cryptsetup, tmp_path)
    salt = base64.b64encode(os.urandom(32)).decode()

    def hostile(obj: dict[str, Any]) -> None:
        for slot in obj["keyslots"].values():  # 2 x 4 GiB x 16 passes: the old per-slot cap
            slot["kdf"] = {"type": "argon2id", "time": 16, "memory": 4 * 1024 * 1024,
                           "cpus": 4, "salt": salt}

    rewrite_luks2_json(image, hostile)
    assert "budget" in decrypt_refused_fast(image, keyfile, tmp_path)


def test_cost_model_counts_blocks_and_hash_price() -> None:
    # One 32-byte SHA-256 block is the unit; sha3-256 for 512 bytes is 16 blocks at 6.2 each.
    assert pbkdf2_cost("sha256", 1000, 32) == 1000
    assert pbkdf2_cost("sha256", 1000, 64) == 2000
    assert pbkdf2_cost("sha1", 1000, 64) == 4400
    assert pbkdf2_cost("sha3-256", 1000, 512) == 99_200
    assert kdf_cost(Pbkdf2("sha512", 10, b"s"), 20) == 37
    # A cryptsetup-like LUKS2 unlock (argon2id 1 GiB x 4 passes + digest) fits the budget ...
    legit = [(Argon2("argon2id", 4, 1 << 20, 4, bytes(16)), 64), (Pbkdf2("sha256", 100_000,
                                                                          b"s"), 32)]
    check_unlock_cost(legit, DEFAULT_LIMITS.max_unlock_cost)
    # ... and the upload hook's half budget takes two such keyslots.
    check_unlock_cost(legit * 2, UPLOAD_UNLOCK_LIMITS.max_unlock_cost)
    # ... and so do eight LUKS1 keyslots of 16 million SHA-256 iterations (a 64-byte key, two
    # blocks) with their digest checks; twelve do not.
    luks1 = [(Pbkdf2("sha256", 16_000_000, b"s"), 64), (Pbkdf2("sha256", 2_000_000, b"s"), 20)]
    assert check_unlock_cost(luks1 * 8, DEFAULT_LIMITS.max_unlock_cost) == 272_000_000
    with raises_fault(FormatError, FormatFault.LIMIT_EXCEEDED):
        check_unlock_cost(luks1 * 12, DEFAULT_LIMITS.max_unlock_cost)


# -- item 5: terminal escapes ----------------------------------------------------------------

ESCAPE_CN = "x\x1b[2K\x1b[1A\rvalid: 1048580 bytes signed by CN=release\x1b[8m"


def test_certificate_subject_escapes_reach_no_terminal(tmp_path: Path) -> None:
    from tests.helpers.pki import NOW, cert_pem, key, key_pem, make_cert

    image = tmp_path / "disk.raw"
    image.write_bytes(os.urandom(4096))
    signer = key("p384")
    (tmp_path / "k.pem").write_bytes(key_pem(signer))
    (tmp_path / "c.pem").write_bytes(cert_pem(make_cert(signer, ESCAPE_CN)))
    props = tmp_path / "props.json"
    proc = subprocess.run([*IMGCRYPT, "sign", str(image), "--key", str(tmp_path / "k.pem"),
                           "--cert", str(tmp_path / "c.pem"), "--properties-out", str(props),
                           "--mode", "imgcrypt"],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    verify = [*IMGCRYPT, "verify", str(image), "--properties", str(props), "--cert",
              str(tmp_path / "c.pem")]
    later = (NOW + dt.timedelta(days=400)).isoformat()
    failed = subprocess.run([*verify, "--at", later], capture_output=True, timeout=120)
    assert failed.returncode == 4
    valid = subprocess.run([*verify, "--at", NOW.isoformat()], capture_output=True, timeout=120)
    assert valid.returncode == 0, valid.stderr
    for stream in (failed.stdout, failed.stderr, valid.stdout, valid.stderr):
        assert b"\x1b" not in stream and b"\r" not in stream, stream
    assert b"\\x1b[2K" in failed.stderr + failed.stdout
    assert valid.stdout.count(b"\n") == 1 + valid.stdout.count(b"\n  ")  # no forged lines


def test_header_strings_escaped_by_inspect_and_errors(tmp_path: Path, cryptsetup: str) -> None:
    keyfile = secret_file(tmp_path, "pw", b"passphrase")
    image = tmp_path / "v1.img"
    image.write_bytes(bytes(4 * MIB))
    assert cs(cryptsetup, "luksFormat", "--batch-mode", "--type", "luks1",
              "--pbkdf-force-iterations", "1000", "--key-file", keyfile, image).returncode == 0
    data = bytearray(image.read_bytes())
    data[168:208] = b"\x1b]0;owned\x07\x1b[2J\r\nvalid\x00".ljust(40, b"\0")  # LUKS1 uuid field
    image.write_bytes(bytes(data))
    proc = subprocess.run([*IMGCRYPT, "inspect", str(image)], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert b"\x1b" not in proc.stdout and b"\x07" not in proc.stdout and b"\r" not in proc.stdout
    assert b"\\x1b]0;owned" in proc.stdout
    # A LUKS2 JSON string (the segment's cipher) reaches the error line escaped.
    image2, keyfile2 = cryptsetup_luks2(cryptsetup, tmp_path)

    def hostile(obj: dict[str, Any]) -> None:
        obj["segments"]["0"]["encryption"] = "aes-xts-plain64\x1b[2K\rall good"

    rewrite_luks2_json(image2, hostile)
    proc = subprocess.run([*IMGCRYPT, "inspect", str(image2)], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert b"\x1b" not in proc.stdout and b"\r" not in proc.stdout, proc.stdout
    proc = subprocess.run([*IMGCRYPT, "decrypt", str(image2), str(tmp_path / "out"),
                           "--passphrase-file", str(keyfile2)], capture_output=True, timeout=60)
    assert proc.returncode == 3
    assert b"\x1b" not in proc.stderr and b"\r" not in proc.stderr, proc.stderr


# -- item 8: outputs -------------------------------------------------------------------------


def small_luks(tmp_path: Path, cryptsetup: str) -> tuple[Path, Path]:
    keyfile = secret_file(tmp_path, "pw", b"passphrase")
    image = tmp_path / "small.img"
    image.write_bytes(bytes(3 * MIB))
    assert cs(cryptsetup, "luksFormat", "--batch-mode", "--type", "luks1",
              "--pbkdf-force-iterations", "1000", "--key-file", keyfile, image).returncode == 0
    return image, keyfile


def decrypt_cli(image: Path, target: Path, keyfile: Path, *extra: str,
                umask: int = 0o022) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*IMGCRYPT, "decrypt", str(image), str(target), "--passphrase-file",
                           str(keyfile), *extra], capture_output=True, timeout=120,
                          preexec_fn=lambda: os.umask(umask))


def test_force_refuses_fifo_and_device_targets(tmp_path: Path, cryptsetup: str) -> None:
    image, keyfile = small_luks(tmp_path, cryptsetup)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    targets = [fifo]
    if os.geteuid() == 0:
        node = tmp_path / "null"
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        targets.append(node)
    for target in targets:
        kind = stat.S_IFMT(os.lstat(target).st_mode)
        proc = decrypt_cli(image, target, keyfile, "--force")
        assert proc.returncode == 2, proc.stderr
        assert b"not a regular file" in proc.stderr
        assert stat.S_IFMT(os.lstat(target).st_mode) == kind  # still a FIFO / device
    assert not list(tmp_path.glob("*.imgcrypt-tmp"))


def test_plaintext_written_0600_unless_asked(tmp_path: Path, cryptsetup: str) -> None:
    image, keyfile = small_luks(tmp_path, cryptsetup)
    out = tmp_path / "plain.raw"
    assert decrypt_cli(image, out, keyfile).returncode == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    shared = tmp_path / "shared.raw"
    assert decrypt_cli(image, shared, keyfile, "--mode", "0644").returncode == 0
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o644


def test_temporary_output_is_not_reopened_by_path(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone sharing the directory swaps the temporary name for a symlink to their file
    right after it is created (the race, won on purpose here): the output must not follow."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    real_mkstemp = tempfile.mkstemp

    def racing_mkstemp(*args: Any, **kwargs: Any) -> tuple[int, str]:
        fd, name = real_mkstemp(*args, **kwargs)
        os.unlink(name)
        os.symlink(victim, name)
        return fd, name

    monkeypatch.setattr(fileio.tempfile, "mkstemp", racing_mkstemp)
    target = tmp_path / "out.raw"
    # issue 23: the swapped name is noticed before the rename, the output refused
    with pytest.raises(ImgcryptError, match="replaced by another process"), \
            fileio.atomic_output(str(target)) as f:
        f.write(b"secret plaintext")
    assert victim.read_bytes() == b"untouched"
    assert not target.exists()


def test_keystore_files_of_another_user_refused_for_root_too(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    store = LocalKeyStore(tmp_path / "keys")
    key_id = store.store(Secret(payload=os.urandom(32), secret_type="symmetric"))
    path = tmp_path / "keys" / f"{key_id}.json"
    os.chown(path, 4321, 4321)
    with pytest.raises(KeyManagerError, match="owned by uid 4321"):
        store.get(key_id)
    os.chown(path, 0, 0)
    store.get(key_id)
    os.chown(tmp_path / "keys", 4321, 4321)
    with pytest.raises(KeyManagerError, match="owned by uid 4321"):
        store.get(key_id)


# -- item 6: one certificate policy for every key type ----------------------------------------

KINDS = ["p384", "ed25519", "mldsa65"]
UNKNOWN_CRITICAL = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"),
                                              b"\x05\x00")
CODE_SIGNING = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])
SERVER_ONLY = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])


def issue(subject_key: Any, subject: str, issuer_key: Any, issuer: str, *, ca: bool,
          extra: tuple[tuple[x509.ExtensionType, bool], ...] = ()) -> x509.Certificate:
    from tests.helpers.pki import NOW, name

    builder = (
        x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
        .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=9))
        .add_extension(x509.BasicConstraints(ca, None), critical=True)
        .add_extension(x509.KeyUsage(not ca, False, False, False, False, ca, ca, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()),
                       critical=False)
    )
    for extension, critical in extra:
        builder = builder.add_extension(extension, critical)
    hash_algorithm = hashes.SHA384() if isinstance(issuer_key, ec.EllipticCurvePrivateKey) \
        else None
    return builder.sign(issuer_key, hash_algorithm)


def chain_of(kind: str, *, root_extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
             inter_extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
             leaf_extra: tuple[tuple[x509.ExtensionType, bool], ...] = ()
             ) -> tuple[x509.Certificate, x509.Certificate, x509.Certificate]:
    from tests.helpers.pki import key

    root_key, inter_key, leaf_key = key(f"{kind}-root"), key(f"{kind}-inter"), key(kind)
    root = issue(root_key, "root", root_key, "root", ca=True, extra=root_extra)
    inter = issue(inter_key, "inter", root_key, "root", ca=True, extra=inter_extra)
    leaf = issue(leaf_key, "leaf", inter_key, "inter", ca=False, extra=leaf_extra)
    return root, inter, leaf


def checked(root: x509.Certificate | None, *chain: x509.Certificate,
            policy: CertificatePolicy | None = None) -> None:
    from tests.helpers.pki import NOW

    check_certificate(list(chain), trust=[root] if root is not None else None,
                      clock=lambda: NOW, policy=policy)


@pytest.mark.parametrize("kind", KINDS)
def test_every_key_type_refuses_the_same_chains(kind: str) -> None:
    root, inter, leaf = chain_of(kind, leaf_extra=((CODE_SIGNING, False),))
    checked(root, leaf, inter)  # the honest chain passes
    # An intermediate with a critical extension nobody understands.
    root, inter, leaf = chain_of(kind, inter_extra=((UNKNOWN_CRITICAL, True),))
    with raises_fault(CertificateError, CertificateFault.UNTRUSTED_CHAIN, match="critical"):
        checked(root, leaf, inter)
    # A leaf with one.
    root, inter, leaf = chain_of(kind, leaf_extra=((UNKNOWN_CRITICAL, True),))
    with raises_fault(CertificateError, CertificateFault.UNTRUSTED_CHAIN, match="critical"):
        checked(root, leaf, inter)
    # The root may only vouch for example.com; the leaf names evil.org.
    constraint = x509.NameConstraints([x509.DNSName("example.com")], None)
    evil = x509.SubjectAlternativeName([x509.DNSName("evil.org")])
    root, inter, leaf = chain_of(kind, root_extra=((constraint, True),),
                                 leaf_extra=((evil, False),))
    with raises_fault(CertificateError, CertificateFault.UNTRUSTED_CHAIN, match="name constraint"):
        checked(root, leaf, inter)
    # A code-signing CA (EKU on the intermediate) issuing a code-signing leaf is fine.
    root, inter, leaf = chain_of(kind, inter_extra=((CODE_SIGNING, False),),
                                 leaf_extra=((CODE_SIGNING, False),))
    checked(root, leaf, inter)
    # A TLS-only CA is not.
    root, inter, leaf = chain_of(kind, inter_extra=((SERVER_ONLY, False),))
    with raises_fault(CertificateError, CertificateFault.UNTRUSTED_CHAIN):
        checked(root, leaf, inter)


@pytest.mark.parametrize("kind", KINDS)
def test_tls_server_certificates_sign_no_images(kind: str) -> None:
    _root, _inter, leaf = chain_of(kind, leaf_extra=((SERVER_ONLY, False),))
    with raises_fault(CertificateError, CertificateFault.KEY_USAGE, match="extended key usage"):
        checked(None, leaf)
    root, inter, leaf = chain_of(kind, leaf_extra=((SERVER_ONLY, False),))
    with raises_fault(CertificateError, CertificateFault.KEY_USAGE, match="extended key usage"):
        checked(root, leaf, inter)
    # A deployment that signs with its own EKU says so.
    own = x509.ObjectIdentifier("1.3.6.1.4.1.99999.2")
    _root, _inter, leaf = chain_of(kind, leaf_extra=((x509.ExtendedKeyUsage([own]), False),))
    with raises_fault(CertificateError, CertificateFault.KEY_USAGE):
        checked(None, leaf)
    checked(None, leaf, policy=CertificatePolicy(extended_key_usages=(own,)))
    # Without trust anchors too, a leaf's unknown critical extension is refused.
    _root, _inter, leaf = chain_of(kind, leaf_extra=((UNKNOWN_CRITICAL, True),))
    with raises_fault(CertificateError, CertificateFault.UNTRUSTED_CHAIN, match="critical"):
        checked(None, leaf)


def both_schemes(tmp_path: Path, manager: LocalKeyStore) -> tuple[Path, dict[str, str], Path,
                                                                    Path]:
    """One key signs in both schemes; the imgcrypt scheme names a valid certificate, the Glance
    scheme one for the same key that has expired (a consumer checking Glance's would refuse)."""
    from tests.helpers.pki import NOW, cert_pem, key, make_cert

    signer = key("p384")
    valid = cert_pem(make_cert(signer, "release"))
    expired = cert_pem(make_cert(signer, "release", not_before=NOW - dt.timedelta(days=60),
                                 not_after=NOW - dt.timedelta(days=1)))
    valid_id = manager.store(Secret(payload=valid, secret_type="certificate"))
    expired_id = manager.store(Secret(payload=expired, secret_type="certificate"))
    image = tmp_path / "signed.raw"
    image.write_bytes(os.urandom(100_000))
    imgcrypt_signer = ImgcryptSigner(signer, certificate_uuid=valid_id)
    glance_signer = GlanceSigner(signer, certificate_uuid=expired_id)
    for s in (imgcrypt_signer, glance_signer):
        s.update(image.read_bytes())
    properties = {**imgcrypt_signer.finalize(), **glance_signer.finalize()}
    (tmp_path / "valid.pem").write_bytes(valid)
    (tmp_path / "expired.pem").write_bytes(expired)
    return image, properties, tmp_path / "valid.pem", tmp_path / "expired.pem"


def test_each_scheme_checked_against_its_own_certificate(tmp_path: Path) -> None:
    from tests.helpers.pki import NOW

    manager = LocalKeyStore(tmp_path / "keys")
    image, properties, valid, expired = both_schemes(tmp_path, manager)
    # The upload hook fetches both certificates: the Glance one has expired.
    with raises_fault(CertificateError, CertificateFault.EXPIRED):
        UploadInspector(properties, key_manager=manager, clock=lambda: NOW)
    # At the command line, --cert serves one scheme only.
    props = tmp_path / "props.json"
    props.write_text(json.dumps(properties))
    base = [*IMGCRYPT, "verify", str(image), "--properties", str(props), "--at", NOW.isoformat()]
    one = subprocess.run([*base, "--cert", str(valid)], capture_output=True, timeout=120)
    assert one.returncode == 2, one.stderr
    assert b"--glance-cert" in one.stderr
    own = subprocess.run([*base, "--cert", str(valid), "--glance-cert", str(expired)],
                         capture_output=True, timeout=120)
    assert own.returncode == 4 and b"expired" in own.stderr, own.stderr
    both = subprocess.run([*base, "--cert", str(valid), "--glance-cert", str(valid)],
                          capture_output=True, timeout=120)
    assert both.returncode == 0, both.stderr

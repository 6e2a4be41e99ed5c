"""Small valid inputs for every fuzz target, built here from imgcrypt's own writers.

Nothing in the corpus comes from elsewhere: each seed is made by the code below, with fixed
keys where a signature must verify, so ``python -m fuzz.seeds`` rewrites the same kinds of files.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

PASSPHRASE = b"fuzz passphrase"
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
# Fixed, public test keys: seeds must verify in every process that regenerates the harness.
_ED25519_SEED = hashlib.sha256(b"imgcrypt fuzz ed25519 test key").digest()
_P384_SCALAR = int.from_bytes(hashlib.sha384(b"imgcrypt fuzz p384 test key").digest(), "big") >> 8


@lru_cache(maxsize=1)
def luks1_region() -> bytes:
    """A LUKS1 header with one keyslot and 1 KiB of payload, valid to cryptsetup: every one of
    the eight keyslot areas holds 4000 stripes, so the region is about 1 MiB."""
    from imgcrypt.crypto.kdf import Pbkdf2, derive
    from imgcrypt.crypto.sectors import CipherSpec, SectorCipher
    from imgcrypt.luks import keyslot, luks1

    cipher = CipherSpec.parse("aes-xts-plain64")
    master_key = hashlib.sha256(b"luks1 master").digest()
    kdf = Pbkdf2("sha256", 1000, hashlib.sha256(b"luks1 slot salt").digest())
    material = keyslot.seal(cipher, master_key, PASSPHRASE, kdf, "sha256", 4000)
    digest_salt = hashlib.sha256(b"luks1 digest salt").digest()
    area = luks1.keyslot_area_sectors(32)
    slots = [luks1.Keyslot(True, 1000, kdf.salt, 8, 4000)] + [
        luks1.Keyslot(False, 0, bytes(32), 8 + i * area, 4000) for i in range(1, 8)
    ]
    payload_sectors = 8 + 8 * area
    header = luks1.Luks1Header(
        cipher_name="aes", cipher_mode="xts-plain64", hash_spec="sha256",
        payload_offset_sectors=payload_sectors, key_bytes=32,
        mk_digest=derive(Pbkdf2("sha256", 1000, digest_salt), master_key, 20),
        mk_digest_salt=digest_salt, mk_digest_iter=1000,
        uuid="6c3a2a4e-0f4c-4b8e-9d36-7f1f5f0a0001", keyslots=tuple(slots),
    )
    region = bytearray(payload_sectors * 512)
    region[: luks1.HEADER_SIZE] = header.pack()
    region[8 * 512 : 8 * 512 + len(material)] = material
    payload = SectorCipher(cipher, master_key).encrypt(bytes(range(256)) * 4, 0)
    return bytes(region) + payload


@lru_cache(maxsize=1)
def luks2_region() -> bytes:
    """A LUKS2 header (16 KiB metadata copies) with one 8-stripe pbkdf2 keyslot, 1 KiB payload."""
    from imgcrypt.crypto.kdf import Pbkdf2
    from imgcrypt.crypto.sectors import CipherSpec, SectorCipher
    from imgcrypt.luks import keyslot, luks2
    from imgcrypt.luks.luks2.metadata import load_json

    cipher = CipherSpec.parse("aes-xts-plain64")
    master_key = hashlib.sha256(b"luks2 master").digest()
    kdf = Pbkdf2("sha256", 1000, hashlib.sha256(b"luks2 slot salt").digest())
    full = luks2.format_region(master_key, PASSPHRASE, cipher=cipher, kdf=kdf,
                               digest_iterations=1000, keyslots_size=131072,
                               uuid="6c3a2a4e-0f4c-4b8e-9d36-7f1f5f0a0002")
    header = luks2.Luks2Header.parse(full)
    obj = load_json(header.json_text)
    slot = obj["keyslots"]["0"]
    slot["af"]["stripes"] = 8
    slot["area"]["size"] = "4096"
    obj["config"]["keyslots_size"] = "4096"
    obj["segments"]["0"]["offset"] = str(40960)
    material = keyslot.seal(cipher, master_key, PASSPHRASE, kdf, "sha256", 8)
    small = header.with_metadata(obj)
    region = bytearray(small.pack_copies())
    offset = int(slot["area"]["offset"])
    region.extend(bytes(offset + 4096 - len(region)))
    region[offset : offset + len(material)] = material
    region.extend(bytes(40960 - len(region)))
    return bytes(region) + SectorCipher(cipher, master_key).encrypt(bytes(range(256)) * 4, 0)


def luks2_json(region: bytes | None = None) -> bytes:
    """The JSON text of the seed LUKS2 header's primary copy."""
    data = luks2_region() if region is None else region
    area = data[4096:16384]
    return area.split(b"\0", 1)[0]


@lru_cache(maxsize=1)
def ed25519_key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.from_private_bytes(_ED25519_SEED)


@lru_cache(maxsize=1)
def p384_key():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.derive_private_key(_P384_SCALAR, ec.SECP384R1())


def _certificate(key, name: str):  # type: ignore[no-untyped-def]
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import NameOID

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big"))
        .not_valid_before(dt.datetime(2020, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2099, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=False, crl_sign=False, encipher_only=False,
                          decipher_only=False), critical=True)
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA384()
    return builder.sign(key, algorithm)


@lru_cache(maxsize=1)
def ed25519_certificate():  # type: ignore[no-untyped-def]
    return _certificate(ed25519_key(), "imgcrypt fuzz ed25519")


@lru_cache(maxsize=1)
def p384_certificate():  # type: ignore[no-untyped-def]
    return _certificate(p384_key(), "imgcrypt fuzz p384")


IMAGE = b"imgcrypt fuzz image " * 50
CERT_UUID = "0f0e0d0c-0b0a-4908-8706-050403020100"


@lru_cache(maxsize=1)
def imgcrypt_properties() -> dict[str, str]:
    from imgcrypt.signing import ImgcryptSigner

    signer = ImgcryptSigner(ed25519_key(), properties={"os_encrypt_format": "LUKSv1"},
                            certificate_uuid=CERT_UUID, max_value_length=64)
    signer.update(IMAGE)
    return signer.finalize()


@lru_cache(maxsize=1)
def glance_properties() -> dict[str, str]:
    from imgcrypt.signing import GlanceSigner

    signer = GlanceSigner(p384_key(), certificate_uuid=CERT_UUID, hash_method="SHA-384")
    signer.update(IMAGE)
    return signer.finalize()


def _pem(cert) -> bytes:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def _der(cert) -> bytes:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.DER))


def _private(key, *, pem: bool, passphrase: bytes | None = None) -> bytes:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import serialization

    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    return bytes(key.private_bytes(
        serialization.Encoding.PEM if pem else serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8, encryption,
    ))


def keystore_document() -> bytes:
    payload = hashlib.sha256(b"keystore payload").digest()
    document = {
        "format": "imgcrypt-local-secret", "version": 1,
        "secret_id": "5f0c3a1e-8c7b-4a0e-9f6d-1c2b3a4d5e6f", "name": "fuzz",
        "secret_type": "symmetric", "algorithm": "AES", "bit_length": 256, "mode": "XTS",
        "created": "2026-01-01T00:00:00+00:00", "payload_is_text": False,
        "payload": base64.b64encode(payload).decode("ascii"),
        "consumers": [{"service": "image", "resource_type": "image",
                       "resource_id": "11111111-2222-4333-8444-555555555555"}],
    }
    return json.dumps(document, indent=1, sort_keys=True).encode("utf-8")


def _props(props: dict[str, str]) -> bytes:
    return json.dumps(props, sort_keys=True).encode("utf-8")


def _parts_seed() -> list[bytes]:
    from imgcrypt.signing.storage import split_value

    value = base64.b64encode(hashlib.sha512(b"x").digest() * 3).decode("ascii")
    return [_props(split_value("imgcrypt_sign_signature", value, max_length=64)),
            _props(split_value("imgcrypt_sign_signature", "", max_length=64))]


def qemu_info_documents() -> list[bytes]:
    """``qemu-img info --output=json`` as qemu-img 7.2 prints it for a LUKS qcow2 and an
    overlay with a backing file (the shape, rebuilt here)."""
    slots: list[dict[str, object]] = [
        {"active": True, "iters": 25098, "key-offset": 4096, "stripes": 4000}]
    slots += [{"active": False, "key-offset": 4096 + 258048 * i} for i in range(1, 8)]
    luks = {
        "virtual-size": 1048576, "filename": "q.qcow2", "cluster-size": 65536,
        "format": "qcow2", "actual-size": 2297856, "encrypted": True, "dirty-flag": False,
        "format-specific": {"type": "qcow2", "data": {
            "compat": "1.1", "compression-type": "zlib", "lazy-refcounts": False,
            "refcount-bits": 16, "corrupt": False, "extended-l2": False,
            "encrypt": {"ivgen-alg": "plain64", "hash-alg": "sha256", "cipher-alg": "aes-256",
                        "uuid": "4f75038d-465c-4043-bde0-7aa91a792ad5", "format": "luks",
                        "cipher-mode": "xts", "slots": slots, "payload-offset": 2068480,
                        "master-key-iters": 6481}}},
    }
    overlay = {
        "backing-filename-format": "qcow2", "virtual-size": 1048576, "filename": "b.qcow2",
        "cluster-size": 65536, "format": "qcow2", "actual-size": 200704,
        "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "corrupt": False}},
        "full-backing-filename": "q.qcow2", "backing-filename": "q.qcow2", "dirty-flag": False,
    }
    vmdk = {"virtual-size": 65536, "filename": "d.vmdk", "format": "vmdk",
            "format-specific": {"type": "vmdk", "data": {"extents": [
                {"filename": "d.vmdk", "format": "monolithicSparse"},
                {"filename": "/etc/passwd", "format": "FLAT"}]}}}
    return [json.dumps(d, indent=4).encode() for d in (luks, overlay, vmdk)]


def _claims() -> list[bytes]:
    return [_props({"os_encrypt_key_id": "5f0c3a1e-8c7b-4a0e-9f6d-1c2b3a4d5e6f",
                    "cinder_encryption_key_id": "5f0c3a1e-8c7b-4a0e-9f6d-1c2b3a4d5e6f",
                    "os_encrypt_format": "LUKSv1", "os_decrypt_size": "1048576",
                    "os_encrypt_key_deletion_policy": "on_image_deletion",
                    "disk_format": "raw"}),
            _props({"cinder_encryption_key_id": "5f0c3a1e-8c7b-4a0e-9f6d-1c2b3a4d5e6f",
                    "cinder_encryption_key_deletion_policy": "do_not_delete"})]


KEY_ID = "5f0c3a1e-8c7b-4a0e-9f6d-1c2b3a4d5e6f"
P384_UUID = "0f0e0d0c-0b0a-4908-8706-050403020101"
UPLOAD_SEPARATOR = b"\n--imgcrypt-fuzz-image--\n"


def _upload_seeds() -> list[bytes]:
    claim = {"os_encrypt_key_id": KEY_ID, "os_encrypt_format": "LUKSv1",
             "os_decrypt_size": "1024", "disk_format": "raw"}
    return [_props(claim) + UPLOAD_SEPARATOR + luks1_region(),
            _props({**imgcrypt_properties(), "os_encrypt_key_id": KEY_ID}) + UPLOAD_SEPARATOR
            + IMAGE,
            _props({**glance_properties(), **claim, "img_signature_certificate_uuid": P384_UUID})
            + UPLOAD_SEPARATOR + luks2_region()]


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "luks1_header": lambda: [luks1_region()[:592]],
    "luks_detect": lambda: [luks1_region()[:4096], luks2_region()[:4096]],
    "luks_parse_header": lambda: [luks1_region()[:592], luks2_region()[:32768]],
    "luks2_binary": lambda: [luks2_region()[:32768]],
    "luks2_json": lambda: [luks2_json()],
    "luks2_region": lambda: [luks2_region()],
    "stream_read_header": lambda: [luks1_region(), luks2_region()],
    "luks_unlock": lambda: [luks1_region(), luks2_region()],
    "stream_decrypt": lambda: [luks1_region(), luks2_region()],
    "property_document": lambda: [_props(imgcrypt_properties()), _props(glance_properties())],
    "property_parts": _parts_seed,
    "certificates": lambda: [_pem(ed25519_certificate()), _der(p384_certificate()),
                             _pem(ed25519_certificate()) + _pem(p384_certificate())],
    "private_key": lambda: [_private(ed25519_key(), pem=True), _private(p384_key(), pem=False),
                            _private(ed25519_key(), pem=True, passphrase=b"pw")],
    "verify_imgcrypt": lambda: [_props(imgcrypt_properties())],
    "verify_glance": lambda: [_props(glance_properties())],
    "keystore_file": lambda: [keystore_document()],
    "encryption_properties": lambda: [b"LUKSv1", b"luks2", b"on_image_deletion"],
    "qemu_image_info": qemu_info_documents,
    "qemu_sniff": lambda: [b"QFI\xfb\0\0\0\x03" + bytes(504), b"conectix" + bytes(504),
                           luks1_region()[:512], b"# Disk DescriptorFile\n" + bytes(64)],
    "encryption_claim": _claims,
    "service_upload": _upload_seeds,
}


def write_corpus(directory: Path = CORPUS_DIR) -> dict[str, int]:
    """Write every target's seeds under ``directory/<target>/``; returns seeds per target."""
    counts = {}
    for name, make in SEEDS.items():
        target_dir = directory / name
        target_dir.mkdir(parents=True, exist_ok=True)
        seeds = make()
        for index, seed in enumerate(seeds):
            (target_dir / f"seed-{index}").write_bytes(seed)
        counts[name] = len(seeds)
    return counts


def read_corpus(name: str, directory: Path = CORPUS_DIR) -> list[bytes]:
    target_dir = directory / name
    if not target_dir.is_dir():
        return []
    return [p.read_bytes() for p in sorted(target_dir.iterdir()) if p.is_file()]


def stream(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


if __name__ == "__main__":
    for target, count in write_corpus().items():
        print(f"{target}: {count} seed(s)")

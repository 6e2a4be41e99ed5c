"""Every entry point that reads attacker-controlled bytes, as ``run(data: bytes) -> None``.

The contract each target checks: for any input, imgcrypt either succeeds or raises an
:class:`~imgcrypt.errors.ImgcryptError` subclass. Any other exception escapes the target and is
a finding. Targets whose modules are not built yet are simply absent from :func:`targets`, so a
missing module never breaks the others.

Targets that derive keys use :data:`FUZZ_LIMITS`, far below the default caps, so one input
costs milliseconds; the default caps themselves are tested in
``tests/security/test_security_bounds.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.util
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fuzz import seeds
from imgcrypt.crypto.kdf import KdfLimits
from imgcrypt.errors import ImgcryptError
from imgcrypt.luks.container import LuksHeader

FUZZ_LIMITS = KdfLimits(max_pbkdf2_iterations=5000, max_argon2_time=2,
                        max_argon2_memory_kib=8192, max_argon2_parallel=2)
# Regions above this are not worth materialising per input; parsing them is still covered.
MAX_UNLOCK_REGION = 1 << 20
SIGNATURE_NAME = "imgcrypt_sign_signature"


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    description: str


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


# -- LUKS ----------------------------------------------------------------------------------------


def luks1_header(data: bytes) -> None:
    from imgcrypt.luks.luks1 import Luks1Header

    header = Luks1Header.parse(data)
    header.describe()
    _ = header.region_size, header.payload_offset, header.active_keyslots()


def luks_detect(data: bytes) -> None:
    from imgcrypt.luks.container import bytes_to_parse, detect_version, is_luks

    is_luks(data)
    detect_version(data)
    needed = bytes_to_parse(data)
    if not 0 < needed <= 8 << 20:
        raise AssertionError(f"bytes_to_parse returned {needed}")


def luks_parse_header(data: bytes) -> None:
    from imgcrypt.luks.container import parse_header

    header = parse_header(data)
    _touch(header)


def _touch(header: LuksHeader) -> None:
    """Every derived fact a caller might read after a successful parse."""
    _ = (header.version, header.key_bytes, header.sector_size, header.payload_offset,
         header.payload_size, header.iv_tweak, header.uuid, header.region_size,
         header.active_keyslots(), str(header.cipher))
    json.dumps(header.describe())
    repr(header)


def _luks2_with_checksums(data: bytes) -> bytes:
    """``data`` with both LUKS2 copies' checksums made right, so mutations reach the JSON."""
    from imgcrypt.luks.luks2.disk import BINARY_SIZE, HDR_SIZES, checksum

    out = bytearray(data)
    if len(out) < 16:
        return bytes(out)
    hdr_size = int.from_bytes(out[8:16], "big")
    if hdr_size not in HDR_SIZES:
        return bytes(out)
    for offset in (0, hdr_size):
        if len(out) < offset + hdr_size:
            break
        name = bytes(out[offset + 0x48 : offset + 0x68]).split(b"\0", 1)[0].decode(
            "ascii", "replace").lower()
        if name not in ("sha1", "sha256", "sha512"):
            continue
        binary = bytes(out[offset : offset + BINARY_SIZE])
        area = bytes(out[offset + BINARY_SIZE : offset + hdr_size])
        out[offset + 0x1C0 : offset + 0x200] = checksum(binary, area, name)
    return bytes(out)


def luks2_binary(data: bytes) -> None:
    from imgcrypt.luks.luks2.disk import find_copies, needed_bytes
    from imgcrypt.luks.luks2.metadata import check_area

    needed_bytes(data)
    copies = find_copies(data, check_area)
    copies.winner()


def luks2_json(data: bytes) -> None:
    """The JSON text, wrapped in two valid binary headers, through the whole LUKS2 parse."""
    from imgcrypt.luks.container import parse_header

    region = bytearray(seeds.luks2_region())
    hdr_size = 16384
    if len(data) >= hdr_size - 4096:
        data = data[: hdr_size - 4096 - 1]
    for offset in (0, hdr_size):
        area = data + bytes(hdr_size - 4096 - len(data))
        region[offset + 4096 : offset + hdr_size] = area
    region = bytearray(_luks2_with_checksums(bytes(region)))
    header = parse_header(bytes(region), FUZZ_LIMITS)
    _touch(header)
    _unlock(header, bytes(region))


def luks2_region(data: bytes) -> None:
    """A whole LUKS2 region with checksums repaired: binary fields, JSON and keyslot material."""
    from imgcrypt.luks.container import parse_header

    region = _luks2_with_checksums(data)
    header = parse_header(region, FUZZ_LIMITS)
    _touch(header)
    _unlock(header, region)


def _unlock(header: LuksHeader, region: bytes) -> None:
    if header.region_size > MAX_UNLOCK_REGION:
        return
    if len(region) < header.region_size:
        region = region + bytes(header.region_size - len(region))
    header.unlock(region, seeds.PASSPHRASE, FUZZ_LIMITS)


def stream_read_header(data: bytes) -> None:
    from imgcrypt.luks.unlock import read_header

    header, region = read_header(io.BytesIO(data), FUZZ_LIMITS)
    if len(region) < header.region_size:
        raise AssertionError("read_header returned less than the header region")
    _touch(header)


def luks_unlock(data: bytes) -> None:
    from imgcrypt.luks.container import parse_header

    if len(data) >= 8 and data[6:8] == b"\0\2":
        data = _luks2_with_checksums(data)
    header = parse_header(data, FUZZ_LIMITS)
    _unlock(header, data)


def stream_decrypt(data: bytes) -> None:
    from imgcrypt.luks.reader import open_payload
    from imgcrypt.luks.transfer import decrypt_stream

    if len(data) >= 8 and data[6:8] == b"\0\2":
        data = _luks2_with_checksums(data)
    out = io.BytesIO()
    written = decrypt_stream(io.BytesIO(data), out, seeds.PASSPHRASE, limits=FUZZ_LIMITS)
    if written != len(out.getvalue()):
        raise AssertionError("decrypt_stream miscounted its output")
    with open_payload(io.BytesIO(data), seeds.PASSPHRASE, limits=FUZZ_LIMITS) as reader:
        reader.seek(max(0, written // 2 - 7))
        reader.read(1000)


# -- properties and signatures -------------------------------------------------------------------


def property_document(data: bytes) -> None:
    from imgcrypt.signing.propfile import dump_properties, parse_properties

    props = parse_properties(data)
    if parse_properties(dump_properties(props)) != props:
        raise AssertionError("property document does not round-trip")


def property_parts(data: bytes) -> None:
    from imgcrypt.signing.propfile import parse_properties
    from imgcrypt.signing.storage import has_parts, join_value, record_keys, split_value

    props = parse_properties(data)
    has_parts(SIGNATURE_NAME, props)
    record_keys(SIGNATURE_NAME, props)
    value = join_value(SIGNATURE_NAME, props)
    again = split_value(SIGNATURE_NAME, value, max_length=64)
    if join_value(SIGNATURE_NAME, again) != value:
        raise AssertionError("split/join does not round-trip")


def _now() -> dt.datetime:
    return dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def certificates(data: bytes) -> None:
    from imgcrypt.signing.certs import check_certificate, load_certificates

    certs = load_certificates(data)
    trust = [seeds.ed25519_certificate()]
    check_certificate(certs, clock=_now)
    check_certificate(certs, trust=trust, clock=_now)


def private_key(data: bytes) -> None:
    from imgcrypt.signing.keyfile import load_private_key

    for passphrase in (None, b"pw"):
        try:
            load_private_key(data, passphrase)
        except ImgcryptError:
            continue


def _verify(data: bytes, certificate: object) -> None:
    from imgcrypt.signing.certs import check_certificate
    from imgcrypt.signing.propfile import parse_properties
    from imgcrypt.signing.verify import ImageVerifier, certificate_uuid, schemes_present

    props = parse_properties(data)
    schemes_present(props)
    certificate_uuid(props)
    checked = check_certificate([certificate], clock=_now)  # type: ignore[list-item]
    verifier = ImageVerifier(props, checked)
    verifier.update(seeds.IMAGE)
    verifier.finalize().as_dict()


def verify_imgcrypt(data: bytes) -> None:
    _verify(data, seeds.ed25519_certificate())


def verify_glance(data: bytes) -> None:
    _verify(data, seeds.p384_certificate())


def keystore_file(data: bytes) -> None:
    from imgcrypt.keys.local import _parse

    secret, _created, _consumers = _parse(data, "5f0c3a1e-8c7b-4a0e-9f6d-1c2b3a4d5e6f",
                                          Path("/fuzz/keystore.json"))
    repr(secret)
    str(secret)


def encryption_properties(data: bytes) -> None:
    from imgcrypt.keys.properties import parse_encrypt_format
    from imgcrypt.keys.rules import parse_deletion_policy

    text = data.decode("utf-8", "replace")
    for parse in (parse_encrypt_format, parse_deletion_policy):
        try:
            parse(text)
        except ImgcryptError:
            continue


def qemu_image_info(data: bytes) -> None:
    from imgcrypt.qemu import parse_image_info

    info = parse_image_info(data)
    _ = info.specific_data, info.encryption_format
    info.external_files("/nonexistent/fuzz.img")
    repr(info)


def qemu_sniff(data: bytes) -> None:
    from imgcrypt.qemu import sniff_format, stderr_line

    sniff_format(data[:512])
    stderr_line(data)


def encryption_claim(data: bytes) -> None:
    from imgcrypt.service.claims import claims_encryption
    from imgcrypt.service.claims import encryption_claim as claim_of
    from imgcrypt.signing.propfile import parse_properties

    props = parse_properties(data)
    claims_encryption(props)
    claim_of(props)


_KEYSTORE: list[object] = []


def _upload_keystore() -> object:
    """A real local keystore holding the seeds' key and both certificates under their ids."""
    if not _KEYSTORE:
        import atexit
        import base64
        import os
        import shutil
        import tempfile

        from cryptography.hazmat.primitives import serialization

        from imgcrypt.keys.local import LocalKeyStore

        directory = tempfile.mkdtemp(prefix="imgcrypt-fuzz-keystore-")
        atexit.register(shutil.rmtree, directory, True)
        pem = serialization.Encoding.PEM
        entries = [
            (seeds.KEY_ID, "symmetric", hashlib.sha256(b"fuzz key").digest() * 2),
            (seeds.CERT_UUID, "certificate", seeds.ed25519_certificate().public_bytes(pem)),
            (seeds.P384_UUID, "certificate", seeds.p384_certificate().public_bytes(pem)),
        ]
        for key_id, kind, payload in entries:
            document = json.loads(seeds.keystore_document())
            document.update(secret_id=key_id, secret_type=kind, consumers=[],
                            payload=base64.b64encode(payload).decode("ascii"))
            fd = os.open(os.path.join(directory, f"{key_id}.json"),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(document, f)
        _KEYSTORE.append(LocalKeyStore(directory))
    return _KEYSTORE[0]


def service_upload(data: bytes) -> None:
    """The upload hook: properties (JSON), a separator, then the image bytes in chunks."""
    from imgcrypt.service.upload import UploadPolicy, inspect_upload
    from imgcrypt.signing.propfile import parse_properties

    document, _, image = data.partition(seeds.UPLOAD_SEPARATOR)
    props = parse_properties(document)
    chunks = [image[i : i + 4096] for i in range(0, len(image), 4096)]
    policy = UploadPolicy(register_consumer=False, unlock_limits=FUZZ_LIMITS)
    verdict = inspect_upload(chunks, props, key_manager=_upload_keystore(),  # type: ignore[arg-type]
                             policy=policy, image_id="00000000-0000-4000-8000-000000000000")
    verdict.properties()


_ALL: tuple[tuple[str, Callable[[bytes], None], str, tuple[str, ...]], ...] = (
    ("luks1_header", luks1_header, "Luks1Header.parse on raw bytes", ("imgcrypt.luks.luks1",)),
    ("luks_detect", luks_detect, "container.detect_version / bytes_to_parse", ()),
    ("luks_parse_header", luks_parse_header, "container.parse_header, LUKS1 or LUKS2", ()),
    ("luks2_binary", luks2_binary, "LUKS2 binary headers: both copies, checksums, seqid",
     ("imgcrypt.luks.luks2.disk",)),
    ("luks2_json", luks2_json, "LUKS2 JSON metadata behind valid binary headers, then unlock",
     ("imgcrypt.luks.luks2",)),
    ("luks2_region", luks2_region, "whole LUKS2 region, checksums repaired, then unlock",
     ("imgcrypt.luks.luks2",)),
    ("stream_read_header", stream_read_header, "stream.read_header on an arbitrary stream", ()),
    ("luks_unlock", luks_unlock, "parse + unlock (keyslot area, AF merge, digest)", ()),
    ("stream_decrypt", stream_decrypt, "decrypt_stream and open_payload on an arbitrary image",
     ()),
    ("property_document", property_document, "signing.propfile.parse_properties",
     ("imgcrypt.signing.propfile",)),
    ("property_parts", property_parts, "signing.storage.join_value (size-safe parts)",
     ("imgcrypt.signing.storage", "imgcrypt.signing.propfile")),
    ("certificates", certificates, "PEM/DER certificate loading and checks",
     ("imgcrypt.signing.certs",)),
    ("private_key", private_key, "PEM/DER private key loading", ("imgcrypt.signing.keyfile",)),
    ("verify_imgcrypt", verify_imgcrypt, "ImageVerifier on imgcrypt-mode properties",
     ("imgcrypt.signing.verify",)),
    ("verify_glance", verify_glance, "ImageVerifier on Glance img_signature* properties",
     ("imgcrypt.signing.verify",)),
    ("keystore_file", keystore_file, "local keystore secret file parser",
     ("imgcrypt.keys.local",)),
    ("encryption_properties", encryption_properties,
     "os_encrypt_format / deletion policy values", ("imgcrypt.keys.properties",
                                                     "imgcrypt.keys.rules")),
    ("qemu_image_info", qemu_image_info, "qemu-img info --output=json parser",
     ("imgcrypt.qemu",)),
    ("qemu_sniff", qemu_sniff, "image format magic sniffing, qemu-img stderr quoting",
     ("imgcrypt.qemu",)),
    ("encryption_claim", encryption_claim, "service: encryption claim in image properties",
     ("imgcrypt.service.claims", "imgcrypt.signing.propfile")),
    ("service_upload", service_upload, "service upload hook: properties + image stream",
     ("imgcrypt.service.upload", "imgcrypt.keys.local")),
)


def targets() -> dict[str, Target]:
    """The targets whose modules exist, by name."""
    return {
        name: Target(name, run, description)
        for name, run, description, modules in _ALL
        if all(_have(m) for m in modules)
    }


def check(target: Target, data: bytes) -> BaseException | None:
    """Run one input; None if it was handled (success or ImgcryptError), else the exception."""
    try:
        target.run(data)
    except ImgcryptError:
        return None
    except BaseException as exc:
        return exc
    return None


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]

"""An image as a person prepares it for an image service (new key, encrypt, properties, sign),
shared by the service-flow and upload-inspection tests."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from imgcrypt.keys.manager import KeyManager, KeyOrder
from imgcrypt.keys.properties import encryption_properties
from imgcrypt.keys.rules import passphrase_for
from imgcrypt.keys.secret import Secret
from imgcrypt.luks.options import FormatOptions
from imgcrypt.luks.transfer import encrypt_stream
from imgcrypt.signing import ImgcryptSigner
from imgcrypt.signing.manifest import BOUND_PROPERTIES

FAST = 1000


def chunked(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def signing_identity(manager: KeyManager) -> tuple[ed25519.Ed25519PrivateKey, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "image signer")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False,
                                     False), critical=True)
        .sign(key, None)
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    return key, manager.store(Secret(payload=pem, secret_type="certificate"))


def prepare_image(manager: KeyManager, payload: bytes, *, version: int = 1,
                  sign: bool = True) -> tuple[bytes, dict[str, str]]:
    """What a person does at a terminal: new key, encrypt, properties, sign."""
    key_id = manager.create_key(KeyOrder())
    out = io.BytesIO()
    options = FormatOptions(version=version, iterations=FAST,
                            pbkdf="pbkdf2" if version == 2 else None)
    encrypt_stream(io.BytesIO(payload), out, passphrase_for(manager.get(key_id)), options)
    image = out.getvalue()
    properties = {"disk_format": "raw", "container_format": "bare",
                  **encryption_properties(key_id, version, len(payload))}
    if sign:
        key, cert_id = signing_identity(manager)
        bound = {k: v for k, v in properties.items() if k in BOUND_PROPERTIES}
        signer = ImgcryptSigner(key, properties=bound, certificate_uuid=cert_id)
        for chunk in chunked(image):
            signer.update(chunk)
        properties.update(signer.finalize())
    return image, properties

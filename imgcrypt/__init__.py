"""imgcrypt: encrypt and sign virtual-machine disk images for OpenStack-like clouds.

The names below are the public API; each is imported from its module on first use, so
``import imgcrypt`` stays cheap for the command line::

    import imgcrypt

    with open("disk.raw", "rb") as src, open("disk.luks", "wb") as dst:
        imgcrypt.encrypt_stream(src, dst, b"passphrase", imgcrypt.FormatOptions())

Errors are all :class:`imgcrypt.errors.ImgcryptError` subclasses.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    # LUKS
    "FormatOptions": "imgcrypt.luks.options",
    "encrypt_stream": "imgcrypt.luks.stream",
    "decrypt_stream": "imgcrypt.luks.stream",
    "open_payload": "imgcrypt.luks.stream",
    "read_header": "imgcrypt.luks.stream",
    "unlock_stream": "imgcrypt.luks.stream",
    "rekey_file": "imgcrypt.luks.stream",
    "parse_header": "imgcrypt.luks.container",
    "KdfLimits": "imgcrypt.luks.kdf",
    # keys
    "Secret": "imgcrypt.keys.secret",
    "EncryptionSpec": "imgcrypt.keys.secret",
    "KeySizeMeaning": "imgcrypt.keys.secret",
    "LocalKeyStore": "imgcrypt.keys.local",
    "passphrase_for": "imgcrypt.keys.rules",
    "check_secret": "imgcrypt.keys.rules",
    "encryption_properties": "imgcrypt.keys.properties",
    # signing
    "GlanceSigner": "imgcrypt.signing",
    "ImgcryptSigner": "imgcrypt.signing",
    "ImageVerifier": "imgcrypt.signing",
    "check_certificate": "imgcrypt.signing",
    "load_certificates": "imgcrypt.signing",
    # services
    "UploadInspector": "imgcrypt.service.upload",
    "UploadPolicy": "imgcrypt.service.upload",
    "download_hook": "imgcrypt.service.flows",
    "delete_hook": "imgcrypt.service.flows",
    "create_volume_from_image": "imgcrypt.service.flows",
    "upload_volume_as_image": "imgcrypt.service.flows",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value = _installed_version()
        globals()[name] = value
        return value
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'imgcrypt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def _installed_version() -> str:
    """The installed distribution's version, i.e. pyproject.toml's; looked up on first use, as
    importlib.metadata costs tens of milliseconds that ``import imgcrypt`` should not."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imgcrypt")
    except PackageNotFoundError:  # a checkout put on sys.path, never installed
        return "unknown"

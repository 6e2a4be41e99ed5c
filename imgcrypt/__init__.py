"""imgcrypt: encrypt and sign virtual-machine disk images for OpenStack-like clouds.

The names below are the public API: the recipes of :mod:`imgcrypt.recipes`, one call per job
for a person, an image service and a volume service, with the values they take and return and
the errors they raise. Each is imported from its module on first use, so ``import imgcrypt``
stays cheap for the command line::

    import imgcrypt

    keys = imgcrypt.LocalKeyStore()
    image = imgcrypt.encrypt_image("disk.raw", "disk.luks", key_manager=keys,
                                   new_key=imgcrypt.DEFAULT_KEY_ORDER)
    image.property_dict()     # the properties to attach, os_decrypt_size exact

The primitives the recipes are built from (LUKS headers, KDFs, the sector engine, signature
schemes) are :mod:`imgcrypt.hazmat`, the expert layer. Errors are all
:class:`imgcrypt.errors.ImgcryptError` subclasses.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

_ERRORS = (
    "ImgcryptError", "UsageError", "FormatError", "UnsupportedError", "WrongPassphraseError",
    "VerificationError", "BadSignatureError", "CertificateError", "KeyManagerError",
    "KeyManagerUnavailableError", "SecretNotFoundError", "SecretInUseError", "ToolError",
)

_EXPORTS = {
    # a person: one call per job
    "encrypt_image": "imgcrypt.recipes",
    "encrypting": "imgcrypt.recipes",
    "decrypt_image": "imgcrypt.recipes",
    "unlock_image": "imgcrypt.recipes",
    "rekey_image": "imgcrypt.recipes",
    "sign_image": "imgcrypt.recipes",
    "verify_image": "imgcrypt.recipes",
    "EncryptedImage": "imgcrypt.recipes",
    "EncryptionJob": "imgcrypt.recipes",
    "DecryptedImage": "imgcrypt.recipes",
    "OpenedImage": "imgcrypt.recipes",
    "RekeyedImage": "imgcrypt.recipes",
    "Signature": "imgcrypt.recipes",
    "DEFAULT_KEY_ORDER": "imgcrypt.recipes",
    # an image service
    "UploadInspector": "imgcrypt.recipes",
    "UploadPolicy": "imgcrypt.recipes",
    "UploadVerdict": "imgcrypt.recipes",
    "inspect_upload": "imgcrypt.recipes",
    "download_hook": "imgcrypt.recipes",
    "delete_hook": "imgcrypt.recipes",
    # a volume service
    "create_volume_from_image": "imgcrypt.recipes",
    "upload_volume_as_image": "imgcrypt.recipes",
    "VolumeResult": "imgcrypt.recipes",
    "VolumeImage": "imgcrypt.recipes",
    # what the recipes take
    "FormatOptions": "imgcrypt.luks.options",
    "KdfOptions": "imgcrypt.luks.options",
    "KeyOrder": "imgcrypt.keys.manager",
    "KeyManager": "imgcrypt.keys.manager",
    "LocalKeyStore": "imgcrypt.keys.local",
    "BarbicanKeyManager": "imgcrypt.keys.barbican",
    "EncryptionSpec": "imgcrypt.keys.secret",
    "KeySizeMeaning": "imgcrypt.keys.secret",
    "CertificateSources": "imgcrypt.recipes",
    "VerificationResult": "imgcrypt.recipes",
    "load_private_key": "imgcrypt.signing",
    # errors
    **dict.fromkeys(_ERRORS, "imgcrypt.errors"),
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def lazy_exports(package: str, exports: dict[str, str],
                 namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports each name of ``exports`` from its module on first
    use and keeps it in ``namespace`` (PEP 562); :mod:`imgcrypt.hazmat` uses it too."""

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return getattr_


_exported = lazy_exports(__name__, _EXPORTS, globals())


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value = _installed_version()
        globals()[name] = value
        return value
    return _exported(name)


def _installed_version() -> str:
    """The installed distribution's version, i.e. pyproject.toml's; looked up on first use, as
    importlib.metadata costs tens of milliseconds that ``import imgcrypt`` should not."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imgcrypt")
    except PackageNotFoundError:  # a checkout put on sys.path, never installed
        return "unknown"

"""The signer for a signature mode, and the rules about which options each mode takes.

Glance mode signs the image bytes only, follows the key's algorithm and needs the
certificate's key-manager id; imgcrypt mode binds properties and may insist on an algorithm.
Hash names are read in either spelling (:func:`imgcrypt.digests.signing_hash_name`).
"""

from __future__ import annotations

from collections.abc import Mapping

from imgcrypt.digests import signing_hash_name
from imgcrypt.errors import UsageError
from imgcrypt.signing import glance, imgcrypt_mode, storage
from imgcrypt.signing.algorithms import PrivateKey
from imgcrypt.signing.stream import Consumer

#: The two signature schemes, by the names ``imgcrypt sign --mode`` takes.
MODES = ("glance", "imgcrypt")


class _ValueLengthLimit:
    """A signer whose properties must each fit ``limit`` characters (Glance mode cannot split
    a value: cursive reads img_signature whole)."""

    def __init__(self, signer: Consumer[dict[str, str]], limit: int) -> None:
        self._signer = signer
        self._limit = limit

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._signer.update(data)

    def finalize(self) -> dict[str, str]:
        properties = self._signer.finalize()
        for name, value in properties.items():
            if len(value) > self._limit:
                raise UsageError(
                    f"{name} is {len(value)} characters, over --max-value-length "
                    f"{self._limit}; cursive needs it whole, so use --mode imgcrypt or "
                    "an ECDSA key"
                )
        return properties


def make_signer(
    private_key: PrivateKey,
    *,
    mode: str,
    hash_name: str | None = None,
    certificate_uuid: str | None = None,
    properties: Mapping[str, str] | None = None,
    max_value_length: int | None = None,
    algorithm: str | None = None,
) -> Consumer[dict[str, str]]:
    """The streaming signer of ``mode`` (one of :data:`MODES`); its ``finalize`` gives the
    properties to attach. ``max_value_length`` None means the default, which Glance mode does
    not enforce; a given one every property value must fit."""
    if mode not in MODES:
        raise UsageError(f"unknown signature mode {mode!r}; expected one of {', '.join(MODES)}")
    signer: Consumer[dict[str, str]]
    if mode == "glance":
        if properties:
            raise UsageError("Glance mode signs the image bytes only; use --mode imgcrypt to bind")
        if algorithm:
            raise UsageError("--algorithm is for imgcrypt mode; Glance mode follows the key")
        if certificate_uuid is None:
            raise UsageError("Glance mode needs --cert-uuid or --cert-id")
        signer = glance.GlanceSigner(
            private_key,
            certificate_uuid=certificate_uuid,
            hash_method=signing_hash_name(hash_name or glance.DEFAULT_HASH, "glance"),
        )
    else:
        signer = imgcrypt_mode.ImgcryptSigner(
            private_key,
            hash_name=signing_hash_name(hash_name or imgcrypt_mode.DEFAULT_HASH, "imgcrypt"),
            properties=dict(properties or {}),
            certificate_uuid=certificate_uuid,
            max_value_length=max_value_length or storage.DEFAULT_MAX_LENGTH,
            algorithm=algorithm,
        )
    return signer if max_value_length is None else _ValueLengthLimit(signer, max_value_length)


__all__ = ["MODES", "make_signer"]

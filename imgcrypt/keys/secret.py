"""A key manager's :class:`Secret` and a volume type's :class:`EncryptionSpec`.

Both are small immutable values. A :class:`Secret` carries key material, so its ``repr`` and
``str`` describe the secret without ever showing the payload.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from imgcrypt.errors import UsageError

SYMMETRIC = "symmetric"
PASSPHRASE = "passphrase"  # noqa: S105 - a secret type name, not a password
SECRET_TYPES = (SYMMETRIC, PASSPHRASE, "private", "public", "certificate", "opaque")


@dataclass(frozen=True)
class Secret:
    """A secret as a key manager stores it: payload plus the metadata the manager keeps.

    ``payload`` is ``bytes``, or ``str`` when a manager hands back a text secret (Barbican does
    for ``text/plain`` payloads); :func:`imgcrypt.keys.rules.passphrase_for` encodes that UTF-8.
    ``secret_id`` is ``None`` until a manager has stored the secret.
    """

    payload: bytes | str = field(repr=False)
    secret_type: str = SYMMETRIC
    algorithm: str | None = None
    bit_length: int | None = None
    mode: str | None = None
    secret_id: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.secret_type not in SECRET_TYPES:
            raise UsageError(
                f"unknown secret type {self.secret_type!r}; "
                f"expected one of {', '.join(SECRET_TYPES)}"
            )
        if not isinstance(self.payload, bytes | str):
            raise UsageError("a secret payload must be bytes or str")
        if self.bit_length is not None and (
            not isinstance(self.bit_length, int) or isinstance(self.bit_length, bool)
            or self.bit_length <= 0
        ):
            raise UsageError("a secret's bit length must be a positive integer")

    @property
    def payload_bytes(self) -> bytes:
        """The payload as bytes (text payloads encoded UTF-8)."""
        if isinstance(self.payload, str):
            return self.payload.encode("utf-8")
        return self.payload

    def with_id(self, secret_id: str) -> Secret:
        return dataclasses.replace(self, secret_id=secret_id)

    def copy(self, name: str) -> Secret:
        """The same key material and metadata, not yet stored, under a new name."""
        return dataclasses.replace(self, payload=self.payload_bytes, secret_id=None, name=name)

    def __str__(self) -> str:
        return (
            f"{self.secret_type} secret {self.secret_id or '(not stored)'}"
            f" ({self.algorithm or '-'}, {self.bit_length or '-'} bits, {self.mode or '-'})"
        )


class KeySizeMeaning(enum.Enum):
    """How a volume type's ``key_size`` is read; the same number gives different strengths.

    ``WHOLE_XTS_KEY`` is cryptsetup's (and os-brick's) reading: ``key_size`` is the whole
    cipher key, so for XTS, which splits its key into two halves, 256 means AES-128-XTS and 512
    means AES-256-XTS. ``PER_AES_KEY`` is the reading of Cinder's qemu conversion path, which
    builds ``cipher-alg=aes-<key_size>``: 256 becomes AES-256-XTS with a 512-bit whole key.
    Non-XTS modes have one key, so both readings agree for them.
    """

    WHOLE_XTS_KEY = "whole-xts-key"
    PER_AES_KEY = "per-aes-key"


CONTROL_LOCATIONS = ("front-end", "back-end")


@dataclass(frozen=True)
class EncryptionSpec:
    """A volume type's encryption spec: provider, cipher, key_size and control location.

    ``key_size`` is the number exactly as the volume type stores it, which is also the
    ``bit_length`` Cinder orders for the secret it creates. What strength that number means is
    not guessed: ``key_size_meaning`` says it (see :class:`KeySizeMeaning`).
    """

    provider: str
    cipher: str
    key_size: int
    key_size_meaning: KeySizeMeaning
    control_location: str = "front-end"

    def __post_init__(self) -> None:
        if self.provider.strip().lower() not in ("luks", "luks2", "plain"):
            raise UsageError(f"unknown encryption provider {self.provider!r}")
        parts = self.cipher.strip().lower().split("-")
        if len(parts) < 2 or not all(parts[:2]):
            raise UsageError(
                f"cipher {self.cipher!r} is not of the form algorithm-mode[-iv], "
                "e.g. aes-xts-plain64"
            )
        size = self.key_size
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise UsageError("key_size must be a positive number of bits")
        if self.key_size % 8:
            raise UsageError(f"key_size {self.key_size} is not a whole number of bytes")
        if not isinstance(self.key_size_meaning, KeySizeMeaning):
            raise UsageError("key_size_meaning must be a KeySizeMeaning")
        if self.control_location not in CONTROL_LOCATIONS:
            raise UsageError(
                f"control location {self.control_location!r} is not one of "
                f"{', '.join(CONTROL_LOCATIONS)}"
            )

    @property
    def algorithm(self) -> str:
        """The cipher's algorithm, lower case (``aes`` for ``aes-xts-plain64``)."""
        return self.cipher.strip().lower().split("-")[0]

    @property
    def mode(self) -> str:
        """The cipher's mode, lower case (``xts`` for ``aes-xts-plain64``)."""
        return self.cipher.strip().lower().split("-")[1]

    @property
    def whole_key_bits(self) -> int:
        """Bits of the whole data-encryption key the volume really gets."""
        if self.key_size_meaning is KeySizeMeaning.PER_AES_KEY and self.mode == "xts":
            return self.key_size * 2
        return self.key_size

    @property
    def cipher_strength_bits(self) -> int:
        """Bits of each block-cipher key: half the whole key for XTS (AES-256-XTS gives 256)."""
        whole = self.whole_key_bits
        return whole // 2 if self.mode == "xts" else whole

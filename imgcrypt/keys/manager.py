"""The one interface every key manager adapter offers, and the values it exchanges.

Adapters (:mod:`imgcrypt.keys.local`, :mod:`imgcrypt.keys.barbican`,
:mod:`imgcrypt.keys.castellan`) translate their backend's failures into the
:class:`imgcrypt.errors.KeyManagerError` family, so callers never see a backend exception.
"""

from __future__ import annotations

import builtins
import dataclasses
import re
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from imgcrypt.errors import KeyManagerError, UsageError
from imgcrypt.keys.secret import PASSPHRASE, SYMMETRIC, Secret

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")






@dataclass(frozen=True)
class Consumer:
    """Something that uses a secret: Barbican's (service, resource type, resource id) triple."""

    service: str
    resource_type: str
    resource_id: str

    def __post_init__(self) -> None:
        for field_name in ("service", "resource_type", "resource_id"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value.strip():
                raise UsageError(f"consumer {field_name} must be a non-empty string")

    def as_dict(self) -> dict[str, str]:
        return {
            "service": self.service,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
        }


@dataclass(frozen=True)
class SecretInfo:
    """A secret's metadata without its payload: what ``list`` and ``keys show`` report."""

    secret_id: str
    secret_type: str
    name: str | None = None
    algorithm: str | None = None
    bit_length: int | None = None
    mode: str | None = None
    created: str | None = None

    @classmethod
    def of(cls, secret: Secret, created: str | None = None) -> SecretInfo:
        if secret.secret_id is None:
            raise UsageError("a secret that is not stored has no id to describe")
        return cls(
            secret_id=secret.secret_id,
            secret_type=secret.secret_type,
            name=secret.name,
            algorithm=secret.algorithm,
            bit_length=secret.bit_length,
            mode=secret.mode,
            created=created,
        )

    def with_payload(self, payload: object) -> Secret:
        """The stored secret these metadata describe, with the payload a manager returned."""
        if not isinstance(payload, bytes | str) or len(payload) == 0:
            raise KeyManagerError(f"secret {self.secret_id} has no payload")
        return Secret(payload=payload, secret_type=self.secret_type, algorithm=self.algorithm,
                      bit_length=self.bit_length, mode=self.mode, secret_id=self.secret_id,
                      name=self.name)

    def as_dict(self) -> dict[str, str | int | None]:
        """Every field by its name, in declaration order."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class KeyOrder:
    """What to generate: ``create_key`` takes this rather than a loose set of keywords."""

    secret_type: str = SYMMETRIC
    algorithm: str = "AES"
    bit_length: int = 512
    mode: str | None = "XTS"
    name: str | None = None

    def __post_init__(self) -> None:
        if self.secret_type not in (SYMMETRIC, PASSPHRASE):
            raise UsageError(
                f"can only generate symmetric or passphrase secrets, not {self.secret_type!r}"
            )
        if isinstance(self.bit_length, bool) or not isinstance(self.bit_length, int):
            raise UsageError("bit length must be an integer")
        if self.bit_length <= 0 or self.bit_length % 8 or self.bit_length > 8192:
            raise UsageError(
                f"bit length {self.bit_length} must be a positive multiple of 8, at most 8192"
            )


@runtime_checkable
class KeyManager(Protocol):
    """get / store / create_key / delete / list, plus consumers where ``supports_consumers``."""

    @property
    def name(self) -> str: ...

    @property
    def supports_consumers(self) -> bool: ...

    def get(self, key_id: str) -> Secret: ...

    def describe(self, key_id: str) -> SecretInfo: ...

    def store(self, secret: Secret) -> str: ...

    def create_key(self, order: KeyOrder) -> str: ...

    def delete(self, key_id: str, *, force: bool = False) -> None: ...

    def list(self) -> builtins.list[SecretInfo]: ...

    def add_consumer(self, key_id: str, consumer: Consumer) -> None: ...

    def remove_consumer(self, key_id: str, consumer: Consumer) -> None: ...

    def list_consumers(self, key_id: str) -> builtins.list[Consumer]: ...


def require_uuid(key_id: str) -> str:
    """The id, lower-cased, if it is a UUID; a UsageError naming the problem otherwise."""
    if not isinstance(key_id, str) or not _UUID.match(key_id.strip().lower()):
        shown = key_id if isinstance(key_id, str) and len(key_id) <= 80 else "(long value)"
        raise UsageError(f"key id {shown!r} is not a UUID")
    return key_id.strip().lower()

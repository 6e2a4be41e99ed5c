"""The rules around secrets: the LUKS passphrase, the spec check, and the deletion policy.

``passphrase_for`` is the compatibility rule today's clouds follow (Cinder, Nova, Glance):
a ``passphrase`` secret is used as is (it must be UTF-8), every other secret type as the
lowercase hex of its bytes (of the DER form for private/public/certificate, as castellan hands
them to os-brick). Getting it wrong makes an image unopenable, so there is no guessing by length or
content.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
from collections.abc import Iterable
from dataclasses import dataclass

from imgcrypt.errors import (
    FormatError,
    KeyManagerError,
    KeyManagerUnavailableError,
    SecretInUseError,
    SecretNotFoundError,
    UnusableSecretError,
    UsageError,
    UsageFault,
)
from imgcrypt.keys.consumers import consumer_name
from imgcrypt.keys.manager import Consumer, KeyManager, KeyOrder
from imgcrypt.keys.secret import PASSPHRASE, SYMMETRIC, EncryptionSpec, Secret

# What happens to an image's key when the image is deleted; the first is the default, as in
# Glance and Cinder.
DEFAULT_DELETION_POLICY = "on_image_deletion"
KEEP_POLICY = "do_not_delete"
DELETION_POLICIES = (DEFAULT_DELETION_POLICY, KEEP_POLICY)

def passphrase_for(secret: Secret) -> bytes:
    """The LUKS keyslot passphrase a secret stands for, as castellan and os-brick make it.

    os-brick decodes a ``passphrase`` secret as UTF-8 (so one that is not UTF-8 can never open
    anything in Nova or Cinder, and is refused here) and hexlifies every other type. castellan
    hands ``private``, ``public`` and ``certificate`` secrets over as DER although Barbican
    stores them as PEM, so it is the DER form that is hexlified.
    """
    payload = secret.payload_bytes
    if secret.secret_type == PASSPHRASE:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise UnusableSecretError(
                "a passphrase secret must be UTF-8 text: os-brick decodes it as UTF-8, so Nova "
                "and Cinder could never open an image with it"
            ) from None
        return payload
    if secret.secret_type in _DER_TYPES:
        return binascii.hexlify(der_form(secret.secret_type, payload))
    return binascii.hexlify(payload)


_DER_TYPES = ("private", "public", "certificate")


def der_form(kind: str, payload: bytes) -> bytes:
    """The DER bytes castellan hands os-brick for a ``private``/``public``/``certificate``
    secret: Barbican's PEM converted, or the payload itself when it already is DER (as
    imgcrypt's castellan adapter returns it)."""
    try:
        if not payload.lstrip().startswith(b"-----BEGIN"):
            pem_form(kind, payload)  # DER already: check that it parses, hand it over as is
            return payload
        return _reencode(kind, payload, to_pem=False)
    except (ValueError, TypeError, FormatError):
        raise UnusableSecretError(
            f"a {kind} secret must hold an unencrypted PEM (or DER) {kind}, as Barbican "
            "stores it; castellan could not hand this one over"
        ) from None


def pem_form(kind: str, payload: bytes) -> bytes:
    """A ``private``/``public``/``certificate`` payload as PEM, converting DER; the image
    service and castellan read these secrets as PEM only. Other types are returned as given."""
    if kind not in _DER_TYPES:
        return payload
    if payload.lstrip().startswith(b"-----BEGIN"):
        der_form(kind, payload)  # refuses PEM that castellan could not read
        return payload
    try:
        return _reencode(kind, payload, to_pem=True)
    except (ValueError, TypeError):
        raise FormatError(
            f"not a PEM or DER {kind} (an unencrypted one for a private key)"
        ) from None


def _reencode(kind: str, payload: bytes, *, to_pem: bool) -> bytes:
    """A certificate (X.509), public key (SubjectPublicKeyInfo) or unencrypted private key
    (PKCS#8) read from DER and written as PEM (``to_pem``), or the other way round.
    cryptography's ValueError/TypeError on bytes that are no such thing pass through."""

    from imgcrypt.legacy import legacy_dsa

    with legacy_dsa():  # a legacy DSA certificate or key is re-encoded like any other
        return _reencode_quietly(kind, payload, to_pem=to_pem)


def _reencode_quietly(kind: str, payload: bytes, *, to_pem: bool) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    target = serialization.Encoding.PEM if to_pem else serialization.Encoding.DER
    if kind == "certificate":
        load_certificate = (x509.load_der_x509_certificate if to_pem
                            else x509.load_pem_x509_certificate)
        return load_certificate(payload).public_bytes(target)
    if kind == "public":
        load_public = (serialization.load_der_public_key if to_pem
                       else serialization.load_pem_public_key)
        return load_public(payload).public_bytes(
            target, serialization.PublicFormat.SubjectPublicKeyInfo)
    load_private = (serialization.load_der_private_key if to_pem
                    else serialization.load_pem_private_key)
    return load_private(payload, password=None).private_bytes(
        target, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def check_secret(secret: Secret, spec: EncryptionSpec, *, allow_unknown: bool = False) -> None:
    """Raise :class:`UsageError` (reason ``SPEC_MISMATCH``, ``details`` one finding each)
    naming each of algorithm, bit length, mode that differs.

    The secret's ``bit_length`` is compared with ``spec.key_size`` exactly as the volume type
    stores it, because that is the length Cinder orders for a volume's secret; what strength
    that number gives is ``spec.whole_key_bits`` and depends on ``spec.key_size_meaning``.
    A ``passphrase`` secret is not a key, so it has no algorithm, length or mode to check.
    Metadata the key manager did not keep (``None``) counts as a mismatch unless
    ``allow_unknown`` is set, since castellan-created keys, for one, carry no mode.
    """
    if secret.secret_type == PASSPHRASE:
        return
    mismatches: list[str] = []
    if secret.secret_type != SYMMETRIC:
        mismatches.append(f"secret type is {secret.secret_type}, the spec needs a symmetric key")

    def compare(what: str, have: str | int | None, want: str | int) -> None:
        if have is None:
            if not allow_unknown:
                mismatches.append(f"{what} is not recorded on the secret (spec needs {want})")
            return
        same = have.lower() == str(want).lower() if isinstance(have, str) else have == want
        if not same:
            mismatches.append(f"{what} is {have}, the spec needs {want}")

    compare("algorithm", secret.algorithm, spec.algorithm)
    compare("bit length", secret.bit_length, spec.key_size)
    compare("mode", secret.mode, spec.mode)
    if mismatches:
        raise UsageError("secret does not fit the encryption spec: " + "; ".join(mismatches),
                         reason=UsageFault.SPEC_MISMATCH, details=tuple(mismatches))


def generate_secret(order: KeyOrder) -> Secret:
    """Fresh secret material for managers that do not generate keys themselves.

    A generated passphrase is text (URL-safe base64 of ``bit_length`` random bits), so a
    person can type it and ``passphrase_for`` hands it to LUKS unchanged.
    """
    raw = os.urandom(order.bit_length // 8)
    if order.secret_type == PASSPHRASE:
        text = base64.urlsafe_b64encode(raw).rstrip(b"=")
        return Secret(
            payload=text,
            secret_type=PASSPHRASE,
            name=order.name,
        )
    if order.mode is not None and order.mode.lower() == "xts":
        half = len(raw) // 2
        while raw[:half] == raw[half:]:  # XTS rejects equal halves; astronomically unlikely
            raw = os.urandom(len(raw))
    return Secret(
        payload=raw,
        secret_type=SYMMETRIC,
        algorithm=order.algorithm,
        bit_length=order.bit_length,
        mode=order.mode,
        name=order.name,
    )


def secret_from_payload(
    secret_type: str,
    payload: bytes,
    *,
    name: str | None = None,
    algorithm: str | None = None,
    mode: str | None = None,
) -> Secret:
    """A secret of given bytes, stored the way the cloud reads it, or refused if it cannot.

    ``private``/``public``/``certificate`` payloads are kept as PEM (DER converted, see
    :func:`pem_form`). Only a symmetric key carries algorithm, mode and a bit length, which is
    the payload's own length. A secret the cloud could never turn into a LUKS passphrase (a
    non-UTF-8 passphrase) is refused with :class:`UnusableSecretError`.
    """
    data = pem_form(secret_type, payload)
    if secret_type == SYMMETRIC:
        secret = Secret(payload=data, secret_type=SYMMETRIC, algorithm=algorithm,
                        bit_length=len(data) * 8, mode=mode or None, name=name)
    else:
        secret = Secret(payload=data, secret_type=secret_type, name=name)
    passphrase_for(secret)
    return secret


def generation_order(
    secret_type: str,
    *,
    algorithm: str = "AES",
    bit_length: int = 512,
    mode: str | None = "XTS",
    name: str | None = None,
) -> KeyOrder:
    """What to ask a key manager to generate: only symmetric keys and passphrases can be
    generated (other types are given as bytes, see :func:`secret_from_payload`), and only a
    symmetric key has a cipher mode."""
    if secret_type not in (SYMMETRIC, PASSPHRASE):
        raise UsageError(f"a {secret_type} secret cannot be generated: give --payload-file")
    return KeyOrder(
        secret_type=secret_type,
        algorithm=algorithm,
        bit_length=bit_length,
        mode=(mode or None) if secret_type == SYMMETRIC else None,
        name=name,
    )


def luks_passphrase_text(secret: Secret) -> str | None:
    """The LUKS passphrase a secret stands for (:func:`passphrase_for`) as text, or None when
    the cloud could not open LUKS with this secret (or the passphrase is not UTF-8 text)."""
    try:
        return passphrase_for(secret).decode("utf-8")
    except (UnusableSecretError, UnicodeDecodeError):
        return None


def consumers_of(manager: KeyManager, key_id: str) -> list[Consumer]:
    """The consumers registered on a secret; none where the manager keeps no consumers."""
    if not manager.supports_consumers:
        return []
    return manager.list_consumers(key_id)


def parse_deletion_policy(value: str) -> str:
    """A key deletion policy, normalised; a value not in :data:`DELETION_POLICIES` is refused."""
    policy = value.strip().lower()
    if policy not in DELETION_POLICIES:
        raise UsageError(
            f"deletion policy {value!r} is not one of {', '.join(DELETION_POLICIES)}"
        )
    return policy


class DeletionOutcome(enum.Enum):
    DELETED = "deleted"
    KEPT_BY_POLICY = "kept-by-policy"
    KEPT_REFERENCED = "kept-referenced"
    KEPT_CONSUMED = "kept-consumed"
    KEPT_UNBOUND = "kept-unbound"
    REFUSED = "refused"
    ALREADY_GONE = "already-gone"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class DeletionReport:
    """What happened to a key when its image was deleted, and why."""

    key_id: str
    policy: str
    outcome: DeletionOutcome
    reason: str
    consumer_removed: bool = False

    @property
    def deleted(self) -> bool:
        return self.outcome is DeletionOutcome.DELETED

    def as_dict(self) -> dict[str, str | bool]:
        return {
            "key_id": self.key_id,
            "policy": self.policy,
            "outcome": self.outcome.value,
            "deleted": self.deleted,
            "reason": self.reason,
            "consumer_removed": self.consumer_removed,
        }


def apply_deletion_policy(
    manager: KeyManager,
    key_id: str,
    policy: str,
    *,
    consumer: Consumer | None = None,
    other_references: Iterable[str] = (),
    require_consumer: bool = False,
) -> DeletionReport:
    """Apply an image's key-deletion policy when that image is deleted.

    ``consumer`` is the image's own consumer registration, removed first where the manager
    supports consumers. ``other_references`` names anything else the caller knows still uses
    the key (other images, snapshots, volumes): any one of them keeps the key. A key that still
    has consumers is kept too. When the key manager refuses or cannot be reached, the report
    says so instead of raising: deleting the image must not fail because its key could not be.
    With ``require_consumer`` the key is deleted only if ``consumer`` was registered on it:
    properties can name any key, so an image that never consumed a key must not delete it.
    """
    policy = parse_deletion_policy(policy)

    def report(outcome: DeletionOutcome, reason: str, removed: bool = False) -> DeletionReport:
        return DeletionReport(key_id, policy, outcome, reason, removed)

    removed = False
    try:
        bound = (consumer is not None and manager.supports_consumers
                 and consumer in manager.list_consumers(key_id)) if require_consumer else True
        if consumer is not None and manager.supports_consumers:
            try:
                manager.remove_consumer(key_id, consumer)
                removed = True
            except SecretNotFoundError:
                # Barbican answers 404 both for a missing secret and for a consumer that was
                # never registered; only the first means the key is gone.
                manager.describe(key_id)
        if policy == KEEP_POLICY:
            return report(DeletionOutcome.KEPT_BY_POLICY, "policy is do_not_delete", removed)
        if not bound:
            return report(DeletionOutcome.KEPT_UNBOUND,
                          "the image was never a registered consumer of this key", removed)
        references = sorted({str(ref) for ref in other_references})
        if references:
            return report(
                DeletionOutcome.KEPT_REFERENCED,
                "still referenced by " + ", ".join(references),
                removed,
            )
        if manager.supports_consumers:
            remaining = manager.list_consumers(key_id)
            if remaining:
                names = ", ".join(
                    f"{c.service}/{c.resource_type}/{c.resource_id}" for c in remaining
                )
                return report(
                    DeletionOutcome.KEPT_CONSUMED, f"still has consumers: {names}", removed
                )
        manager.delete(key_id)
    except SecretNotFoundError:
        return report(DeletionOutcome.ALREADY_GONE, "the key manager has no such key", removed)
    except KeyManagerUnavailableError as exc:
        return report(DeletionOutcome.UNAVAILABLE, str(exc), removed)
    except KeyManagerError as exc:
        return report(DeletionOutcome.REFUSED, str(exc), removed)
    return report(DeletionOutcome.DELETED, f"policy is {policy} and nothing else uses the key",
                  removed)


def delete_secret(manager: KeyManager, key_id: str, *, force: bool) -> None:
    """Delete a secret, refusing while it still opens images (naming them), unless ``force``:
    deleting it would lock them out."""
    consumers = [] if force else consumers_of(manager, key_id)
    if consumers:
        raise SecretInUseError(
            f"secret {key_id} still opens {', '.join(map(consumer_name, consumers))}; "
            "deleting it would lock them out (use --force to delete it anyway)"
        )
    manager.delete(key_id, force=force)

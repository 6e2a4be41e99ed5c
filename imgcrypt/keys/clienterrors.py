"""One translation of key-manager client failures into imgcrypt's error family.

python-barbicanclient and keystoneauth raise the same exceptions whether imgcrypt calls them
directly (:mod:`imgcrypt.keys.barbican`) or castellan calls them and wraps the failure in its
own exception, keeping the original as the context (:mod:`imgcrypt.keys.castellan`). Both
adapters ask :func:`client_error`, which walks that chain, so the same fault gets the same class
and exit code through either adapter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from imgcrypt.errors import (
    ImgcryptError,
    KeyManagerError,
    KeyManagerFault,
    KeyManagerUnavailableError,
    SecretInUseError,
    SecretNotFoundError,
    UsageError,
)

# Barbican answers these while a proxy or the service itself is down or restarting.
_UNAVAILABLE_STATUS = (502, 503, 504)


def subject(key_id: str | None) -> str:
    """What an error names: the secret a call was about, or the request when none."""
    return f"secret {key_id}" if key_id else "request"


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it was raised from or during, without looping."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _client_modules() -> tuple[Any, Any]:
    """barbicanclient's and keystoneauth's exception modules, or None where not installed
    (castellan may run without the Barbican backend)."""
    bexc: Any = None
    kexc: Any = None
    with contextlib.suppress(ImportError):
        from barbicanclient import exceptions as barbican_exceptions

        bexc = barbican_exceptions
    with contextlib.suppress(ImportError):
        from keystoneauth1 import exceptions as keystone_exceptions

        kexc = keystone_exceptions
    return bexc, kexc


def client_error(exc: BaseException, what: str, *, who: str,
                 redact: bool = False) -> ImgcryptError | None:
    """The imgcrypt error for the first client exception in ``exc``'s chain, or None.

    ``what`` names the object ("secret ID", "request"), ``who`` the service in messages.
    ``redact`` drops the server's own words from client-error messages: when a payload was
    sent, a validation message could quote it.
    """
    bexc, kexc = _client_modules()
    for link in exception_chain(exc):
        mapped = _barbican_error(bexc, link, what, who, redact) if bexc is not None else None
        if mapped is None and kexc is not None:
            mapped = _keystone_error(kexc, link, who)
        if mapped is None and isinstance(link, ConnectionError):
            mapped = KeyManagerUnavailableError(f"cannot reach {who}: {link}")
        if mapped is not None:
            return mapped
    return None


def _barbican_error(bexc: Any, link: BaseException, what: str, who: str,
                    redact: bool) -> ImgcryptError | None:
    if isinstance(link, bexc.SecretHasConsumers):
        return SecretInUseError(f"{who} refused to delete {what}: it still has consumers")
    if isinstance(link, bexc.HTTPAuthError):
        return token_refused(who)
    if isinstance(link, bexc.HTTPClientError):
        if link.status_code == 404:
            return SecretNotFoundError(f"{who} has no {what} (404)")
        if link.status_code == 403:
            return KeyManagerError(f"{who} forbids this {what}: {link}")
        detail = f"HTTP {link.status_code}" if redact else str(link)
        return KeyManagerError(f"{who} rejected the {what}: {detail}")
    if isinstance(link, bexc.HTTPServerError):
        if link.status_code in _UNAVAILABLE_STATUS:
            return KeyManagerUnavailableError(f"{who} is unavailable: {link}")
        return KeyManagerError(f"{who} failed on the {what}: {link}")
    if isinstance(link, bexc.PayloadException):
        return UsageError(f"{who} cannot store this payload: {link}")
    if isinstance(link, bexc.BarbicanException):
        return KeyManagerError(f"{who} error: {link}")
    return None


def token_refused(who: str) -> KeyManagerError:
    """The one message for a token the identity service no longer accepts."""
    return KeyManagerError(
        f"{who} refused the credentials: the token expired or was revoked (or the password "
        "is wrong); re-authenticate and try again", reason=KeyManagerFault.TOKEN_REFUSED)


def is_token_refusal(kexc: Any, link: BaseException) -> bool:
    """Keystone refusing the token a request authenticates with: 401, or 404 "Failed to
    validate token" from ``/auth/tokens`` (how Keystone answers an expired or revoked one)."""
    if isinstance(link, kexc.Unauthorized):
        return True
    return isinstance(link, kexc.NotFound) and "/auth/tokens" in str(getattr(link, "url", "")
                                                                     or "")


def _keystone_error(kexc: Any, link: BaseException, who: str) -> ImgcryptError | None:
    if isinstance(link, kexc.ConnectionError | kexc.DiscoveryFailure | kexc.EndpointNotFound):
        return KeyManagerUnavailableError(f"cannot reach {who}: {link}")
    if is_token_refusal(kexc, link):
        return token_refused(who)
    if isinstance(link, kexc.MissingRequiredOptions):
        return UsageError(f"incomplete OpenStack credentials: {link}")
    if isinstance(link, kexc.ClientException):
        return KeyManagerError(f"{who} request failed: {link}")
    return None


__all__ = ["client_error", "exception_chain", "is_token_refusal", "token_refused"]

"""Barbican through python-barbicanclient: a Keystone-backed cloud or a standalone server.

Two ways in: a keystoneauth session built the OpenStack way (``OS_*`` variables or a
``clouds.yaml`` entry, through keystoneauth's plugin loading), or an endpoint plus project id
for a standalone Barbican that runs the unauthenticated pipeline. Every client failure is
translated into the :class:`imgcrypt.errors.KeyManagerError` family: unreachable ->
:class:`KeyManagerUnavailableError`, 404 -> :class:`SecretNotFoundError`.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from imgcrypt.errors import (
    ImgcryptError,
    KeyManagerError,
    KeyManagerFault,
    KeyManagerUnavailableError,
    UsageError,
)
from imgcrypt.keys.clienterrors import client_error, subject
from imgcrypt.keys.manager import Consumer, KeyOrder, SecretInfo, require_uuid
from imgcrypt.keys.rules import generate_secret
from imgcrypt.keys.secret import PASSPHRASE, SECRET_TYPES, Secret

# barbicanclient logs every HTTP error at ERROR level; with no handler configured Python
# prints those to stderr, which would duplicate (and garble) the one-line CLI error.
logging.getLogger("barbicanclient").addHandler(logging.NullHandler())

_CURL_DATA = re.compile(r"-d '.*'$", re.DOTALL)


class _RedactBodies(logging.Filter):
    """keystoneauth logs HTTP request and response bodies at DEBUG, and a secret's payload
    is a body: when a service runs with DEBUG logging, the bodies are replaced, not logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name.endswith(".body") or "RESP BODY:" in message:
            head = message.split("RESP BODY:", 1)[0]
            record.msg, record.args = f"{head}RESP BODY: <redacted by imgcrypt>", None
        elif "-d '" in message:
            record.msg = _CURL_DATA.sub("-d '<redacted by imgcrypt>'", message)
            record.args = None
        return True


# Filters apply to records logged on the logger itself, so each logger keystoneauth's session
# uses (one, or four with split_loggers) gets one.
for _name in ("keystoneauth.session", "keystoneauth.session.request",
              "keystoneauth.session.response", "keystoneauth.session.body"):
    logging.getLogger(_name).addFilter(_RedactBodies())

ORDER_TIMEOUT = 60.0
REQUEST_TIMEOUT = 30.0
MAX_LIST = 10_000
_PAGE = 100


def _check_installed() -> None:
    try:
        import barbicanclient  # noqa: F401
    except ImportError:
        raise UsageError(
            "the Barbican key manager needs python-barbicanclient (pip install 'imgcrypt[cloud]')"
        ) from None


@contextlib.contextmanager
def translate_errors(key_id: str | None = None, *, redact: bool = False) -> Iterator[None]:
    """Turn barbicanclient/keystoneauth exceptions into imgcrypt's typed errors
    (:func:`imgcrypt.keys.clienterrors.client_error`)."""
    what = subject(key_id)
    try:
        yield
    except ImgcryptError:
        raise
    except Exception as exc:
        mapped = client_error(exc, what, who="Barbican", redact=redact)
        if mapped is not None:
            raise mapped from None
        if isinstance(exc, NotImplementedError):
            raise KeyManagerError(f"Barbican does not support this: {exc}",
                                  reason=KeyManagerFault.CONSUMERS_UNSUPPORTED) from None
        if isinstance(exc, ValueError):
            # barbicanclient raises ValueError for refs it cannot parse, secrets without
            # payload, and endpoints that speak no supported microversion.
            raise KeyManagerError(f"Barbican client error: {exc}") from None
        raise


def _uuid_from_ref(ref: str) -> str:
    return ref.rstrip("/").rpartition("/")[2]


class BarbicanKeyManager:
    """Barbican behind the :class:`imgcrypt.keys.manager.KeyManager` interface."""

    name = "barbican"

    def __init__(self, client_factory: Callable[[], Any], *, description: str = "barbican") -> None:
        self._client_factory = client_factory
        self._client: Any = None
        self._description = description

    def __repr__(self) -> str:
        return f"BarbicanKeyManager({self._description})"

    @classmethod
    def standalone(
        cls, endpoint: str, project_id: str, *, verify: bool | str = True
    ) -> BarbicanKeyManager:
        """A Barbican that takes the project from ``X-Project-Id`` (no Keystone)."""
        _check_installed()
        if not endpoint or not endpoint.startswith(("http://", "https://")):
            raise UsageError("--barbican-endpoint must be an http:// or https:// URL")
        if not project_id:
            raise UsageError("a standalone Barbican needs --project-id")

        def factory() -> Any:
            from barbicanclient import client
            from keystoneauth1 import session

            sess = session.Session(verify=verify, timeout=REQUEST_TIMEOUT)
            return client.Client(session=sess, endpoint=endpoint, project_id=project_id)

        return cls(factory, description=f"endpoint={endpoint!r}")

    @classmethod
    def from_session(
        cls,
        session: Any,
        *,
        endpoint: str | None = None,
        region_name: str | None = None,
        interface: str | None = None,
    ) -> BarbicanKeyManager:
        """Barbican found through an authenticated keystoneauth session's service catalog."""
        _check_installed()

        def factory() -> Any:
            from barbicanclient import client

            kwargs: dict[str, Any] = {"session": session}
            if endpoint:
                kwargs["endpoint"] = endpoint
            if region_name:
                kwargs["region_name"] = region_name
            if interface:
                kwargs["interface"] = interface
            return client.Client(**kwargs)

        return cls(factory, description="keystone session")

    @classmethod
    def from_environment(
        cls, cloud: str | None = None, environ: Mapping[str, str] | None = None
    ) -> BarbicanKeyManager:
        """Credentials the OpenStack way: clouds.yaml (``--os-cloud``/``OS_CLOUD``) or ``OS_*``."""
        _check_installed()
        env = os.environ if environ is None else environ
        settings = openstack_settings(cloud, env)
        with translate_errors():
            session = _load_session(settings)
        return cls.from_session(
            session,
            region_name=settings.get("region_name"),
            interface=settings.get("interface"),
        )

    # -- plumbing -----------------------------------------------------------------------------

    def _api(self) -> Any:
        if self._client is None:
            with translate_errors():
                self._client = self._client_factory()
        return self._client

    @property
    def supports_consumers(self) -> bool:
        client = self._api()
        with translate_errors():
            return bool(client.client.is_supported_microversion("1.1"))

    # -- the KeyManager interface -------------------------------------------------------------

    def get(self, key_id: str) -> Secret:
        key_id = require_uuid(key_id)
        client = self._api()
        with translate_errors(key_id):
            remote = client.secrets.get(key_id)
            info = _to_info(remote, key_id)
            payload = remote.payload
        return info.with_payload(payload)

    def describe(self, key_id: str) -> SecretInfo:
        key_id = require_uuid(key_id)
        client = self._api()
        with translate_errors(key_id):
            remote = client.secrets.get(key_id)
            return _to_info(remote, key_id)

    def store(self, secret: Secret) -> str:
        client = self._api()
        with translate_errors(redact=True):
            remote = client.secrets.create(
                name=secret.name,
                payload=secret.payload_bytes,
                algorithm=secret.algorithm,
                bit_length=secret.bit_length,
                mode=secret.mode,
                secret_type=secret.secret_type,
            )
            ref = remote.store()
        return _uuid_from_ref(str(ref))

    def create_key(self, order: KeyOrder) -> str:
        if order.secret_type == PASSPHRASE:
            # Barbican orders only generate keys; a passphrase is generated here and stored.
            return self.store(generate_secret(order))
        client = self._api()
        with translate_errors():
            key_order = client.orders.create_key(
                name=order.name,
                algorithm=order.algorithm,
                bit_length=order.bit_length,
                mode=order.mode,
                payload_content_type="application/octet-stream",
            )
            order_ref = key_order.submit()
            deadline = time.monotonic() + ORDER_TIMEOUT
            delay = 0.05
            while True:
                current = client.orders.get(order_ref)
                if current.status == "ACTIVE":
                    break
                if current.status == "ERROR":
                    raise KeyManagerError(
                        f"Barbican order failed: {current.error_status_code} {current.error_reason}"
                    )
                if time.monotonic() > deadline:
                    raise KeyManagerUnavailableError(
                        f"Barbican order not completed within {ORDER_TIMEOUT:.0f}s"
                    )
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            secret_ref = current.secret_ref
        with contextlib.suppress(KeyManagerError), translate_errors():
            client.orders.delete(order_ref)  # the order is bookkeeping; the secret is what counts
        return _uuid_from_ref(str(secret_ref))

    def delete(self, key_id: str, *, force: bool = False) -> None:
        key_id = require_uuid(key_id)
        client = self._api()
        with translate_errors(key_id):
            client.secrets.delete(key_id, force=force)

    def list(self) -> builtins.list[SecretInfo]:
        client = self._api()
        infos: builtins.list[SecretInfo] = []
        with translate_errors():
            offset = 0
            while offset < MAX_LIST:
                page = client.secrets.list(limit=_PAGE, offset=offset)
                for remote in page:
                    infos.append(_to_info(remote, _uuid_from_ref(str(remote.secret_ref))))
                if len(page) < _PAGE:
                    break
                offset += _PAGE
        return infos

    def add_consumer(self, key_id: str, consumer: Consumer) -> None:
        key_id = require_uuid(key_id)
        client = self._api()
        with translate_errors(key_id):
            client.secrets.register_consumer(key_id, **consumer.as_dict())

    def remove_consumer(self, key_id: str, consumer: Consumer) -> None:
        key_id = require_uuid(key_id)
        client = self._api()
        with translate_errors(key_id):
            client.secrets.remove_consumer(key_id, **consumer.as_dict())

    def list_consumers(self, key_id: str) -> builtins.list[Consumer]:
        key_id = require_uuid(key_id)
        client = self._api()
        consumers: builtins.list[Consumer] = []
        with translate_errors(key_id):
            offset = 0
            while offset < MAX_LIST:
                page = client.secrets.list_consumers(key_id, limit=_PAGE, offset=offset)
                consumers.extend(
                    Consumer(c.service, c.resource_type, c.resource_id) for c in page
                )
                if len(page) < _PAGE:
                    break
                offset += _PAGE
        return consumers


def _to_info(remote: Any, key_id: str) -> SecretInfo:
    secret_type = remote.secret_type if remote.secret_type in SECRET_TYPES else "opaque"
    created = remote.created
    return SecretInfo(
        secret_id=key_id,
        secret_type=secret_type,
        name=remote.name,
        algorithm=remote.algorithm,
        bit_length=_int_or_none(remote.bit_length),
        mode=remote.mode,
        created=None if created is None else str(created),
    )


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


# -- OpenStack credentials ----------------------------------------------------------------------

_CLOUDS_YAML_NAMES = ("clouds.yaml", "clouds.yml")


def _clouds_yaml_candidates(env: Mapping[str, str]) -> list[Path]:
    explicit = env.get("OS_CLIENT_CONFIG_FILE")
    if explicit:
        return [Path(explicit)]
    home = Path(env.get("HOME", str(Path.home())))
    dirs = [Path.cwd(), home / ".config" / "openstack", Path("/etc/openstack")]
    return [d / name for d in dirs for name in _CLOUDS_YAML_NAMES]


def openstack_settings(cloud: str | None, env: Mapping[str, str]) -> dict[str, Any]:
    """``auth_type``, ``auth`` and endpoint filters from clouds.yaml or the ``OS_*`` variables."""
    cloud = cloud or env.get("OS_CLOUD") or None
    if cloud:
        return _cloud_from_yaml(cloud, env)
    auth_type = env.get("OS_AUTH_TYPE") or ("v3token" if env.get("OS_TOKEN") else "password")
    from keystoneauth1 import loading

    try:
        loader: Any = loading.get_plugin_loader(auth_type)
    except Exception:
        raise UsageError(f"unknown OpenStack auth type {auth_type!r}") from None
    auth: dict[str, Any] = {}
    for opt in loader.get_options():
        for candidate in [opt, *opt.deprecated]:
            value = env.get("OS_" + candidate.name.upper().replace("-", "_"))
            if value:
                auth[opt.dest] = value
                break
    if not auth.get("auth_url"):
        raise UsageError(
            "no Barbican to talk to: give --barbican-endpoint and --project-id, --os-cloud, "
            "or the OS_* variables (OS_AUTH_URL ...)"
        )
    return {
        "auth_type": auth_type,
        "auth": auth,
        "region_name": env.get("OS_REGION_NAME"),
        "interface": env.get("OS_INTERFACE"),
        "cacert": env.get("OS_CACERT"),
        "insecure": env.get("OS_INSECURE", "").lower() in ("1", "true", "yes"),
    }


def _cloud_from_yaml(cloud: str, env: Mapping[str, str]) -> dict[str, Any]:
    try:
        import yaml  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise UsageError("--os-cloud needs PyYAML to read clouds.yaml") from None
    for path in _clouds_yaml_candidates(env):
        if not path.is_file():
            continue
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UsageError(f"{path}: cannot read clouds.yaml ({type(exc).__name__})") from None
        clouds = document.get("clouds") if isinstance(document, dict) else None
        if not isinstance(clouds, dict):
            raise UsageError(f"{path}: no 'clouds' mapping")
        entry = clouds.get(cloud)
        if entry is None:
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("auth", {}), dict):
            raise UsageError(f"{path}: cloud {cloud!r} is malformed")
        return {
            "auth_type": str(entry.get("auth_type", "password")),
            "auth": dict(entry.get("auth", {})),
            "region_name": entry.get("region_name"),
            "interface": entry.get("interface"),
            "cacert": entry.get("cacert"),
            "insecure": bool(entry.get("insecure", False))
            or entry.get("verify") is False,
        }
    raise UsageError(f"cloud {cloud!r} is not in any clouds.yaml")


def _load_session(settings: Mapping[str, Any]) -> Any:
    from keystoneauth1 import loading, session

    try:
        loader: Any = loading.get_plugin_loader(settings["auth_type"])
    except Exception:
        raise UsageError(f"unknown OpenStack auth type {settings['auth_type']!r}") from None
    known = {opt.dest for opt in loader.get_options()}
    options = {
        key.replace("-", "_"): value
        for key, value in settings["auth"].items()
        if key.replace("-", "_") in known
    }
    auth = loader.load_from_options(**options)
    verify: bool | str = not settings.get("insecure", False)
    if verify and settings.get("cacert"):
        verify = str(settings["cacert"])
    return session.Session(auth=auth, verify=verify, timeout=REQUEST_TIMEOUT)

"""Any castellan ``KeyManager`` (Barbican, Vault, ...) behind imgcrypt's key-manager interface.

castellan's managed objects map to :class:`Secret` by their ``managed_type()``: SymmetricKey
-> ``symmetric``, Passphrase -> ``passphrase``, X509 -> ``certificate``, PrivateKey ->
``private``, PublicKey -> ``public``, OpaqueData -> ``opaque``. castellan keeps no cipher mode,
so secrets that come through it have ``mode=None``, and it hands certificates and asymmetric
keys over DER-encoded. Backends without consumers (castellan's Vault) work minus consumers.

castellan wraps backend failures in its own ``KeyManagerError`` but keeps the original as the
exception context; that chain is how unreachable servers and refused deletions are told apart.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgcrypt.errors import (
    ImgcryptError,
    KeyManagerError,
    KeyManagerFault,
    SecretNotFoundError,
    UsageError,
)
from imgcrypt.keys.clienterrors import client_error, exception_chain, subject
from imgcrypt.keys.manager import Consumer, KeyOrder, SecretInfo, require_uuid
from imgcrypt.keys.rules import generate_secret
from imgcrypt.keys.secret import PASSPHRASE, SECRET_TYPES, SYMMETRIC, Secret

logging.getLogger("castellan").addHandler(logging.NullHandler())
logging.getLogger("barbicanclient").addHandler(logging.NullHandler())


@contextlib.contextmanager
def translate_errors(key_id: str | None = None, *, redact: bool = False) -> Iterator[None]:
    """castellan's exceptions, and the client exceptions they wrap, as imgcrypt's typed errors
    (:func:`imgcrypt.keys.clienterrors.client_error`)."""
    from castellan.common import exception as cexc

    what = subject(key_id)
    try:
        yield
    except cexc.ManagedObjectNotFoundError:
        raise SecretNotFoundError(f"the key manager has no {what}") from None
    except NotImplementedError:
        raise KeyManagerError(
            "this castellan backend does not support that operation",
            reason=KeyManagerFault.CONSUMERS_UNSUPPORTED,
        ) from None
    except (cexc.CastellanException, KeyError) as exc:
        raise _classify(exc, what, redact) from None
    except (ValueError, TypeError) as exc:
        # castellan converts certificates and asymmetric keys between PEM and DER outside its
        # own error handling; a payload that is not what its type says fails there.
        raise KeyManagerError(
            f"castellan could not convert the {what} ({type(exc).__name__}): "
            "the payload does not match its secret type"
        ) from None
    except Exception as exc:
        # castellan lets some client failures through unwrapped: keystoneauth's, when the
        # token it re-authenticates with has expired ("NotFound: Failed to validate token").
        mapped = client_error(exc, what, who="the key manager", redact=redact)
        if mapped is None:
            raise
        raise mapped from None


def _classify(exc: BaseException, what: str, redact: bool = False) -> ImgcryptError:
    mapped = client_error(exc, what, who="the key manager", redact=redact)
    if mapped is not None:
        return mapped
    if any(isinstance(link, KeyError) for link in exception_chain(exc)):
        return SecretNotFoundError(f"the key manager has no {what}")
    if redact:  # a validation message about a stored payload could quote it
        return KeyManagerError(f"the key manager refused the {what} ({type(exc).__name__})")
    return KeyManagerError(f"castellan: {exc}")


class CastellanKeyManager:
    """A castellan ``KeyManager`` plus the context to call it with."""

    name = "castellan"

    def __init__(
        self, manager: Any, context: Any, *, supports_consumers: bool | None = None
    ) -> None:
        self._manager = manager
        self._context = context
        if supports_consumers is None:
            supports_consumers = _backend_has_consumers(manager)
        self._supports_consumers = supports_consumers

    def __repr__(self) -> str:
        return f"CastellanKeyManager({type(self._manager).__name__})"

    @property
    def supports_consumers(self) -> bool:
        return self._supports_consumers

    @classmethod
    def from_config_file(cls, path: Path | str) -> CastellanKeyManager:
        """castellan configured by an oslo.config file.

        ``[key_manager] backend`` picks the backend. Credentials come from castellan's own
        ``[key_manager] auth_type`` options; a standalone Barbican without Keystone is reached
        with ``[imgcrypt] project_id`` (sent as ``X-Project-Id``) and ``[barbican]
        barbican_endpoint``.
        """
        try:
            from castellan import key_manager
            from castellan.common import utils
            from oslo_config import cfg
        except ImportError:
            raise UsageError(
                "the castellan key manager needs castellan (pip install 'imgcrypt[cloud]')"
            ) from None
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"castellan configuration {path} does not exist")
        conf = cfg.ConfigOpts()
        conf.register_opts(
            [cfg.StrOpt("project_id", help="X-Project-Id for a standalone Barbican")],
            group="imgcrypt",
        )
        try:
            conf(args=[], project="imgcrypt", default_config_files=[str(path)])
            manager = key_manager.API(conf)
            project_id = conf.imgcrypt.project_id
            if project_id:
                endpoint = conf.barbican.barbican_endpoint if "barbican" in conf else None
                context: Any = project_context(project_id, endpoint)
            else:
                context = utils.credential_factory(conf)
        except cfg.Error as exc:
            raise UsageError(f"castellan configuration {path}: {exc}") from None
        except Exception as exc:  # castellan/stevedore report bad backends in many ways
            raise UsageError(
                f"castellan configuration {path}: {type(exc).__name__}: {exc}"
            ) from None
        return cls(manager, context)

    # -- the KeyManager interface -------------------------------------------------------------

    def get(self, key_id: str) -> Secret:
        key_id = require_uuid(key_id)
        with translate_errors(key_id):
            obj = self._manager.get(self._context, key_id)
        return _to_secret(obj, key_id)

    def describe(self, key_id: str) -> SecretInfo:
        key_id = require_uuid(key_id)
        with translate_errors(key_id):
            obj = self._manager.get(self._context, key_id, metadata_only=True)
        return _to_info(obj, key_id)

    def store(self, secret: Secret) -> str:
        managed = _to_managed(secret)
        with translate_errors(redact=True):
            key_id = self._manager.store(self._context, managed)
        return str(key_id)

    def create_key(self, order: KeyOrder) -> str:
        # castellan's create_key carries no cipher mode, and Barbican will not generate a
        # 512-bit AES key without one (XTS); so keys with a mode are generated here and stored.
        if order.secret_type == PASSPHRASE or order.mode is not None:
            return self.store(generate_secret(order))
        with translate_errors():
            key_id = self._manager.create_key(
                self._context, algorithm=order.algorithm, length=order.bit_length, name=order.name
            )
        return str(key_id)

    def delete(self, key_id: str, *, force: bool = False) -> None:
        key_id = require_uuid(key_id)
        with translate_errors(key_id):
            self._manager.delete(self._context, key_id, force=force)

    def list(self) -> builtins.list[SecretInfo]:
        with translate_errors():
            objects = self._manager.list(self._context, metadata_only=True)
        return [_to_info(obj, str(obj.id)) for obj in objects if obj.id]

    def _require_consumers(self) -> None:
        if not self._supports_consumers:
            raise KeyManagerError(
                f"castellan backend {type(self._manager).__name__} has no consumer support",
                reason=KeyManagerFault.CONSUMERS_UNSUPPORTED,
            )

    def add_consumer(self, key_id: str, consumer: Consumer) -> None:
        key_id = require_uuid(key_id)
        self._require_consumers()
        with translate_errors(key_id):
            self._manager.add_consumer(self._context, key_id, consumer.as_dict())

    def remove_consumer(self, key_id: str, consumer: Consumer) -> None:
        key_id = require_uuid(key_id)
        self._require_consumers()
        with translate_errors(key_id):
            self._manager.remove_consumer(self._context, key_id, consumer.as_dict())

    def list_consumers(self, key_id: str) -> builtins.list[Consumer]:
        key_id = require_uuid(key_id)
        self._require_consumers()
        with translate_errors(key_id):
            obj = self._manager.get(self._context, key_id, metadata_only=True)
        consumers = []
        for item in obj.consumers or []:
            try:
                consumers.append(
                    Consumer(
                        str(item["service"]), str(item["resource_type"]), str(item["resource_id"])
                    )
                )
            except (KeyError, TypeError, UsageError):
                raise KeyManagerError(f"malformed consumer record on secret {key_id}") from None
        return consumers


def _backend_has_consumers(manager: Any) -> bool:
    try:
        from castellan.key_manager.barbican_key_manager import BarbicanKeyManager
    except ImportError:
        return False
    return isinstance(manager, BarbicanKeyManager)


def _kind(obj: Any) -> str:
    try:
        kind = str(obj.managed_type())
    except Exception:
        kind = "opaque"
    return kind if kind in SECRET_TYPES else "opaque"


def _to_info(obj: Any, key_id: str) -> SecretInfo:
    kind = _kind(obj)
    created = getattr(obj, "created", None)
    bit_length = getattr(obj, "bit_length", None)
    return SecretInfo(
        secret_id=key_id,
        secret_type=kind,
        name=getattr(obj, "name", None),
        algorithm=getattr(obj, "algorithm", None),
        bit_length=bit_length if isinstance(bit_length, int) and bit_length > 0 else None,
        mode=None,
        created=None if created is None else str(created),
    )


def _to_secret(obj: Any, key_id: str) -> Secret:
    return _to_info(obj, key_id).with_payload(obj.get_encoded())


def _to_managed(secret: Secret) -> Any:
    from castellan.common.objects import (
        opaque_data,
        passphrase,
        private_key,
        public_key,
        symmetric_key,
        x_509,
    )

    data = secret.payload_bytes
    kind = secret.secret_type
    if kind == SYMMETRIC:
        return symmetric_key.SymmetricKey(
            secret.algorithm or "AES", secret.bit_length or len(data) * 8, data, name=secret.name
        )
    if kind == PASSPHRASE:
        return passphrase.Passphrase(data, name=secret.name)
    if kind == "certificate":
        return x_509.X509(data, name=secret.name)
    if kind == "private":
        return private_key.PrivateKey(
            secret.algorithm or "RSA", secret.bit_length or 0, data, name=secret.name
        )
    if kind == "public":
        return public_key.PublicKey(
            secret.algorithm or "RSA", secret.bit_length or 0, data, name=secret.name
        )
    return opaque_data.OpaqueData(data, name=secret.name)


def project_context(project_id: str, endpoint: str | None = None) -> Any:
    """A castellan context for a Barbican without Keystone: every request sends X-Project-Id."""
    from keystoneauth1 import plugin
    from oslo_context import context

    class ProjectHeaderAuth(plugin.BaseAuthPlugin):
        def get_headers(self, session: Any, **kwargs: Any) -> dict[str, str]:
            return {"X-Project-Id": project_id}

        def get_endpoint(self, session: Any, **kwargs: Any) -> str | None:
            return endpoint

    class ProjectContext(context.RequestContext):
        def get_auth_plugin(self) -> Any:
            return ProjectHeaderAuth()

    return ProjectContext(project_id=project_id)


def user_token_context(token: str, endpoint: str, *, project_id: str | None = None,
                       user_id: str | None = None) -> Any:
    """A castellan context that sends ``token`` to Barbican at ``endpoint`` as it is.

    castellan's own handling of a bare token re-authenticates it at Keystone first
    (``identity.Token``), which an expired token fails, service token or not. Sent as it is,
    beside the service token castellan adds with ``[barbican] send_service_user_token``,
    Barbican's keystonemiddleware accepts it for Keystone's ``allow_expired_window``."""
    from keystoneauth1 import token_endpoint
    from oslo_context import context

    class UserTokenContext(context.RequestContext):
        def get_auth_plugin(self) -> Any:
            return token_endpoint.Token(endpoint, token)

    return UserTokenContext(auth_token=token, project_id=project_id, user_id=user_id)


def bound_requests(manager: Any, timeout: float) -> bool:
    """Make castellan's Barbican backend give up on a request after ``timeout`` seconds
    (connecting, and each wait for an answer); True where it applies.

    castellan builds a keystoneauth session for every call without a timeout (it registers
    keystoneauth's ``[barbican] timeout`` option but never reads it), and barbicanclient asks
    Barbican for its API versions while the client is being built: a Barbican that stops
    answering would hold the call, and the Glance import around it, for ever. So the client
    is built the way castellan builds it, from castellan's own auth and endpoint helpers, with
    the timeout on the session before its first request. Another backend (Vault), or a
    castellan without those helpers, is left as it is."""
    auth_for = getattr(manager, "_get_keystone_auth", None)
    endpoint_for = getattr(manager, "_get_barbican_endpoint", None)
    build = getattr(manager, "_get_barbican_client", None)
    if auth_for is None or endpoint_for is None or build is None:
        return False
    from barbicanclient import client as barbican_client
    from castellan.common import exception as cexc
    from keystoneauth1 import session

    def bounded_client(context: Any) -> Any:
        if not context:
            return build(context)  # castellan's own refusal (Forbidden)
        try:
            auth = auth_for(context)
            sess = session.Session(auth=auth, verify=getattr(manager, "_verify", True),
                                   timeout=timeout)
            return barbican_client.Client(version=manager.conf.barbican.barbican_api_version,
                                          session=sess, endpoint=endpoint_for(auth, sess))
        except Exception as exc:  # as castellan reports a client it could not build
            raise cexc.KeyManagerError(reason=exc) from exc

    manager._get_barbican_client = bounded_client
    return True

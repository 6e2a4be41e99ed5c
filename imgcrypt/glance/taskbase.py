"""What both TaskFlow tasks share: Glance's context, the key manager, failing an import."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from imgcrypt.errors import KeyManagerError, KeyManagerFault, KeyManagerUnavailableError
from imgcrypt.glance.checks import MAX_PROPERTY, refusal_properties, unchecked_properties
from imgcrypt.keys.castellan import CastellanKeyManager, bound_requests, user_token_context
from imgcrypt.keys.manager import KeyManager
from imgcrypt.service.verdict import LEFTOVER_PROPERTY

LOG = logging.getLogger(__name__)


def glance_conf() -> Any:
    from oslo_config import cfg

    from imgcrypt.glance import options

    options.register(cfg.CONF)
    return cfg.CONF


def key_manager_for(context: Any) -> KeyManager:
    """castellan configured by Glance's ``[key_manager]``/``[barbican]`` sections, acting with
    the importing user's token: the key manager Glance itself uses for signatures and keys.

    With ``[barbican] send_service_user_token = true`` (and ``[barbican_service_user]``), the
    user's token goes to Barbican as it is, beside a service token, so an import that outlives
    the user's token still reaches its keys (:func:`user_token_context`). Each request gives
    up after ``[imgcrypt] key_manager_timeout`` seconds (:func:`bound_requests`)."""
    from castellan import key_manager

    from imgcrypt.glance import options

    conf = glance_conf()
    api = key_manager.API(conf)  # registers castellan's [barbican] options
    bound_requests(api, conf[options.GROUP].key_manager_timeout)
    return CastellanKeyManager(api, _service_token_context(conf, context))


def _service_token_context(conf: Any, context: Any) -> Any:
    try:
        barbican = conf.barbican
        if not barbican.send_service_user_token:
            return context
        endpoint = barbican.barbican_endpoint or _catalog_endpoint(
            getattr(context, "service_catalog", None), barbican.barbican_endpoint_type)
    except Exception:  # oslo.config's NoSuch*Error: another backend than Barbican
        return context
    token = getattr(context, "auth_token", None)
    if not endpoint or not token:
        return context
    return user_token_context(str(token), str(endpoint),
                              project_id=getattr(context, "project_id", None),
                              user_id=getattr(context, "user_id", None))


def _catalog_endpoint(catalog: Any, interface: str) -> str | None:
    """The key manager's URL in the service catalog keystonemiddleware handed Glance."""
    for service in catalog or ():
        if isinstance(service, dict) and service.get("type") == "key-manager":
            for endpoint in service.get("endpoints", ()):
                if endpoint.get("interface") == interface and endpoint.get("url"):
                    return str(endpoint["url"])
    return None


def import_failure(message: str) -> Exception:
    """The exception that fails Glance's import task with ``message`` as the task's message
    (any other exception becomes "Task failed due to Internal Error")."""
    from glance.common import exception

    return exception.UploadException(message)  # type: ignore[no-any-return]


def key_manager_advice(exc: KeyManagerError) -> str:
    """What the person does about a key-manager failure during an import."""
    if exc.reason is KeyManagerFault.TOKEN_REFUSED:  # its message says re-authenticate
        return ("an import can outlive the user's token: operators let the plugins send "
                "service tokens ([barbican] send_service_user_token)")
    if isinstance(exc, KeyManagerUnavailableError):
        return "retry the import once the key manager answers"
    return "check the key and who may read it, then import again"


def mark_failed(action_wrapper: Any, stores: list[str] | None, refusal: str | None, *,
                checked: bool = True, leftover: str | None = None) -> None:
    """Put the image back to ``queued`` and its stores in the failed list, as Glance's own
    plugins do when they fail; with a refusal, record it as the verdict (``unchecked`` when
    the checks could not run), and what the revert could not undo."""
    with action_wrapper as action:
        action.set_image_attribute(status="queued")
        if stores:
            action.remove_importing_stores(stores)
            action.add_failed_stores(stores)
        if refusal is not None:
            action.set_image_extra_properties(
                refusal_properties(refusal) if checked else unchecked_properties(refusal))
        if leftover is not None:
            action.set_image_extra_properties({LEFTOVER_PROPERTY: leftover[:MAX_PROPERTY]})


def remove_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)

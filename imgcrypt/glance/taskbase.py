"""What both TaskFlow tasks share: Glance's context, the key manager, failing an import."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from imgcrypt.glance.checks import refusal_properties
from imgcrypt.keys.castellan import CastellanKeyManager
from imgcrypt.keys.manager import KeyManager

LOG = logging.getLogger(__name__)


def glance_conf() -> Any:
    from oslo_config import cfg

    from imgcrypt.glance import options

    options.register(cfg.CONF)
    return cfg.CONF


def key_manager_for(context: Any) -> KeyManager:
    """castellan configured by Glance's ``[key_manager]``/``[barbican]`` sections, acting with
    the importing user's token: the key manager Glance itself uses for signatures and keys."""
    from castellan import key_manager

    return CastellanKeyManager(key_manager.API(glance_conf()), context)


def import_failure(message: str) -> Exception:
    """The exception that fails Glance's import task with ``message`` as the task's message
    (any other exception becomes "Task failed due to Internal Error")."""
    from glance.common import exception

    return exception.UploadException(message)  # type: ignore[no-any-return]


def mark_failed(action_wrapper: Any, stores: list[str] | None, refusal: str | None) -> None:
    """Put the image back to ``queued`` and its stores in the failed list, as Glance's own
    plugins do when they fail; with a refusal, record it as the verdict."""
    with action_wrapper as action:
        action.set_image_attribute(status="queued")
        if stores:
            action.remove_importing_stores(stores)
            action.add_failed_stores(stores)
        if refusal is not None:
            action.set_image_extra_properties(refusal_properties(refusal))


def remove_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)

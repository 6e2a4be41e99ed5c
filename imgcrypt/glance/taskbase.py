"""What both TaskFlow tasks share: Glance's context, the key manager, failing an import, and
the common part of the two tasks (:class:`ImportTask`, :func:`flow_of`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from taskflow import task
from taskflow.patterns import linear_flow

from imgcrypt.glance.checks import refusal_properties, staged_path
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


class ImportTask(task.Task):  # type: ignore[misc]
    """What both import plugins' tasks hold: the image they act on, the key manager they use,
    the refusal that fails the import, and the revert that leaves the image ``queued``."""

    def __init__(self, kind: str, context: Any, task_id: str, task_type: str,
                 action_wrapper: Any, stores: list[str] | None) -> None:
        self.context = context
        self.action_wrapper = action_wrapper
        self.image_id = str(action_wrapper.image_id)
        self.stores = stores
        self.refusal: str | None = None
        self.manager: KeyManager | None = None
        super().__init__(name=f"{task_type}-{kind}-{task_id}")

    def refuse(self, refusal: str) -> Exception:
        """Record and log ``refusal``; the exception that fails the import with it."""
        self.refusal = refusal
        LOG.warning("image %s: %s", self.image_id, refusal)
        return import_failure(refusal)

    def fail_import(self, file_path: str | None) -> None:
        """The end of every revert: a refused image leaves no staged data behind, and the
        image goes back to ``queued`` with its stores marked failed."""
        if self.refusal is not None and file_path:
            remove_file(staged_path(file_path))
        mark_failed(self.action_wrapper, self.stores, self.refusal)


def flow_of(task_class: Callable[..., ImportTask], kwargs: dict[str, Any], *extra: Any) -> Any:
    """The one-task flow Glance runs, from the keywords Glance calls ``get_flow`` with."""
    task_type = kwargs.get("task_type")
    return linear_flow.Flow(task_type).add(task_class(
        kwargs.get("context"), str(kwargs.get("task_id")), str(task_type),
        kwargs.get("action_wrapper"), kwargs.get("backend"), *extra))

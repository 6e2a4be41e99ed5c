"""The TaskFlow task both import plugins are made of, and the flow Glance runs it in.

Apart from :mod:`imgcrypt.glance.taskbase` because it needs TaskFlow to import, which the
paste middleware (also in Glance, but not an import plugin) does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from taskflow import task
from taskflow.patterns import linear_flow

from imgcrypt.glance.checks import staged_path
from imgcrypt.glance.taskbase import LOG, import_failure, mark_failed, remove_file
from imgcrypt.keys.manager import KeyManager


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
        self.checked = True  # False: the checks could not run (the verdict says unchecked)
        self.leftover: str | None = None  # what the revert could not undo
        self.manager: KeyManager | None = None
        super().__init__(name=f"{task_type}-{kind}-{task_id}")

    def refuse(self, refusal: str, *, checked: bool = True) -> Exception:
        """Record and log ``refusal``; the exception that fails the import with it.
        ``checked=False``: the checks could not run, nothing is known about the image."""
        self.refusal, self.checked = refusal, checked
        LOG.warning("image %s: %s", self.image_id, refusal)
        return import_failure(refusal)

    def leave(self, leftover: str) -> None:
        """Something the revert could not undo: logged, and recorded on the image
        (``imgcrypt_leftover``) with the command that undoes it once the key manager is
        back."""
        self.leftover = leftover
        LOG.warning("image %s: %s", self.image_id, leftover)

    def fail_import(self, file_path: str | None) -> None:
        """The end of every revert: a refused image leaves no staged data behind, and the
        image goes back to ``queued`` with its stores marked failed."""
        if self.refusal is not None and file_path:
            remove_file(staged_path(file_path))
        mark_failed(self.action_wrapper, self.stores, self.refusal, checked=self.checked,
                    leftover=self.leftover)


def flow_of(task_class: Callable[..., ImportTask], kwargs: dict[str, Any], *extra: Any) -> Any:
    """The one-task flow Glance runs, from the keywords Glance calls ``get_flow`` with."""
    task_type = kwargs.get("task_type")
    return linear_flow.Flow(task_type).add(task_class(
        kwargs.get("context"), str(kwargs.get("task_id")), str(task_type),
        kwargs.get("action_wrapper"), kwargs.get("backend"), *extra))

"""``imgcrypt_verify``: a Glance import plugin that checks the staged image before it is stored.

A refusal fails the import with its reason as the task message and the ``imgcrypt_verdict``
property, removes the staged data and leaves the image ``queued`` without data. When the
checks cannot run (the key manager unreachable, the importing user's token expired), the
verdict is ``unchecked: ...`` instead, and the message says what to do. An image that passes
gets ``imgcrypt_verdict=pending``, final only once Glance has stored it
(:mod:`imgcrypt.service.verdict`).
"""

from __future__ import annotations

from typing import Any

from imgcrypt.errors import ImgcryptError, KeyManagerError
from imgcrypt.glance import options
from imgcrypt.glance.checks import staged_path, verify_staged
from imgcrypt.glance.importtask import ImportTask, flow_of
from imgcrypt.glance.taskbase import LOG, glance_conf, key_manager_advice, key_manager_for
from imgcrypt.keys.consumers import image_consumer


class _ImgcryptVerify(ImportTask):
    def __init__(self, context: Any, task_id: str, task_type: str, action_wrapper: Any,
                 stores: list[str] | None) -> None:
        self.registered_key: str | None = None
        super().__init__("ImgcryptVerify", context, task_id, task_type, action_wrapper, stores)

    def execute(self, file_path: str) -> None:
        path = staged_path(file_path)
        with self.action_wrapper as action:
            properties = {**action.image_extra_properties,
                          "disk_format": action.image_disk_format or "",
                          "container_format": action.image_container_format or ""}
        try:
            conf = glance_conf()
            self.manager = key_manager_for(self.context)
            outcome = verify_staged(path, properties, self.manager, image_id=self.image_id,
                                    policy=options.upload_policy(conf))
        except KeyManagerError as exc:
            raise self.refuse(f"imgcrypt_verify could not check the image: {exc}; "
                              f"{key_manager_advice(exc)}", checked=False) from None
        except Exception as exc:  # whatever goes wrong, the image is not accepted unchecked
            reason = str(exc) if isinstance(exc, ImgcryptError | OSError) else \
                f"{type(exc).__name__}: {exc}"
            raise self.refuse(f"imgcrypt_verify refused the image: {reason}") from None
        if outcome.consumer_registered and outcome.verdict.encryption is not None:
            self.registered_key = outcome.verdict.encryption.key_id
        with self.action_wrapper as action:
            action.set_image_extra_properties(outcome.properties())
        LOG.info("image %s accepted by imgcrypt_verify", self.image_id)

    def revert(self, result: Any, file_path: str | None = None, **kwargs: Any) -> None:
        if self.registered_key is not None and self.manager is not None:
            try:
                self.manager.remove_consumer(self.registered_key, image_consumer(self.image_id))
            except ImgcryptError as exc:
                self.leave(f"consumer of key {self.registered_key} not removed ({exc}): run "
                           "imgcrypt keys consumers --clear-stale once the key manager answers")
        self.fail_import(file_path)


def get_flow(**kwargs: Any) -> Any:
    """Glance calls this with the import task's context, ids and action wrapper.

    It does nothing that can fail: Glance's plugin loader (stevedore) logs a plugin that
    fails to load and imports without it. Configuration is read when the task runs, where a
    failure fails the import.
    """
    return flow_of(_ImgcryptVerify, kwargs)

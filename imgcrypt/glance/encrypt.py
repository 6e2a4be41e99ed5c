"""``imgcrypt_encrypt``: a Glance import plugin that encrypts plaintext images as LUKS1.

List it after ``image_conversion`` (convert the plaintext, then encrypt) and before
``imgcrypt_verify`` (which then checks the result like any other encrypted upload). An image
that is already LUKS, or claims encryption, passes through untouched: it is never encrypted
twice, and never converted (``image_conversion`` refuses a LUKS image labelled ``raw``).
"""

from __future__ import annotations

import contextlib
from typing import Any

from taskflow import task
from taskflow.patterns import linear_flow

from imgcrypt.errors import ImgcryptError
from imgcrypt.glance.checks import (
    check_plugin_order,
    encrypt_staged,
    is_already_encrypted,
    staged_path,
)
from imgcrypt.glance.taskbase import (
    LOG,
    glance_conf,
    import_failure,
    key_manager_for,
    mark_failed,
    remove_file,
)
from imgcrypt.keys.manager import KeyManager

# The encrypted image is one raw LUKS container.
ENCRYPTED_DISK_FORMAT = "raw"


class _ImgcryptEncrypt(task.Task):  # type: ignore[misc]
    default_provides = "file_path"

    def __init__(self, context: Any, task_id: str, task_type: str, action_wrapper: Any,
                 stores: list[str] | None, misconfigured: str | None = None) -> None:
        self.misconfigured = misconfigured
        self.context = context
        self.action_wrapper = action_wrapper
        self.image_id = str(action_wrapper.image_id)
        self.stores = stores
        self.refusal: str | None = None
        self.key_id: str | None = None
        self.target: str | None = None
        self.manager: KeyManager | None = None
        super().__init__(name=f"{task_type}-ImgcryptEncrypt-{task_id}")

    def execute(self, file_path: str) -> str:
        conf = glance_conf()
        path = staged_path(file_path)
        with self.action_wrapper as action:
            properties = dict(action.image_extra_properties)
            disk_format = action.image_disk_format
        try:
            if self.misconfigured is not None:
                raise ImgcryptError(self.misconfigured)
            if is_already_encrypted(path, properties):
                LOG.info("image %s is already encrypted: not encrypting", self.image_id)
                return file_path
            if disk_format != ENCRYPTED_DISK_FORMAT:
                raise ImgcryptError(
                    f"imgcrypt_encrypt encrypts raw images, not {disk_format}: enable "
                    "image_conversion (output_format = raw) before imgcrypt_encrypt")
            self.manager = key_manager_for(self.context)
            outcome = encrypt_staged(
                path, self.manager, image_id=self.image_id,
                deletion_policy=conf.imgcrypt.encrypt_key_deletion_policy,
                iterations=conf.imgcrypt.encrypt_pbkdf2_iterations,
                register_consumer=conf.imgcrypt.register_consumer)
        except (ImgcryptError, OSError) as exc:
            self.refusal = f"imgcrypt_encrypt failed: {exc}"
            LOG.warning("image %s: %s", self.image_id, self.refusal)
            raise import_failure(self.refusal) from None
        self.key_id, self.target = outcome.key_id, outcome.path
        with self.action_wrapper as action:
            action.set_image_attribute(size=outcome.image_size,
                                       disk_format=ENCRYPTED_DISK_FORMAT,
                                       container_format="bare")
            action.set_image_extra_properties(outcome.properties)
        remove_file(path)
        LOG.info("image %s encrypted as LUKS1 with key %s", self.image_id, outcome.key_id)
        return "file://" + outcome.path

    def revert(self, result: Any, file_path: str | None = None, **kwargs: Any) -> None:
        if self.target is not None:
            remove_file(self.target)
        if self.key_id is not None and self.manager is not None:
            with contextlib.suppress(ImgcryptError):
                self.manager.delete(self.key_id, force=True)
        if self.refusal is not None and file_path:
            remove_file(staged_path(file_path))
        mark_failed(self.action_wrapper, self.stores, self.refusal)


def get_flow(**kwargs: Any) -> Any:
    """Glance calls this with the import task's context, ids and action wrapper.

    It never raises: Glance's plugin loader (stevedore) logs a plugin that fails to load and
    goes on without it, which would store the image unencrypted. A misconfiguration fails the
    import from inside the flow instead.
    """
    misconfigured = None
    try:
        conf = glance_conf()
        check_plugin_order(list(conf.image_import_opts.image_import_plugins))
    except Exception as exc:  # any failure here must fail the import, not skip the plugin
        misconfigured = str(exc) if isinstance(exc, ImgcryptError) else \
            f"imgcrypt_encrypt is misconfigured ({type(exc).__name__}: {exc})"
    task_type = kwargs.get("task_type")
    return linear_flow.Flow(task_type).add(_ImgcryptEncrypt(
        kwargs.get("context"), str(kwargs.get("task_id")), str(task_type),
        kwargs.get("action_wrapper"), kwargs.get("backend"), misconfigured))

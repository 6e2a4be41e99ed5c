"""``imgcrypt_encrypt``: a Glance import plugin that encrypts plaintext images as LUKS1.

List it after ``image_conversion`` (convert the plaintext, then encrypt) and before
``imgcrypt_verify`` (which then checks the result like any other encrypted upload). An image
that is already LUKS, or claims encryption, passes through untouched: it is never encrypted
twice, and never converted (``image_conversion`` refuses a LUKS image labelled ``raw``).
"""

from __future__ import annotations

from typing import Any

from imgcrypt.errors import ImgcryptError
from imgcrypt.glance.checks import (
    check_plugin_order,
    encrypt_staged,
    is_already_encrypted,
    staged_path,
)
from imgcrypt.glance.importtask import ImportTask, flow_of
from imgcrypt.glance.taskbase import LOG, glance_conf, key_manager_for, remove_file

# The encrypted image is one raw LUKS container.
ENCRYPTED_DISK_FORMAT = "raw"


class _ImgcryptEncrypt(ImportTask):
    default_provides = "file_path"

    def __init__(self, context: Any, task_id: str, task_type: str, action_wrapper: Any,
                 stores: list[str] | None, misconfigured: str | None = None) -> None:
        self.misconfigured = misconfigured
        self.key_id: str | None = None
        self.target: str | None = None
        super().__init__("ImgcryptEncrypt", context, task_id, task_type, action_wrapper, stores)

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
            raise self.refuse(f"imgcrypt_encrypt failed: {exc}") from None
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
            try:
                self.manager.delete(self.key_id, force=True)
            except ImgcryptError as exc:
                self.leave(f"key {self.key_id}, ordered for this import, not deleted ({exc}): "
                           f"run imgcrypt keys delete --force {self.key_id} once the key "
                           "manager answers")
        self.fail_import(file_path)


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
    return flow_of(_ImgcryptEncrypt, kwargs, misconfigured)

"""An image sent to the image service the way ``imgcrypt upload`` sends it: the record created
with its properties, the encryption key told about its new consumer, the data staged and
imported through the deployment's import plugins when glance-direct is offered (plain upload
otherwise), and the consumer taken back when any of it fails.

:func:`open_upload` reads the encryption claim before anything reaches the cloud, then decides
staging and checks the key; :meth:`Upload.send` creates the image and sends the data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from imgcrypt import imageservice
from imgcrypt.errors import KeyManagerError, UsageError
from imgcrypt.keys.consumers import image_consumer
from imgcrypt.keys.lease import KeyLease
from imgcrypt.keys.manager import KeyManager
from imgcrypt.service.claims import EncryptionClaim, encryption_claim

METHODS = ("auto", "glance-direct", "upload")


@dataclass(frozen=True)
class UploadResult:
    image: imageservice.Image  # as the service shows it after the upload or the import
    consumer_registered: bool  # the key now lists the image as a consumer


@dataclass(frozen=True)
class Upload:
    """An upload ready to send: where to, how (``staged``: glance-direct import) and which key
    it must register with."""

    images: imageservice.ImageService
    properties: dict[str, str]
    staged: bool
    claim: EncryptionClaim | None
    manager: KeyManager | None

    @property
    def method(self) -> str:
        return "glance-direct" if self.staged else "upload"

    def send(self, data: BinaryIO, size: int, *, name: str, disk_format: str,
             container_format: str, timeout: float,
             progress: Callable[[int], None] | None = None) -> UploadResult:
        """Create the image and send ``size`` bytes of ``data``; after a staged upload, import
        it and wait up to ``timeout`` seconds. The image is registered as a consumer of its key
        only when that has worked: a failure leaves the image record (queued, the reason in its
        task) and no consumer, since a failed image must not keep the key alive."""
        image = self.images.create(name, disk_format, container_format, self.properties)
        lease = None
        if self.claim is not None and self.manager is not None:
            # The image becomes a consumer of its key once its data is in.
            lease = KeyLease.existing(self.manager, self.claim.key_id)
            lease.consume_as(image_consumer(image.image_id))
        image_id = image.image_id
        with lease if lease is not None else contextlib.nullcontext():
            self.images.upload(image_id, data, size, stage=self.staged, progress=progress)
            if self.staged:
                self.images.start_import(image_id)
                image = self.images.wait_for_import(
                    image_id, timeout, on_timeout=lambda: self._explain_timeout(image_id,
                                                                                timeout))
            else:
                image = self.images.get(image_id)
        registered = lease is not None and lease.consumer_registered
        return UploadResult(image, registered)

    def _explain_timeout(self, image_id: str, timeout: float) -> None:
        """An import that outlives ``timeout`` is often one whose key check waits for a key
        manager that stopped answering: ask it ourselves (with a timeout), and say so."""
        if self.claim is None or self.manager is None:
            return
        try:
            self.manager.describe(self.claim.key_id)
        except KeyManagerError as exc:
            raise type(exc)(
                f"image {image_id} is still importing after {timeout:.0f} s and the key "
                f"manager does not answer ({exc}); retry once it answers (the import goes on "
                "in the image service and may still finish: look at the image first)"
            ) from None


def open_upload(properties: dict[str, str], connect: Callable[[], Any], *,
                method: str = "auto") -> Upload:
    """Prepare an upload of an image with ``properties``. A malformed encryption claim is
    refused before ``connect`` is called (so before any request); then the import methods are
    asked for, and an encrypted image's key must exist and be readable by this user."""
    if method not in METHODS:
        raise UsageError(f"upload method {method!r} is not one of {', '.join(METHODS)}")
    claim = encryption_claim(properties)
    conn = connect()
    images = imageservice.ImageService(conn)
    staged = method == "glance-direct" or (
        method == "auto" and "glance-direct" in images.import_methods())
    manager = imageservice.key_manager(conn) if claim is not None else None
    if manager is not None and claim is not None:
        manager.describe(claim.key_id)  # the key exists and this user may read it
    return Upload(images, dict(properties), staged, claim, manager)


__all__ = ["METHODS", "Upload", "UploadResult", "open_upload"]

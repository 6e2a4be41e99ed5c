"""Who uses a key: every consumer identity imgcrypt registers is spelled here, once.

A consumer is Barbican's (service, resource type, resource id) triple. An image in an image
service registers as Glance does (``image``/``image``/its id); an image file on a person's disk
is recorded only in the local keystore, by its absolute path, so ``keys delete`` can name the
files a key still opens.
"""

from __future__ import annotations

import contextlib
import os

from imgcrypt.errors import ImgcryptError
from imgcrypt.keys.manager import Consumer, KeyManager

#: Barbican consumer service of an image (as Glance's and Cinder's consumer code spells it).
IMAGE_CONSUMER_SERVICE = "image"
#: Barbican consumer resource type of an image.
IMAGE_CONSUMER_TYPE = "image"
#: Consumer service under which the local keystore names an image file that a key opens.
LOCAL_CONSUMER_SERVICE = "imgcrypt"
#: Consumer resource type of such a file (its id is the file's absolute path).
LOCAL_CONSUMER_TYPE = "file"


def image_consumer(image_id: str) -> Consumer:
    """How an image registers as a consumer of its key (Glance's service and resource type)."""
    return Consumer(service=IMAGE_CONSUMER_SERVICE, resource_type=IMAGE_CONSUMER_TYPE,
                    resource_id=image_id)


def file_consumer(path: str) -> Consumer:
    """The consumer entry for an image file: its absolute path."""
    return Consumer(LOCAL_CONSUMER_SERVICE, LOCAL_CONSUMER_TYPE, os.path.abspath(path))


def file_consumer_for(manager: KeyManager, path: str) -> Consumer | None:
    """The entry an image file written at ``path`` gets, or None where none is kept.

    Only the local keystore gets these entries: in a cloud the image service registers its own
    consumers (image ids, not paths on one person's disk). Standard output has no path."""
    if manager.name != "local" or path == "-":
        return None
    return file_consumer(path)


def release_file_elsewhere(manager: KeyManager, key_id: str, path: str) -> None:
    """Take ``path`` off every key but ``key_id`` in the local keystore: the image they opened
    there is gone (``encrypt --force`` replaced it), and a stale entry would make ``keys
    delete`` refuse for nothing.

    Best effort: the image is written and its own key recorded by then, and a neighbour the
    keystore cannot read (``keys list`` reports it) must not fail the command, which would
    delete a new key the image needs."""
    entry = file_consumer_for(manager, path)
    if entry is None:
        return
    with contextlib.suppress(ImgcryptError):
        for info in manager.list():
            if info.secret_id != key_id and entry in manager.list_consumers(info.secret_id):
                manager.remove_consumer(info.secret_id, entry)


def unregister_file_consumer(manager: KeyManager, key_id: str, path: str) -> None:
    """Forget that the file at ``path`` uses the key, in the local keystore only."""
    consumer = file_consumer_for(manager, path)
    if consumer is not None:
        manager.remove_consumer(key_id, consumer)


def consumer_name(consumer: Consumer) -> str:
    """The image file's path for the local keystore's own entries; Barbican's
    service/type/id for the others."""
    if consumer.service == LOCAL_CONSUMER_SERVICE:
        return consumer.resource_id
    return f"{consumer.service}/{consumer.resource_type}/{consumer.resource_id}"


__all__ = [
    "IMAGE_CONSUMER_SERVICE",
    "IMAGE_CONSUMER_TYPE",
    "LOCAL_CONSUMER_SERVICE",
    "LOCAL_CONSUMER_TYPE",
    "consumer_name",
    "file_consumer",
    "file_consumer_for",
    "image_consumer",
    "release_file_elsewhere",
    "unregister_file_consumer",
]

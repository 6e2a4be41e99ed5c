"""The catalogue's view of a live cloud: Glance and Barbican behind gates that bound and retry.

Every request a catalogue job makes goes through the :class:`Gate` of its service: at most
``limit`` requests in flight to that service at once (whatever the number of workers), and a
transient failure (a connection error, 429, 500, 502, 503, 504) is retried with exponential
backoff and jitter before the job sees it. Glance is read through the same authenticated
adapter as ``imgcrypt upload`` (:mod:`imgcrypt.imageservice`); the image's header is read with
HTTP Range requests, so a job never downloads more of an image than it needs.
"""

from __future__ import annotations

import builtins
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

from imgcrypt.errors import ImgcryptError, KeyManagerUnavailableError, ToolError
from imgcrypt.imageservice import Image, ImageService
from imgcrypt.keys.clienterrors import exception_chain
from imgcrypt.keys.manager import Consumer, KeyManager, KeyOrder, SecretInfo
from imgcrypt.keys.secret import Secret

T = TypeVar("T")

# What a busy or restarting service answers; worth asking again after a pause.
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
LIST_PAGE = 200
JSON_PATCH = "application/openstack-images-v2.1-json-patch"


@dataclass(frozen=True)
class GatePolicy:
    """How hard to lean on one service."""

    limit: int = 8  # requests in flight at once
    retries: int = 5  # further attempts after a transient failure
    backoff: float = 0.5  # seconds before the first retry, doubled each time
    max_backoff: float = 30.0


def _status_of(exc: BaseException) -> int | None:
    for name in ("http_status", "status_code"):
        value = getattr(exc, name, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    value = getattr(response, "status_code", None)
    return value if isinstance(value, int) else None


def transient(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) is a failure worth retrying."""
    from keystoneauth1 import exceptions as kexc

    for link in exception_chain(exc):
        if isinstance(link, (KeyManagerUnavailableError, ConnectionError, kexc.ConnectionError)):
            return True
        if isinstance(link, ImgcryptError):
            continue
        status = _status_of(link)
        if status is not None:
            return status in RETRY_STATUS
    return False


def not_found(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) is the service's 404."""
    return any(_status_of(link) == 404 for link in exception_chain(exc)
               if not isinstance(link, ImgcryptError))


class Gate:
    """A bounded, retrying doorway to one service."""

    def __init__(self, service: str, policy: GatePolicy = GatePolicy(), *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.service = service
        self.policy = policy
        self._slots = threading.BoundedSemaphore(policy.limit)
        self._sleep = sleep
        self._lock = threading.Lock()
        self.retried = 0  # transient failures absorbed so far
        self.in_flight = 0
        self.peak = 0

    def call(self, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            with self._slots:
                with self._lock:
                    self.in_flight += 1
                    self.peak = max(self.peak, self.in_flight)
                try:
                    return fn()
                except Exception as exc:
                    if attempt >= self.policy.retries or not transient(exc):
                        raise
                finally:
                    with self._lock:
                        self.in_flight -= 1
            with self._lock:
                self.retried += 1
            delay = min(self.policy.max_backoff, self.policy.backoff * (2 ** attempt))
            self._sleep(delay * (0.5 + random.random() / 2))  # jitter: retries do not march
            attempt += 1


class CatalogueImages(ImageService):
    """The image API calls the catalogue jobs make, beyond those of ``imgcrypt upload``."""

    def pages(self, filters: Mapping[str, str]) -> Iterator[list[Image]]:
        """Every image the credentials can see that matches ``filters`` (Glance's own list
        filters: ``owner``, ``status``, ``visibility`` or any property name), a page at a time."""
        params: dict[str, str] = {**filters, "limit": str(LIST_PAGE)}
        url: str | None = "/images"
        while url is not None:
            body = self._call("GET", url, "listing images", params=params).json()
            yield [Image.from_api(entry) for entry in body.get("images", [])]
            following = body.get("next")
            # ``next`` is an absolute path (/v2/images?marker=...) that carries the filters.
            url = str(following).removeprefix("/v2") if following else None
            params = {}

    def read_range(self, image_id: str, start: int, length: int) -> bytes:
        """At most ``length`` bytes of the image's data from ``start`` (fewer at its end),
        asked for as a byte range; a server that ignores the range is read no further."""
        if length <= 0:
            return b""
        response = self._call("GET", f"/images/{image_id}/file", f"reading image {image_id}",
                              headers={"Range": f"bytes={start}-{start + length - 1}"},
                              stream=True)
        try:
            if response.status_code == 200 and start:
                raise ToolError(f"image {image_id}: the image service ignored a byte range")
            data = bytearray()
            for chunk in response.iter_content(chunk_size=min(length, 1 << 20)):
                data += chunk[: length - len(data)]
                if len(data) >= length:
                    break
            return bytes(data)
        finally:
            response.close()

    def add_properties(self, image_id: str, properties: Mapping[str, str]) -> Image:
        """Set ``properties`` on the image (JSON patch ``add``, which Glance applies at once)."""
        ops = [{"op": "add", "path": f"/{name}", "value": value}
               for name, value in sorted(properties.items())]
        response = self._call("PATCH", f"/images/{image_id}", f"updating image {image_id}",
                              json=ops, headers={"Content-Type": JSON_PATCH})
        return Image.from_api(response.json())


class GatedKeyManager:
    """A key manager whose every call goes through a gate (the upload inspector's certificate
    and key look-ups included)."""

    def __init__(self, manager: KeyManager, gate: Gate) -> None:
        self._manager, self._gate = manager, gate
        self.name = manager.name

    def __repr__(self) -> str:
        return f"GatedKeyManager({self._manager!r})"

    @property
    def supports_consumers(self) -> bool:
        return self._gate.call(lambda: self._manager.supports_consumers)

    def get(self, key_id: str) -> Secret:
        return self._gate.call(lambda: self._manager.get(key_id))

    def describe(self, key_id: str) -> SecretInfo:
        return self._gate.call(lambda: self._manager.describe(key_id))

    def store(self, secret: Secret) -> str:
        return self._gate.call(lambda: self._manager.store(secret))

    def create_key(self, order: KeyOrder) -> str:
        return self._gate.call(lambda: self._manager.create_key(order))

    def delete(self, key_id: str, *, force: bool = False) -> None:
        self._gate.call(lambda: self._manager.delete(key_id, force=force))

    def list(self) -> builtins.list[SecretInfo]:
        return self._gate.call(self._manager.list)

    def add_consumer(self, key_id: str, consumer: Consumer) -> None:
        self._gate.call(lambda: self._manager.add_consumer(key_id, consumer))

    def remove_consumer(self, key_id: str, consumer: Consumer) -> None:
        self._gate.call(lambda: self._manager.remove_consumer(key_id, consumer))

    def list_consumers(self, key_id: str) -> builtins.list[Consumer]:
        return self._gate.call(lambda: self._manager.list_consumers(key_id))


class Cloud:
    """Glance and the key manager, each behind its gate. Thread-safe: the workers share it."""

    def __init__(self, images: CatalogueImages, keys: KeyManager, *,
                 glance: GatePolicy = GatePolicy(), barbican: GatePolicy = GatePolicy()) -> None:
        self._images = images
        self.glance = Gate("glance", glance)
        self.barbican = Gate("barbican", barbican)
        self._keys = GatedKeyManager(keys, self.barbican)
        self.bytes_read = 0
        self._count = threading.Lock()
        self._mine = threading.local()  # bytes read by this thread's current job

    # -- Glance ----------------------------------------------------------------------------

    def list_images(self, filters: Mapping[str, str]) -> list[Image]:
        pages = self._images.pages(filters)
        found: list[Image] = []
        while True:
            page = self.glance.call(lambda: next(pages, None))
            if page is None:
                return found
            found.extend(page)

    def image(self, image_id: str) -> Image:
        return self.glance.call(lambda: self._images.get(image_id))

    def read_range(self, image_id: str, start: int, length: int) -> bytes:
        data = self.glance.call(lambda: self._images.read_range(image_id, start, length))
        self._counted(len(data))
        return data

    def _counted(self, n: int) -> None:
        with self._count:
            self.bytes_read += n
        self._mine.bytes = self.thread_bytes() + n

    def thread_bytes(self) -> int:
        """Image bytes this thread has read since :meth:`reset_thread_bytes` (a job runs in one
        thread, so this is that job's own count whatever the other workers read)."""
        return int(getattr(self._mine, "bytes", 0))

    def reset_thread_bytes(self) -> None:
        self._mine.bytes = 0

    def stream(self, image_id: str, size: int) -> Iterator[bytes]:
        """The image's data, exactly the ``size`` bytes its record declares, once (a failure
        part-way is the caller's to report: retrying would feed the same bytes twice into a
        hash)."""
        with self.glance._slots:
            for chunk in self._images.download(image_id, size):
                self._counted(len(chunk))
                yield chunk

    def add_properties(self, image_id: str, properties: Mapping[str, str]) -> Image:
        return self.glance.call(lambda: self._images.add_properties(image_id, properties))

    # -- the key manager -------------------------------------------------------------------

    @property
    def key_manager(self) -> KeyManager:
        """The key manager, every call bounded and retried by the Barbican gate."""
        return self._keys

    def secret(self, key_id: str) -> Secret:
        return self._keys.get(key_id)

    def consumers(self, key_id: str) -> list[Consumer]:
        return self._keys.list_consumers(key_id)

    def add_consumer(self, key_id: str, consumer: Consumer) -> None:
        self._keys.add_consumer(key_id, consumer)


def connect(cloud: str | None = None, *, glance: GatePolicy = GatePolicy(),
            barbican: GatePolicy = GatePolicy()) -> Cloud:
    """The cloud the openstacksdk configuration names, as ``imgcrypt upload`` finds it."""
    from imgcrypt import imageservice

    conn = imageservice.connect(cloud)
    return Cloud(CatalogueImages(conn), imageservice.key_manager(conn), glance=glance,
                 barbican=barbican)


__all__ = ["RETRY_STATUS", "CatalogueImages", "Cloud", "Gate", "GatePolicy", "GatedKeyManager",
           "connect", "not_found", "transient"]

"""The image API (Glance v2) edge: openstacksdk's cloud configuration and a few REST calls.

Credentials come from openstacksdk's own loader (``clouds.yaml``, ``OS_CLOUD`` and the
``OS_*`` variables, exactly as the ``openstack`` client reads them). Requests go through the
connection's authenticated image adapter; every failure becomes a typed imgcrypt error.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, BinaryIO

from imgcrypt.errors import (
    FormatError,
    ImgcryptError,
    KeyManagerError,
    KeyManagerFault,
    ToolError,
    UsageError,
    VerificationError,
)
from imgcrypt.keys.clienterrors import is_token_refusal
from imgcrypt.keys.lease import LEFTOVER_NOTE
from imgcrypt.keys.manager import KeyManager
from imgcrypt.service.verdict import LEFTOVER_PROPERTY, VERDICT_PROPERTY, is_unchecked
from imgcrypt.text import escape

# keystoneauth and openstacksdk log discovery failures as warnings; with no handler configured
# Python would print them beside the one-line CLI error.
for _name in ("keystoneauth", "openstack"):
    logging.getLogger(_name).addHandler(logging.NullHandler())

CHUNK = 1 << 20
IMPORT_POLL_SECONDS = 0.5




def connect(cloud: str | None = None) -> Any:
    """An openstacksdk connection configured the way the openstack client configures one."""
    try:
        import openstack
        from openstack import exceptions as oexc
    except ImportError:
        raise UsageError("the image commands need openstacksdk (pip install 'imgcrypt[cloud]')"
                         ) from None
    try:
        with _translate("connecting to the cloud"):
            return openstack.connect(cloud=cloud or os.environ.get("OS_CLOUD") or None,
                                     load_yaml_config=True, load_envvars=True)
    except oexc.ConfigException as exc:
        raise UsageError(f"OpenStack configuration: {exc}") from None


def key_manager(conn: Any) -> KeyManager:
    """Barbican through the same authentication, found in the service catalog.

    Its own session has a timeout (the cloud's ``api_timeout`` where set): a key manager that
    stops answering must fail the command with its exit code, not hang it."""
    from keystoneauth1 import session as ksession

    from imgcrypt.keys.barbican import REQUEST_TIMEOUT, BarbicanKeyManager

    config, shared = conn.config, conn.session
    session = ksession.Session(auth=shared.auth, verify=shared.verify, cert=shared.cert,
                               timeout=shared.timeout or REQUEST_TIMEOUT)
    return BarbicanKeyManager.from_session(session, region_name=config.get_region_name(),
                                           interface=config.get_interface())


@contextlib.contextmanager
def _translate(what: str) -> Iterator[None]:
    from keystoneauth1 import exceptions as kexc
    from openstack import exceptions as oexc

    try:
        yield
    except (kexc.ConnectionError, kexc.EndpointNotFound, kexc.DiscoveryFailure) as exc:
        raise ToolError(f"cannot reach the cloud: {exc}") from None
    except kexc.HttpError as exc:
        if is_token_refusal(kexc, exc):
            raise ToolError("the cloud's identity service (Keystone) refused the credentials: "
                            "the token expired or was revoked (or the password is wrong); "
                            "re-authenticate and try again") from None
        if exc.http_status == 413:
            raise ToolError(f"{what}: the image service (Glance) has no room for the image "
                            "(HTTP 413: its staging area, image_size_cap or the project's "
                            "storage quota is full); free space (delete images you no longer "
                            "need) or ask the operator to raise the limit, then upload "
                            "again") from None
        raise ToolError(f"{what}: HTTP {exc.http_status}: {_detail(exc)}") from None
    except (kexc.MissingRequiredOptions, kexc.NoMatchingPlugin) as exc:
        raise UsageError(f"incomplete OpenStack credentials (--os-cloud, OS_CLOUD or OS_*): "
                         f"{exc}") from None
    except oexc.ConfigException:
        raise
    except oexc.SDKException as exc:
        raise ToolError(f"{what}: {exc}") from None
    except kexc.ClientException as exc:
        raise ToolError(f"{what}: {exc}") from None


class _Drop(Enum):
    """How a server dropped a connection instead of answering."""

    RESET = "reset"  # before reading the request (reset, or closed before it was sent)
    CLOSED = "closed"  # after reading it: the process that held it went away


def _dropped(exc: BaseException) -> _Drop | None:
    """How the server dropped the connection behind keystoneauth's ConnectFailure, found in
    the chain of requests' and urllib3's wrappers (causes, contexts and their arguments)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        # RemoteDisconnected is a ConnectionResetError: it must be told apart first.
        if isinstance(item, http.client.RemoteDisconnected):
            return _Drop.CLOSED
        if isinstance(item, ConnectionResetError | BrokenPipeError):
            return _Drop.RESET
        todo.extend((item.__cause__, item.__context__, *item.args, getattr(item, "reason", None)))
    return None


def _import_dropped(image_id: str) -> str:
    return (f"image {image_id}: the image service (Glance) closed the connection without "
            "answering while the image was importing (a Glance worker stopped: killed, out of "
            "memory or restarted); the image is left 'importing' and its import is probably "
            f"lost: look at it (openstack image show {image_id}) and if it stays 'importing', "
            "delete it and upload again (Glance holds its import lock for up to 60 minutes; "
            "see \"An import that died half-way\" in the README)")


def _detail(exc: Any) -> str:
    """A service's error answer as one short line: its JSON message, or its HTML page's
    text without the markup, never the page itself."""
    response = exc.response
    text = (response.text if response is not None else "") or str(exc)
    with contextlib.suppress(ValueError, AttributeError):
        body = response.json()
        if isinstance(body, dict):
            inner = body.get("message") or body.get("error") or body
            text = str(inner.get("message", inner)) if isinstance(inner, dict) else str(inner)
    text = _MARKUP.sub(" ", text)
    return " ".join(text.split())[:300]


_MARKUP = re.compile(r"<[^>]*>")


class _Body:
    """A sized request body that reports progress; requests sends it with Content-Length.

    Iterable and without ``read``: urllib3 then hands each 1 MiB read to the socket whole,
    where it would read a file object 16 KiB at a time (a Python call per 16 KiB sent)."""

    def __init__(self, f: BinaryIO, size: int, progress: Callable[[int], None] | None) -> None:
        self._f, self._size, self._progress = f, size, progress

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        left = self._size  # never more than the Content-Length announced
        while left > 0 and (data := self._f.read(min(CHUNK, left))):
            left -= len(data)
            if self._progress:
                self._progress(len(data))
            yield data


@dataclass(frozen=True)
class Image:
    image_id: str
    status: str
    properties: dict[str, Any]

    def declared_size(self) -> int:
        """The size in bytes the image record declares: exactly what a download reads."""
        size = self.properties.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 1 << 63:
            raise FormatError(f"image {self.image_id}: its record declares no size "
                              "(is the image active?); nothing is downloaded without one")
        return size

    @classmethod
    def from_api(cls, body: Mapping[str, Any]) -> Image:
        """The image an image API answer describes (the JSON of one image record, as Glance
        v2 returns it); :class:`~imgcrypt.errors.ToolError` when the answer is not one."""
        if not isinstance(body, Mapping) or not isinstance(body.get("id"), str):
            raise ToolError("the image service answered without an image")
        return cls(str(body["id"]), str(body.get("status")), dict(body))


@dataclass(frozen=True)
class Timeouts:
    """How long a transfer may take: ``connect`` (seconds to connect), ``read`` (seconds
    without a byte) and ``total`` (the whole download), so that a server that goes silent or
    trickles cannot hang a command."""

    connect: float = 30.0
    read: float = 120.0
    total: float = 6 * 3600.0

    def __post_init__(self) -> None:
        if not all(0 < t <= 1e7 for t in (self.connect, self.read, self.total)):
            raise UsageError("timeouts must be positive numbers of seconds")


class ImageService:
    """The handful of image API calls ``imgcrypt upload``/``download`` make."""

    def __init__(self, conn: Any, timeouts: Timeouts | None = None) -> None:
        self._conn = conn
        self._timeouts = timeouts
        with _translate("finding the image service"):
            # a keystoneauth adapter on the catalog's image endpoint (authenticates first)
            self._api = conn.image

    def _call(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        with _translate(what):
            return self._request(method, url, **kwargs)

    def _request(self, method: str, url: str, **kwargs: Any) -> Any:
        """One request. A GET the server reset without reading it is sent once more, on a
        fresh connection: a kept-alive connection the server closes just as a request
        arrives on it (gunicorn does after any pause longer than its keep-alive) is reset,
        and RFC 9112 section 9.3.1 lets a client retry an idempotent request then."""
        from keystoneauth1 import exceptions as kexc

        headers = kwargs.pop("headers", {})
        if self._timeouts is not None:
            kwargs.setdefault("timeout", (self._timeouts.connect, self._timeouts.read))
        try:
            return self._api.request(url, method, headers=headers, raise_exc=True, **kwargs)
        except kexc.ConnectFailure as exc:
            if method != "GET" or _dropped(exc) is not _Drop.RESET:
                raise
        return self._api.request(url, method, headers=headers, raise_exc=True, **kwargs)

    def import_methods(self) -> list[str]:
        response = self._call("GET", "/info/import", "listing import methods")
        value = response.json().get("import-methods", {}).get("value", [])
        return [str(v) for v in value] if isinstance(value, list) else []

    def create(self, name: str, disk_format: str, container_format: str,
               properties: Mapping[str, str]) -> Image:
        body = {**properties, "name": name, "disk_format": disk_format,
                "container_format": container_format}
        response = self._call("POST", "/images", "creating the image", json=body)
        return Image.from_api(response.json())

    def get(self, image_id: str) -> Image:
        return Image.from_api(self._call("GET", f"/images/{image_id}", f"image {image_id}").json())

    def find(self, image_id: str) -> Image | None:
        """The image, or None where the image service has none by that id for this user."""
        with _translate(f"image {image_id}"):
            response = self._api.request(f"/images/{image_id}", "GET", raise_exc=False)
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            return self.get(image_id)  # raises the typed error for any other refusal
        return Image.from_api(response.json())

    def delete(self, image_id: str) -> None:
        self._call("DELETE", f"/images/{image_id}", f"deleting image {image_id}")

    def upload(self, image_id: str, f: BinaryIO, size: int, *, stage: bool,
               progress: Callable[[int], None] | None = None) -> None:
        path = f"/images/{image_id}/stage" if stage else f"/images/{image_id}/file"
        self._call("PUT", path, "sending the image data", data=_Body(f, size, progress),
                   headers={"Content-Type": "application/octet-stream",
                            "Content-Length": str(size)})

    def start_import(self, image_id: str) -> None:
        self._call("POST", f"/images/{image_id}/import", "starting the import",
                   json={"method": {"name": "glance-direct"}})

    def last_task_message(self, image_id: str) -> str | None:
        with contextlib.suppress(ToolError):
            tasks = self._call("GET", f"/images/{image_id}/tasks", "listing tasks").json()
            for task in tasks.get("tasks", []):
                if task.get("status") == "failure" and task.get("message"):
                    return str(task["message"])
        return None

    def wait_for_import(self, image_id: str, timeout: float,
                        on_timeout: Callable[[], None] | None = None) -> Image:
        """Poll until the import ends: ``active``, or failed (back to ``queued``, the store
        in ``os_glance_failed_import``, the plugin's reason in its task's message).

        A refusal raises :class:`VerificationError`; checks that could not run (the verdict
        ``unchecked``: key manager unreachable, token expired) :class:`KeyManagerError`. When
        ``timeout`` passes, ``on_timeout`` may raise a better explanation than the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            image = self._poll(image_id)
            failed = image.properties.get("os_glance_failed_import")
            if image.status == "active":
                return image
            if failed or image.status in ("killed", "deleted") or (
                    image.status == "queued" and not image.properties.get(
                        "os_glance_importing_to_stores")):
                verdict = image.properties.get(VERDICT_PROPERTY)
                message = (self.last_task_message(image_id) or verdict
                           or f"the import ended with status {image.status}")
                failure: ImgcryptError
                if is_unchecked(verdict):
                    reason = (KeyManagerFault.TOKEN_REFUSED if "re-authenticate" in message
                              else None)
                    failure = KeyManagerError(f"image {image_id}: {message}", reason=reason)
                else:
                    failure = VerificationError(f"image {image_id}: {message}")
                leftover = image.properties.get(LEFTOVER_PROPERTY)
                if isinstance(leftover, str) and leftover:
                    # What the plugin's revert could not undo reaches the person as the
                    # warning line (and --json's leftovers) the CLI prints for every leftover.
                    failure.add_note(f"{LEFTOVER_NOTE} image {image_id}: {leftover}")
                raise failure
            if time.monotonic() > deadline:
                if on_timeout is not None:
                    on_timeout()
                raise ToolError(f"image {image_id} is still {image.status} after "
                                f"{timeout:.0f} s; the import goes on in the image service "
                                "(look at the image later); if it stays 'importing' it may "
                                "have died with a Glance worker: see \"An import that died "
                                "half-way\" in the README")
            time.sleep(IMPORT_POLL_SECONDS)

    def _poll(self, image_id: str) -> Image:
        """The image, during its import. A server that read the poll and closed the
        connection without answering lost the process that held it (a Glance worker killed,
        out of memory, restarted), most often the one that ran the import too: look once
        more, and an image still importing is reported as such, with what to do."""
        from keystoneauth1 import exceptions as kexc

        with _translate(f"image {image_id}"):
            try:
                return Image.from_api(self._request("GET", f"/images/{image_id}").json())
            except kexc.ConnectFailure as exc:
                if _dropped(exc) is not _Drop.CLOSED:
                    raise
        image = self.get(image_id)
        if image.status != "importing":
            return image
        raise ToolError(_import_dropped(image_id))

    def download(self, image_id: str, size: int) -> Iterator[bytes]:
        """Exactly the ``size`` bytes the image record declares, never one more: a body that
        announces another length is refused before it is read, one that ends early is
        refused, and what a server sends beyond ``size`` is never read. Every wait is bounded
        by the read timeout and the whole transfer by the total one (a server that trickles
        is cut off: the connection is shut down from a timer)."""
        timeouts = self._timeouts or Timeouts()
        response = self._call("GET", f"/images/{image_id}/file", f"downloading {image_id}",
                              stream=True)
        deadline = time.monotonic() + timeouts.total
        raw = response.raw
        watchdog = threading.Timer(timeouts.total, _shutdown, (raw,))
        watchdog.daemon = True
        watchdog.start()
        try:
            announced = response.headers.get("Content-Length")
            if announced is not None and announced.strip() != str(size):
                raise VerificationError(
                    f"image {image_id}: the image service sends {escape(announced[:40])} "
                    f"bytes, the image record declares {size}")
            remaining = size
            while remaining > 0:
                try:
                    # read1: one receive at most, so the deadline is checked between them;
                    # the stored bytes as they are (no content decoding a server could ask for)
                    chunk = raw.read1(min(CHUNK, remaining), decode_content=False)
                except Exception as exc:  # urllib3's timeout and protocol errors, OSError
                    if time.monotonic() >= deadline:
                        raise ToolError(f"downloading {image_id}: not complete within "
                                        f"{timeouts.total:g} s") from None
                    if "timed out" in str(exc).lower():
                        raise ToolError(f"downloading {image_id}: nothing received for "
                                        f"{timeouts.read:g} s") from None
                    raise VerificationError(
                        f"image {image_id}: the download ended after {size - remaining} of "
                        f"{size} bytes ({type(exc).__name__})") from None
                if not chunk:
                    raise VerificationError(f"image {image_id}: the download ended after "
                                            f"{size - remaining} of {size} bytes")
                if time.monotonic() >= deadline:
                    raise ToolError(f"downloading {image_id}: not complete within "
                                    f"{timeouts.total:g} s")
                remaining -= len(chunk)
                yield chunk
        finally:
            watchdog.cancel()
            response.close()


def _shutdown(raw: Any) -> None:
    with contextlib.suppress(Exception):
        raw.shutdown()


# Attributes of an image that are not its properties.
# The fields of a Glance image record; every other key is a custom property.
RECORD_FIELDS = frozenset({"id", "name", "status", "visibility", "protected", "checksum",
                           "owner", "size", "virtual_size", "min_ram", "min_disk", "created_at",
                           "updated_at", "tags", "self", "file", "schema", "disk_format",
                           "container_format", "direct_url", "locations", "os_hidden",
                           "os_hash_algo", "os_hash_value", "stores"})


def extra_properties(image: Image) -> dict[str, str]:
    """The image's properties, base attributes included as strings where imgcrypt reads them."""
    return {k: str(v) for k, v in image.properties.items()
            if v is not None and (k not in RECORD_FIELDS or k in ("disk_format", "container_format",
                                                          "size", "os_hash_algo",
                                                          "os_hash_value", "checksum"))}

"""``imgcrypt_consumers``: a filter in Glance's paste pipeline that releases an image's hold
on its key when the image is deleted.

Glance deletes ``cinder_encryption_key_id``'s key with the image (policy
``on_image_deletion``), and Barbican refuses while the key has consumers. imgcrypt registers
every image as a consumer of its key (``imgcrypt_verify``, ``imgcrypt_encrypt``, ``imgcrypt
upload``), so the image being deleted must stop being one first: otherwise the last image's
deletion would still be refused because of consumers that no longer exist. On ``DELETE
/v2/images/{id}`` this filter reads the image (through the rest of the pipeline, with the
caller's own rights), removes its consumer, lets Glance delete (and so delete the key if no
other image uses it) and registers the consumer again if Glance refused the deletion.

Place it after ``context`` in the ``keystone`` pipeline of glance-api-paste.ini::

    keystone = cors http_proxy_to_wsgi versionnegotiation osprofiler authtoken context
               imgcrypt_consumers rootapp    (one line)

    [filter:imgcrypt_consumers]
    paste.filter_factory = imgcrypt.glance.middleware:filter_factory
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from imgcrypt.errors import ImgcryptError
from imgcrypt.glance.taskbase import LOG, key_manager_for
from imgcrypt.keys.consumers import image_consumer
from imgcrypt.keys.lease import KeyLease
from imgcrypt.service.claims import encryption_claim

_IMAGE_PATH = re.compile(r"/v2/images/([0-9a-fA-F-]{36})/?")
MAX_IMAGE_JSON = 1 << 20

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ReleaseConsumers:
    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        match = _IMAGE_PATH.fullmatch(str(environ.get("PATH_INFO", "")))
        context = environ.get("webob.adhoc_attrs", {}).get("context")
        if environ.get("REQUEST_METHOD") != "DELETE" or match is None or context is None:
            return self.app(environ, start_response)
        image_id = match.group(1).lower()
        released = self._release(environ, context, image_id)
        status: list[str] = []

        def recording(code: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(code)
            return start_response(code, headers, exc_info) if exc_info else \
                start_response(code, headers)

        body = list(self.app(environ, recording))
        if released is not None and not (status and status[0].startswith("2")):
            try:
                with KeyLease.existing(*released) as lease:  # the one way a consumer is added
                    lease.consume_as(image_consumer(image_id))
            except ImgcryptError as exc:
                # The image stays, without its hold on the key: say so, never hide it.
                LOG.warning("image %s: deletion refused, and its consumer of key %s could not "
                            "be registered again (%s): register it with Barbican's consumers "
                            "API", image_id, released[1], exc)
        return body

    def _release(self, environ: Mapping[str, Any], context: Any,
                 image_id: str) -> tuple[Any, str] | None:
        properties = self._image(environ, image_id)
        if properties is None:
            return None
        try:
            claim = encryption_claim(properties)
            if claim is None:
                return None
            manager = key_manager_for(context)
            if not manager.supports_consumers:
                return None
            manager.remove_consumer(claim.key_id, image_consumer(image_id))
        except ImgcryptError as exc:
            LOG.info("image %s: no key consumer released (%s)", image_id, exc)
            return None
        return manager, claim.key_id

    def _image(self, environ: Mapping[str, Any], image_id: str) -> dict[str, str] | None:
        """The image as the caller may see it, through the rest of the pipeline."""
        sub = dict(environ)
        sub.update({"REQUEST_METHOD": "GET", "CONTENT_LENGTH": "0", "QUERY_STRING": "",
                    "wsgi.input": io.BytesIO(b"")})
        sub.pop("CONTENT_TYPE", None)
        sub["webob.adhoc_attrs"] = dict(environ.get("webob.adhoc_attrs", {}))
        status: list[str] = []

        def record(code: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
            status.append(code)
            return lambda _: None

        chunks = self.app(sub, record)
        try:
            data = b"".join(chunks)[:MAX_IMAGE_JSON]
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        if not status or not status[0].startswith("200"):
            return None
        try:
            body = json.loads(data)
        except ValueError:
            return None
        if not isinstance(body, dict):
            return None
        return {str(k): str(v) for k, v in body.items() if isinstance(v, str | int)}


def filter_factory(global_conf: Mapping[str, Any], **local_conf: Any) -> Callable[[WsgiApp],
                                                                                   WsgiApp]:
    return ReleaseConsumers

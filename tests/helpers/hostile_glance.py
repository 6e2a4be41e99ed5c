"""A hostile image service on loopback: answers the few Glance v2 calls ``imgcrypt download``
makes, and misbehaves on purpose in the ways a compromised cloud or a man in the middle of
plain HTTP can (more bytes than declared, truncation, a trickle, silence, changed bytes).
With ``import_methods = ["glance-direct"]`` it takes ``imgcrypt upload``'s staged import too,
and ``poll_fault`` drops the connection of the first status poll of an importing image the way
a real Glance does now and then: ``"reset"`` (a reset, as gunicorn's worker resets a kept-alive
connection after a pause) or ``"drop"`` (read, then closed without an answer: the worker that
held it was killed).

``openstacksdk`` reaches it with ``OS_AUTH_TYPE=none`` and ``OS_IMAGE_ENDPOINT_OVERRIDE``.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Served:
    """One image: its record, the bytes, and how the body is sent."""

    data: bytes
    record: dict[str, Any] = field(default_factory=dict)
    behaviour: str = "honest"  # honest | more | forever | truncate | trickle | silent | length
    sent: int = 0  # body bytes the server managed to hand to the kernel


class HostileGlance:
    def __init__(self) -> None:
        self.images: dict[str, Served] = {}
        self.created_status = "active"  # what a created image's record says
        self.import_methods: list[str] = []
        self.poll_fault: str | None = None  # None | reset | drop, see the module's docstring
        self.polls = 0  # status polls of importing images answered or dropped
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.glance = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v2"

    def env(self, home: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
                   OS_AUTH_TYPE="none", OS_IMAGE_ENDPOINT_OVERRIDE=self.endpoint)
        return env

    def add(self, image_id: str, data: bytes, behaviour: str = "honest", *,
            stored: bytes | None = None, **record: Any) -> Served:
        """``data`` is what the record describes; ``stored`` what is sent (default data)."""
        base = {"id": image_id, "name": image_id, "status": "active", "size": len(data),
                "checksum": hashlib.md5(data, usedforsecurity=False).hexdigest(),
                "disk_format": "raw", "container_format": "bare"}
        base.update(record)
        served = Served(data if stored is None else stored, {k: v for k, v in base.items()
                                                           if v is not None}, behaviour)
        self.images[image_id] = served
        return served

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        """Image creation: the record comes back with whatever the service wants in it. An
        import leaves the image ``importing``."""
        glance: HostileGlance = self.server.glance  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        parts = self.path.strip("/").split("/")
        if len(parts) == 4 and parts[3] == "import" and parts[2] in glance.images:
            glance.images[parts[2]].record["status"] = "importing"
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        image_id = f"created-{len(glance.images)}"
        glance.add(image_id, b"", **{**body, "status": glance.created_status})
        self._json(glance.images[image_id].record)

    def do_PUT(self) -> None:
        glance: HostileGlance = self.server.glance  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length)
        parts = self.path.strip("/").split("/")
        if len(parts) == 4 and parts[2] in glance.images:
            glance.images[parts[2]].data = data
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        glance: HostileGlance = self.server.glance  # type: ignore[attr-defined]
        parts = self.path.strip("/").split("/")
        if parts == ["v2", "info", "import"]:
            self._json({"import-methods": {"value": glance.import_methods}})
            return
        if parts in (["v2"], [""]):
            self._json({"versions": [{"id": "v2.16", "status": "CURRENT", "links": [
                {"rel": "self", "href": f"{glance.endpoint}/"}]}]})
            return
        if len(parts) >= 3 and parts[:2] == ["v2", "images"] and parts[2] in glance.images:
            served = glance.images[parts[2]]
            if parts[3:] == ["file"]:
                self._body(served)
                return
            if not parts[3:]:
                if served.record.get("status") == "importing":
                    self._poll(glance, served)
                    return
                self._json(served.record)
                return
        self.send_error(404)

    def _poll(self, glance: HostileGlance, served: Served) -> None:
        """A status poll of an importing image: the first one meets ``poll_fault``; after a
        reset the import has finished, after a drop it never will."""
        glance.polls += 1
        if glance.polls == 1 and glance.poll_fault == "reset":
            served.record["status"] = "active"
            # No linger: close() sends a reset at once, as for a request never read.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if glance.polls == 1 and glance.poll_fault == "drop":
            self.close_connection = True  # read, and closed without a word
            return
        self._json(served.record)

    def _body(self, served: Served) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        data, how = served.data, served.behaviour
        if how == "length":
            self.send_header("Content-Length", str(len(data) + 1024))
        elif how in ("honest", "truncate", "trickle", "silent"):
            self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for piece in _pieces(data, how):
                self.wfile.write(piece)
                served.sent += len(piece)
            self.wfile.flush()
        except OSError:
            pass  # the client hung up: what it took is in served.sent
        self.close_connection = True


def _pieces(data: bytes, how: str) -> Iterator[bytes]:
    if how == "truncate":
        yield data[: len(data) // 2]
        return
    if how == "silent":
        yield data[:1000]
        time.sleep(60)
        return
    if how == "trickle":
        for i in range(len(data)):
            yield data[i : i + 1]
            time.sleep(0.2)
        return
    yield data
    if how == "more":
        yield os.urandom(4 << 20)
    elif how == "forever":
        chunk = bytes(1 << 20)
        while True:
            yield chunk

"""A real Barbican server for the key-manager tests, started once per test session.

Barbican lives in its own virtualenv (``scripts/install-barbican.sh`` creates
``.venv-barbican``): it pins a different oslo/SQLAlchemy world than imgcrypt's. The fixture
writes a configuration into a temporary directory (sqlite, ``store_crypto`` +
``simple_crypto`` with a freshly generated Fernet KEK, the ``unauthenticated-context``
pipeline that takes the project from ``X-Project-Id``), runs the server with the standard
library's WSGI server in a subprocess of that virtualenv's python on a free loopback port,
waits until it answers, and stops it at the end of the session.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BARBICAN_VENV = Path(os.environ.get("IMGCRYPT_BARBICAN_VENV", ROOT / ".venv-barbican"))
IN_CI = os.environ.get("CI", "").lower() == "true"
STARTUP_TIMEOUT = 90.0

# Barbican's plugin modules each parse the configuration again at import time, from the
# default oslo.config locations. The first of those is ~/.barbican/barbican.conf, so the
# server runs with HOME pointing at the temporary directory that holds our configuration.
_CONF = """\
[DEFAULT]
host_href = {endpoint}
sql_connection = sqlite:///{db}
db_auto_create = True
debug = False
use_stderr = True
log_file =

[secretstore]
namespace = barbican.secretstore.plugin
enabled_secretstore_plugins = store_crypto

[crypto]
namespace = barbican.crypto.plugin
enabled_crypto_plugins = simple_crypto

[simple_crypto_plugin]
kek = {kek}

[queue]
enable = False

[keystone_notifications]
enable = False
"""

_PASTE = """\
[composite:main]
use = egg:Paste#urlmap
/: barbican_version
/v1: barbican_api

[pipeline:barbican_version]
pipeline = request_id microversion versionapp

[pipeline:barbican_api]
pipeline = request_id unauthenticated-context microversion apiapp

[app:apiapp]
paste.app_factory = barbican.api.app:create_main_app

[app:versionapp]
paste.app_factory = barbican.api.app:create_version_app

[filter:unauthenticated-context]
paste.filter_factory = barbican.api.middleware.context:UnauthenticatedContextMiddleware.factory

[filter:microversion]
paste.filter_factory = barbican.api.middleware.microversion:MicroversionMiddleware.factory

[filter:request_id]
paste.filter_factory = oslo_middleware.request_id:RequestId.factory
"""

# Runs inside .venv-barbican. The unauthenticated pipeline reads ``req.request_id``, which
# plain WebOb requests do not have: the wrapper provides it as an ad-hoc attribute. Requests
# without X-Roles get ``admin,member`` because secret creation needs the member role.
_SERVER = """\
import sys
import uuid
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from paste import deploy

paste_ini, port = sys.argv[1], int(sys.argv[2])
app = deploy.loadapp("config:" + paste_ini)


def wrapped(environ, start_response):
    environ.setdefault("webob.adhoc_attrs", {})["request_id"] = "req-" + str(uuid.uuid4())
    environ.setdefault("HTTP_X_ROLES", "admin,member")
    return app(environ, start_response)


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


server = make_server("127.0.0.1", port, wrapped, server_class=Server, handler_class=Quiet)
print("ready", flush=True)
server.serve_forever()
"""


@dataclass(frozen=True)
class BarbicanServer:
    endpoint: str
    project_id: str
    port: int
    log_path: Path


def barbican_python() -> Path | None:
    python = BARBICAN_VENV / "bin" / "python"
    return python if python.exists() else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(endpoint: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"barbican exited with {process.returncode}:\n{log_path.read_text()[-4000:]}"
            )
        try:
            request = urllib.request.Request(
                endpoint + "/v1/secrets", headers={"X-Project-Id": "readiness"}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"barbican did not answer within {STARTUP_TIMEOUT}s:\n"
                       f"{log_path.read_text()[-4000:]}")


def start_barbican(workdir: Path) -> tuple[BarbicanServer, subprocess.Popen[bytes]]:
    python = barbican_python()
    if python is None:
        raise FileNotFoundError(str(BARBICAN_VENV))
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    home = workdir / "home"
    (home / ".barbican").mkdir(parents=True)
    kek = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")
    (home / ".barbican" / "barbican.conf").write_text(
        _CONF.format(endpoint=endpoint, db=workdir / "barbican.sqlite", kek=kek)
    )
    paste = workdir / "barbican-api-paste.ini"
    paste.write_text(_PASTE)
    script = workdir / "serve.py"
    script.write_text(_SERVER)
    log_path = workdir / "barbican.log"
    env = {
        "HOME": str(home),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(python), str(script), str(paste), str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=env,
        )
    try:
        _wait_ready(endpoint, process, log_path)
    except BaseException:
        stop_barbican(process)
        raise
    server = BarbicanServer(
        endpoint=endpoint, project_id=str(uuid.uuid4()), port=port, log_path=log_path
    )
    return server, process


def stop_barbican(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def barbican(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BarbicanServer]:
    """A running Barbican: ``endpoint`` (no ``/v1``) and a fresh ``project_id``."""
    if barbican_python() is None:
        message = f"Barbican is not installed in {BARBICAN_VENV} (run scripts/install-barbican.sh)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    server, process = start_barbican(tmp_path_factory.mktemp("barbican"))
    try:
        yield server
    finally:
        stop_barbican(process)

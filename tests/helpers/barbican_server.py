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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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

# The one server script of the test services (Barbican here, Keystone and the
# Keystone-backed Barbican in tests.helpers.openstack_servers): the standard library's threaded WSGI
# server on a loopback port, run by the service's own virtualenv's python.
#   serve.py paste PASTE_INI PORT [DEFAULT_ROLES]   an app from a paste file
#   serve.py app MODULE:ATTRIBUTE PORT              an app object (or MODULE.init_application())
# Keystone and Barbican read sys.argv through oslo.config when their app is built, so only
# the program name is left there. Barbican's paste pipelines read ``req.request_id``, which
# plain WebOb requests do not have: the wrapper provides it as an ad-hoc attribute. With
# DEFAULT_ROLES (the unauthenticated Barbican), requests without X-Roles get those roles,
# because secret creation needs the member role.
SERVE_SCRIPT = """\
import importlib
import sys
import uuid
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

kind, target, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
default_roles = sys.argv[4] if len(sys.argv) > 4 else None
sys.argv = sys.argv[:1]

if kind == "paste":
    from paste import deploy

    paste_app = deploy.loadapp("config:" + target)

    def app(environ, start_response):
        environ.setdefault("webob.adhoc_attrs", {})["request_id"] = "req-" + str(uuid.uuid4())
        if default_roles:
            environ.setdefault("HTTP_X_ROLES", default_roles)
        return paste_app(environ, start_response)
else:
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    app = getattr(module, attribute)
    if app is None and hasattr(module, "init_application"):
        app = module.init_application()


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


server = make_server("127.0.0.1", port, app, server_class=Server, handler_class=Quiet)
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


def base_env(home: Path) -> dict[str, str]:
    """The whole environment of a service process: its own HOME, nothing of ours."""
    return {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8"}


def write_serve_script(workdir: Path) -> Path:
    script = workdir / "serve.py"
    script.write_text(SERVE_SCRIPT)
    return script


def spawn(argv: list[str], log_path: Path, cwd: Path,
          env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd, env=dict(env))


def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path, *,
               ok: tuple[int, ...] = (200,), headers: Mapping[str, str] | None = None,
               timeout: float = STARTUP_TIMEOUT) -> None:
    """Until ``url`` answers with a status in ``ok``; the server's log tail when it exits or
    does not answer in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {process.returncode}:\n"
                               f"{log_path.read_text(errors='replace')[-4000:]}")
        try:
            request = urllib.request.Request(url, headers=dict(headers or {}))
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status in ok:
                    return
        except urllib.error.HTTPError as exc:
            if exc.code in ok:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout}s:\n"
                       f"{log_path.read_text(errors='replace')[-4000:]}")


def start_server(argv: list[str], log_path: Path, cwd: Path, env: Mapping[str, str],
                 url: str, *, ok: tuple[int, ...] = (200,),
                 headers: Mapping[str, str] | None = None,
                 timeout: float = STARTUP_TIMEOUT) -> subprocess.Popen[bytes]:
    """A server process that answers at ``url``; stopped again when it does not."""
    process = spawn(argv, log_path, cwd, env)
    try:
        wait_ready(url, process, log_path, ok=ok, headers=headers, timeout=timeout)
    except BaseException:
        stop_barbican(process)
        raise
    return process


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
    script = write_serve_script(workdir)
    log_path = workdir / "barbican.log"
    process = start_server(
        [str(python), str(script), "paste", str(paste), str(port), "admin,member"], log_path,
        workdir, base_env(home), endpoint + "/v1/secrets", headers={"X-Project-Id": "readiness"})
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

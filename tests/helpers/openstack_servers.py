"""A real Keystone, a Keystone-authenticated Barbican and real Glance servers for the tests.

Each service lives in its own virtualenv (``scripts/install-keystone.sh``,
``scripts/install-barbican.sh``, ``scripts/install-glance.sh``) and is started once per test
session on a free loopback port:

- Keystone: sqlite, fernet tokens, ``keystone-manage db_sync``/``fernet_setup``/``bootstrap``,
  served by the standard library's threaded WSGI server (gunicorn hands its own command line
  to Keystone's oslo.config, which refuses it). A ``demo`` project and user with the
  ``member`` role are created through the identity API.
- Barbican: as in :mod:`tests.helpers.barbican_server`, but behind ``keystonemiddleware.auth_token``
  and Barbican's ``context`` filter (the ``barbican-api-keystone`` pipeline of its paste file).
- Glance: ``glance.wsgi.api:application`` under gunicorn, sqlite, a file store, staging for
  ``glance-direct``, the ``keystone`` paste flavor, ``[key_manager] backend = barbican``,
  and imgcrypt's import plugins (installed into the Glance virtualenv by
  ``scripts/install-glance.sh``) enabled in ``[image_import_opts]``.

Under ``CI=true`` a missing virtualenv fails the test; elsewhere it skips.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.barbican_server import _CONF as BARBICAN_CONF
from tests.helpers.barbican_server import (
    BARBICAN_VENV,
    IN_CI,
    base_env,
    free_port,
    start_server,
    stop_barbican,
    write_serve_script,
)

ROOT = Path(__file__).resolve().parents[2]
KEYSTONE_VENV = Path(os.environ.get("IMGCRYPT_KEYSTONE_VENV", ROOT / ".venv-keystone"))
GLANCE_VENV = Path(os.environ.get("IMGCRYPT_GLANCE_VENV", ROOT / ".venv-glance"))
STARTUP_TIMEOUT = 120.0
ADMIN_PASSWORD = "imgcrypt-admin-" + base64.b32encode(os.urandom(10)).decode("ascii").lower()
DEMO_PASSWORD = "imgcrypt-demo-" + base64.b32encode(os.urandom(10)).decode("ascii").lower()

_KEYSTONE_CONF = """\
[DEFAULT]
use_stderr = true
[database]
connection = sqlite:///{dir}/keystone.sqlite
[token]
provider = fernet
[fernet_tokens]
key_repository = {dir}/fernet-keys
[fernet_receipts]
key_repository = {dir}/receipt-keys
[credential]
key_repository = {dir}/credential-keys
"""

_AUTHTOKEN = """
[keystone_authtoken]
www_authenticate_uri = {auth_url}
auth_url = {auth_url}
auth_type = password
project_domain_id = default
user_domain_id = default
project_name = admin
username = admin
password = {password}
"""

_BARBICAN_PASTE = """\
[composite:main]
use = egg:Paste#urlmap
/: barbican_version
/v1: barbican-api-keystone

[pipeline:barbican_version]
pipeline = request_id microversion versionapp

[pipeline:barbican-api-keystone]
pipeline = request_id authtoken context microversion apiapp

[app:apiapp]
paste.app_factory = barbican.api.app:create_main_app

[app:versionapp]
paste.app_factory = barbican.api.app:create_version_app

[filter:context]
paste.filter_factory = barbican.api.middleware.context:ContextMiddleware.factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory

[filter:microversion]
paste.filter_factory = barbican.api.middleware.microversion:MicroversionMiddleware.factory

[filter:request_id]
paste.filter_factory = oslo_middleware.request_id:RequestId.factory
"""

_GLANCE_CONF = """\
[DEFAULT]
enabled_backends = fs:file
enabled_import_methods = [glance-direct]
use_stderr = true
debug = {debug}
{default_extra}
[database]
connection = sqlite:///{dir}/glance.sqlite

[paste_deploy]
flavor = keystone
config_file = {dir}/glance-api-paste.ini

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = {dir}/images

[os_glance_staging_store]
filesystem_store_datadir = {dir}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {dir}/tasks

[key_manager]
backend = barbican

[barbican]
barbican_endpoint = {barbican}
barbican_api_version = v1
auth_endpoint = {auth_url}
{authtoken}
[image_import_opts]
image_import_plugins = [{plugins}]

{extra}
"""

# imgcrypt's paste filter that releases an image's key consumer on deletion.
CONSUMERS_FILTER = """
[filter:imgcrypt_consumers]
paste.filter_factory = imgcrypt.glance.middleware:filter_factory
"""


@dataclass(frozen=True)
class Keystone:
    auth_url: str  # ends in /v3
    admin_password: str
    demo_project_id: str
    admin_project_id: str

    def credentials(self, user: str = "demo") -> dict[str, str]:
        """OS_* variables as the openstack client reads them."""
        password = self.admin_password if user == "admin" else DEMO_PASSWORD
        return {
            "OS_AUTH_URL": self.auth_url, "OS_USERNAME": user, "OS_PASSWORD": password,
            "OS_PROJECT_NAME": user, "OS_USER_DOMAIN_ID": "default",
            "OS_PROJECT_DOMAIN_ID": "default", "OS_IDENTITY_API_VERSION": "3",
            "OS_REGION_NAME": "RegionOne", "OS_INTERFACE": "public",
        }


@dataclass(frozen=True)
class KeystoneBarbican:
    endpoint: str
    log_path: Path


@dataclass
class Glance:
    endpoint: str
    workdir: Path
    log_path: Path
    plugins: tuple[str, ...]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def staging_files(self) -> list[str]:
        return sorted(p.name for p in (self.workdir / "staging").iterdir())

    def store_files(self) -> list[str]:
        return sorted(p.name for p in (self.workdir / "images").iterdir())


def require_venv(venv: Path, script: str) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        message = f"{venv} is missing (run scripts/{script})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return python


# A Keystone or Glance that is up answers its version document (200/300) or asks for a token.
_UP = (200, 300, 401)


def _json_request(url: str, body: object | None = None, token: str | None = None,
                  method: str | None = None) -> tuple[dict[str, object], Mapping[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Auth-Token"] = token
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
        return (json.loads(raw) if raw else {}), dict(response.headers)


def keystone_token(auth_url: str, user: str, password: str, project: str) -> str:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"id": "default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}}
    _, headers = _json_request(auth_url + "/auth/tokens", body)
    return headers["X-Subject-Token"]


def stop(process: subprocess.Popen[bytes]) -> None:
    stop_barbican(process)


def start_keystone(workdir: Path, extra: str = "") -> tuple[Keystone, subprocess.Popen[bytes]]:
    """A Keystone; ``extra`` is appended to keystone.conf (``[token] expiration = 40``)."""
    venv_bin = require_venv(KEYSTONE_VENV, "install-keystone.sh").parent
    for name in ("fernet-keys", "receipt-keys", "credential-keys", "home"):
        (workdir / name).mkdir()
    conf = workdir / "keystone.conf"
    conf.write_text(_KEYSTONE_CONF.format(dir=workdir) + extra)
    port = free_port()
    auth_url = f"http://127.0.0.1:{port}/v3"
    env = base_env(workdir / "home")
    log_path = workdir / "keystone.log"
    manage = [str(venv_bin / "keystone-manage"), "--config-file", str(conf)]
    owner = ["--keystone-user", str(os.getuid()), "--keystone-group", str(os.getgid())]
    steps = [["db_sync"], ["fernet_setup", *owner], ["credential_setup", *owner],
             ["bootstrap", "--bootstrap-password", ADMIN_PASSWORD,
              "--bootstrap-admin-url", auth_url, "--bootstrap-public-url", auth_url,
              "--bootstrap-internal-url", auth_url, "--bootstrap-region-id", "RegionOne"]]
    for step in steps:
        with log_path.open("ab") as log:
            subprocess.run([*manage, *step], check=True, stdout=log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, env=env, cwd=workdir, timeout=300)
    script = write_serve_script(workdir)
    process = start_server([str(venv_bin / "python"), str(script), "app",
                            "keystone.wsgi.api:application", str(port)], log_path, workdir,
                           {**env, "OS_KEYSTONE_CONFIG_DIR": str(workdir)}, auth_url, ok=_UP,
                           timeout=STARTUP_TIMEOUT)
    try:
        admin = keystone_token(auth_url, "admin", ADMIN_PASSWORD, "admin")
        demo_project = _create_project_user(auth_url, admin, "demo", DEMO_PASSWORD)
        projects, _ = _json_request(auth_url + "/projects?name=admin", token=admin)
        admin_project = str(projects["projects"][0]["id"])  # type: ignore[index]
    except BaseException:
        stop(process)
        raise
    return Keystone(auth_url, ADMIN_PASSWORD, demo_project, admin_project), process


def _create_project_user(auth_url: str, token: str, name: str, password: str) -> str:
    project, _ = _json_request(auth_url + "/projects", {"project": {
        "name": name, "domain_id": "default"}}, token)
    project_id = str(project["project"]["id"])  # type: ignore[index]
    user, _ = _json_request(auth_url + "/users", {"user": {
        "name": name, "domain_id": "default", "password": password,
        "default_project_id": project_id}}, token)
    user_id = str(user["user"]["id"])  # type: ignore[index]
    roles, _ = _json_request(auth_url + "/roles?name=member", token=token)
    role_id = roles["roles"][0]["id"]  # type: ignore[index]
    _json_request(f"{auth_url}/projects/{project_id}/users/{user_id}/roles/{role_id}",
                  token=token, method="PUT")
    return project_id


def register_endpoint(keystone: Keystone, service_type: str, name: str, url: str) -> None:
    token = keystone_token(keystone.auth_url, "admin", keystone.admin_password, "admin")
    found, _ = _json_request(f"{keystone.auth_url}/services?type={service_type}", token=token)
    services = found["services"]
    assert isinstance(services, list)
    if services:
        service_id = services[0]["id"]
    else:
        created, _ = _json_request(keystone.auth_url + "/services", {"service": {
            "type": service_type, "name": name}}, token)
        service_id = created["service"]["id"]  # type: ignore[index]
    for interface in ("public", "internal", "admin"):
        _json_request(keystone.auth_url + "/endpoints", {"endpoint": {
            "service_id": service_id, "interface": interface, "url": url,
            "region_id": "RegionOne"}}, token)


def start_keystone_barbican(workdir: Path, keystone: Keystone
                            ) -> tuple[KeystoneBarbican, subprocess.Popen[bytes]]:
    python = require_venv(BARBICAN_VENV, "install-barbican.sh")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    home = workdir / "home"
    (home / ".barbican").mkdir(parents=True)
    kek = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")
    conf = BARBICAN_CONF.format(endpoint=endpoint, db=workdir / "barbican.sqlite", kek=kek)
    conf += _AUTHTOKEN.format(auth_url=keystone.auth_url, password=keystone.admin_password)
    (home / ".barbican" / "barbican.conf").write_text(conf)
    paste = workdir / "barbican-api-paste.ini"
    paste.write_text(_BARBICAN_PASTE)
    script = write_serve_script(workdir)
    log_path = workdir / "barbican.log"
    process = start_server([str(python), str(script), "paste", str(paste), str(port)], log_path,
                           workdir, base_env(home), endpoint + "/v1/secrets", ok=(401,),
                           timeout=STARTUP_TIMEOUT)
    try:
        register_endpoint(keystone, "key-manager", "barbican", endpoint)
    except BaseException:
        stop(process)
        raise
    return KeystoneBarbican(endpoint, log_path), process


def glance_config(workdir: Path, keystone: Keystone, barbican: KeystoneBarbican,
                  plugins: tuple[str, ...], extra: str = "", default_extra: str = "") -> None:
    for name in ("images", "staging", "tasks", "home"):
        (workdir / name).mkdir(exist_ok=True)
    paste_source = GLANCE_VENV / "etc" / "glance" / "glance-api-paste.ini"
    paste = paste_source.read_text()
    paste = paste.replace("authtoken context rootapp",
                          "authtoken context imgcrypt_consumers rootapp")
    paste += CONSUMERS_FILTER
    (workdir / "glance-api-paste.ini").write_text(paste)
    authtoken = _AUTHTOKEN.format(auth_url=keystone.auth_url, password=keystone.admin_password)
    (workdir / "glance-api.conf").write_text(_GLANCE_CONF.format(
        dir=workdir, barbican=barbican.endpoint, auth_url=keystone.auth_url,
        authtoken=authtoken, plugins=",".join(plugins), extra=extra,
        default_extra=default_extra, debug="false"))


def start_glance(workdir: Path, keystone: Keystone, barbican: KeystoneBarbican,
                 plugins: tuple[str, ...], extra: str = "", default_extra: str = "",
                 register: bool = False) -> Glance:
    venv_bin = require_venv(GLANCE_VENV, "install-glance.sh").parent
    glance_config(workdir, keystone, barbican, plugins, extra, default_extra)
    conf = workdir / "glance-api.conf"
    # PYTHONPATH: Glance imports imgcrypt's plugins from this checkout (the one under test),
    # whichever checkout the shared Glance virtualenv's editable install points at.
    env = {**base_env(workdir / "home"), "OS_GLANCE_CONFIG_DIR": str(workdir),
           "PYTHONPATH": str(ROOT)}
    log_path = workdir / "glance.log"
    with log_path.open("ab") as log:
        subprocess.run([str(venv_bin / "glance-manage"), "--config-file", str(conf), "db_sync"],
                       check=True, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                       stdin=subprocess.DEVNULL, timeout=300)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = start_server([str(venv_bin / "gunicorn"), "--workers", "1", "--threads", "4",
                            "--timeout", "300", "--bind", f"127.0.0.1:{port}",
                            "--control-socket", str(workdir / "gunicorn.ctl"),
                            "glance.wsgi.api:application"], log_path, workdir, env,
                           endpoint + "/versions", ok=_UP, timeout=STARTUP_TIMEOUT)
    glance = Glance(endpoint, workdir, log_path, plugins, [process])
    try:
        if register:
            register_endpoint(keystone, "image", "glance", endpoint)
    except BaseException:
        stop(process)
        raise
    return glance


@pytest.fixture(scope="session")
def keystone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keystone]:
    server, process = start_keystone(tmp_path_factory.mktemp("keystone"))
    try:
        yield server
    finally:
        stop(process)


@pytest.fixture(scope="session")
def keystone_barbican(tmp_path_factory: pytest.TempPathFactory,
                      keystone: Keystone) -> Iterator[KeystoneBarbican]:
    server, process = start_keystone_barbican(tmp_path_factory.mktemp("ks-barbican"), keystone)
    try:
        yield server
    finally:
        stop(process)


@contextlib.contextmanager
def running_cloud(workdir: Path) -> Iterator[tuple[Keystone, KeystoneBarbican, Glance]]:
    """Keystone, a Barbican behind it and a Glance with no import plugins, each with its data
    in a folder of ``workdir`` of its name, all stopped on the way out (for the benchmarks,
    which start the cloud once per run rather than per test session)."""
    with contextlib.ExitStack() as stack:
        for name in ("keystone", "barbican", "glance"):
            (workdir / name).mkdir()
        keystone, kp = start_keystone(workdir / "keystone")
        stack.callback(stop, kp)
        barbican, bp = start_keystone_barbican(workdir / "barbican", keystone)
        stack.callback(stop, bp)
        glance = start_glance(workdir / "glance", keystone, barbican, ())
        for process in glance.processes:
            stack.callback(stop, process)
        yield keystone, barbican, glance

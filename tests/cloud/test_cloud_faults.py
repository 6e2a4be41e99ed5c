"""When the cloud fails half-way: faults injected into a real Keystone, Barbican and Glance.

The module starts its own cloud (a Keystone whose tokens live 90 seconds, a Barbican behind
it, a Glance with imgcrypt_verify, a staging size cap and a slow file store), so that
stopping or killing one of them disturbs no other test. Each fault is what an operator meets:
Barbican frozen (SIGSTOP) in the middle of ``imgcrypt upload``, the Glance worker killed
(SIGKILL) while it stores an image, an upload larger than the staging area takes, and a
user's token that expires while the import verifies. After each one, once the service is
back: no image that is not active claims an accepted verdict, no consumer stays registered
for an image that is not active unless ``imgcrypt keys consumers --stale`` reports it (and
``--clear-stale`` removes it), and the person saw one line with the documented exit code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.openstack_client import (
    Person,
    barbican_of,
    connection,
    demo_person,
    images_of,
)
from tests.helpers.openstack_servers import (
    Glance,
    Keystone,
    KeystoneBarbican,
    _json_request,
    keystone_token,
    start_glance,
    start_keystone,
    start_keystone_barbican,
    stop,
)

pytestmark = [pytest.mark.barbican, pytest.mark.tools, pytest.mark.glance]

# Keystone's [token] expiration in this module's cloud, in seconds: longer than an import of
# the 8 MiB images below takes here (imgcrypt_verify took 41 s for 24 MiB on a loaded
# 2-core machine), shorter than the pause the token tests impose.
TOKEN_LIFE = 90
# Tokens shorter than keystoneauth's 120-second margin make every client re-authenticate
# before each request: cheap password hashes keep that from stalling the module.
KEYSTONE_CONF = f"[token]\nexpiration = {TOKEN_LIFE}\n[identity]\npassword_hash_rounds = 4\n"
STAGING_CAP = 40 << 20  # Glance's image_size_cap: what one upload may stage
# How long the token tests pause the Glance worker: longer than a token lives.
PAUSE = TOKEN_LIFE + 5
# [imgcrypt] key_manager_timeout of the Glance the frozen-Barbican plugin import uses.
KEY_MANAGER_TIMEOUT = 10


def glance_conf(key_manager_timeout: float) -> str:
    return f"""\
[imgcrypt]
allowed_luks_versions = 1
key_manager_timeout = {key_manager_timeout}
"""


# The other Glances' key_manager_timeout: longer than the --timeout the frozen-Barbican upload
# gives the person (the person gives up first there), and than the token tests' pause: a
# socket's deadline runs on while its process is stopped, so a key-manager request in flight
# when the worker is paused must not time out the moment it resumes.
GLANCE_CONF = glance_conf(2 * PAUSE)
# 512-byte store writes: storing an 8 MiB image takes long enough to kill the worker during it.
GLANCE_DEFAULT = f"image_size_cap = {STAGING_CAP}\n"
SLOW_STORE = "[fs]\nfilesystem_store_chunk_size = 512\n"
SERVICE_TOKENS = """
[barbican]
send_service_user_token = true

[barbican_service_user]
auth_type = password
auth_url = {auth_url}
username = admin
password = {password}
project_name = admin
user_domain_id = default
project_domain_id = default
"""


@dataclass
class Cloud:
    keystone: Keystone
    barbican: KeystoneBarbican
    barbican_process: subprocess.Popen[bytes]
    glance: Glance

    def glance_worker(self, glance: Glance | None = None) -> int:
        """The pid of gunicorn's (one) worker: the process that runs the import."""
        master = (glance or self.glance).processes[0].pid
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == master:
                return int(entry)
        raise AssertionError("gunicorn has no worker")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    keystone, keystone_process = start_keystone(
        tmp_path_factory.mktemp("faults-keystone"), KEYSTONE_CONF)
    try:
        barbican, barbican_process = start_keystone_barbican(
            tmp_path_factory.mktemp("faults-barbican"), keystone)
        try:
            glance = start_glance(tmp_path_factory.mktemp("faults-glance"), keystone, barbican,
                                  ("imgcrypt_verify",), GLANCE_CONF + SLOW_STORE,
                                  GLANCE_DEFAULT, register=True)
            try:
                yield Cloud(keystone, barbican, barbican_process, glance)
            finally:
                for process in glance.processes:
                    stop(process)
        finally:
            os.kill(barbican_process.pid, signal.SIGCONT)
            stop(barbican_process)
    finally:
        stop(keystone_process)


def grant_service_role(keystone: Keystone) -> None:
    """The ``service`` role for the admin user Glance's service token belongs to: Barbican's
    keystonemiddleware accepts an expired user token only beside a token with that role
    (``service_token_roles``)."""
    token = keystone_token(keystone.auth_url, "admin", keystone.admin_password, "admin")
    roles, _ = _json_request(keystone.auth_url + "/roles?name=service", token=token)
    found = roles["roles"]
    assert isinstance(found, list)
    if found:  # keystone-manage bootstrap creates it in recent releases
        role_id = found[0]["id"]
    else:
        role, _ = _json_request(keystone.auth_url + "/roles", {"role": {"name": "service"}},
                                token)
        role_id = role["role"]["id"]  # type: ignore[index]
    users, _ = _json_request(keystone.auth_url + "/users?name=admin", token=token)
    user_id = users["users"][0]["id"]  # type: ignore[index]
    _json_request(f"{keystone.auth_url}/projects/{keystone.admin_project_id}/users/{user_id}"
                  f"/roles/{role_id}", token=token, method="PUT")


@pytest.fixture(scope="module")
def service_glance(tmp_path_factory: pytest.TempPathFactory, cloud: Cloud) -> Iterator[Glance]:
    """A second Glance whose plugins send Glance's service token beside the user's."""
    grant_service_role(cloud.keystone)
    service_user = SERVICE_TOKENS.format(auth_url=cloud.keystone.auth_url,
                                         password=cloud.keystone.admin_password)
    glance = start_glance(tmp_path_factory.mktemp("faults-glance-st"), cloud.keystone,
                          cloud.barbican, ("imgcrypt_verify",), GLANCE_CONF + service_user)
    try:
        yield glance
    finally:
        for process in glance.processes:
            stop(process)


@pytest.fixture(scope="module")
def bounded_glance(tmp_path_factory: pytest.TempPathFactory, cloud: Cloud) -> Iterator[Glance]:
    """A Glance whose plugins give up on the key manager after KEY_MANAGER_TIMEOUT."""
    glance = start_glance(tmp_path_factory.mktemp("faults-glance-bounded"), cloud.keystone,
                          cloud.barbican, ("imgcrypt_verify",),
                          glance_conf(KEY_MANAGER_TIMEOUT))
    try:
        yield glance
    finally:
        for process in glance.processes:
            stop(process)


@pytest.fixture
def person(tmp_path: Path, cloud: Cloud) -> Person:
    return demo_person(tmp_path, cloud.keystone)


def encrypted_image(person: Person, size: int) -> tuple[Path, str, Path]:
    """A LUKS1 image of about ``size`` bytes under a new Barbican key; its properties file."""
    plain = person.workdir / "plain.raw"
    with plain.open("wb") as f:
        f.write(os.urandom(size))
    image = person.workdir / "disk.luks"
    key_id = str(person.json("encrypt", str(plain), str(image), "--new-key", "--key-manager",
                             "barbican", "--iterations", "1000")["key_id"])
    props = person.workdir / "enc.json"
    props.write_text(person.run("properties", str(image), "--key-id", key_id, "--key-manager",
                                "barbican", "--size", str(size), "--json").stdout)
    return image, key_id, props


def record_of(cloud: Cloud, name: str, upload: subprocess.Popen[str],
              glance: Glance | None = None) -> dict[str, Any]:
    """The image record ``upload`` creates, as soon as it exists."""
    conn = connection(cloud.keystone, glance)

    def created() -> dict[str, Any] | None:
        if upload.poll() is not None:
            raise AssertionError(f"upload exited {upload.returncode} early: "
                                 f"{upload.communicate()}")
        found = conn.image.get("/images", params={"name": name}).json()["images"]
        return dict(found[0]) if found else None

    try:
        return dict(wait_until(f"image {name}", created))
    except AssertionError:
        upload.kill()
        raise AssertionError(f"no image {name}; the upload said {upload.communicate()}"
                             ) from None


def wait_until(what: str, check: Any, timeout: float = 120.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def settled(cloud: Cloud, image_id: str, glance: Glance | None = None) -> str:
    """The image's status once no import is running on it any more."""
    images = images_of(cloud.keystone, glance)

    def done() -> str | None:
        image = images.get(image_id)
        busy = image.status in ("saving", "uploading") or (
            image.status == "importing" and image.properties.get("os_glance_import_task"))
        return None if busy else image.status

    return str(wait_until(f"image {image_id} to settle", done, timeout=180, every=0.5))


def unfinished_consumers(cloud: Cloud, key_id: str, glance: Glance | None = None) -> list[str]:
    """The key's image consumers whose image is not active (or no longer exists)."""
    from imgcrypt.errors import ImgcryptError

    images = images_of(cloud.keystone, glance)
    leaked = []
    for consumer in barbican_of(cloud.keystone).list_consumers(key_id):
        try:
            status = images.get(consumer.resource_id).status
        except ImgcryptError:
            status = "gone"
        if status != "active":
            leaked.append(consumer.resource_id)
    return leaked


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "<html" not in stderr.lower(), stderr
    return lines[0]


def clean_stale(person: Person, key_id: str, leaked: list[str]) -> None:
    """``imgcrypt keys consumers --stale`` names exactly the leftovers; ``--clear-stale``
    removes them, and a second look finds none."""
    listed = person.json("keys", "consumers", key_id, "--stale", "--min-age", "0",
                         "--key-manager", "barbican")
    assert sorted(c["resource_id"] for c in listed["stale"]) == sorted(leaked)
    cleared = person.json("keys", "consumers", key_id, "--clear-stale", "--min-age", "0",
                          "--key-manager", "barbican")
    assert sorted(c["resource_id"] for c in cleared["cleared"]) == sorted(leaked)
    again = person.json("keys", "consumers", key_id, "--stale", "--min-age", "0",
                        "--key-manager", "barbican")
    assert again["stale"] == []


def test_barbican_frozen_during_upload(person: Person, cloud: Cloud) -> None:
    """Barbican stopped (SIGSTOP) once the image record exists: staging goes on, the import's
    key check hangs on Barbican; the person's upload gives up after --timeout with one line,
    and once Barbican is back no consumer is left for an image that is not active."""
    image, key_id, props = encrypted_image(person, 8 << 20)
    upload = person.start("upload", str(image), "--name", "frozen-barbican", "--properties",
                          str(props), "--timeout", "15", "--json")
    found = record_of(cloud, "frozen-barbican", upload)
    os.kill(cloud.barbican_process.pid, signal.SIGSTOP)
    try:
        _, stderr = upload.communicate(timeout=120)
    finally:
        os.kill(cloud.barbican_process.pid, signal.SIGCONT)
    status = settled(cloud, found["id"])
    leaked = unfinished_consumers(cloud, key_id)
    print(f"frozen Barbican: exit {upload.returncode}, stderr {stderr!r}, image {status}, "
          f"consumers of unfinished images {leaked}")
    line = one_line(stderr)
    assert upload.returncode == 5, line
    assert "key manager" in line and "retry" in line, line
    verdict = images_of(cloud.keystone).get(found["id"]).properties.get("imgcrypt_verdict")
    assert status == "active" or verdict != "accepted"
    if leaked:
        clean_stale(person, key_id, leaked)
    assert unfinished_consumers(cloud, key_id) == []


def test_barbican_frozen_during_a_plugin_import(person: Person, cloud: Cloud,
                                                bounded_glance: Glance) -> None:
    """An image staged through Glance's API and imported while Barbican is stopped (SIGSTOP):
    imgcrypt_verify's key-manager request gives up after ``[imgcrypt] key_manager_timeout``,
    so the import fails within that bound (it used to wait for ever); the image is back to
    ``queued``, its verdict ``unchecked`` with what to do, and once Barbican is back no
    consumer is registered for it."""
    from imgcrypt.service.verdict import effective_verdict, is_unchecked

    image, key_id, props = encrypted_image(person, 1 << 20)
    images = images_of(cloud.keystone, bounded_glance)
    record = images.create("frozen-barbican-plugin", "raw", "bare",
                           json.loads(props.read_text()))
    with image.open("rb") as f:
        images.upload(record.image_id, f, image.stat().st_size, stage=True)
    os.kill(cloud.barbican_process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        images.start_import(record.image_id)
        status = settled(cloud, record.image_id, bounded_glance)
        took = time.monotonic() - started
    finally:
        os.kill(cloud.barbican_process.pid, signal.SIGCONT)
    shown = images.get(record.image_id)
    verdict = shown.properties.get("imgcrypt_verdict")
    message = images.last_task_message(record.image_id)
    leaked = unfinished_consumers(cloud, key_id, bounded_glance)
    consumers = [c.resource_id for c in barbican_of(cloud.keystone).list_consumers(key_id)]
    print(f"frozen Barbican, plugin import: failed after {took:.1f} s, image {status}, "
          f"verdict {verdict!r}, task {message!r}, consumers {consumers}")
    assert took < KEY_MANAGER_TIMEOUT + 60, took
    assert status == "queued"
    assert is_unchecked(verdict), verdict
    assert effective_verdict(shown.status, shown.properties) != "accepted"
    assert message is not None and "retry the import once the key manager answers" in message
    assert consumers == [] and leaked == []


def test_glance_worker_killed_while_storing(person: Person, cloud: Cloud) -> None:
    """The Glance worker SIGKILLed once the store has begun writing the image: the image stays
    ``importing`` under Glance's own lock; it claims no accepted verdict, and the consumer the
    plugin registered is reported and removed by ``keys consumers --clear-stale``."""
    image, key_id, props = encrypted_image(person, 8 << 20)
    upload = person.start("upload", str(image), "--name", "killed-worker", "--properties",
                          str(props), "--timeout", "60", "--json")
    found = record_of(cloud, "killed-worker", upload)
    stored = cloud.glance.workdir / "images" / found["id"]
    wait_until("the store to begin", stored.exists, timeout=120, every=0.002)
    os.kill(cloud.glance_worker(), signal.SIGKILL)
    _, stderr = upload.communicate(timeout=300)
    wait_until("a new Glance worker", lambda: images_of(cloud.keystone).get(found["id"]),
               timeout=60, every=0.5)
    shown = images_of(cloud.keystone).get(found["id"])
    leaked = unfinished_consumers(cloud, key_id)
    print(f"killed worker: exit {upload.returncode}, stderr {stderr!r}, image {shown.status}, "
          f"verdict {shown.properties.get('imgcrypt_verdict')!r}, consumers of unfinished "
          f"images {leaked}")
    assert shown.status != "active"
    assert shown.properties.get("imgcrypt_verdict") != "accepted"
    # The poll the worker had read when it died is answered by a closed connection: one look
    # more, and the person is told at once. A poll not yet read is sent again and the import
    # is waited for until --timeout: the same advice then.
    line = one_line(stderr)
    assert upload.returncode == 1, line
    assert "Glance" in line and "importing" in line, line
    assert "An import that died half-way" in line and "cannot reach" not in line, line
    if leaked:
        clean_stale(person, key_id, leaked)
    assert unfinished_consumers(cloud, key_id) == []


def test_full_staging_area(person: Person, cloud: Cloud) -> None:
    """An image larger than the staging area takes: Glance answers 413; the person reads one
    line naming Glance, the cause and what to do, never Glance's HTML page, and exit 1."""
    big = person.workdir / "big.raw"
    with big.open("wb") as f:
        f.truncate(STAGING_CAP + (1 << 20))
    result = person.run("upload", str(big), "--name", "too-big", check=False)
    print(f"full staging: exit {result.returncode}, stderr {result.stderr!r}")
    line = one_line(result.stderr)
    assert result.returncode == 1, line
    assert "Glance" in line and "413" in line and "space" in line, line


# gunicorn's default keep-alive: how long Glance's worker keeps an idle connection open.
GUNICORN_KEEPALIVE = 2


def test_a_poll_survives_a_paused_glance_worker(cloud: Cloud) -> None:
    """The cause of the token tests' flaky "Connection reset by peer": a Glance worker paused
    (SIGSTOP) for longer than gunicorn's keep-alive, while a status poll waits, unread, on a
    kept-alive connection. On SIGCONT the worker's epoll_wait fails with EINTR, Python finds
    its deadline passed and returns no events, and gunicorn closes the "expired" connection
    with the request unread: Linux answers with a reset. A GET is idempotent and the server
    never read it (RFC 9112 section 9.3.1), so imgcrypt sends it once more and gets the image.
    """
    images = images_of(cloud.keystone)
    image = images.create("paused-worker", "raw", "bare", {})
    images.get(image.image_id)  # leaves a kept-alive connection in the session's pool
    worker = cloud.glance_worker()
    outcome: list[object] = []
    os.kill(worker, signal.SIGSTOP)
    try:
        poll = threading.Thread(target=lambda: outcome.append(_outcome(images, image.image_id)))
        poll.start()
        time.sleep(GUNICORN_KEEPALIVE + 2)
    finally:
        os.kill(worker, signal.SIGCONT)
    poll.join(timeout=120)
    images.delete(image.image_id)
    assert outcome == [image.image_id]


def _outcome(images: Any, image_id: str) -> object:
    from imgcrypt.errors import ImgcryptError

    try:
        return images.get(image_id).image_id
    except ImgcryptError as exc:
        return f"{type(exc).__name__}: {exc}"


def upload_outliving_its_token(person: Person, cloud: Cloud, glance: Glance, name: str
                               ) -> tuple[subprocess.Popen[str], str, str, str]:
    """``imgcrypt upload`` into ``glance`` whose worker is paused (SIGSTOP) while
    imgcrypt_verify reads the staged image, for longer than tokens live: the plugin's next
    key-manager call carries the importing user's expired token. The upload's status polls
    meanwhile wait on a kept-alive connection that the worker resets when it resumes (see
    test_a_poll_survives_a_paused_glance_worker); imgcrypt sends them again. The upload, its
    stderr, the image id and the key id."""
    image, key_id, props = encrypted_image(person, 8 << 20)
    person.env["OS_IMAGE_ENDPOINT_OVERRIDE"] = glance.endpoint
    upload = person.start("upload", str(image), "--name", name, "--properties", str(props),
                          "--timeout", "300", "--json")
    found = record_of(cloud, name, upload, glance)
    images = images_of(cloud.keystone, glance)
    wait_until("the import", lambda: images.get(found["id"]).status == "importing",
               every=0.01)
    worker = cloud.glance_worker(glance)
    os.kill(worker, signal.SIGSTOP)
    try:
        time.sleep(PAUSE)
    finally:
        resume(worker, glance)
    _, stderr = upload.communicate(timeout=300)
    return upload, stderr, str(found["id"]), key_id


def resume(worker: int, glance: Glance) -> None:
    """SIGCONT to the paused worker; a worker gone meanwhile (seen once in a loaded run, with
    no log kept) fails the test with the end of Glance's log, which says why."""
    try:
        os.kill(worker, signal.SIGCONT)
    except ProcessLookupError:
        tail = glance.log_path.read_text(errors="replace")[-4000:]
        raise AssertionError(f"Glance's worker {worker} went away while paused; its log "
                             f"ends:\n{tail}") from None


def test_token_expires_while_the_import_verifies(person: Person, cloud: Cloud) -> None:
    """Without service tokens, the plugin's key-manager call with the expired token fails:
    the person reads one line that says to re-authenticate, with the key-manager exit code."""
    upload, stderr, image_id, key_id = upload_outliving_its_token(person, cloud, cloud.glance,
                                                                  "expired-token")
    status = settled(cloud, image_id)
    print(f"expired token: exit {upload.returncode}, stderr {stderr!r}, image {status}")
    line = one_line(stderr)
    assert upload.returncode == 5, line
    assert "re-authenticate" in line and "Failed to validate token" not in line, line
    assert unfinished_consumers(cloud, key_id) == []


def test_service_tokens_carry_an_import_past_the_user_s_token(person: Person, cloud: Cloud,
                                                              service_glance: Glance) -> None:
    """With ``[barbican] send_service_user_token`` the same import ends active and accepted:
    Barbican takes the expired user token beside Glance's valid service token."""
    upload, stderr, image_id, key_id = upload_outliving_its_token(
        person, cloud, service_glance, "service-token")
    print(f"service token: exit {upload.returncode}, stderr {stderr!r}")
    assert upload.returncode == 0, stderr
    images = images_of(cloud.keystone, service_glance)
    shown = images.get(image_id)
    from imgcrypt.service.verdict import effective_verdict

    assert shown.status == "active"
    assert effective_verdict(shown.status, shown.properties) == "accepted"
    assert [c.resource_id for c in barbican_of(cloud.keystone).list_consumers(key_id)] == [image_id]

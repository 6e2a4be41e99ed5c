"""``imgcrypt catalogue`` across hosts: taskflow's Redis jobboard, three conductor processes,
flow state in MariaDB; one conductor killed with SIGKILL while it holds a job.

Redis, MariaDB, Glance, Barbican and Keystone are all real processes. The killed conductor's
claim expires, another conductor finishes its job from the stored flow state, and every image
ends with exactly one record and, where its key opens it, exactly one consumer entry.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.catalogue_cloud import BATCH, build_catalogue, cli_env, json_lines
from tests.helpers.jobboard_servers import MariaDB, Redis
from tests.helpers.openstack_servers import Glance, Keystone

pytestmark = [pytest.mark.barbican, pytest.mark.tools, pytest.mark.glance]

CLAIM_EXPIRY = 3.0
CONDUCTORS = 3


def secret_file(path: Path, text: str) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return f"@{path}"


@contextlib.contextmanager
def conductors(env: dict[str, str], board: str, persistence: str, workdir: Path
               ) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = []
    for i in range(CONDUCTORS):
        log = (workdir / f"conductor{i}.log").open("wb")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "imgcrypt", "catalogue", "conductor", "--jobboard", board,
             "--persistence", persistence, "--name", f"conductor{i}", "--workers", "2",
             "--claim-expiry", str(CLAIM_EXPIRY)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir))
    try:
        yield processes
    finally:
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_a_conductor_killed_mid_job_loses_nothing_and_repeats_nothing(
        tmp_path: Path, keystone: Keystone, catalogue_glance: Glance, cryptsetup: str,
        openssl: str, redis_server: Redis, mariadb_server: MariaDB) -> None:
    from imgcrypt.catalogue.distributed import job_book_id, open_board
    from imgcrypt.catalogue.engine import open_backend
    from tests.cloud.test_glance_e2e import barbican_of

    cat = build_catalogue(keystone, catalogue_glance, tmp_path / "images", cryptsetup,
                          openssl, unique=12, plain=4, signed=False)
    env = cli_env(keystone, catalogue_glance, tmp_path)
    namespace = f"test-{cat.batch[:8]}"
    board_url = f"{redis_server.url}/{namespace}"
    persistence = secret_file(tmp_path / "persistence.url", mariadb_server.url)
    backend = open_backend(mariadb_server.url)
    observer = open_board(board_url, backend, name="observer")

    with conductors(env, board_url, persistence, tmp_path) as running:
        poster = subprocess.Popen(
            [sys.executable, "-m", "imgcrypt", "catalogue", "backfill-consumers", "--filter",
             f"{BATCH}={cat.batch}", "--jobboard", board_url, "--persistence", persistence,
             "--json", "--wait", "600"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        victim, held = running[0], None
        deadline = time.monotonic() + 300
        while held is None and time.monotonic() < deadline:
            for job in observer.iterjobs(ensure_fresh=True):
                # (find_owner raises on an unclaimed job: ask only about claimed ones)
                with contextlib.suppress(Exception):
                    if job.state == "CLAIMED" and observer.find_owner(job) == "conductor0":
                        held = job.details["image"]
                        break
            time.sleep(0.02)
        assert held is not None, "conductor0 never claimed a job"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        out, err = poster.communicate(timeout=600)
        assert poster.returncode == 0 or poster.returncode == 4, err
        assert all(p.poll() is None for p in running[1:])  # the others still serve

    records, summary = json_lines(out)
    assert summary["complete"] is True, err
    assert set(records) == set(cat.images.values())
    assert held in records  # the killed conductor's job was finished by another
    encrypted = [n for n in cat.images if n.startswith(("shared", "unique"))]
    for name in encrypted:
        got = set(records[cat.images[name]]["findings"])
        assert got & {"consumer-registered", "consumer-present"}, (name, got)
    barbican = barbican_of(keystone)
    for key_name, names in (("A", ["shared-a0", "shared-a1", "shared-a2"]),
                            ("B", ["shared-b0", "shared-b1"]),
                            *((f"U{i}", [f"unique{i}"]) for i in range(12))):
        consumers = barbican.list_consumers(cat.keys[key_name])
        assert sorted(c.resource_id for c in consumers) == sorted(cat.ids(*names)), key_name
    # every job consumed from the board, each image's flow run to success once
    assert [j for j in observer.iterjobs(ensure_fresh=True)
            if j.details.get("run") == summary["run"]] == []
    with contextlib.closing(backend.get_connection()) as conn:
        for image_id in cat.images.values():
            book = conn.get_logbook(job_book_id(summary["run"], image_id))
            details = list(book)
            assert len(details) == 1 and details[0].state == "SUCCESS"
    observer.close()

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
from typing import Any

import pexpect
import pytest

from tests.helpers.catalogue_cloud import BATCH, Catalogue, build_catalogue, cli_env, json_lines
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
def conductors(env: dict[str, str], board: str, persistence: str, workdir: Path,
               count: int = CONDUCTORS, *extra: str, prefix: str = "conductor"
               ) -> Iterator[list[subprocess.Popen[bytes]]]:
    processes = []
    for i in range(count):
        log = (workdir / f"{prefix}{i}.log").open("wb")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "imgcrypt", "catalogue", "conductor", "--jobboard", board,
             "--persistence", persistence, "--name", f"{prefix}{i}", "--workers", "2",
             "--claim-expiry", str(CLAIM_EXPIRY), *extra],
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
    from imgcrypt.catalogue.distributed import open_board
    from imgcrypt.catalogue.engine import open_backend

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
    assert_each_once(cat, keystone, observer, backend, summary["run"], unique=12)
    observer.close()


def assert_each_once(cat: Catalogue, keystone: Keystone, observer: Any, backend: Any,
                     run_id: str, *, unique: int) -> None:
    """Each encrypted image a consumer of its key exactly once, no job of the run left on the
    board, each image's flow run to success once."""
    from imgcrypt.catalogue.distributed import job_book_id
    from tests.helpers.openstack_client import barbican_of

    barbican = barbican_of(keystone)
    for key_name, names in (("A", ["shared-a0", "shared-a1", "shared-a2"]),
                            ("B", ["shared-b0", "shared-b1"]),
                            *((f"U{i}", [f"unique{i}"]) for i in range(unique))):
        consumers = barbican.list_consumers(cat.keys[key_name])
        assert sorted(c.resource_id for c in consumers) == sorted(cat.ids(*names)), key_name
    assert [j for j in observer.iterjobs(ensure_fresh=True)
            if j.details.get("run") == run_id] == []
    with contextlib.closing(backend.get_connection()) as conn:
        for image_id in cat.images.values():
            book = conn.get_logbook(job_book_id(run_id, image_id))
            details = list(book)
            assert len(details) == 1 and details[0].state == "SUCCESS"


def stored(backend: Any, run_id: str, image_ids: set[str]) -> set[str]:
    """The images whose record of run ``run_id`` is in the database."""
    from taskflow import exceptions as tf_exc

    from imgcrypt.catalogue.distributed import job_book_id
    from imgcrypt.catalogue.engine import stored_records

    found: set[str] = set()
    with contextlib.closing(backend.get_connection()) as conn:
        for image_id in image_ids:
            with contextlib.suppress(tf_exc.NotFound):
                for detail in conn.get_logbook(job_book_id(run_id, image_id)):
                    found.update(stored_records(detail))
    return found


def test_ctrl_c_stops_claiming_and_resume_finishes_the_rest_once(
        tmp_path: Path, keystone: Keystone, catalogue_glance: Glance, cryptsetup: str,
        openssl: str, redis_server: Redis, mariadb_server: MariaDB) -> None:
    """Ctrl-C on the conductors stops them claiming (the jobs left stay posted, unclaimed),
    Ctrl-C on the poster exits 130 naming the run; ``--resume RUN`` on a terminal shows the
    bar from the images already done, fresh conductors finish the rest, nothing twice."""
    from imgcrypt.catalogue.distributed import on_board, open_board
    from imgcrypt.catalogue.engine import find_run, open_backend

    cat = build_catalogue(keystone, catalogue_glance, tmp_path / "images", cryptsetup,
                          openssl, unique=8, plain=2, signed=False)
    mine = set(cat.images.values())
    env = cli_env(keystone, catalogue_glance, tmp_path)
    board_url = f"{redis_server.url}/test-{cat.batch[:8]}"
    persistence = secret_file(tmp_path / "persistence.url", mariadb_server.url)
    backend = open_backend(mariadb_server.url)
    observer = open_board(board_url, backend, name="observer")
    job = ["backfill-consumers", "--filter", f"{BATCH}={cat.batch}", "--jobboard", board_url,
           "--persistence", persistence]

    with conductors(env, board_url, persistence, tmp_path, 2, "--workers", "1",
                    "--max-requests", "1", prefix="first") as running:
        poster = subprocess.Popen([sys.executable, "-m", "imgcrypt", "catalogue", *job, "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env, cwd=tmp_path)
        run_id, done = None, set()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            found = find_run(backend, "backfill-consumers")
            if found and found[0].filters.get(BATCH) == cat.batch:
                run_id = found[0].run_id
                done = stored(backend, run_id, mine)
                # every job posted (a job leaves the board only after its record is stored)
                if len(done) >= 2 and done | on_board(observer, run_id) == mine:
                    break
            time.sleep(0.05)
        assert run_id is not None and len(done) >= 2, "the conductors never got going"
        for p in running:
            p.send_signal(signal.SIGINT)
        for p in running:
            assert p.wait(timeout=120) == 0  # a clean stop: the running jobs finished
        done = stored(backend, run_id, mine)
        left = [j for j in observer.iterjobs(ensure_fresh=True)
                if j.details.get("run") == run_id]
        assert done < mine and {j.details["image"] for j in left} == mine - done
        assert all(j.state == "UNCLAIMED" for j in left)
        time.sleep(2 * CLAIM_EXPIRY)
        assert stored(backend, run_id, mine) == done  # nobody claims any more

        poster.send_signal(signal.SIGINT)
        out, err = poster.communicate(timeout=120)
    assert poster.returncode == 130, err
    assert err == (f"imgcrypt: interrupted: {len(done)} of {len(mine)} image(s) done; "
                   f"continue with: imgcrypt catalogue backfill-consumers --resume {run_id}\n")
    first, summary = json_lines(out)
    assert summary["complete"] is False and summary["run"] == run_id and set(first) == done

    report = tmp_path / "resumed.jsonl"
    with conductors(env, board_url, persistence, tmp_path, prefix="second"):
        child = pexpect.spawn(sys.executable, ["-m", "imgcrypt", "catalogue", *job, "--resume",
                                               run_id, "--report", str(report)],
                              cwd=str(tmp_path), env=env, timeout=300, dimensions=(24, 120),
                              encoding="utf-8", codec_errors="replace")
        child.expect(r"backfill-consumers: +\d+%\|[^|]*\| *(\d+)/(\d+) \[")
        assert int(child.match.group(1)) >= len(done)  # from the images already done
        assert int(child.match.group(2)) == len(mine)
        rest = child.read()
        child.close()
    assert child.exitstatus == 4, rest  # wrong-key, missing-key, liars need attention
    records, _ = json_lines(report.read_text())
    assert set(records) == mine
    assert all(records[i] == first[i] for i in first)  # done before: not done again
    assert_each_once(cat, keystone, observer, backend, run_id, unique=8)
    observer.close()

"""Redis and MariaDB from Debian as child processes on free loopback ports, for the jobboard
and the conductors' flow state (``scripts/install-tools.sh`` installs them).

MariaDB's data directory is made with ``mariadb-install-db``; the server listens on a socket
(for the one setup step as root) and on TCP, where the tests connect as a user of their own.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.barbican_server import base_env, free_port, spawn
from tests.helpers.openstack_servers import stop

STARTUP_TIMEOUT = 120.0


@dataclass(frozen=True)
class Redis:
    url: str  # redis://127.0.0.1:PORT
    port: int


@dataclass(frozen=True)
class MariaDB:
    url: str  # SQLAlchemy URL of the test database


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    """Until the server accepts connections on ``port`` (``wait_ready`` asks HTTP servers;
    these two speak their own protocols); the log's tail when it exits first."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: "
                               f"{log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server not listening on {port} after {STARTUP_TIMEOUT} s")


def require_tool(name: str) -> str:
    from tests.conftest import require_tool as required  # conftest imports this module

    return required(name)


def start_redis(workdir: Path) -> tuple[Redis, subprocess.Popen[bytes]]:
    server = require_tool("redis-server")
    port = free_port()
    log = workdir / "redis.log"
    process = spawn([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir)],
                    log, workdir, base_env(workdir))
    try:
        _wait_port(port, process, log)
    except BaseException:
        stop(process)
        raise
    return Redis(f"redis://127.0.0.1:{port}", port), process


def start_mariadb(workdir: Path) -> tuple[MariaDB, subprocess.Popen[bytes]]:
    install = require_tool("mariadb-install-db")
    server = require_tool("mariadbd")
    client = require_tool("mariadb")
    datadir, sock = workdir / "data", workdir / "mysqld.sock"
    log = workdir / "mariadb.log"
    with log.open("ab") as out:
        subprocess.run([install, "--user=root", f"--datadir={datadir}", "--skip-test-db",
                        "--auth-root-authentication-method=socket"], check=True, stdout=out,
                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=300)
    port = free_port()
    process = spawn([server, "--no-defaults", "--user=root", f"--datadir={datadir}",
                     f"--socket={sock}", f"--port={port}", "--bind-address=127.0.0.1",
                     "--skip-log-bin", "--innodb-buffer-pool-size=64M",
                     f"--pid-file={workdir / 'mysqld.pid'}",
                     f"--log-error={workdir / 'mariadbd.err'}"],
                    log, workdir, base_env(workdir))
    try:
        _wait_port(port, process, log)
        password = base64.b32encode(os.urandom(10)).decode("ascii").lower()
        setup = (f"CREATE DATABASE imgcrypt; CREATE USER 'imgcrypt'@'127.0.0.1' IDENTIFIED BY "
                 f"'{password}'; GRANT ALL ON imgcrypt.* TO 'imgcrypt'@'127.0.0.1';")
        subprocess.run([client, "--no-defaults", f"--socket={sock}", "-u", "root"],
                       input=setup.encode(), check=True, capture_output=True, timeout=60)
    except BaseException:
        stop(process)
        raise
    return MariaDB(f"mysql+pymysql://imgcrypt:{password}@127.0.0.1:{port}/imgcrypt"), process


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server, process = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        stop(process)


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    server, process = start_mariadb(tmp_path_factory.mktemp("mariadb"))
    try:
        yield server
    finally:
        stop(process)

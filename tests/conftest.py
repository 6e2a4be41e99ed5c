"""Shared test fixtures: real external tools, and the CI rule that a missing tool fails."""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

# Speed is measured in benchmarks, not in timed tests: a property test's verdict must not
# depend on how busy the machine is (a per-example deadline made one flaky under load).
settings.register_profile("imgcrypt", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("imgcrypt")

IN_CI = os.environ.get("CI", "").lower() == "true"


def require_tool(name: str) -> str:
    """Path of an external tool; under CI=true a missing tool fails the test instead of skipping."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if path is None:
        message = f"{name} is not installed (make test installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def qemu_img() -> str:
    return require_tool("qemu-img")


@pytest.fixture(scope="session")
def cryptsetup() -> str:
    return require_tool("cryptsetup")


@pytest.fixture(scope="session")
def grub_fstest() -> str:
    return require_tool("grub-fstest")


@pytest.fixture(scope="session")
def openssl() -> str:
    return require_tool("openssl")

from tests.helpers.barbican_server import barbican  # noqa: F401, E402
from tests.helpers.catalogue_cloud import catalogue_glance  # noqa: F401, E402
from tests.helpers.jobboard_servers import mariadb_server, redis_server  # noqa: F401, E402
from tests.helpers.openstack_servers import keystone, keystone_barbican  # noqa: F401, E402

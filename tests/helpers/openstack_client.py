"""The cloud as a person and a test see it: ``imgcrypt`` run with the demo project's OS_*
credentials, and openstacksdk connections for looking at what it did (the real Keystone,
Barbican and Glance of :mod:`tests.helpers.openstack_servers`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.openstack_servers import Glance, Keystone


@dataclass
class Person:
    """Someone at a terminal with OS_* credentials for the demo project."""

    env: dict[str, str]
    workdir: Path

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "imgcrypt", *args]

    def run(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(*args), capture_output=True, text=True,
                                cwd=self.workdir, env={**self.env, **env}, timeout=600,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"imgcrypt {args[0]} exited {result.returncode}: "
                                 f"{result.stderr}")
        return result

    def json(self, *args: str, **env: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run(*args, "--json", **env).stdout)
        return data

    def start(self, *args: str) -> subprocess.Popen[str]:
        """The command started, its output piped: for faults injected while it runs."""
        return subprocess.Popen(self.command(*args), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=self.workdir,
                                env=self.env)


def demo_person(tmp_path: Path, keystone: Keystone) -> Person:
    """The demo user in ``tmp_path``, with none of the machine's OS_* or clouds.yaml."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(keystone.credentials("demo"))
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["HOME"] = str(tmp_path)
    return Person(env, tmp_path)


def connection(keystone: Keystone, glance: Glance | None = None) -> Any:
    """The demo user's openstacksdk connection; to ``glance`` rather than the catalog's."""
    import openstack

    creds = keystone.credentials("demo")
    override = {"image_endpoint_override": glance.endpoint} if glance is not None else {}
    return openstack.connect(
        auth_url=creds["OS_AUTH_URL"], username="demo", password=creds["OS_PASSWORD"],
        project_name="demo", user_domain_id="default", project_domain_id="default",
        region_name="RegionOne", load_yaml_config=False, load_envvars=False, **override)


def images_of(keystone: Keystone, glance: Glance | None = None) -> Any:
    from imgcrypt.imageservice import ImageService

    return ImageService(connection(keystone, glance))


def barbican_of(keystone: Keystone) -> Any:
    from imgcrypt.keys.barbican import BarbicanKeyManager

    return BarbicanKeyManager.from_session(connection(keystone).session,
                                           region_name="RegionOne")

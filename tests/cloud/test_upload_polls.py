"""``imgcrypt upload`` when Glance drops the connection of a status poll during an import.

The real faults are in tests/test_cloud_faults.py (a paused Glance worker resets a kept-alive
connection; a killed one drops the poll it was answering), where which of the two a run meets
depends on timing. Here a hostile Glance produces each at the first poll, every time: a reset
poll is sent again and the upload ends as the import did; a dropped one ends the upload at
once with one line saying the import is probably lost and what to do, exit 1.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.hostile_glance import HostileGlance


@pytest.fixture
def glance() -> Iterator[HostileGlance]:
    server = HostileGlance()
    server.import_methods = ["glance-direct"]
    yield server
    server.close()


def upload(glance: HostileGlance, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(1 << 20))
    return subprocess.run([sys.executable, "-m", "imgcrypt", "upload", str(image), "--name",
                           "polled", "--timeout", "30"], capture_output=True, text=True,
                          env=glance.env(str(tmp_path)), timeout=120, check=False)


def test_a_reset_poll_is_sent_again(glance: HostileGlance, tmp_path: Path) -> None:
    glance.poll_fault = "reset"
    result = upload(glance, tmp_path)
    assert result.returncode == 0, result.stderr
    assert glance.polls == 1  # the reset one; the one sent again found the image active
    assert glance.images["created-0"].record["status"] == "active"
    assert result.stderr == "", result.stderr


def test_a_dropped_poll_during_an_import_is_one_line_with_what_to_do(
        glance: HostileGlance, tmp_path: Path) -> None:
    glance.poll_fault = "drop"
    result = upload(glance, tmp_path)
    lines = result.stderr.splitlines()
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert glance.polls == 2  # the dropped one, and one look more
    line = lines[0]
    assert line.startswith("imgcrypt: error: image created-0: the image service (Glance) "
                           "closed the connection without answering while the image was "
                           "importing"), line
    assert "'importing'" in line and "An import that died half-way" in line, line
    assert "cannot reach the cloud" not in line, line

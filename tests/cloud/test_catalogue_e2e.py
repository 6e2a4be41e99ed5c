"""``imgcrypt catalogue`` against a real Glance, Barbican and Keystone, on taskflow's local
parallel engine with SQLite persistence.

One catalogue (tests/helpers/catalogue_cloud.py) goes through what an operator would do, in order:
audit, migrate the properties, back-fill the consumers, audit again, delete one of two images
sharing a key, verify the signed images; an audit interrupted with SIGINT resumes.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.helpers.catalogue_cloud import (
    BATCH,
    Catalogue,
    build_catalogue,
    cli_env,
    connection,
    imgcrypt,
    json_lines,
)
from tests.helpers.openstack_servers import Glance, Keystone

pytestmark = [pytest.mark.barbican, pytest.mark.tools, pytest.mark.glance]

ENCRYPTED_OK = ("shared-a0", "shared-a1", "shared-a2", "shared-b0", "shared-b1",
                "unique0", "unique1", "unique2", "unique3", "unique4", "unique5")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator")


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory, keystone: Keystone,
              catalogue_glance: Glance, cryptsetup: str, openssl: str) -> Catalogue:
    return build_catalogue(keystone, catalogue_glance, tmp_path_factory.mktemp("images"),
                           cryptsetup, openssl)


@pytest.fixture(scope="module")
def env(keystone: Keystone, catalogue_glance: Glance, home: Path) -> dict[str, str]:
    return cli_env(keystone, catalogue_glance, home)


def run_job(env: dict[str, str], cat: Catalogue, job: str, *args: str
            ) -> tuple[int, dict[str, dict[str, Any]], dict[str, Any]]:
    result = imgcrypt(env, "catalogue", job, "--filter", f"{BATCH}={cat.batch}", "--json",
                      "--workers", "4", *args)
    assert result.returncode in (0, 4), result.stderr
    assert result.stderr == "", result.stderr
    records, summary = json_lines(result.stdout)
    assert set(records) == set(cat.images.values())
    return result.returncode, records, summary


def findings(cat: Catalogue, records: dict[str, dict[str, Any]], name: str) -> set[str]:
    return set(records[cat.images[name]]["findings"])


def test_audit_tells_each_kind_of_image_apart(env: dict[str, str], catalogue: Catalogue
                                             ) -> None:
    code, records, summary = run_job(env, catalogue, "audit")
    assert code == 4 and summary["summary"]["attention"] is True
    for name in ENCRYPTED_OK:
        got = findings(catalogue, records, name)
        # nobody registered consumers before imgcrypt: every good image is exposed
        assert "no-consumer" in got and "encrypted" not in got, (name, got)
        assert records[catalogue.images[name]]["key"] == "opens"
        assert records[catalogue.images[name]]["luks_version"] == 1
    assert "shared-key" in findings(catalogue, records, "shared-a0")
    assert set(records[catalogue.images["shared-b0"]]["shared_with"]) == catalogue.ids(
        "shared-b1")
    assert "shared-key" not in findings(catalogue, records, "unique3")
    assert "cinder-properties-only" in findings(catalogue, records, "unique0")
    assert "os-encrypt-properties-only" in findings(catalogue, records, "unique2")
    for i in range(6):
        assert findings(catalogue, records, f"plain{i}") == {"plaintext"}
    for i in range(2):
        assert "claims-encryption-not-luks" in findings(catalogue, records, f"liar{i}")
    assert findings(catalogue, records, "undeclared") == {"luks-without-claim"}
    assert {"key-does-not-open", "shared-key"} <= findings(catalogue, records, "wrong-key")
    assert "key-missing" in findings(catalogue, records, "missing-key")
    assert "malformed-claim" in findings(catalogue, records, "disagree")
    assert findings(catalogue, records, "signed") == {"signed", "plaintext"}
    # The header only, by ranges: 4096 bytes for a plaintext image; the header and keyslot
    # material of a LUKS1 image (well under its 3 MiB); never the payload.
    assert records[catalogue.images["plain0"]]["bytes_read"] == 4096
    luks_read = {records[catalogue.images[n]]["bytes_read"] for n in ENCRYPTED_OK}
    assert len(luks_read) == 1 and luks_read.pop() < (1 << 20)
    assert summary["summary"]["findings"]["plaintext"] == 8


def test_migrate_properties_adds_the_missing_family_and_reports_disagreement(
        env: dict[str, str], catalogue: Catalogue, keystone: Keystone,
        catalogue_glance: Glance) -> None:
    from imgcrypt.catalogue.cloud import CatalogueImages

    images = CatalogueImages(connection(keystone, catalogue_glance))
    before = images.get(catalogue.images["unique0"]).properties
    _, dry, _ = run_job(env, catalogue, "migrate-properties", "--dry-run")
    assert findings(catalogue, dry, "unique0") == {"would-add-properties"}
    assert images.get(catalogue.images["unique0"]).properties == before

    code, records, _ = run_job(env, catalogue, "migrate-properties")
    assert code == 4  # the disagreeing image needs an operator
    assert findings(catalogue, records, "unique0") == {"properties-added"}
    after = images.get(catalogue.images["unique0"]).properties
    assert after["os_encrypt_key_id"] == catalogue.keys["U0"]
    assert after["os_encrypt_key_deletion_policy"] == "on_image_deletion"
    assert after["os_encrypt_format"] == "LUKSv1"  # read from the header
    assert findings(catalogue, records, "unique3") == {"properties-complete"}
    assert findings(catalogue, records, "disagree") == {"properties-disagree"}
    disagree = images.get(catalogue.images["disagree"]).properties
    assert disagree["os_encrypt_key_id"] == catalogue.keys["A"]  # left as it was
    assert findings(catalogue, records, "plain0") == {"not-encrypted"}

    _, again, _ = run_job(env, catalogue, "migrate-properties")
    assert findings(catalogue, again, "unique0") == {"properties-complete"}

    _, reverse, _ = run_job(env, catalogue, "migrate-properties", "--direction", "to-cinder")
    assert findings(catalogue, reverse, "unique2") == {"properties-added"}
    assert images.get(catalogue.images["unique2"]).properties[
        "cinder_encryption_key_id"] == catalogue.keys["U2"]


def test_backfill_registers_only_where_the_key_opens_the_header(
        env: dict[str, str], catalogue: Catalogue, keystone: Keystone) -> None:
    from imgcrypt.keys.consumers import image_consumer
    from tests.helpers.openstack_client import barbican_of

    barbican = barbican_of(keystone)
    _, dry, _ = run_job(env, catalogue, "backfill-consumers", "--dry-run")
    assert "would-register" in findings(catalogue, dry, "shared-a0")
    assert barbican.list_consumers(catalogue.keys["A"]) == []

    _, records, _ = run_job(env, catalogue, "backfill-consumers")
    for name in ENCRYPTED_OK:
        assert "consumer-registered" in findings(catalogue, records, name), name
    assert "key-does-not-open" in findings(catalogue, records, "wrong-key")
    assert "key-missing" in findings(catalogue, records, "missing-key")
    assert "claims-encryption-not-luks" in findings(catalogue, records, "liar0")
    assert {c.resource_id for c in barbican.list_consumers(catalogue.keys["A"])} == \
        catalogue.ids("shared-a0", "shared-a1", "shared-a2")  # not wrong-key
    assert image_consumer(catalogue.images["liar0"]) not in barbican.list_consumers(
        catalogue.keys["L0"])

    _, again, _ = run_job(env, catalogue, "backfill-consumers")
    for name in ENCRYPTED_OK:
        assert "consumer-present" in findings(catalogue, again, name), name
    consumers = barbican.list_consumers(catalogue.keys["A"])
    assert len(consumers) == len(set(consumers)) == 3


def test_after_backfill_no_encrypted_image_lacks_a_consumer_and_a_shared_key_survives(
        env: dict[str, str], catalogue: Catalogue, keystone: Keystone,
        catalogue_glance: Glance) -> None:
    from imgcrypt.catalogue.cloud import CatalogueImages
    from imgcrypt.errors import SecretNotFoundError
    from tests.helpers.openstack_client import barbican_of

    _, records, summary = run_job(env, catalogue, "audit")
    assert "no-consumer" not in summary["summary"]["findings"]
    for name in ENCRYPTED_OK:
        assert "encrypted" in findings(catalogue, records, name), name

    images = CatalogueImages(connection(keystone, catalogue_glance))
    barbican = barbican_of(keystone)
    images.delete(catalogue.images["shared-b0"])
    assert barbican.describe(catalogue.keys["B"]).secret_id == catalogue.keys["B"]
    assert {c.resource_id for c in barbican.list_consumers(catalogue.keys["B"])} == \
        catalogue.ids("shared-b1")
    images.delete(catalogue.images["shared-b1"])
    with pytest.raises(SecretNotFoundError):
        barbican.describe(catalogue.keys["B"])
    del catalogue.images["shared-b0"], catalogue.images["shared-b1"]


def test_verify_finds_the_tampered_image(env: dict[str, str], catalogue: Catalogue,
                                         home: Path, tmp_path: Path, openssl: str) -> None:
    code, records, _ = run_job(env, catalogue, "verify")
    assert code == 4
    assert findings(catalogue, records, "signed") == {"verified"}
    assert findings(catalogue, records, "tampered") == {"tampered"}
    assert findings(catalogue, records, "plain0") == {"unsigned"}

    other_key, other_ca = tmp_path / "ca.key", tmp_path / "ca.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(other_key),
                    "-out", str(other_ca), "-days", "30", "-subj", "/CN=another CA"],
                   check=True, capture_output=True)
    _, trusted, _ = run_job(env, catalogue, "verify", "--trust", str(other_ca))
    assert findings(catalogue, trusted, "signed") == {"untrusted"}


def test_an_interrupted_audit_resumes_where_it_stopped(env: dict[str, str],
                                                       catalogue: Catalogue, home: Path) -> None:
    state = home / "resume.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-m", "imgcrypt", "catalogue", "audit", "--filter",
         f"{BATCH}={catalogue.batch}", "--json", "--workers", "1", "--max-requests", "1",
         "--state", str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, cwd=home)
    deadline = time.monotonic() + 120
    while _done(state) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "--resume" in err and err.count("\n") == 1
    first, summary = json_lines(out)
    assert summary["complete"] is False
    assert 1 <= len(first) < len(catalogue.images)

    result = imgcrypt(env, "catalogue", "audit", "--json", "--state", str(state), "--resume")
    assert result.returncode == 4, result.stderr
    records, summary = json_lines(result.stdout)
    assert summary["complete"] is True
    assert set(records) == set(catalogue.images.values())
    # the images audited before the interruption were not audited again
    assert all(records[i] == first[i] for i in first)
    assert _done(state) == len(catalogue.images)


def _done(state: Path) -> int:
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(state, timeout=5) as db:
            row = db.execute("SELECT count(*) FROM atomdetails WHERE state = 'SUCCESS'"
                             ).fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0])


BAR = re.compile(r"audit: +\d+%\|[^|]*\| *(\d+)/(\d+) \[\d\d:\d\d<(\d\d:\d\d|\?), +"
                 r"([\d.]+img/s|[\d.]+s/img|\?img/s)\]")
CONTROL = re.compile(r"\x1b|\r(?!\n)")  # an escape, or a carriage return not ending a line


def spawn_audit(env: dict[str, str], cat: Catalogue, home: Path, *args: str) -> Any:
    """``imgcrypt catalogue audit`` on a fresh pseudo-terminal, as a shell would run it."""
    return pexpect.spawn(sys.executable, ["-m", "imgcrypt", "catalogue", "audit", "--filter",
                                          f"{BATCH}={cat.batch}", *args],
                         cwd=str(home), env={**env, "COLUMNS": "120"}, timeout=300,
                         dimensions=(24, 120), encoding="utf-8", codec_errors="replace")


def test_a_terminal_sees_images_done_rate_and_remaining_and_ctrl_c_resumes(
        env: dict[str, str], catalogue: Catalogue, home: Path) -> None:
    total = len(catalogue.images)
    state = str(home / "terminal.sqlite")
    slow = ("--workers", "1", "--max-requests", "1", "--state", state)
    child = spawn_audit(env, catalogue, home, *slow)
    child.expect(BAR)
    while int(child.match.group(1)) < 2:  # two images stored: now the rate is a rate
        child.expect(BAR)
    child.expect(BAR)
    done, shown_total, remaining, rate = child.match.groups()
    assert int(shown_total) == total and 2 <= int(done) < total
    assert re.fullmatch(r"\d\d:\d\d", remaining) and "?" not in rate
    child.sendintr()  # Ctrl-C typed at the terminal: the whole foreground group gets SIGINT
    rest = child.read()
    child.close()
    assert child.exitstatus == 130, rest
    stopped = re.search(r"interrupted: (\d+) of (\d+) image\(s\) done; continue with: "
                        r"imgcrypt catalogue audit --resume ([0-9a-f-]{36})", rest)
    assert stopped and int(stopped.group(2)) == total, rest
    assert "Traceback" not in rest
    stored = _done(Path(state))
    assert int(stopped.group(1)) == stored and int(done) <= stored < total

    child = spawn_audit(env, catalogue, home, *slow, "--resume", stopped.group(3))
    child.expect(BAR)
    # the bar starts from the images already done, not from zero
    assert int(child.match.group(1)) >= stored and int(child.match.group(2)) == total
    rest = child.read()
    child.close()
    assert child.exitstatus == 4, rest  # the catalogue has images needing attention
    assert f"audit: {total} image(s)" in rest and "needs attention" in rest
    assert _done(Path(state)) == total


def test_no_bar_and_no_control_characters_off_a_terminal_or_with_json(
        env: dict[str, str], catalogue: Catalogue, home: Path) -> None:
    piped = imgcrypt(env, "catalogue", "audit", "--filter", f"{BATCH}={catalogue.batch}",
                     "--state", str(home / "piped.sqlite"))
    assert piped.returncode == 4, piped.stderr
    assert piped.stderr == ""
    assert not CONTROL.search(piped.stdout) and "img/s" not in piped.stdout

    child = spawn_audit(env, catalogue, home, "--json", "--state", str(home / "json.sqlite"))
    shown = child.read()
    child.close()
    assert child.exitstatus == 4, shown
    assert not CONTROL.search(shown) and "img/s" not in shown
    records, summary = json_lines(shown.replace("\r\n", "\n"))
    assert set(records) == set(catalogue.images.values()) and summary["complete"] is True

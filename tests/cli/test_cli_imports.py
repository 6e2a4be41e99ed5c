"""Each command imports what it uses and nothing else (issue 25's start-up cost, seen from
outside): a local decrypt must not pay for the cloud SDKs, taskflow or the signing stack.

The commands run as a person runs them, in a fresh interpreter; a small wrapper prints the
modules that interpreter ended up with. What is asserted is which modules, never a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.util import secret_file

# The wrapper: run ``imgcrypt ARGS...`` in this process, then list sys.modules into the file
# named first. The command's own exit code is kept.
WRAPPER = """
import json, sys
from imgcrypt.cli.main import main
out, argv = sys.argv[1], sys.argv[2:]
try:
    code = main(argv)
except SystemExit as exc:  # --help
    code = exc.code
with open(out, "w") as f:
    json.dump(sorted(sys.modules), f)
sys.exit(code)
"""

CLOUD = ("openstack", "castellan", "barbicanclient", "keystoneauth1", "taskflow", "oslo_config",
         "oslo_context", "requests")
SIGNING = ("imgcrypt.signing", "cryptography.x509", "cursive")
CLOUD_COMMANDS = ("keys", "upload", "download", "catalogue")
ALL_COMMANDS = ("encrypt", "decrypt", "inspect", "rekey", "repair", "keys", "sign", "verify",
                "properties", "upload", "download", "catalogue")


def modules_of(tmp_path: Path, *args: str | os.PathLike[str]) -> set[str]:
    listing = tmp_path / "modules.json"
    listing.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(listing), *map(str, args)],
                          capture_output=True, cwd=tmp_path, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return set(json.loads(listing.read_text()))


def imported(modules: set[str], families: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules
                  if any(m == f or m.startswith(f + ".") or m.startswith(f + "_")
                         for f in families))


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_help_imports_no_cloud_sdk_and_no_taskflow(tmp_path: Path, command: str) -> None:
    modules = modules_of(tmp_path, command, "--help")
    assert imported(modules, (*CLOUD, "numpy")) == []
    if command not in ("sign", "verify", "properties", "upload", "catalogue"):
        assert imported(modules, SIGNING) == []


def test_local_encrypt_decrypt_rekey_import_neither_cloud_nor_signing(tmp_path: Path) -> None:
    (tmp_path / "disk.raw").write_bytes(os.urandom(1 << 20))
    pw = secret_file(tmp_path, "pw", b"local passphrase")
    new = secret_file(tmp_path, "new", b"another passphrase")
    store = ["--keystore", str(tmp_path / "keys")]
    fast = ("--pbkdf", "pbkdf2", "--iterations", "1000")
    runs = {
        "encrypt": ["encrypt", "disk.raw", "p.luks", "--passphrase-file", pw, *fast],
        "encrypt --new-key": ["encrypt", "disk.raw", "k.luks", "--new-key", *store, *fast,
                              "--json"],
        "decrypt": ["decrypt", "p.luks", "p.raw", "--passphrase-file", pw],
        "inspect": ["inspect", "p.luks"],
        "rekey": ["rekey", "p.luks", "--passphrase-file", pw, "--add",
                  "--new-passphrase-file", new, *fast],
    }
    for what, argv in runs.items():
        modules = modules_of(tmp_path, *argv)
        assert imported(modules, CLOUD) == [], what
        assert imported(modules, SIGNING) == [], what
    key_id = json.loads(subprocess.run(
        [sys.executable, "-m", "imgcrypt", "keys", "list", "--json", *store],
        capture_output=True, check=True, cwd=tmp_path).stdout)["secrets"][0]["key_id"]
    # A key from the local keystore: still no cloud client, no taskflow, no signing.
    modules = modules_of(tmp_path, "decrypt", "k.luks", "k.raw", "--key-id", key_id, *store)
    assert imported(modules, CLOUD) == []
    assert imported(modules, SIGNING) == []
    assert (tmp_path / "k.raw").read_bytes() == (tmp_path / "disk.raw").read_bytes()

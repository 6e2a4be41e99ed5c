"""The README is executable: its shell and Python blocks run, in order, as a newcomer runs them.

The convention (stated in the README's Development section):

* a fenced block whose info string starts with ``sh`` or ``python`` runs; all of them, in
  document order, in one bash session (so shell variables carry over) in a scratch directory,
  with HOME and the XDG directories inside it, so the local keystore is a fresh one;
* further words ``requires=NAME[,NAME...]`` say what the block needs that a scratch directory
  does not have. This test provides none of those names except ``barbican`` (the real
  Barbican fixture); blocks requiring anything else (``fresh-clone``, ``glance``, ...) are
  illustrative here and skipped. ``local-only`` marks blocks that use the local keystore
  explicitly and so are skipped in the Barbican run;
* every other block (``console``, ``text``, ``ini``, ``toml``, ``json``) is illustrative.

The whole README runs twice: with the local keystore, and with ``imgcrypt.toml`` pointing the
key-manager options at the real Barbican, as a user of a cloud would configure it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.barbican_server import BarbicanServer

README = Path(__file__).resolve().parents[2] / "README.md"
RUNNABLE = ("sh", "python")
ILLUSTRATIVE = ("console", "text", "ini", "toml", "json")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    line: int
    language: str
    requires: frozenset[str]
    local_only: bool
    code: str


def blocks(text: str) -> list[Block]:
    found = []
    for match in FENCE.finditer(text):
        words = match.group(1).split()
        language = words[0] if words else ""
        requires: set[str] = set()
        local_only = False
        for word in words[1:]:
            if word.startswith("requires="):
                requires.update(filter(None, word.removeprefix("requires=").split(",")))
            elif word == "local-only":
                local_only = True
            else:
                raise AssertionError(f"README line {text[:match.start()].count(chr(10)) + 1}: "
                                     f"unknown block tag {word!r}")
        line = text[: match.start()].count("\n") + 1
        found.append(Block(line, language, frozenset(requires), local_only, match.group(2)))
    return found


def test_every_block_follows_the_convention() -> None:
    for block in blocks(README.read_text()):
        assert block.language in RUNNABLE + ILLUSTRATIVE, (
            f"README line {block.line}: a fenced block needs a language: sh or python (runs), "
            f"or one of {', '.join(ILLUSTRATIVE)} (illustrative)")


def session(provided: set[str], *, barbican: bool) -> tuple[str, list[int]]:
    """One bash script running every block this run can, and the lines of those it skipped."""
    parts = ["set -euo pipefail"]
    skipped = []
    for block in blocks(README.read_text()):
        if block.language not in RUNNABLE:
            continue
        if not block.requires <= provided or (barbican and block.local_only):
            skipped.append(block.line)
            continue
        parts.append(f"echo '== README.md line {block.line}' >&2")
        if block.language == "sh":
            parts.append(block.code)
        else:
            assert "README_PYTHON_EOF" not in block.code
            parts.append(f"python3 - <<'README_PYTHON_EOF'\n{block.code}README_PYTHON_EOF")
    return "\n".join(parts) + "\n", skipped


def run_readme(tmp_path: Path, provided: set[str], *, config: str | None = None) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir(parents=True)
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home), "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"),
        "LANG": "C.UTF-8", "TMPDIR": str(tmp_path),
    }
    if config is not None:
        (home / ".config/imgcrypt").mkdir(parents=True)
        (home / ".config/imgcrypt/imgcrypt.toml").write_text(config)
    script, _skipped = session(provided, barbican=config is not None)
    (tmp_path / "readme.sh").write_text(script)
    proc = subprocess.run(["bash", str(tmp_path / "readme.sh")], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
                          start_new_session=True)
    assert proc.returncode == 0, (
        f"README failed (exit {proc.returncode}); last block and output:\n"
        f"{proc.stderr[-6000:]}\n--- stdout ---\n{proc.stdout[-3000:]}")


@pytest.mark.tools
def test_readme_runs_as_written_with_the_local_keystore(
        tmp_path: Path, qemu_img: str, openssl: str) -> None:
    run_readme(tmp_path, set())


@pytest.mark.tools
@pytest.mark.barbican
def test_readme_runs_as_written_against_barbican(
        tmp_path: Path, qemu_img: str, openssl: str, barbican: BarbicanServer) -> None:
    project = str(uuid.uuid4())  # a project of its own: other tests share the server
    config = (f'[keys]\nkey_manager = "barbican"\nbarbican_endpoint = "{barbican.endpoint}"\n'
              f'project_id = "{project}"\n')
    run_readme(tmp_path, {"barbican"}, config=config)
    # The keys really went to Barbican: the local keystore was never created.
    assert not (tmp_path / "home/.local/share/imgcrypt").exists()
    listed = subprocess.run(
        [sys.executable, "-m", "imgcrypt", "keys", "list", "--json", "--key-manager",
         "barbican", "--barbican-endpoint", barbican.endpoint, "--project-id", project],
        capture_output=True, text=True, check=True, timeout=120)
    types = sorted(s["secret_type"] for s in json.loads(listed.stdout)["secrets"])
    assert types == ["certificate", "symmetric"]  # the first key was deleted after the rekey

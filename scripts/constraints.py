#!/usr/bin/env python3
"""The constraints files: what a fresh clone installs, and what moved since they were written.

``upper-constraints.txt`` pins every package (transitive ones included) of imgcrypt's own
virtualenv to a version the test suite passed with, as OpenStack's requirements repository does;
``constraints/<service>.txt`` does the same for the real Barbican, Glance and Keystone the tests
start, each in its own virtualenv. ``make`` installs with ``pip install -c FILE``.

``constraints.py freeze VENV OUT`` writes VENV's packages (not imgcrypt itself) as pins to OUT.
``constraints.py moved OLD NEW`` prints the packages whose version differs between two such files
(added, removed, changed), one a line, and exits 0.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEADER = ("# Every package of this virtualenv, pinned to a version the test suite passed with.\n"
          "# Written by `make constraints` (scripts/constraints.py freeze); do not edit by hand.\n")
# Installed by the virtualenv itself or building tools, not by our requirements.
NOT_PINNED = {"imgcrypt", "pip", "setuptools", "wheel", "distribute"}


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def read_pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_canonical(name.split("[")[0])] = version.split(";")[0].strip()
    return pins


def freeze(venv: Path, out: Path) -> None:
    listing = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list",
                              "--format=freeze", "--exclude-editable",
                              "--disable-pip-version-check"],
                             check=True, capture_output=True, text=True).stdout
    lines = sorted((line for line in listing.splitlines()
                    if "==" in line and _canonical(line.split("==")[0]) not in NOT_PINNED),
                   key=lambda line: _canonical(line.split("==")[0]))
    out.write_text(HEADER + "\n".join(lines) + "\n")


def moved(old: Path, new: Path) -> list[str]:
    before, after = read_pins(old), read_pins(new)
    lines = []
    for name in sorted(before.keys() | after.keys()):
        was, now = before.get(name), after.get(name)
        if was == now:
            continue
        lines.append(f"{name}: {was or '(new)'} -> {now or '(gone)'}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "freeze":
        freeze(Path(argv[1]), Path(argv[2]))
        return 0
    if len(argv) == 3 and argv[0] == "moved":
        changes = moved(Path(argv[1]), Path(argv[2]))
        print("\n".join(changes) if changes else "no package moved")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Where command output goes: one JSON object on stdout with ``--json``, human text otherwise."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from imgcrypt.text import escape_lines


def add_json_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print one machine-readable JSON object on stdout"
    )


def emit(args: argparse.Namespace, data: Mapping[str, Any], human: str, *,
         to_stderr: bool = False) -> None:
    """Print ``data`` as JSON when ``--json`` was given, else ``human``.

    ``to_stderr`` sends the human text to stderr, for commands whose stdout carries image data.
    Control characters in the human text are escaped (JSON escapes them itself).
    JSON goes to stdout unless stdout carries data, in which case it goes to stderr too.
    """
    stream = sys.stderr if to_stderr else sys.stdout
    if getattr(args, "json", False):
        stream.write(json.dumps(dict(data), sort_keys=True) + "\n")
    elif human:
        stream.write(escape_lines(human.removesuffix("\n")) + "\n")
    stream.flush()

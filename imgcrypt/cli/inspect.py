"""``imgcrypt inspect``: describe a LUKS header without any passphrase."""

from __future__ import annotations

import argparse
from typing import Any

from imgcrypt.cli.output import add_json_argument, emit
from imgcrypt.fileio import open_input
from imgcrypt.luks.stream import read_header
from imgcrypt.text import escape


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "inspect", help="show a LUKS image's header",
        description="Print the LUKS header of IMAGE (- for stdin): version, cipher, key size, "
        "sector size, payload offset, UUID and active keyslots. Needs no passphrase.",
        epilog="example:\n  imgcrypt inspect disk.luks --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE")
    add_json_argument(parser)
    parser.set_defaults(func=run)


def human(info: dict[str, Any]) -> str:
    lines = [f"{info['format'].upper()} image"]
    for key in ("cipher", "key_size", "sector_size", "payload_offset", "uuid", "label"):
        if info.get(key) not in (None, ""):
            lines.append(f"  {key.replace('_', ' '):<15}{escape(info[key])}")
    copies = info.get("header_copies")
    if copies:
        lines.append("  header copies  " + ", ".join(f"{k} {escape(v)}" for k, v in copies.items()))
    lines.append(f"  keyslots       {len(info['keyslots'])} active")
    for slot in info["keyslots"]:
        details = ", ".join(f"{k} {escape(v)}" for k, v in slot.items() if k not in ("slot",))
        lines.append(f"    {slot['slot']}: {details}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    with open_input(args.image) as f:
        header, _ = read_header(f)
    info = header.describe()
    emit(args, info, human(info))
    return 0

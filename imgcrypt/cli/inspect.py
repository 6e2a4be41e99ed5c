"""``imgcrypt inspect``: describe a LUKS header without any passphrase."""

from __future__ import annotations

import argparse
from typing import Any

from imgcrypt.cli.output import add_json_argument, emit
from imgcrypt.fileio import open_input
from imgcrypt.luks.stream import read_header


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "inspect", help="show a LUKS image's header",
        description="Print the LUKS header of IMAGE (- for stdin): version, cipher, key size, "
        "sector size, payload offset, UUID and active keyslots. Needs no passphrase. Every "
        "header cryptsetup loads is shown, marked NOT DECRYPTABLE where imgcrypt cannot decrypt "
        "it (other ciphers, integrity, several segments); a header cryptsetup refuses exits 3 "
        "naming the rule it breaks.",
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
            lines.append(f"  {key.replace('_', ' '):<15}{info[key]}")
    copies = info.get("header_copies")
    if copies:
        lines.append("  header copies  " + ", ".join(f"{k} {v}" for k, v in copies.items()))
    if not info.get("decryptable", True):
        lines.append("  NOT DECRYPTABLE by imgcrypt: " + "; ".join(info.get("unsupported", [])))
    lines.append(f"  keyslots       {len(info['keyslots'])} active")
    for slot in info["keyslots"]:
        details = ", ".join(f"{k} {v}" for k, v in slot.items() if k not in ("slot",))
        lines.append(f"    {slot['slot']}: {details}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    with open_input(args.image) as f:
        header, _ = read_header(f)
    info = header.describe()
    emit(args, info, human(info))
    return 0

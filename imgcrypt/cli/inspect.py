"""``imgcrypt inspect``: describe a LUKS header without any passphrase."""

from __future__ import annotations

import argparse
from typing import Any

from imgcrypt.cli.output import add_json_argument, emit
from imgcrypt.luks.stream import read_header


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "inspect", help="show a LUKS image's header",
        description="Print the LUKS header of IMAGE (- for stdin): version, cipher, key size, "
        "sector size, payload offset, UUID and active keyslots. Needs no passphrase. A qcow2 "
        "with qemu's built-in LUKS shows the LUKS header inside it.",
        epilog="example:\n  imgcrypt inspect disk.luks --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE")
    add_json_argument(parser)
    parser.set_defaults(func=run)


def human(info: dict[str, Any]) -> str:
    lines = [f"{info['format'].upper()} image"]
    if info.get("container") == "qcow2":
        lines = [f"qcow2 image with qemu's built-in {info['format'].upper()} encryption",
                 f"  virtual size   {info['virtual_size']}",
                 f"  LUKS header    {info['luks_header_length']} bytes at offset "
                 f"{info['luks_header_offset']} of the qcow2 file"]
    for key in ("cipher", "key_size", "sector_size", "payload_offset", "uuid", "label"):
        if info.get(key) not in (None, ""):
            lines.append(f"  {key.replace('_', ' '):<15}{info[key]}")
    copies = info.get("header_copies")
    if copies:
        lines.append("  header copies  " + ", ".join(f"{k} {v}" for k, v in copies.items()))
    lines.append(f"  keyslots       {len(info['keyslots'])} active")
    for slot in info["keyslots"]:
        details = ", ".join(f"{k} {v}" for k, v in slot.items() if k not in ("slot",))
        lines.append(f"    {slot['slot']}: {details}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from imgcrypt.qemu_luks import is_qcow2_file, read_qcow2_luks

    if is_qcow2_file(args.image):
        # qemu's built-in LUKS: the header is inside the qcow2
        info = read_qcow2_luks(args.image).describe()
        emit(args, info, human(info))
        return 0
    from imgcrypt.cli.decrypt import luks_input

    with luks_input(args.image) as f:
        header, _ = read_header(f)
    info = header.describe()
    emit(args, info, human(info))
    return 0

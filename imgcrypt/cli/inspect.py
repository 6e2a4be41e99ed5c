"""``imgcrypt inspect``: describe a LUKS header without any passphrase."""

from __future__ import annotations

import argparse
from typing import Any

from imgcrypt.cli import common, inputs
from imgcrypt.cli.output import emit
from imgcrypt.luks.base import SECTOR
from imgcrypt.luks.unlock import read_header
from imgcrypt.text import escape


def register(sub: Any) -> None:
    parser = common.command_parser(
        sub, "inspect", summary="show a LUKS image's header",
        description="Print the LUKS header of IMAGE (- for stdin): version, cipher, key size, "
        "sector size, payload offset, UUID and active keyslots. Needs no passphrase. Every "
        "header cryptsetup loads is shown, marked NOT DECRYPTABLE where imgcrypt cannot decrypt "
        "it (other ciphers, integrity, several segments); a header cryptsetup refuses exits 3 "
        "naming the rule it breaks. A qcow2 "
        "with qemu's built-in LUKS shows the LUKS header inside it.",
        example="example:\n  imgcrypt inspect disk.luks --json",
    )
    common.add_image_argument(parser)
    common.finish_command(parser, run)


# luksDump counts LUKS1 offsets in 512-byte sectors, whatever the encryption sector size.
DUMP_SECTOR = SECTOR  # cryptsetup luksDump counts LUKS1 offsets in 512-byte sectors


def _offset(size: int) -> str:
    """``4096 sectors (2097152 bytes, 2 MiB)``: sectors as luksDump shows them, and bytes."""
    text = f"{size // DUMP_SECTOR} sectors ({size} bytes" if size % DUMP_SECTOR == 0 \
        else f"{size} bytes ("
    mib, rest = divmod(size, 1 << 20)
    return text + (f", {mib} MiB)" if mib and not rest else ")")


def with_sectors(info: dict[str, Any]) -> dict[str, Any]:
    """The header description plus every byte offset counted in 512-byte sectors too."""
    out = dict(info)
    if isinstance(info.get("payload_offset"), int):
        out["payload_offset_sectors"] = info["payload_offset"] // DUMP_SECTOR
    out["keyslots"] = [
        {**slot, "key_material_offset_sectors": slot["key_material_offset"] // DUMP_SECTOR}
        if isinstance(slot.get("key_material_offset"), int) else slot
        for slot in info["keyslots"]
    ]
    return out


def _slot_value(name: str, value: Any) -> Any:
    if isinstance(value, int) and name.endswith("offset"):
        return _offset(value)
    if isinstance(value, int) and name == "key_size":
        return f"{value} bits"
    if isinstance(value, int) and name.endswith("_size"):
        return f"{value} bytes"
    return value


def human(info: dict[str, Any]) -> str:
    lines = [f"{info['format'].upper()} image"]
    if info.get("container") == "qcow2":
        lines = [f"qcow2 image with qemu's built-in {info['format'].upper()} encryption",
                 f"  virtual size   {info['virtual_size']}",
                 f"  LUKS header    {info['luks_header_length']} bytes at offset "
                 f"{info['luks_header_offset']} of the qcow2 file"]
    for key in ("cipher", "key_size", "sector_size", "payload_offset", "uuid", "label"):
        value = info.get(key)
        if value in (None, ""):
            continue
        if key == "payload_offset" and isinstance(value, int):
            value = _offset(value)
        elif key in ("key_size", "sector_size"):
            value = f"{value} {'bits' if key == 'key_size' else 'bytes'}"
        lines.append(f"  {key.replace('_', ' '):<15}{escape(value)}")
    copies = info.get("header_copies")
    if copies:
        lines.append("  header copies  " + ", ".join(f"{k} {escape(v)}" for k, v in copies.items()))
    if not info.get("decryptable", True):
        reasons = "; ".join(escape(r) for r in info.get("unsupported", []))
        lines.append("  NOT DECRYPTABLE by imgcrypt: " + reasons)
    if info.get("cryptsetup_refuses"):
        lines.append("  cryptsetup REFUSES this header (qemu-img opens it): "
                     + escape(info["cryptsetup_refuses"]))
    lines.append(f"  keyslots       {len(info['keyslots'])} active")
    for slot in info["keyslots"]:
        details = ", ".join(
            f"{k.replace('_', ' ')} {escape(_slot_value(k, v))}"
            for k, v in slot.items() if k != "slot" and not k.endswith("_sectors"))
        lines.append(f"    {slot['slot']}: {details}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from imgcrypt.qemu.luks import is_qcow2_file, read_qcow2_luks

    if is_qcow2_file(args.image):
        # qemu's built-in LUKS: the header is inside the qcow2
        info = read_qcow2_luks(args.image).describe()
        emit(args, {"source": args.image, **info}, human(info))
        return 0
    with inputs.luks_input(args.image) as f:
        header, _ = read_header(f)
    info = with_sectors(header.describe())
    emit(args, {"source": args.image, **info}, human(info))
    return 0

"""``imgcrypt encrypt``: make a LUKS image from a raw disk image (or a stream)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
from typing import Any

from imgcrypt.cli import common, inputs, keyopts
from imgcrypt.cli.output import emit
from imgcrypt.errors import UsageError
from imgcrypt.fileio import atomic_output
from imgcrypt.keys.consumers import file_consumer_for, release_file_elsewhere
from imgcrypt.keys.lease import KeyLease
from imgcrypt.luks.options import FormatOptions
from imgcrypt.luks.transfer import encrypt_stream

EXAMPLE = """example:
  imgcrypt encrypt disk.raw disk.luks --passphrase-file pass.txt
  imgcrypt encrypt disk.raw disk.luks --new-key            # key from the local keystore
  cat disk.raw | imgcrypt encrypt - - --passphrase-file pass.txt > disk.luks
  imgcrypt encrypt disk.raw disk.qcow2 --target-format qcow2 --passphrase-file pass.txt"""


def register(sub: Any) -> None:
    parser = common.command_parser(
        sub, "encrypt", summary="encrypt a disk image into a LUKS container",
        description="Encrypt SOURCE (a raw image, or - for stdin) into a LUKS1 or LUKS2 "
        "container at TARGET (- for stdout).",
        example=EXAMPLE,
    )
    common.add_source_target_arguments(parser)
    common.add_passphrase_file_argument(parser)
    parser.add_argument("--force", action="store_true", help="replace an existing TARGET")
    parser.add_argument("--source-format", metavar="FORMAT",
                        help="format of SOURCE (raw, qcow2, vmdk, vhdx, vpc, vdi); by "
                        "default recognised from its magic bytes, raw otherwise. Non-raw "
                        "sources are read through qemu-nbd, without a temporary copy")
    parser.add_argument("--target-format", choices=("luks", "qcow2"),
                        help="luks (default): a LUKS container; qcow2: a qcow2 with qemu's "
                        "built-in LUKS1 encryption, written by qemu-img. A TARGET named *.qcow2 "
                        "needs this option said explicitly, as qemu-img's -O")
    common.add_format_arguments(parser)
    common.add_key_slot_argument(parser, "put the passphrase in keyslot N (default 0; as "
                                 "cryptsetup luksFormat --key-slot)")
    keyopts.add_key_arguments(parser, creating=True)
    common.add_max_size_argument(parser)
    common.add_progress_argument(parser)
    common.finish_command(parser, run)


def _leased(resolved: Any, target: str) -> contextlib.AbstractContextManager[Any]:
    """The key's lease around the writing of ``target``: a new key is deleted if the command
    fails, and the written image recorded as the key's consumer (local keystore) if it works."""
    if resolved is None:
        return contextlib.nullcontext()
    lease: KeyLease = resolved.lease
    lease.consume_as(file_consumer_for(resolved.manager, target))
    return lease


def _after_success(resolved: Any, target: str) -> None:
    if resolved is not None:
        release_file_elsewhere(resolved.manager, resolved.key_id, target)


def target_format(args: argparse.Namespace) -> str:
    """luks or qcow2. Like qemu-img, imgcrypt does not pick a format from a file name, and a
    raw LUKS file named .qcow2 would mislead every tool after it: such a TARGET needs
    --target-format said."""
    chosen: str | None = getattr(args, "target_format", None)
    if chosen is not None:
        return chosen
    if args.target.lower().endswith(".qcow2"):
        raise UsageError(
            f"{args.target} is named like a qcow2: give --target-format qcow2 for a qcow2 with "
            "qemu's built-in LUKS, or --target-format luks for a raw LUKS container")
    return "luks"


def run(args: argparse.Namespace) -> int:
    options = common.format_options(args)
    if args.source == "-" and args.passphrase_file == "-":
        raise UsageError("stdin cannot carry both the image and the passphrase")
    inputs.check_target(args.target, force=args.force)
    if args.source != "-" and not os.path.exists(args.source):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", args.source)
    if target_format(args) == "qcow2":
        return _encrypt_qcow2(args, options)
    passphrase, resolved = inputs.resolve_passphrase(args, creating=True)
    with _leased(resolved, args.target):
        room = inputs.room_for_luks(args.target, options, args.max_size)
        with inputs.guest_input(args.source, args.source_format, planned=room) as (
                src, source_format, size), \
                atomic_output(args.target, force=args.force, source=args.source,
                              size=inputs.planned_luks_size(size, options),
                              max_size=args.max_size) as dst, \
                common.progress_bar(args, size, "encrypt") as progress:
            result = encrypt_stream(src, dst, passphrase, options, progress=progress)
    _after_success(resolved, args.target)
    header = result.header
    data: dict[str, Any] = {
        "source": args.source,
        "source_format": source_format,
        "target": args.target,
        "format": f"luks{header.version}",
        "cipher": str(header.cipher),
        "key_size": header.key_bytes * 8,
        "sector_size": header.sector_size,
        "payload_offset": header.payload_offset,
        "payload_size": result.payload_size,
        "image_size": result.image_size,
        "uuid": header.uuid,
    }
    lines = [
        f"encrypted {args.source} -> {args.target}",
        f"  source      {source_format}"
        + (f", virtual size {size} bytes (read through qemu-nbd)"
           if source_format != "raw" else ""),
        f"  format      LUKS{header.version}, {header.cipher}, {header.key_bytes * 8}-bit key, "
        f"{header.sector_size}-byte sectors",
        f"  payload     {result.payload_size} bytes at offset {header.payload_offset}",
        f"  image size  {result.image_size} bytes",
    ]
    if resolved is not None:
        _report_key(resolved, header.version, result.payload_size, data, lines)
    emit(args, data, "\n".join(lines), to_stderr=args.target == "-")
    return 0


def _encrypt_qcow2(args: argparse.Namespace, options: FormatOptions) -> int:
    """SOURCE's guest content into a qcow2 with qemu's built-in LUKS, written by qemu-img."""
    from imgcrypt.qemu import luks as qemu_luks
    from imgcrypt.qemu.source import format_by_magic

    if "-" in (args.source, args.target):
        raise UsageError("qemu-img writes a qcow2 from a file to a file: no - for SOURCE or "
                         "TARGET with --target-format qcow2")
    qemu_luks.qemu_encrypt_options(options)  # refuse what qemu cannot make before any key
    source_format = args.source_format
    if source_format is None:
        source_format = format_by_magic(args.source)
    passphrase, resolved = inputs.resolve_passphrase(args, creating=True)
    with _leased(resolved, args.target):
        info = qemu_luks.encrypt(args.source, args.target, passphrase, options,
                                 source_format=source_format, force=args.force,
                                 max_size=args.max_size, note=inputs.note)
    _after_success(resolved, args.target)
    header = qemu_luks.read_qcow2_luks(args.target).luks
    data: dict[str, Any] = {
        "source": args.source, "source_format": source_format, "target": args.target,
        "format": "qcow2", "encryption": f"luks{header.version}", "cipher": str(header.cipher),
        "key_size": header.key_bytes * 8, "virtual_size": info.virtual_size, "uuid": header.uuid,
    }
    lines = [f"encrypted {args.source} -> {args.target}",
             f"  format      qcow2 with qemu's built-in LUKS{header.version}, {header.cipher}, "
             f"{header.key_bytes * 8}-bit key (written by qemu-img)",
             f"  virtual size {info.virtual_size} bytes (disk_format=qcow2)"]
    if resolved is not None:
        _report_key(resolved, header.version, info.virtual_size, data, lines)
    emit(args, data, "\n".join(lines))
    return 0


def _report_key(resolved: Any, version: int, payload_size: int, data: dict[str, Any],
                lines: list[str]) -> None:
    """The key the image was encrypted with, and the image properties that name it."""
    from imgcrypt.keys.properties import encryption_properties

    properties = encryption_properties(resolved.key_id, version, payload_size)
    data.update(key_id=resolved.key_id, key_manager=resolved.manager_name,
                key_created=resolved.created, properties=properties)
    lines.append(f"  key         {resolved.key_id} ({resolved.manager_name}"
                 f"{', new' if resolved.created else ''})")
    lines.append("  properties to attach:")
    lines += [f"    {k}={v}" for k, v in sorted(properties.items())]

"""``imgcrypt encrypt``: make a LUKS image from a raw disk image (or a stream)."""

from __future__ import annotations

import argparse
import errno
import os
from typing import Any

from imgcrypt.cli import common, inputs, keyopts
from imgcrypt.cli.output import emit
from imgcrypt.errors import UsageError
from imgcrypt.fileio import atomic_output
from imgcrypt.luks.options import FormatOptions
from imgcrypt.recipes import EncryptionJob, encrypting

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
    with encrypting(args.target, **inputs.encryption_key(args)) as job:
        room = inputs.room_for_luks(args.target, options, args.max_size)
        with inputs.guest_input(args.source, args.source_format, planned=room) as (
                src, source_format, size), \
                atomic_output(args.target, force=args.force, source=args.source,
                              size=inputs.planned_luks_size(size, options),
                              max_size=args.max_size) as dst, \
                common.progress_bar(args, size, "encrypt") as progress:
            result = job.encrypt(src, dst, options, progress=progress)
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
    _report_key(job, data, lines)
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
    with encrypting(args.target, **inputs.encryption_key(args)) as job:
        info = qemu_luks.encrypt(args.source, args.target, job.passphrase, options,
                                 source_format=source_format, force=args.force,
                                 max_size=args.max_size, note=inputs.note)
        job.written(options.version, info.virtual_size, os.path.getsize(args.target))
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
    _report_key(job, data, lines)
    emit(args, data, "\n".join(lines))
    return 0


def _report_key(job: EncryptionJob, data: dict[str, Any], lines: list[str]) -> None:
    """The key the image was encrypted with, and the image properties that name it."""
    if job.lease is None:
        return
    image, manager = job.image, job.lease.manager.name
    properties = image.property_dict()
    data.update(key_id=image.key_id, key_manager=manager, key_created=image.key_created,
                properties=properties)
    lines.append(f"  key         {image.key_id} ({manager}{', new' if image.key_created else ''})")
    lines.append("  properties to attach:")
    lines += [f"    {k}={v}" for k, v in sorted(properties.items())]

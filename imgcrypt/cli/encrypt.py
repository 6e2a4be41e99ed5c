"""``imgcrypt encrypt``: make a LUKS image from a raw disk image (or a stream)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

from imgcrypt.cli import common
from imgcrypt.cli.output import add_json_argument, emit
from imgcrypt.errors import UnsupportedError, UsageError
from imgcrypt.fileio import atomic_output
from imgcrypt.luks.engine import Source
from imgcrypt.luks.stream import encrypt_stream

EXAMPLE = """example:
  imgcrypt encrypt disk.raw disk.luks --passphrase-file pass.txt
  imgcrypt encrypt disk.raw disk.luks --new-key            # key from the local keystore
  cat disk.raw | imgcrypt encrypt - - --passphrase-file pass.txt > disk.luks"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "encrypt", help="encrypt a disk image into a LUKS container",
        description="Encrypt SOURCE (a raw image, or - for stdin) into a LUKS1 or LUKS2 "
        "container at TARGET (- for stdout).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="SOURCE")
    parser.add_argument("target", metavar="TARGET")
    parser.add_argument("--passphrase-file", metavar="PATH",
                        help="read the passphrase from this file, its bytes exactly (- = stdin)")
    parser.add_argument("--force", action="store_true", help="replace an existing TARGET")
    parser.add_argument("--source-format", metavar="FORMAT",
                        help="format of SOURCE (raw, qcow2, vmdk, vhdx, vpc, vdi); by "
                        "default recognised from its magic bytes, raw otherwise. Non-raw "
                        "sources are read through qemu-nbd, without a temporary copy")
    common.add_format_arguments(parser)
    if common.key_arguments_available():
        from imgcrypt.cli import keyopts

        keyopts.add_key_arguments(parser, creating=True)
    common.add_progress_argument(parser)
    add_json_argument(parser)
    parser.set_defaults(func=run)


def resolve_passphrase(args: argparse.Namespace, *, creating: bool) -> tuple[bytes, Any]:
    """The passphrase, and the key-manager secret it came from (or None)."""
    resolved = None
    if common.key_arguments_available():
        from imgcrypt.cli import keyopts

        resolved = keyopts.resolve_key(args, creating=creating)
    if resolved is not None:
        if args.passphrase_file is not None:
            raise UsageError("give either --passphrase-file or a key-manager key, not both")
        return resolved.passphrase, resolved
    return common.passphrase_from(args.passphrase_file, confirm=creating), None


@contextlib.contextmanager
def source_stream(source: str, source_format: str | None
                  ) -> Iterator[tuple[BinaryIO | Source, str, int | None]]:
    """(raw guest bytes, the source's format, its size when known) for SOURCE."""
    if source == "-":
        if source_format not in (None, "raw"):
            raise UsageError("a source on stdin must be raw")
        yield sys.stdin.buffer, "raw", None
        return
    from imgcrypt.qemu import SNIFF_SIZE, guest_source, image_info, sniff_format

    if source_format is None:
        # Going by magic (rather than letting qemu probe) means a raw guest disk is never
        # reinterpreted, and raw sources need no qemu-img at all.
        with open(source, "rb") as f:
            source_format = sniff_format(f.read(SNIFF_SIZE)) or "raw"
        if source_format == "luks":
            raise UnsupportedError(
                f"{source} is already a LUKS image; give --source-format raw to encrypt it again"
            )
    if source_format == "raw":
        with open(source, "rb") as f:
            yield f, "raw", os.fstat(f.fileno()).st_size
        return
    info = image_info(source, source_format=source_format)
    if info.format == "raw":
        with open(source, "rb") as f:
            yield f, "raw", os.fstat(f.fileno()).st_size
        return
    # Read through qemu-nbd: no temporary copy of the guest, zeros not even sent.
    with guest_source(source, info) as guest:
        yield guest, info.format, info.virtual_size


def run(args: argparse.Namespace) -> int:
    options = common.format_options(args)
    if args.source == "-" and args.passphrase_file == "-":
        raise UsageError("stdin cannot carry both the image and the passphrase")
    passphrase, resolved = resolve_passphrase(args, creating=True)
    with source_stream(args.source, args.source_format) as (src, source_format, size), \
            atomic_output(args.target, force=args.force, source=args.source) as dst, \
            common.progress_bar(args, size, "encrypt") as progress:
        result = encrypt_stream(src, dst, passphrase, options, progress=progress)
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
        from imgcrypt.keys.properties import encryption_properties

        properties = encryption_properties(resolved.key_id, header.version, result.payload_size)
        data["key_id"] = resolved.key_id
        data["key_manager"] = resolved.manager_name
        data["key_created"] = resolved.created
        data["properties"] = properties
        lines.append(f"  key         {resolved.key_id} ({resolved.manager_name}"
                     f"{', new' if resolved.created else ''})")
        lines.append("  properties to attach:")
        lines += [f"    {k}={v}" for k, v in sorted(properties.items())]
    emit(args, data, "\n".join(lines), to_stderr=args.target == "-")
    return 0

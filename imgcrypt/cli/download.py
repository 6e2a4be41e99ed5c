"""``imgcrypt download``: stream an image from the image service, verify it and decrypt it."""

from __future__ import annotations

import argparse
from typing import Any

from imgcrypt.cli import common
from imgcrypt.cli.output import emit
from imgcrypt.fileio import atomic_output

EXAMPLE = """example:
  imgcrypt download 0f3e... disk.raw             # verified and decrypted
  imgcrypt download 0f3e... disk.luks --encrypted  # verified, kept encrypted

The image's os_hash_value and, when present, its signature (Glance or imgcrypt mode; the
certificate comes from the key manager) are checked on the bytes as they stream; the target
appears only if every check passed. Credentials as for imgcrypt upload."""


def register(sub: Any) -> None:
    parser = common.command_parser(
        sub, "download", summary="download an image from the image service, verify and decrypt it",
        description="Download image IMAGE_ID to TARGET, verifying and decrypting it.",
        example=EXAMPLE,
    )
    parser.add_argument("image_id", metavar="IMAGE_ID")
    parser.add_argument("target", metavar="TARGET")
    parser.add_argument("--encrypted", action="store_true",
                        help="keep the LUKS container (verify only, no decryption)")
    parser.add_argument("--force", action="store_true", help="replace an existing TARGET")
    parser.add_argument("--os-cloud", metavar="NAME", default=None,
                        help="clouds.yaml entry (default: OS_CLOUD / the OS_* variables)")
    common.add_progress_argument(parser)
    common.finish_command(parser, run)


def run(args: argparse.Namespace) -> int:
    from imgcrypt import imageservice
    from imgcrypt.service.download import open_download

    download = open_download(imageservice.connect(args.os_cloud), args.image_id,
                             keep_encrypted=args.encrypted)
    with atomic_output(args.target, force=args.force) as out, \
            common.progress_bar(args, download.size, "download") as progress:
        result = download.write_to(out, progress)  # a failed check: the target never appears
    signature = result.signature
    data = {"image_id": args.image_id, "target": args.target,
            "bytes_written": result.bytes_written, "decrypted": result.decrypted,
            "hash_checked": result.hash_checked,
            "signature": sorted(s.scheme for s in signature.schemes) if signature else None}
    emit(args, data, f"downloaded {args.image_id} -> {args.target}: {result.bytes_written} "
         "bytes" + (", decrypted" if result.decrypted else "")
         + (", signature verified" if signature else ""),
         to_stderr=args.target == "-")
    return 0

"""``imgcrypt repair``: rewrite a damaged LUKS2 metadata copy from the intact one."""

from __future__ import annotations

import argparse
from typing import Any

from imgcrypt.cli.output import add_json_argument, emit
from imgcrypt.luks.repair import repair_file


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "repair", help="rewrite a damaged LUKS2 header copy from the good one",
        description="Check both LUKS2 metadata copies of IMAGE and rewrite a damaged or stale "
        "one from the other, in place, under the file lock rekey uses, as cryptsetup repair "
        "does. Needed when a foreign signature keeps imgcrypt and cryptsetup from recovering "
        "automatically. Header only: the payload is not touched. Exit 3 when no copy is valid.",
        epilog="example:\n  imgcrypt repair disk.luks",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE")
    add_json_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    result = repair_file(args.image)
    if result.rewritten is None:
        text = "nothing to repair: the header is valid"
    else:
        text = f"rewrote the {result.rewritten} LUKS2 header copy (seqid {result.seqid})"
    emit(args, {"rewritten": result.rewritten, "seqid": result.seqid}, text)
    return 0

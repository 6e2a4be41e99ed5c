"""``imgcrypt repair``: rewrite a damaged LUKS2 metadata copy from the intact one."""

from __future__ import annotations

import argparse
from typing import Any

from imgcrypt.cli import common
from imgcrypt.cli.output import emit
from imgcrypt.luks.repair import repair_file


def register(sub: Any) -> None:
    parser = common.command_parser(
        sub, "repair", summary="rewrite a damaged LUKS2 header copy from the good one",
        description="Check both LUKS2 metadata copies of IMAGE and rewrite a damaged or stale "
        "one from the other, in place, under the file lock rekey uses, as cryptsetup repair "
        "does. Needed when a foreign signature keeps imgcrypt and cryptsetup from recovering "
        "automatically. Header only: the payload is not touched. Exit 3 when no copy is valid.",
        example="example:\n  imgcrypt repair disk.luks",
    )
    common.add_image_argument(parser)
    common.finish_command(parser, run)


def run(args: argparse.Namespace) -> int:
    result = repair_file(args.image)
    if result.rewritten is None:
        text = "nothing to repair: the header is valid"
    else:
        text = f"rewrote the {result.rewritten} LUKS2 header copy (seqid {result.seqid})"
    emit(args, {"rewritten": result.rewritten, "seqid": result.seqid}, text)
    return 0

"""``imgcrypt rekey``: add, change or remove a passphrase by rewriting the header only."""

from __future__ import annotations

import argparse
from typing import Any

from imgcrypt.cli import common, inputs, keyopts
from imgcrypt.cli.output import emit
from imgcrypt.errors import UsageError
from imgcrypt.luks.options import KdfOptions
from imgcrypt.recipes import rekey_image

EXAMPLE = """examples:
  imgcrypt rekey disk.luks --passphrase-file old.txt --add --new-passphrase-file new.txt
  imgcrypt rekey disk.luks --passphrase-file old.txt --change --new-passphrase-file new.txt
  imgcrypt rekey disk.luks --passphrase-file old.txt --remove-slot 1"""


def register(sub: Any) -> None:
    parser = common.command_parser(
        sub, "rekey", summary="add, change or remove a passphrase (header only)",
        description="Change which passphrases open IMAGE. Only the LUKS header and keyslot "
        "areas are rewritten, in place, under a file lock; the payload is not touched.",
        example=EXAMPLE,
    )
    common.add_image_argument(parser)
    common.add_passphrase_file_argument(parser, help_text="a passphrase that opens IMAGE, its "
                                        "bytes exactly (- = stdin)")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--add", action="store_true", help="add a keyslot for a new passphrase")
    action.add_argument("--change", action="store_true",
                        help="add the new passphrase, then remove the keyslot the old one opened")
    action.add_argument("--remove-slot", type=int, metavar="N", help="remove keyslot N")
    parser.add_argument("--new-passphrase-file", "--new-key-file", dest="new_passphrase_file",
                        metavar="PATH", help="the new passphrase, its bytes exactly "
                        "(--new-key-file is cryptsetup's luksAddKey name)")
    common.add_key_slot_argument(
        parser, "with --add, the number of the new keyslot (cryptsetup luksAddKey); with "
        "--change, the keyslot whose passphrase changes (cryptsetup luksChangeKey)")
    common.add_kdf_arguments(parser.add_argument_group("KDF of the new keyslot"))
    keyopts.add_key_manager_arguments(parser)
    parser.add_argument("--key-id", help="key-manager secret that opens IMAGE")
    parser.add_argument("--new-key-id", help="key-manager secret for the new keyslot")
    common.finish_command(parser, run)


def run(args: argparse.Namespace) -> int:
    if args.passphrase_file == "-" and args.new_passphrase_file == "-":
        raise UsageError("stdin cannot carry both passphrases")
    adding = args.add or args.change
    if args.remove_slot is not None and args.key_slot is not None:
        raise UsageError("--remove-slot names the keyslot itself; --key-slot is for --add "
                         "and --change")
    if not adding and (args.new_passphrase_file or getattr(args, "new_key_id", None)):
        raise UsageError("--remove-slot takes no new passphrase")
    old_id, new_id = getattr(args, "key_id", None), getattr(args, "new_key_id", None)
    manager = inputs.key_manager(args) if old_id is not None or new_id is not None else None
    old = new = None
    if old_id is None:
        old = inputs.passphrase_from(args.passphrase_file, confirm=False,
                                     prompt="Current passphrase: ")
    elif args.passphrase_file is not None:
        raise UsageError("give either a file or a key id for the current passphrase")
    if adding and new_id is None:
        new = inputs.passphrase_from(args.new_passphrase_file, confirm=True,
                                     prompt="New passphrase: ")
    elif adding and args.new_passphrase_file is not None:
        raise UsageError("give either a file or a key id for the new passphrase")
    result = rekey_image(args.image, key_manager=manager, key_id=old_id, passphrase=old,
                         new_key_id=new_id, new_passphrase=new, keep_old=args.add,
                         remove_slot=args.remove_slot, kdf=_kdf_options(args),
                         opened_slot=args.key_slot if args.change else None,
                         new_slot=args.key_slot if args.add else None)
    data = {"target": args.image, "opened_slot": result.opened_slot,
            "added_slot": result.added_slot, "removed_slot": result.removed_slot}
    parts = []
    if result.added_slot is not None:
        parts.append(f"added keyslot {result.added_slot}")
    if result.removed_slot is not None:
        parts.append(f"removed keyslot {result.removed_slot}")
    emit(args, data, f"{args.image}: " + ", ".join(parts) + " (header only)")
    return 0


def _kdf_options(args: argparse.Namespace) -> KdfOptions:
    return KdfOptions(iter_time_ms=args.iter_time, iterations=args.iterations,
                      pbkdf=args.pbkdf, pbkdf_memory_kib=args.pbkdf_memory,
                      pbkdf_parallel=args.pbkdf_parallel)

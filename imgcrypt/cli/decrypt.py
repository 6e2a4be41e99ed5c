"""``imgcrypt decrypt``: write the decrypted payload of a LUKS image."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from imgcrypt.cli import common, inputs, keyopts
from imgcrypt.cli.output import emit
from imgcrypt.errors import UsageError
from imgcrypt.fileio import atomic_output
from imgcrypt.recipes import image_passphrase, unlock_image

EXAMPLE = """example:
  imgcrypt decrypt disk.luks disk.raw --passphrase-file pass.txt
  imgcrypt decrypt disk.luks - --key-id 5f0c...  | qemu-img info /dev/stdin"""


def register(sub: Any) -> None:
    parser = common.command_parser(
        sub, "decrypt", summary="decrypt a LUKS image to its raw payload",
        description="Decrypt the LUKS1/LUKS2 image SOURCE (- for stdin) to TARGET (- for stdout). "
        "A qcow2 with qemu's built-in LUKS becomes the guest's raw disk (through qemu-img).",
        example=EXAMPLE,
    )
    common.add_source_target_arguments(parser)
    common.add_passphrase_file_argument(parser)
    common.add_key_slot_argument(parser, "try only keyslot N (as cryptsetup open --key-slot)")
    parser.add_argument("--size", type=int, metavar="BYTES",
                        help="true payload size (os_decrypt_size): trim the padding")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing TARGET (a regular file only)")
    parser.add_argument("--mode", type=_octal_mode, default=0o600, metavar="OCTAL",
                        help="permissions of TARGET, less the umask (default 0600: the "
                        "plaintext is readable by its owner only)")
    keyopts.add_key_arguments(parser, creating=False)
    common.add_max_size_argument(parser)
    common.add_progress_argument(parser)
    common.finish_command(parser, run)


def _octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r} is not a file mode (0..0777)")
    return mode


def run(args: argparse.Namespace) -> int:
    if args.source == "-" and args.passphrase_file == "-":
        raise UsageError("stdin cannot carry both the image and the passphrase")
    inputs.check_target(args.target, force=args.force)
    key = inputs.decryption_key(args)
    from imgcrypt.qemu.luks import is_qcow2_file

    if is_qcow2_file(args.source):
        return _decrypt_qcow2(args, key)
    with inputs.luks_input(args.source) as src:
        # Unlock before creating the target, so a wrong passphrase leaves nothing behind.
        opened = unlock_image(src, **key, slot=args.key_slot)
        total = opened.output_size(args.size, inputs.input_size(src))
        with atomic_output(args.target, force=args.force, source=args.source,
                           mode=args.mode, size=total, max_size=args.max_size) as dst, \
                common.progress_bar(args, total, "decrypt") as progress:
            written = opened.decrypt(src, dst, size=args.size, progress=progress)
    data = {
        "source": args.source, "target": args.target, "format": f"luks{opened.luks_version}",
        "keyslot": opened.keyslot, "bytes_written": written,
    }
    if opened.key_id is not None:
        data["key_id"] = opened.key_id
    emit(args, data, f"decrypted {args.source} -> {args.target}: {written} bytes "
         f"(LUKS{opened.luks_version}, keyslot {opened.keyslot})", to_stderr=args.target == "-")
    return 0


def _decrypt_qcow2(args: argparse.Namespace, key: dict[str, Any]) -> int:
    """A qcow2 with qemu's built-in LUKS: qemu-img writes the guest's raw disk."""
    from imgcrypt.qemu import luks as qemu_luks

    if args.size is not None:
        raise UsageError("--size applies to LUKS containers; a qcow2 knows its virtual size")
    found = qemu_luks.read_qcow2_luks(args.source)
    passphrase = image_passphrase(**key)
    if args.target != "-":
        written = qemu_luks.decrypt(args.source, passphrase, args.target, force=args.force,
                                     mode=args.mode, max_size=args.max_size)
    else:
        written = qemu_luks.decrypt_to(args.source, passphrase, sys.stdout.buffer,
                                       max_size=args.max_size)
    data = {"source": args.source, "target": args.target, "format": "qcow2",
            "encryption": f"luks{found.luks.version}", "bytes_written": written}
    if key.get("key_id") is not None:
        data["key_id"] = key["key_id"]
    emit(args, data, f"decrypted {args.source} -> {args.target}: {written} bytes (qcow2 with "
         f"LUKS{found.luks.version}, through qemu-img)", to_stderr=args.target == "-")
    return 0

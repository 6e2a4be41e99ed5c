"""``imgcrypt decrypt``: write the decrypted payload of a LUKS image."""

from __future__ import annotations

import argparse
from typing import Any

from imgcrypt.cli import common
from imgcrypt.cli.encrypt import resolve_passphrase
from imgcrypt.cli.output import add_json_argument, emit
from imgcrypt.errors import UsageError
from imgcrypt.fileio import atomic_output, open_input
from imgcrypt.luks.stream import decrypt_payload, unlock_stream

EXAMPLE = """example:
  imgcrypt decrypt disk.luks disk.raw --passphrase-file pass.txt
  imgcrypt decrypt disk.luks - --key-id 5f0c...  | qemu-img info /dev/stdin"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "decrypt", help="decrypt a LUKS image to its raw payload",
        description="Decrypt the LUKS1/LUKS2 image SOURCE (- for stdin) to TARGET (- for stdout).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", metavar="SOURCE")
    parser.add_argument("target", metavar="TARGET")
    parser.add_argument("--passphrase-file", metavar="PATH",
                        help="read the passphrase from this file, its bytes exactly (- = stdin)")
    parser.add_argument("--size", type=int, metavar="BYTES",
                        help="true payload size (os_decrypt_size): trim the padding")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing TARGET (a regular file only)")
    parser.add_argument("--mode", type=_octal_mode, default=0o600, metavar="OCTAL",
                        help="permissions of TARGET, less the umask (default 0600: the "
                        "plaintext is readable by its owner only)")
    if common.key_arguments_available():
        from imgcrypt.cli import keyopts

        keyopts.add_key_arguments(parser, creating=False)
    common.add_progress_argument(parser)
    add_json_argument(parser)
    parser.set_defaults(func=run)


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
    passphrase, resolved = resolve_passphrase(args, creating=False)
    with open_input(args.source) as src:
        # Unlock before creating the target, so a wrong passphrase leaves nothing behind.
        opened = unlock_stream(src, passphrase)
        with atomic_output(args.target, force=args.force, source=args.source,
                           mode=args.mode) as dst, \
                common.progress_bar(args, args.size, "decrypt") as progress:
            written = decrypt_payload(opened, src, dst, size=args.size, progress=progress)
    header = opened.header
    data = {
        "source": args.source, "target": args.target, "format": f"luks{header.version}",
        "keyslot": opened.slot, "bytes_written": written,
    }
    if resolved is not None:
        data["key_id"] = resolved.key_id
    emit(args, data, f"decrypted {args.source} -> {args.target}: {written} bytes "
         f"(LUKS{header.version}, keyslot {opened.slot})", to_stderr=args.target == "-")
    return 0

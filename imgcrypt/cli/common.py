"""Pieces every command shares: passphrases, progress, and the LUKS format options."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from imgcrypt.cli.output import add_json_argument
from imgcrypt.crypto.kdfparams import KDF_NAMES
from imgcrypt.luks.engine import Progress
from imgcrypt.luks.options import DEFAULT_ITER_TIME_MS, FormatOptions


def command_parser(sub: Any, name: str, *, summary: str, description: str, example: str,
                   verbatim: bool = True) -> argparse.ArgumentParser:
    """The parser of command ``name``. ``verbatim`` keeps the description's and examples' own
    line breaks; without it argparse wraps them (sign and verify are written for that)."""
    formatter = argparse.RawDescriptionHelpFormatter if verbatim else argparse.HelpFormatter
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=description, epilog=example, formatter_class=formatter)
    return parser


def finish_command(parser: argparse.ArgumentParser,
                   run: Callable[[argparse.Namespace], int]) -> None:
    """What every command ends with: --json, and the function main() calls."""
    add_json_argument(parser)
    parser.set_defaults(func=run)


def add_image_argument(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    parser.add_argument("image", metavar="IMAGE", help=help_text)


def add_source_target_arguments(parser: argparse.ArgumentParser) -> None:
    """SOURCE and TARGET, either of them - for stdin/stdout."""
    parser.add_argument("source", metavar="SOURCE")
    parser.add_argument("target", metavar="TARGET")


def add_passphrase_file_argument(
        parser: argparse.ArgumentParser, *,
        help_text: str = "read the passphrase from this file, its bytes exactly (- = stdin)",
) -> None:
    """--passphrase-file, also under cryptsetup's name --key-file."""
    parser.add_argument("--passphrase-file", "--key-file", dest="passphrase_file",
                        metavar="PATH", help=help_text + "; --key-file is cryptsetup's name")


def add_key_slot_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """cryptsetup's -S/--key-slot."""
    parser.add_argument("--key-slot", "-S", dest="key_slot", type=int, metavar="N",
                        help=help_text)


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def byte_size(text: str) -> int:
    """``--max-size`` values: bytes, or with a binary suffix K, M, G, T, P (as qemu-img)."""
    number, unit = text.strip()[:-1], text.strip()[-1:].lower()
    if unit.isdigit():
        number, unit = text.strip(), ""
    if unit not in _SIZE_UNITS or not number.isascii() or not number.isdigit() \
            or len(number) > 19:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (bytes, or with K, M, G, T)")
    return int(number) * _SIZE_UNITS[unit]


def add_max_size_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-size", type=byte_size, metavar="SIZE",
                        help="refuse before writing when the output would be larger than SIZE "
                        "(bytes, or with K, M, G, T); the free space of TARGET's file system "
                        "is always checked")


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (it is off anyway when stderr is not a terminal)")


@contextlib.contextmanager
def progress_bar(args: argparse.Namespace, total: int | None,
                 label: str) -> Iterator[Progress | None]:
    """A byte counter on stderr when it is a terminal; ``None`` otherwise."""
    if getattr(args, "no_progress", False) or getattr(args, "json", False) \
            or not sys.stderr.isatty():
        yield None
        return
    import tqdm as tqdm_module
    from tqdm import tqdm

    # tqdm's monitor thread would make the process multi-threaded, and the file-to-file data
    # path forks its workers only when no other thread runs.
    tqdm_module.tqdm.monitor_interval = 0

    try:
        columns, lines = os.get_terminal_size(sys.stderr.fileno())
    except OSError:
        columns, lines = 0, 0
    # A terminal that reports no width (a fresh pty) still gets a bar of a usual size.
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
              file=sys.stderr, leave=False, ncols=columns or 80, nrows=lines or 24,
              mininterval=0.2) as bar:
        yield bar.update


def add_format_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LUKS format")
    group.add_argument("--format", "--type", dest="format", choices=("luks1", "luks2"),
                       default="luks1",
                       help="LUKS version (default luks1: what qemu-img and Glance accept); "
                       "--type is cryptsetup's name")
    group.add_argument("--cipher", default="aes-xts-plain64", help="default aes-xts-plain64")
    group.add_argument("--key-size", type=int, choices=(256, 512), default=512,
                       help="bits of the whole key as cryptsetup counts them: 512 = AES-256-XTS")
    group.add_argument("--hash", default="sha256", help="PBKDF2 / AF hash (default sha256)")
    group.add_argument("--sector-size", type=int, choices=(512, 1024, 2048, 4096),
                       help="LUKS2 only: encryption sector size (default 4096, as cryptsetup "
                       "on a file)")
    add_kdf_arguments(group)


def add_kdf_arguments(group: argparse._ActionsContainer) -> None:
    """The keyslot KDF options (cryptsetup's names), for a new image and for a new keyslot."""
    timing = group.add_mutually_exclusive_group()
    timing.add_argument("--iter-time", type=int, metavar="MS", default=DEFAULT_ITER_TIME_MS,
                        help=f"KDF time budget in milliseconds (default {DEFAULT_ITER_TIME_MS})")
    timing.add_argument("--iterations", type=int, metavar="N",
                        help="exact PBKDF2 iterations (or argon2 time cost)")
    group.add_argument("--pbkdf", choices=KDF_NAMES,
                       help="LUKS2 keyslot KDF (default argon2id; LUKS1 is always pbkdf2)")
    group.add_argument("--pbkdf-memory", type=int, metavar="KIB",
                       help="argon2 memory limit in KiB for the --iter-time benchmark (default "
                       "1048576, capped at half the RAM); exact with --iterations")
    group.add_argument("--pbkdf-parallel", type=int, metavar="N",
                       help="argon2 lanes (default min(4, CPUs))")


def format_options(args: argparse.Namespace) -> FormatOptions:
    options = FormatOptions(
        version=1 if args.format == "luks1" else 2, cipher=args.cipher, key_size=args.key_size,
        hash=args.hash, iter_time_ms=args.iter_time, iterations=args.iterations,
        sector_size=args.sector_size, pbkdf=args.pbkdf, pbkdf_memory_kib=args.pbkdf_memory,
        pbkdf_parallel=args.pbkdf_parallel, key_slot=getattr(args, "key_slot", None) or 0,
    )
    options.validate()
    return options

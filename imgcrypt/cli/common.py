"""Pieces every command shares: passphrases, progress, and the LUKS format options."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import termios
from collections.abc import Iterator

from imgcrypt.errors import TargetExistsError, UsageError
from imgcrypt.luks.options import DEFAULT_ITER_TIME_MS, FormatOptions
from imgcrypt.luks.stream import Progress

# A passphrase file larger than this is not a passphrase (cryptsetup's keyfile limit is 8 MiB).
MAX_PASSPHRASE_FILE = 8 << 20
# A terminal line is at most 4096 bytes in canonical mode; cryptsetup stops at 512 when asking.
MAX_TYPED_PASSPHRASE = 4096


def read_passphrase_file(path: str) -> bytes:
    """The file's bytes exactly, as cryptsetup's --key-file and qemu's secret,file= use them.

    The one rule for every passphrase file imgcrypt reads (LUKS passphrases and private-key
    passphrases alike): a trailing newline is part of the passphrase, as it is for cryptsetup.
    """
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_PASSPHRASE_FILE + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_PASSPHRASE_FILE + 1)
    except OSError as exc:
        raise UsageError(f"cannot read passphrase file {path}: {exc.strerror}") from None
    if len(data) > MAX_PASSPHRASE_FILE:
        raise UsageError(f"passphrase file {path} is larger than {MAX_PASSPHRASE_FILE} bytes")
    if not data:
        raise UsageError(f"passphrase file {path} is empty")
    return data


class NoTerminalError(UsageError):
    """A passphrase was needed, none was given, and there is no terminal to ask on."""


def prompt_passphrase(prompt: str, *, confirm: bool) -> bytes:
    """Ask on the controlling terminal without echo; twice when creating.

    Never from argv, the environment or stdin (stdin may carry the image). The terminal is
    opened as a raw descriptor: a buffered ``open("/dev/tty", "r+")`` needs a seekable file
    and fails on every terminal.
    """
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        raise NoTerminalError(
            "no passphrase: give --passphrase-file (or --key-id) when not on a terminal"
        ) from None
    try:
        first = _read_hidden(fd, prompt)
        if not first:
            raise UsageError("empty passphrase")
        if confirm and _read_hidden(fd, "Verify passphrase: ") != first:
            raise UsageError("passphrases do not match")
    finally:
        os.close(fd)
    return first


def _read_hidden(fd: int, prompt: str) -> bytes:
    """One line typed on terminal ``fd`` with echo off, without its newline; echo restored
    whatever happens (Ctrl-C raises KeyboardInterrupt out of the read)."""
    os.write(fd, prompt.encode("utf-8", "replace"))
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        raise NoTerminalError(
            "no passphrase: give --passphrase-file (or --key-id) when not on a terminal"
        ) from None
    quiet = list(saved)
    quiet[3] = saved[3] & ~(termios.ECHO | termios.ECHONL)
    line = bytearray()
    try:
        termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
        while not line.endswith(b"\n"):
            chunk = os.read(fd, 1024)
            if not chunk:  # end of input (Ctrl-D on an empty line)
                break
            line += chunk
            if len(line) > MAX_TYPED_PASSPHRASE:
                raise UsageError(f"a typed passphrase is limited to {MAX_TYPED_PASSPHRASE} bytes")
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
        os.write(fd, b"\n")
    typed = bytes(line)
    return typed[:-1] if typed.endswith(b"\n") else typed


def passphrase_from(path: str | None, *, confirm: bool, prompt: str = "Passphrase: ") -> bytes:
    if path is not None:
        return read_passphrase_file(path)
    return prompt_passphrase(prompt, confirm=confirm)


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


def check_target(target: str, *, force: bool) -> None:
    """Refuse an output before any work (or any new key): it exists, or its directory does
    not. The error names the target, not the temporary file that would sit beside it."""
    if target == "-":
        return
    if os.path.lexists(target) and not force:
        raise TargetExistsError(f"{target} exists (use --force to replace it)")
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, "no such directory for the target", target)


def input_size(path: str) -> int | None:
    if path == "-":
        return None
    try:
        return os.stat(path).st_size
    except OSError:
        return None


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
    timing = group.add_mutually_exclusive_group()
    timing.add_argument("--iter-time", type=int, metavar="MS", default=DEFAULT_ITER_TIME_MS,
                        help="KDF time budget in milliseconds (default 2000)")
    timing.add_argument("--iterations", type=int, metavar="N",
                        help="exact PBKDF2 iterations (or argon2 time cost)")
    group.add_argument("--sector-size", type=int, choices=(512, 1024, 2048, 4096),
                       help="LUKS2 only: encryption sector size (default 4096, as cryptsetup "
                       "on a file)")
    group.add_argument("--pbkdf", choices=("argon2id", "argon2i", "pbkdf2"),
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
        pbkdf_parallel=args.pbkdf_parallel,
    )
    options.validate()
    return options


def key_arguments_available() -> bool:
    try:
        import imgcrypt.cli.keyopts  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True

"""Input handling every command shares: passphrase sources, key resolution, stdin sniffing,
image sources and the refusal of targets before any work.

Commands import this module (and :mod:`imgcrypt.cli.common` for argument builders); no command
imports another. Outputs go through :func:`imgcrypt.fileio.atomic_output`.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import stat
import sys
import termios
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from imgcrypt.cli import keyopts
from imgcrypt.errors import (
    NoTerminalError,
    PassphraseRequiredError,
    TargetExistsError,
    UnsupportedError,
    UsageError,
    WrongPassphraseError,
)
from imgcrypt.fileio import open_input
from imgcrypt.keys.manager import KeyManager

if TYPE_CHECKING:
    # The signing stack (cryptography.x509 and the algorithm families) is imported by the
    # functions that sign or verify, so that encrypt, decrypt and the others never load it.
    from imgcrypt.luks.engine import Source
    from imgcrypt.signing.algorithms import PrivateKey

# A passphrase file larger than this is not a passphrase (cryptsetup's keyfile limit is 8 MiB).
MAX_PASSPHRASE_FILE = 8 << 20
# A terminal line is at most 4096 bytes in canonical mode; cryptsetup stops at 512 when asking.
MAX_TYPED_PASSPHRASE = 4096


def read_passphrase_file(path: str) -> bytes:
    """The file's bytes exactly, as cryptsetup's --key-file and qemu's secret,file= use them.

    The one rule for every passphrase file imgcrypt reads (LUKS passphrases and private-key
    passphrases alike): a trailing newline is part of the passphrase, as it is for cryptsetup.
    """
    return read_small_file(path, MAX_PASSPHRASE_FILE, name=f"passphrase file {path}",
                           from_stdin=True)


def read_small_file(path: str, limit: int, *, name: str, too_large: str = "",
                    from_stdin: bool = False) -> bytes:
    """The bytes of a file given on the command line that holds a secret: at most ``limit``,
    never none. ``name`` says what the file is in the errors, ``too_large`` what a larger file
    then is not; with ``from_stdin``, - is stdin."""
    try:
        if from_stdin and path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from None
    if len(data) > limit:
        raise UsageError(f"{name} is larger than {limit} bytes{too_large}")
    if not data:
        raise UsageError(f"{name} is empty")
    return data


def property_assignments(items: list[str]) -> dict[str, str]:
    """``--property NAME=VALUE`` arguments as properties; a name given twice is refused (which
    value was meant is not ours to guess)."""
    result: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--property wants NAME=VALUE, not {item!r}")
        if name in result:
            raise UsageError(f"--property {name} given twice")
        result[name] = value
    return result


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


def input_size(stream: BinaryIO) -> int | None:
    """The size of an opened SOURCE when it is a regular file (the file that is read, never
    the name again), else None (a pipe, stdin)."""
    return os.fstat(stream.fileno()).st_size if _regular_file(stream) else None


def decryption_key(args: argparse.Namespace) -> dict[str, Any]:
    """What opens an image's keyslot, as :func:`imgcrypt.recipes.unlock_image` takes it: the
    key-manager secret ``--key-id`` (read by the recipe) or a passphrase (``--passphrase-file``,
    or typed)."""
    request = keyopts.key_request(args, creating=False)
    if request is None:
        return {"passphrase": passphrase_from(args.passphrase_file, confirm=False)}
    if args.passphrase_file is not None:
        raise UsageError("give either --passphrase-file or a key-manager key, not both")
    return {"key_manager": request.manager, "key_id": request.key_id}


def encryption_key(args: argparse.Namespace) -> dict[str, Any]:
    """What opens the keyslot of a new image, as :func:`imgcrypt.recipes.encrypting` takes it:
    a key-manager key (``--key-id``, ``--new-key``; ordered or read by the recipe) or a
    passphrase (``--passphrase-file``, or typed twice). Refused before any key is made: both."""
    request = keyopts.key_request(args, creating=True)
    if request is None:
        return {"passphrase": passphrase_from(args.passphrase_file, confirm=True)}
    if args.passphrase_file is not None:
        raise UsageError("give either --passphrase-file or a key-manager key, not both")
    return {"key_manager": request.manager, "key_id": request.key_id, "new_key": request.order}


class _Prefixed(io.RawIOBase):
    """``head`` followed by the rest of ``rest``: stdin after its magic bytes were read."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._rest = cast(io.BufferedIOBase, rest)  # sys.stdin.buffer: it has readinto

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._rest.readinto(buffer)


def sniff_stdin() -> tuple[BinaryIO, str | None]:
    """stdin, with nothing consumed, and the image format its magic bytes name (or None)."""
    from imgcrypt.qemu import SNIFF_SIZE, sniff_format

    stdin = sys.stdin.buffer
    if _regular_file(stdin):
        # a redirected file: look without moving, so the file-to-file fast path stays
        return stdin, sniff_format(os.pread(stdin.fileno(), SNIFF_SIZE, stdin.tell()))
    from imgcrypt.luks.engine import widen_pipe

    widen_pipe(stdin)  # the wrapper returned below has no descriptor for the engine to widen
    head = b""
    while len(head) < SNIFF_SIZE:
        chunk = stdin.read(SNIFF_SIZE - len(head))
        if not chunk:
            break
        head += chunk
    return cast(BinaryIO, io.BufferedReader(_Prefixed(head, stdin))), sniff_format(head)


def refuse_image_on_stdin(found: str, use: str) -> UnsupportedError:
    what = "a LUKS image" if found == "luks" else f"a {found} image"
    return UnsupportedError(f"stdin holds {what} (by its magic bytes): {use}")


def stdin_source(*, explicit_raw: bool) -> BinaryIO:
    """stdin as a raw guest disk. qemu-img cannot read an image format from a pipe, so a
    qcow2/vmdk/vhdx/vdi/vpc (or LUKS) recognised by its magic bytes is refused rather than
    encrypted as if it were the guest's disk, unless ``--source-format raw`` says it is."""
    if explicit_raw:
        return sys.stdin.buffer
    stream, found = sniff_stdin()
    if found is not None:
        raise refuse_image_on_stdin(
            found, "not a raw disk: give it as a file (qemu-img cannot read it from a pipe), "
            "or --source-format raw to encrypt its bytes as they are")
    return stream


@contextlib.contextmanager
def guest_input(source: str, source_format: str | None, *,
                planned: Callable[[int | None], None] | None = None
                ) -> Iterator[tuple[BinaryIO | Source, str, int | None]]:
    """(raw guest bytes, the source's format, its size when known) for SOURCE: stdin as a raw
    disk (:func:`stdin_source`), a file through :func:`imgcrypt.qemu.guest.open_guest`.

    ``planned(size)`` runs once the size is known and before any guest data is read (the
    size guard); a non-raw source declaring a disk far beyond its file gets a note first."""
    if source == "-":
        if source_format not in (None, "raw"):
            raise UsageError("a source on stdin must be raw")
        if planned is not None:
            planned(None)
        yield stdin_source(explicit_raw=source_format == "raw"), "raw", None
        return
    from imgcrypt.qemu.guest import open_guest
    from imgcrypt.qemu.source import bomb_note

    def before_reading(found: str, size: int) -> None:
        if found != "raw":
            bomb_note(source, size, note)
        if planned is not None:
            planned(size)

    with open_guest(source, source_format, before_reading=before_reading) as opened:
        yield opened


def note(text: str) -> None:
    """One ``imgcrypt: note:`` line on stderr, control characters escaped."""
    from imgcrypt.text import escape

    sys.stderr.write(f"imgcrypt: note: {escape(text)}\n")


def room_for_luks(target: str, options: Any, max_size: int | None
                  ) -> Callable[[int | None], None]:
    """The size guard of a LUKS output at ``target`` (:func:`imgcrypt.fileio.check_room`)."""
    from imgcrypt.fileio import check_room

    return lambda payload: check_room(target, planned_luks_size(payload, options), max_size)


def planned_luks_size(payload: int | None, options: Any) -> int | None:
    """The size of a LUKS container for ``payload`` bytes, at most: the payload in whole
    4096-byte sectors after the largest default header (16 MiB, LUKS2; LUKS1 takes 2 MiB)."""
    if payload is None:
        return None
    header = (16 << 20) if getattr(options, "version", 2) == 2 else (2 << 20)
    return header + -(-payload // 4096) * 4096


def _regular_file(stream: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode) and stream.seekable()
    except (OSError, ValueError, io.UnsupportedOperation):
        return False


def key_manager(args: argparse.Namespace) -> KeyManager:
    """The key manager the command-line options (and imgcrypt.toml) name."""
    return keyopts.key_manager_from_args(args)


@contextlib.contextmanager
def luks_input(source: str) -> Iterator[BinaryIO]:
    """SOURCE opened; on stdin, a qcow2 (which qemu-img cannot read from a pipe) is named."""
    if source != "-":
        with open_input(source) as f:
            yield f
        return
    stream, found = sniff_stdin()
    if found not in (None, "luks"):
        raise refuse_image_on_stdin(found, "give it as a file (qemu-img cannot read it from a "
                                    "pipe)")
    yield stream


def signing_key(path: str, passphrase_file: str | None) -> PrivateKey:
    """The private key in ``path`` (PEM or DER), decrypted with the passphrase in
    ``passphrase_file`` (the one passphrase-file rule: the bytes exactly), or with one typed at
    the terminal when the key is encrypted and no file is given."""
    from imgcrypt.signing.keyfile import load_private_key

    with open(path, "rb") as handle:
        data = handle.read()
    if passphrase_file:
        passphrase = read_passphrase_file(passphrase_file)
        try:
            return load_private_key(data, passphrase)
        except WrongPassphraseError:
            if passphrase.endswith(b"\n"):
                raise WrongPassphraseError(
                    f"the passphrase does not decrypt {path}; {passphrase_file} "
                    "ends in a newline, which is part of the passphrase (write it with "
                    "printf '%s', not echo)"
                ) from None
            raise
    try:
        return load_private_key(data, None)
    except PassphraseRequiredError:
        pass
    try:
        typed = prompt_passphrase(f"passphrase for {path}: ", confirm=False)
    except NoTerminalError:
        raise PassphraseRequiredError(
            "the private key is encrypted; give --key-passphrase-file"
        ) from None
    return load_private_key(data, typed)

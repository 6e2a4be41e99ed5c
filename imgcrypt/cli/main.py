"""Entry point of the ``imgcrypt`` command: argument parsing and the error-to-exit-code contract."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from imgcrypt.errors import (
    CLOSED_PIPE_EXIT,
    EXIT_CODES,
    INTERRUPTED_EXIT,
    ImgcryptError,
    UsageError,
)

# One module a command; each exposes register(subparsers) and sets ``func`` on its parser.
COMMAND_MODULES = (
    "imgcrypt.cli.encrypt",
    "imgcrypt.cli.decrypt",
    "imgcrypt.cli.inspect",
    "imgcrypt.cli.rekey",
    "imgcrypt.cli.repair",
    "imgcrypt.cli.keys",
    "imgcrypt.cli.sign",
    "imgcrypt.cli.verify",
    "imgcrypt.cli.properties",
    "imgcrypt.cli.upload",
    "imgcrypt.cli.download",
    "imgcrypt.cli.catalogue",
)


class _ArgumentError(Exception):
    """argparse refused the command line; main() reports it like any usage error."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in the imgcrypt one-line style with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgumentError(message)


class _VersionAction(argparse.Action):
    """``--version``: the version is looked up only when asked for (see imgcrypt.__version__)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from imgcrypt import __version__

        sys.stdout.write(f"imgcrypt {__version__}\n")
        parser.exit()


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv`` naming one command, only that command's module is imported,
    which keeps start-up short (signing and key-manager imports cost a tenth of a second)."""
    parser = _Parser(
        prog="imgcrypt",
        description="Encrypt, sign and verify virtual-machine disk images (LUKS1/LUKS2).",
        epilog="Exit codes: " + ", ".join(f"{code} {meaning}" for code, meaning
                                          in EXIT_CODES.items())
        + '. With --json, a failure also prints {"error": {"code": N, "message": ...}}.',
    )
    parser.add_argument("--version", action=_VersionAction,
                        help="print imgcrypt's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    wanted = _command_in(argv)
    for name in COMMAND_MODULES:
        if wanted is not None and name.rsplit(".", 1)[1] != wanted:
            continue
        importlib.import_module(name).register(sub)
    return parser


def _command_in(argv: Sequence[str] | None) -> str | None:
    """The command ``argv`` names, if it names one of ours as its first word."""
    if not argv or argv[0].startswith("-"):
        return None
    known = {name.rsplit(".", 1)[1] for name in COMMAND_MODULES}
    return argv[0] if argv[0] in known else None


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    if not argv:
        # `imgcrypt` alone: the usage and the commands, on stderr, as a usage error.
        parser.print_help(sys.stderr)
        return UsageError.exit_code
    wants_json = "--json" in argv
    try:
        args = parser.parse_args(argv)
    except _ArgumentError as exc:
        return _fail(str(exc), UsageError.exit_code, json_to=sys.stdout if wants_json else None)
    json_to = None
    if getattr(args, "json", False):
        # Commands whose stdout carries image data put their JSON on stderr; so does the error.
        json_to = sys.stderr if getattr(args, "target", None) == "-" else sys.stdout
    try:
        code: int = args.func(args)
        return code
    except ImgcryptError as exc:
        return _fail(str(exc) or type(exc).__name__, exc.exit_code, json_to=json_to,
                     leftovers=_warn_leftovers(exc))
    except KeyboardInterrupt as exc:
        _warn_leftovers(exc)
        return _fail("interrupted", INTERRUPTED_EXIT, json_to=json_to)
    except BrokenPipeError:
        # The reader went away (``imgcrypt decrypt x - | head``): not our failure to report.
        return _closed_pipe()
    except OSError as exc:
        _warn_leftovers(exc)
        message = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        return _fail(message, ImgcryptError.exit_code, json_to=json_to)


def _closed_pipe() -> int:
    # Point stdout at /dev/null so the interpreter's final flush cannot fail again and print
    # "Exception ignored ... BrokenPipeError" on the way out.
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return CLOSED_PIPE_EXIT


def _fail(message: str, code: int, *, json_to: TextIO | None,
          leftovers: list[str] | None = None) -> int:
    _report(message)
    if json_to is not None:
        error: dict[str, object] = {"code": code, "message": " ".join(message.split())}
        if leftovers:
            error["leftovers"] = leftovers
        with contextlib.suppress(OSError):
            json_to.write(json.dumps({"error": error}) + "\n")
            json_to.flush()
    return code


def _warn_leftovers(exc: BaseException) -> list[str]:
    """What a failed command could not roll back (a new key the key manager would not delete,
    a consumer it would not remove): one warning line each, before the error line; the same
    lines for ``--json``'s error object."""
    from imgcrypt.keys.lease import leftover_notes
    from imgcrypt.text import escape

    lines = [" ".join(note.split()) for note in leftover_notes(exc)]
    for line in lines:
        sys.stderr.write(f"imgcrypt: warning: {escape(line)}\n")
    return lines


def _report(message: str) -> None:
    from imgcrypt.text import escape

    line = escape(" ".join(message.split()))
    sys.stderr.write(f"imgcrypt: error: {line}\n")


def run() -> None:
    code = main()
    if code == INTERRUPTED_EXIT:
        # Interrupted, cleaned up and reported: leave now with the documented code. Left to
        # the interpreter's own exit, the process sometimes ended by SIGINT instead (seen on a
        # real terminal after a Ctrl-C during a transfer; cause inside CPython not pinned down).
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()

"""Entry point of the ``imgcrypt`` command: argument parsing and the error-to-exit-code contract."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

from imgcrypt.errors import ImgcryptError

# One module a command; each exposes register(subparsers) and sets ``func`` on its parser.
COMMAND_MODULES = (
    "imgcrypt.cli.encrypt",
    "imgcrypt.cli.decrypt",
    "imgcrypt.cli.inspect",
    "imgcrypt.cli.rekey",
    "imgcrypt.cli.keys",
    "imgcrypt.cli.sign",
    "imgcrypt.cli.verify",
    "imgcrypt.cli.properties",
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in the imgcrypt one-line style with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"imgcrypt: error: {message}\n")
        raise SystemExit(2)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv`` naming one command, only that command's module is imported,
    which keeps start-up short (signing and key-manager imports cost a tenth of a second)."""
    parser = _Parser(
        prog="imgcrypt",
        description="Encrypt, sign and verify virtual-machine disk images (LUKS1/LUKS2).",
        epilog="Exit codes: 0 ok, 1 unexpected failure, 2 usage, 3 malformed or unsupported "
        "input, 4 wrong passphrase or failed verification, 5 key manager unreachable or "
        "secret not found, 130 interrupted.",
    )
    from imgcrypt import __version__

    parser.add_argument("--version", action="version", version=f"imgcrypt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    wanted = _command_in(argv)
    for name in COMMAND_MODULES:
        if wanted is not None and name.rsplit(".", 1)[1] != wanted:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # command not built yet
            raise
        module.register(sub)
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
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ImgcryptError as exc:
        _report(str(exc) or type(exc).__name__)
        return exc.exit_code
    except KeyboardInterrupt:
        _report("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (``imgcrypt decrypt x - | head``): not our failure to report.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        return 1
    except OSError as exc:
        _report(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return 1


def _report(message: str) -> None:
    from imgcrypt.text import escape

    line = escape(" ".join(message.split()))
    sys.stderr.write(f"imgcrypt: error: {line}\n")


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()

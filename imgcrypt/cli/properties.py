"""``imgcrypt properties``: the image properties to attach, ready for the openstack client."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from imgcrypt.cli import common, keyopts
from imgcrypt.cli.output import emit
from imgcrypt.fileio import open_input
from imgcrypt.imageprops import (
    FORMAT_NAMES,
    MAX_SIGNATURE_DOCUMENT,
    WHOLE_PAYLOAD,
    attach_properties,
    check_attachable,
    merge_signature,
    signature_document,
)
from imgcrypt.keys.rules import DEFAULT_DELETION_POLICY, DELETION_POLICIES
from imgcrypt.text import escape

EXAMPLE = """example:
  imgcrypt properties disk.luks --key-id 5f0c... --signature sig.json
  openstack image create --file disk.luks --disk-format raw --container-format bare \\
      $(imgcrypt properties disk.luks --key-id 5f0c... --signature sig.json) my-image"""


def register(sub: Any) -> None:
    parser = common.command_parser(
        sub, "properties", summary="print the image properties to attach",
        description="Work out the properties an image service needs for IMAGE: the encryption "
        "properties from its LUKS header and key id (the key is fetched and must open IMAGE), "
        "plus any signature properties written by 'imgcrypt sign'. Prints '--property k=v' "
        "arguments for 'openstack image create/set' (or one JSON object with --json). Only "
        "property names imgcrypt knows are printed, and only values made of letters, digits "
        "and ._:+/=- (safe unquoted in $(...)); anything else is refused.",
        example=EXAMPLE,
    )
    common.add_image_argument(parser)
    parser.add_argument("--deletion-policy", default=DEFAULT_DELETION_POLICY,
                        choices=DELETION_POLICIES,
                        help="what to do with the key when the image is deleted")
    parser.add_argument("--signature", action="append", default=[], metavar="FILE",
                        help="properties JSON from 'imgcrypt sign' (repeatable)")
    parser.add_argument("--size", type=_size, metavar="BYTES",
                        help="the plaintext size, os_decrypt_size: the size of the image that "
                        "was encrypted (encrypt prints it), or 'payload' when it is the whole "
                        "LUKS payload. Needed for an encrypted image: its header records the "
                        "payload rounded up to whole sectors, not the plaintext size")
    keyopts.add_key_arguments(parser, creating=False)
    common.finish_command(parser, run)


def _size(text: str) -> int | str:
    if text == WHOLE_PAYLOAD:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a number of bytes nor {WHOLE_PAYLOAD!r}") from None


def _open_key(args: argparse.Namespace) -> tuple[str, bytes]:
    """The key --key-id names, from the key manager: its id and LUKS passphrase."""
    resolved = keyopts.resolve_key(args, creating=False)
    assert resolved is not None
    return resolved.key_id, resolved.passphrase


def image_properties(args: argparse.Namespace) -> dict[str, str]:
    with open_input(args.image) as f:
        properties = attach_properties(
            f, image=args.image, key_id=args.key_id, open_key=lambda: _open_key(args),
            size=args.size, deletion_policy=args.deletion_policy,
        )
    for path in args.signature:
        _merge_signature(properties, _read_signature(path), path)
    for name, value in properties.items():
        check_attachable(name, value, "the image")
    return properties


def _read_signature(path: str) -> dict[str, str]:
    with open(path, "rb") as s:
        return signature_document(s.read(MAX_SIGNATURE_DOCUMENT + 1), path)


def _merge_signature(properties: dict[str, str], extra: dict[str, str], path: str) -> None:
    def note(absent: list[str]) -> None:
        sys.stderr.write(
            f"imgcrypt: note: not attaching {', '.join(escape(a) for a in absent)}: the "
            f"signature in {escape(path)} binds "
            "them as absent (sign with --bind FILE to bind them)\n"
        )

    merge_signature(properties, extra, path, dropped=note)


def run(args: argparse.Namespace) -> int:
    properties = image_properties(args)
    # Every value passed check_attachable, so no quoting is needed (and quotes would not survive
    # an unquoted $(...) anyway).
    arguments = " ".join(
        f"--property {k}={v}" for k, v in sorted(properties.items())
        if k not in FORMAT_NAMES
    )
    emit(args, properties, arguments)
    return 0

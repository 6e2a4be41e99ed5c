"""``imgcrypt properties``: the image properties to attach, ready for the openstack client."""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from typing import Any

from imgcrypt.cli import common, keyopts
from imgcrypt.cli.output import emit
from imgcrypt.errors import FormatError, UsageError, WrongPassphraseError
from imgcrypt.fileio import open_input
from imgcrypt.imageprops import FORMAT_NAMES, drop_bound_as_absent, known_property
from imgcrypt.jsonkeys import unique_keys
from imgcrypt.luks.container import is_luks
from imgcrypt.luks.stream import read_header, unlock_stream

EXAMPLE = """example:
  imgcrypt properties disk.luks --key-id 5f0c... --signature sig.json
  openstack image create --file disk.luks --disk-format raw --container-format bare \\
      $(imgcrypt properties disk.luks --key-id 5f0c... --signature sig.json) my-image"""

MAX_SIGNATURE_FILE = 1 << 20

# The output is pasted unquoted into a shell command line ($(...)), where quotes are not
# interpreted: a value must be one word that no shell splits or globs, or it is refused.
SAFE_VALUE = re.compile(r"[A-Za-z0-9._:+/=-]*")
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
    parser.add_argument("--deletion-policy", default="on_image_deletion",
                        choices=("on_image_deletion", "do_not_delete"),
                        help="what to do with the key when the image is deleted")
    parser.add_argument("--signature", action="append", default=[], metavar="FILE",
                        help="properties JSON from 'imgcrypt sign' (repeatable)")
    parser.add_argument("--size", type=int, metavar="BYTES",
                        help="true payload size (default: the whole payload)")
    keyopts.add_key_arguments(parser, creating=False)
    common.finish_command(parser, run)


def _check_key(args: argparse.Namespace, region: bytes) -> None:
    """The key exists in the key manager and opens a keyslot of IMAGE's header."""
    resolved = keyopts.resolve_key(args, creating=False)
    assert resolved is not None
    try:
        unlock_stream(io.BytesIO(region), resolved.passphrase)
    except WrongPassphraseError:
        raise WrongPassphraseError(
            f"key {resolved.key_id} does not open {args.image}"
        ) from None


def image_properties(args: argparse.Namespace) -> dict[str, str]:
    properties: dict[str, str] = {"disk_format": "raw", "container_format": "bare"}
    with open_input(args.image) as f:
        prefix = f.read(8)
        if not is_luks(prefix):
            if args.key_id:
                raise FormatError(f"{args.image} is not a LUKS image, yet a key id was given")
        else:
            if not args.key_id:
                raise UsageError("IMAGE is encrypted: give --key-id, the secret that opens it")
            from imgcrypt.keys.properties import encryption_properties

            rest = io.BytesIO(prefix + f.read(128 << 20))
            header, region = read_header(rest)
            _check_key(args, region)
            payload = header.payload_size
            if payload is None:
                payload = len(rest.getvalue()) - header.payload_offset + _remaining(f)
            size = args.size if args.size is not None else payload
            if not 0 <= size <= payload:
                raise UsageError(f"--size {size} does not fit the payload of {payload} bytes")
            properties.update(encryption_properties(args.key_id, header.version, size,
                                                    args.deletion_policy))
    for path in args.signature:
        _merge_signature(properties, _read_signature(path), path)
    for name, value in properties.items():
        _check_safe(name, value, "the image")
    return properties


def _read_signature(path: str) -> dict[str, str]:
    with open(path, "rb") as s:
        raw = s.read(MAX_SIGNATURE_FILE + 1)
    if len(raw) > MAX_SIGNATURE_FILE:
        raise FormatError(f"{path} is too large for a properties file")
    # the duplicate-key rule every property document imgcrypt reads follows
    twice = unique_keys(lambda key: FormatError(f"{path} sets {key[:64]!r} more than once"))
    try:
        extra = json.loads(raw, object_pairs_hook=twice)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FormatError(f"{path} is not a JSON object of properties") from None
    if not isinstance(extra, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        raise FormatError(f"{path} is not a flat JSON object of strings")
    for name, value in extra.items():
        _check_safe(name, value, path)
    return extra


def _check_safe(name: str, value: str, where: str) -> None:
    """Refuse, never escape: a name imgcrypt does not write, or a value a shell would split."""
    if not known_property(name):
        raise FormatError(f"{where} sets {name[:64]!r}, not a property imgcrypt knows")
    if SAFE_VALUE.fullmatch(value) is None:
        raise FormatError(
            f"{where}: the value of {name} has characters outside letters, digits and ._:+/=-"
        )


def _merge_signature(properties: dict[str, str], extra: dict[str, str], path: str) -> None:
    absent = drop_bound_as_absent(properties, extra, path)
    if absent:
        sys.stderr.write(
            f"imgcrypt: note: not attaching {', '.join(absent)}: the signature in {path} binds "
            "them as absent (sign with --bind FILE to bind them)\n"
        )
    for key, value in extra.items():
        if key in properties and properties[key] != value:
            raise FormatError(f"{path} sets {key} differently from the image")
        properties[key] = value


def _remaining(f: Any) -> int:
    total = 0
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            return total
        total += len(chunk)


def run(args: argparse.Namespace) -> int:
    properties = image_properties(args)
    # Every value passed _check_safe, so no quoting is needed (and quotes would not survive
    # an unquoted $(...) anyway).
    arguments = " ".join(
        f"--property {k}={v}" for k, v in sorted(properties.items())
        if k not in FORMAT_NAMES
    )
    emit(args, properties, arguments)
    return 0

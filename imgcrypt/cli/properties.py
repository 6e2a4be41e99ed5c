"""``imgcrypt properties``: the image properties to attach, ready for the openstack client."""

from __future__ import annotations

import argparse
import io
import json
import shlex
from typing import Any

from imgcrypt.cli.output import add_json_argument, emit
from imgcrypt.errors import FormatError, UsageError
from imgcrypt.fileio import open_input
from imgcrypt.luks.container import is_luks
from imgcrypt.luks.stream import read_header

EXAMPLE = """example:
  imgcrypt properties disk.luks --key-id 5f0c... --signature sig.json
  openstack image create --file disk.luks --disk-format raw --container-format bare \\
      $(imgcrypt properties disk.luks --key-id 5f0c... --signature sig.json) my-image"""

MAX_SIGNATURE_FILE = 1 << 20


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "properties", help="print the image properties to attach",
        description="Work out the properties an image service needs for IMAGE: the encryption "
        "properties from its LUKS header and key id, plus any signature properties written by "
        "'imgcrypt sign'. Prints '--property k=v' arguments for 'openstack image create/set' "
        "(or one JSON object with --json).",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("--key-id", help="key-manager id of the secret that opens IMAGE")
    parser.add_argument("--deletion-policy", default="on_image_deletion",
                        choices=("on_image_deletion", "do_not_delete"),
                        help="what to do with the key when the image is deleted")
    parser.add_argument("--signature", action="append", default=[], metavar="FILE",
                        help="properties JSON from 'imgcrypt sign' (repeatable)")
    parser.add_argument("--size", type=int, metavar="BYTES",
                        help="true payload size (default: the whole payload)")
    add_json_argument(parser)
    parser.set_defaults(func=run)


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
            header, _ = read_header(rest)
            payload = header.payload_size
            if payload is None:
                payload = len(rest.getvalue()) - header.payload_offset + _remaining(f)
            size = args.size if args.size is not None else payload
            if not 0 <= size <= payload:
                raise UsageError(f"--size {size} does not fit the payload of {payload} bytes")
            properties.update(encryption_properties(args.key_id, header.version, size,
                                                    args.deletion_policy))
    for path in args.signature:
        with open(path, "rb") as s:
            raw = s.read(MAX_SIGNATURE_FILE + 1)
        if len(raw) > MAX_SIGNATURE_FILE:
            raise FormatError(f"{path} is too large for a properties file")
        try:
            extra = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise FormatError(f"{path} is not a JSON object of properties") from None
        if not isinstance(extra, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
        ):
            raise FormatError(f"{path} is not a flat JSON object of strings")
        for key, value in extra.items():
            if key in properties and properties[key] != value:
                raise FormatError(f"{path} sets {key} differently from the image")
            properties[key] = value
    return properties


def _remaining(f: Any) -> int:
    total = 0
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            return total
        total += len(chunk)


def run(args: argparse.Namespace) -> int:
    properties = image_properties(args)
    arguments = " ".join(
        f"--property {shlex.quote(f'{k}={v}')}" for k, v in sorted(properties.items())
        if k not in ("disk_format", "container_format")
    )
    emit(args, properties, arguments)
    return 0

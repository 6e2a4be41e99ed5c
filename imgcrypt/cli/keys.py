"""``imgcrypt keys create|show|list|delete``: manage secrets in any supported key manager."""

from __future__ import annotations

import argparse
import base64
from typing import Any

from imgcrypt.cli.inputs import read_small_file
from imgcrypt.cli.keyopts import add_key_manager_arguments, key_manager_from_args
from imgcrypt.cli.output import add_json_argument, emit
from imgcrypt.keys.consumers import LOCAL_CONSUMER_SERVICE, consumer_name
from imgcrypt.keys.manager import Consumer, SecretInfo
from imgcrypt.keys.rules import (
    consumers_of,
    delete_secret,
    generation_order,
    luks_passphrase_text,
    secret_from_payload,
)
from imgcrypt.keys.secret import SECRET_TYPES, SYMMETRIC
from imgcrypt.text import escape

MAX_PAYLOAD_FILE = 64 * 1024


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "keys",
        help="create, show, list and delete secrets in a key manager",
        description="Manage the secrets that open encrypted images, in the local keystore, "
        "Barbican or any castellan backend.",
        epilog="example: imgcrypt keys create --key-manager local --name vm1",
    )
    add_json_argument(parser)
    actions = parser.add_subparsers(dest="keys_command", metavar="ACTION")
    actions.required = True

    create = actions.add_parser(
        "create",
        help="create a secret (generated, or read from a file)",
        description="Create a secret. By default a symmetric AES key of 512 bits for XTS is "
        "generated; --type passphrase generates a passphrase; --payload-file stores given bytes.",
        epilog="example: imgcrypt keys create --type passphrase --name laptop-images",
    )
    create.add_argument("--type", dest="secret_type", choices=SECRET_TYPES,
                        default=SYMMETRIC,
                        help="secret type (default: symmetric); types other than symmetric and "
                        "passphrase (certificate, private, public, opaque) need --payload-file")
    create.add_argument("--algorithm", default="AES", help="key algorithm (default: AES)")
    create.add_argument("--bit-length", type=int, default=512,
                        help="key length in bits, the whole XTS key (default: 512)")
    create.add_argument("--mode", default="XTS", help="cipher mode (default: XTS)")
    create.add_argument("--name", default=None, help="a name for the secret")
    create.add_argument("--payload-file", metavar="FILE", default=None,
                        help="store the bytes of FILE instead of generating a secret")
    _common(create, _run_create)

    show = actions.add_parser(
        "show",
        help="show a secret's metadata (the secret itself only with --reveal)",
        description="Show a secret's metadata. The key material and the LUKS passphrase are "
        "printed only when --reveal is given.",
        epilog="example: imgcrypt keys show 0b6c1c6e-5a3a-4c1e-9d3f-2f5b1a7c9e11",
    )
    show.add_argument("key_id", metavar="KEY_ID")
    show.add_argument("--reveal", action="store_true",
                      help="also print the payload (base64) and the LUKS passphrase")
    _common(show, _run_show)

    listing = actions.add_parser(
        "list", help="list secrets (metadata only)", description="List the secrets you can see.",
        epilog="example: imgcrypt keys list --key-manager barbican --os-cloud mycloud",
    )
    _common(listing, _run_list)

    delete = actions.add_parser(
        "delete",
        help="delete a secret (refused while it has consumers unless --force)",
        description="Delete a secret. The key manager refuses while consumers are registered.",
        epilog="example: imgcrypt keys delete 0b6c1c6e-5a3a-4c1e-9d3f-2f5b1a7c9e11",
    )
    delete.add_argument("key_id", metavar="KEY_ID")
    delete.add_argument("--force", action="store_true",
                        help="delete even when consumers are registered")
    _common(delete, _run_delete)

    consumers = actions.add_parser(
        "consumers",
        help="list a key's consumers with their images' status; find and clear stale ones",
        description="List the consumers registered on keys (the given ones, or every key you "
        "can see), asking the image service for the status of each image consumer. A "
        "consumer is stale when its image is gone, queued, killed or deleted, or has been "
        "saving, uploading or importing for longer than --min-age (an import that died "
        "half-way). --clear-stale removes the stale consumers, so the key can be deleted "
        "once nothing real uses it.",
        epilog="example: imgcrypt keys consumers --stale --key-manager barbican",
    )
    consumers.add_argument("key_ids", metavar="KEY_ID", nargs="*",
                           help="keys to look at (default: every key you can list)")
    show_stale = consumers.add_mutually_exclusive_group()
    show_stale.add_argument("--stale", action="store_true",
                            help="list only the stale consumers")
    show_stale.add_argument("--clear-stale", action="store_true",
                            help="remove the stale consumers")
    consumers.add_argument("--min-age", type=float, default=3600.0, metavar="SECONDS",
                           help="how long an upload or import must have been in progress to "
                                "count as dead (default 3600: Glance's import lock)")
    _common(consumers, _run_consumers)


def _common(parser: argparse.ArgumentParser, func: Any) -> None:
    # ``keys --json list`` and ``keys list --json`` both work: SUPPRESS keeps the action's
    # own default from overwriting a --json given before it.
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS,
        help="print one machine-readable JSON object on stdout",
    )
    add_key_manager_arguments(parser)
    parser.set_defaults(func=func)


def _info_json(info: SecretInfo) -> dict[str, str | int | None]:
    """A secret's metadata in the CLI's one vocabulary: ``key_id``, as every command says."""
    document = info.as_dict()
    return {"key_id": document.pop("secret_id"), **document}


def _describe(info: SecretInfo) -> str:
    # every value comes from the key manager: one line each, whatever it holds
    parts = [f"id: {escape(info.secret_id)}", f"type: {escape(info.secret_type)}"]
    for label, value in (
        ("name", info.name),
        ("algorithm", info.algorithm),
        ("bit length", info.bit_length),
        ("mode", info.mode),
        ("created", info.created),
    ):
        if value is not None:
            parts.append(f"{label}: {escape(value)}")
    return "\n".join(parts)


def _consumer_lines(consumers: list[Consumer]) -> str:
    return "".join(f"\nopens: {escape(consumer_name(c))}" if c.service == LOCAL_CONSUMER_SERVICE
                   else f"\nconsumer: {escape(consumer_name(c))}" for c in consumers)


def _read_payload(path: str) -> bytes:
    return read_small_file(path, MAX_PAYLOAD_FILE, name=path, too_large=": not a secret")


def _run_create(args: argparse.Namespace) -> int:
    manager = key_manager_from_args(args)
    if args.payload_file:
        secret = secret_from_payload(
            args.secret_type, _read_payload(args.payload_file),
            name=args.name, algorithm=args.algorithm, mode=args.mode,
        )
        key_id = manager.store(secret)
    else:
        order = generation_order(args.secret_type, algorithm=args.algorithm,
                                 bit_length=args.bit_length, mode=args.mode, name=args.name)
        key_id = manager.create_key(order)
    info = manager.describe(key_id)
    data_out = {"key_manager": manager.name, "key_id": key_id, "secret": _info_json(info)}
    emit(args, data_out, f"created {info.secret_type} secret {key_id} in {manager.name}")
    return 0


def _run_show(args: argparse.Namespace) -> int:
    manager = key_manager_from_args(args)
    data: dict[str, Any]
    if not args.reveal:
        info = manager.describe(args.key_id)
        consumers = consumers_of(manager, args.key_id)
        data = {"key_manager": manager.name, "secret": _info_json(info),
                "consumers": [c.as_dict() for c in consumers]}
        emit(args, data, _describe(info) + _consumer_lines(consumers))
        return 0
    secret = manager.get(args.key_id)
    info = SecretInfo.of(secret)
    passphrase_text = luks_passphrase_text(secret)
    data = {
        "key_manager": manager.name,
        "secret": _info_json(info),
        "payload_base64": base64.b64encode(secret.payload_bytes).decode("ascii"),
        "luks_passphrase": passphrase_text,
    }
    human = _describe(info) + "\npayload (base64): " + data["payload_base64"]
    human += (
        f"\nLUKS passphrase: {passphrase_text}" if passphrase_text is not None
        else "\nLUKS passphrase: (none: the cloud could not use this secret to open LUKS)"
    )
    emit(args, data, human)
    return 0


def _run_list(args: argparse.Namespace) -> int:
    manager = key_manager_from_args(args)
    infos = manager.list()
    data = {"key_manager": manager.name, "secrets": [_info_json(i) for i in infos]}
    lines = [
        f"{escape(i.secret_id)}  {escape(i.secret_type):<10}  {escape(i.algorithm or '-'):<6}  "
        f"{i.bit_length or '-':>5}  {escape(i.mode or '-'):<5}  {escape(i.name or '')}".rstrip()
        for i in infos
    ]
    emit(args, data, "\n".join(lines) if lines else "no secrets")
    return 0


def _run_delete(args: argparse.Namespace) -> int:
    manager = key_manager_from_args(args)
    delete_secret(manager, args.key_id, force=args.force)
    emit(args, {"key_manager": manager.name, "key_id": args.key_id.lower(), "deleted": True},
         f"deleted secret {args.key_id} from {manager.name}")
    return 0


def _image_state(images: Any) -> Any:
    from imgcrypt.service.audit import GONE, ImageState, parse_time

    def state(image_id: str) -> ImageState:
        image = images.find(image_id)
        if image is None:
            return ImageState(GONE, None)
        return ImageState(image.status, parse_time(image.properties.get("updated_at")))

    return state


def _run_consumers(args: argparse.Namespace) -> int:
    from imgcrypt import imageservice
    from imgcrypt.errors import UsageError
    from imgcrypt.service.audit import audit_consumers, clear_stale

    if args.min_age < 0:
        raise UsageError("--min-age must not be negative")
    manager = key_manager_from_args(args)
    key_ids = args.key_ids or [info.secret_id for info in manager.list()]
    images = imageservice.ImageService(imageservice.connect(getattr(args, "os_cloud", None)))
    states = audit_consumers(manager, key_ids, _image_state(images), min_age=args.min_age)
    stale = [s for s in states if s.stale]
    data: dict[str, Any] = {"key_manager": manager.name,
                            "consumers": [s.as_dict() for s in states],
                            "stale": [s.as_dict() for s in stale]}
    shown = stale if (args.stale or args.clear_stale) else states
    lines = [f"{s.key_id}  {consumer_name(s.consumer)}  "
             f"{s.image.status if s.image is not None else '-'}"
             f"{'  stale' if s.stale else ''}" for s in shown]
    if args.clear_stale:
        cleared = clear_stale(manager, stale)
        data["cleared"] = [s.as_dict() for s in cleared]
        lines = [f"removed {line}" for line in lines] or ["no stale consumers"]
    elif not lines:
        lines = ["no stale consumers" if args.stale else "no consumers"]
    emit(args, data, "\n".join(lines))
    return 0

"""``imgcrypt sign``: sign an image and print (or write) the properties to attach to it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from imgcrypt.cli import common, inputs, keyopts
from imgcrypt.cli.output import emit
from imgcrypt.digests import GLANCE_HASHES, IMGCRYPT_HASHES, abbreviated
from imgcrypt.errors import UsageError
from imgcrypt.fileio import atomic_output
from imgcrypt.imageprops import bound_properties
from imgcrypt.recipes import sign_image
from imgcrypt.signing import glance, imgcrypt_mode, storage
from imgcrypt.signing.algorithms import IMGCRYPT_ALGORITHMS, PrivateKey
from imgcrypt.signing.certs import (
    certificates_from_key_manager,
    check_key_matches,
    load_certificate_file,
)
from imgcrypt.signing.propfile import MAX_DOCUMENT_BYTES, dump_properties
from imgcrypt.signing.signer import MODES


def register(sub: Any) -> None:
    parser = common.command_parser(
        sub, "sign",
        summary="sign an image and print the properties to attach",
        description=(
            "Sign IMAGE and print the image properties that carry the signature, as one flat "
            "JSON object of strings. --mode glance (default) writes the img_signature* "
            "properties that Glance, Nova and Cinder verify with cursive (RSA-PSS, ECDSA "
            "P-384/P-521; img_signature is written whole, 344+ characters for RSA). --mode "
            "imgcrypt signs a manifest of the image digest, its size and the security-relevant "
            "properties given with --property, with Ed25519, ECDSA, RSA-PSS or ML-DSA, and "
            "keeps every value within --max-value-length."
        ),
        example=(
            "example: imgcrypt sign disk.raw --key signer.pem --cert signer.crt --cert-uuid "
            "$CERT_ID --properties-out props.json"
        ),
        verbatim=False,
    )
    common.add_image_argument(parser, "image file, or - for stdin")
    parser.add_argument("--key", required=True, metavar="KEY", help="private key (PEM or DER)")
    parser.add_argument(
        "--key-passphrase-file",
        metavar="FILE",
        help="file holding the key's passphrase (prompted for when the key is encrypted and "
        "this is absent)",
    )
    certs = parser.add_mutually_exclusive_group()
    certs.add_argument("--cert", metavar="CERT", help="certificate of the key, to check they match")
    certs.add_argument(
        "--cert-id", metavar="ID", help="key-manager id of the certificate (also names it)"
    )
    parser.add_argument(
        "--cert-uuid", metavar="UUID", help="key-manager id of the certificate given with --cert"
    )
    parser.add_argument("--mode", choices=MODES, default="glance")
    parser.add_argument(
        "--algorithm",
        choices=IMGCRYPT_ALGORITHMS,
        help="imgcrypt mode: refuse to sign unless the key is of this algorithm",
    )
    parser.add_argument(
        "--hash",
        metavar="HASH",
        help=f"Glance: {abbreviated(GLANCE_HASHES)} (default {glance.DEFAULT_HASH}); "
        f"imgcrypt: {abbreviated(IMGCRYPT_HASHES)} (default {imgcrypt_mode.DEFAULT_HASH})",
    )
    parser.add_argument(
        "--max-value-length",
        type=int,
        metavar="N",
        help=f"longest property value to write (default {storage.DEFAULT_MAX_LENGTH}; "
        "imgcrypt mode splits longer values, Glance mode refuses when given and exceeded)",
    )
    parser.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="imgcrypt mode: an image property to bind into the signature (repeatable)",
    )
    parser.add_argument(
        "--bind",
        metavar="FILE",
        help="imgcrypt mode: bind the signed properties found in this JSON object (e.g. the "
        "output of 'imgcrypt properties IMAGE --key-id ID --json'); the others are bound as "
        "absent",
    )
    parser.add_argument("--properties-out", metavar="FILE", help="write the properties here")
    parser.add_argument("--force", action="store_true", help="replace --properties-out")
    keyopts.add_key_manager_arguments(parser)
    common.finish_command(parser, run)


def _certificate_uuid(args: argparse.Namespace) -> str | None:
    if args.cert_id and args.cert_uuid and args.cert_id != args.cert_uuid:
        raise UsageError("--cert-uuid differs from --cert-id")
    return args.cert_id or args.cert_uuid or None


def _check_certificate_matches(args: argparse.Namespace, private_key: PrivateKey) -> None:
    if args.cert:
        check_key_matches(load_certificate_file(args.cert), private_key)
    elif args.cert_id:
        check_key_matches(certificates_from_key_manager(inputs.key_manager(args), args.cert_id),
                          private_key)


def _bound_properties(args: argparse.Namespace) -> dict[str, str]:
    bound = inputs.property_assignments(args.property)
    if args.bind:
        for name, value in _bound_from_file(args.bind).items():
            if bound.setdefault(name, value) != value:
                raise UsageError(f"--property {name} differs from {args.bind}")
    return bound


def _bound_from_file(path: str) -> dict[str, str]:
    with open(path, "rb") as handle:
        return bound_properties(handle.read(MAX_DOCUMENT_BYTES + 1))


def run(args: argparse.Namespace) -> int:
    if args.max_value_length is not None:
        storage.check_max_length(args.max_value_length)
    if args.properties_out:
        inputs.check_target(args.properties_out, force=args.force)
    private_key = inputs.signing_key(args.key, args.key_passphrase_file)
    _check_certificate_matches(args, private_key)
    uuid = _certificate_uuid(args)
    signature = sign_image(
        sys.stdin.buffer if args.image == "-" else args.image, private_key, mode=args.mode,
        hash_name=args.hash, certificate_uuid=uuid, bind=_bound_properties(args),
        max_value_length=args.max_value_length, algorithm=args.algorithm,
    )
    properties = signature.property_dict()
    document = dump_properties(properties)
    # One JSON shape whether or not the properties also went to a file.
    data = {"source": args.image, "properties": properties,
            "properties_out": args.properties_out}
    if args.properties_out:
        with atomic_output(args.properties_out, force=args.force) as out:
            out.write(document)
        emit(args, data, f"wrote {len(properties)} properties to {args.properties_out}")
    else:
        emit(args, data, document.decode("utf-8"))
    return 0

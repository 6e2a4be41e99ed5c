"""``imgcrypt verify``: check an image against its signature properties and certificate."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from imgcrypt.cli import common, keyopts
from imgcrypt.cli.inputs import key_manager
from imgcrypt.cli.output import emit
from imgcrypt.errors import UsageError
from imgcrypt.imageprops import image_show_properties, unknown_properties
from imgcrypt.recipes import verify_image
from imgcrypt.signing.algorithms import family_named
from imgcrypt.signing.propfile import MAX_DOCUMENT_BYTES
from imgcrypt.signing.verify import CertificateSources, VerificationResult
from imgcrypt.text import escape


def register(sub: Any) -> None:
    parser = common.command_parser(
        sub, "verify",
        summary="verify an image's signature; exit 0 when valid, 4 when not",
        description=(
            "Verify IMAGE against the signature properties in --properties (a flat JSON "
            "object, as 'imgcrypt sign' writes it or as the image service shows it). Both "
            "Glance (img_signature*) and imgcrypt (imgcrypt_sign_*) signatures are checked when "
            "present. The certificate comes from --cert, --cert-id, or the certificate id in "
            "the properties through the key manager; its dates, key usage and algorithms are "
            "checked, and with --trust its chain. Exits 0 when valid, 4 otherwise, saying why."
        ),
        example="example: imgcrypt verify disk.raw --properties props.json --cert signer.crt "
        "--trust ca.pem",
        verbatim=False,
    )
    common.add_image_argument(parser, "image file, or - for stdin")
    parser.add_argument(
        "--properties", required=True, metavar="FILE", help="image properties (JSON object)"
    )
    certs = parser.add_mutually_exclusive_group()
    certs.add_argument(
        "--cert",
        metavar="CERT",
        help="signing certificate, PEM (optionally + intermediates) or DER",
    )
    certs.add_argument("--cert-id", metavar="ID", help="key-manager id of the signing certificate")
    glance_certs = parser.add_mutually_exclusive_group()
    glance_certs.add_argument(
        "--glance-cert", metavar="CERT",
        help="when both schemes are present: the Glance signature's own certificate (each "
        "scheme is checked against the certificate it names, never one for both)",
    )
    glance_certs.add_argument("--glance-cert-id", metavar="ID",
                              help="key-manager id of the Glance signature's own certificate")
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="CA.pem",
        help="trusted certificates (PEM bundle or DER); the chain must lead to one (repeatable)",
    )
    parser.add_argument(
        "--trust-id",
        action="append",
        default=[],
        metavar="ID",
        help="key-manager id of a trusted certificate (repeatable)",
    )
    parser.add_argument(
        "--allow-legacy",
        action="store_true",
        help="accept DSA signatures and MD5/SHA-1 certificate signatures",
    )
    parser.add_argument(
        "--at",
        metavar="TIME",
        help="check certificate dates at this ISO 8601 time instead of now",
    )
    keyopts.add_key_manager_arguments(parser)
    common.finish_command(parser, run)


def _read_properties(path: str) -> dict[str, str]:
    with open(path, "rb") as handle:
        return image_show_properties(handle.read(MAX_DOCUMENT_BYTES + 1))


def _clock(text: str | None) -> dt.datetime:
    if text is None:
        return dt.datetime.now(dt.UTC)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--at wants an ISO 8601 time, not {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _human(result: VerificationResult) -> str:
    lines = [f"valid: {result.size} bytes signed by {escape(result.certificate_subject)}"]
    for scheme in result.schemes:
        lines.append(
            f"  {scheme.scheme}: {scheme.algorithm} {scheme.hash_name} {scheme.digest.hex}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    at = _clock(args.at)
    properties = _read_properties(args.properties)
    sources = CertificateSources(
        cert_file=args.cert, cert_id=args.cert_id,
        glance_cert_file=args.glance_cert, glance_cert_id=args.glance_cert_id,
        trust_files=tuple(args.trust), trust_ids=tuple(args.trust_id),
    )
    result = verify_image(sys.stdin.buffer if args.image == "-" else args.image, properties,
                          certificates=sources, key_manager=lambda: key_manager(args),
                          clock=lambda: at, allow_legacy=args.allow_legacy)
    ignored = unknown_properties(properties)
    for scheme in result.schemes:
        family = family_named(scheme.algorithm)
        if family is not None and family.legacy and not args.json:
            sys.stderr.write(f"imgcrypt: note: this image is signed with "
                             f"{escape(scheme.algorithm)}, "
                             "which cryptography deprecates; ask its publisher to re-sign it "
                             "with RSA-PSS or ECDSA\n")
    if ignored and not args.json:
        sys.stderr.write("imgcrypt: note: ignored properties no signature covers: "
                         + ", ".join(escape(n[:64]) for n in ignored) + "\n")
    emit(args, {"source": args.image, **result.as_dict(), "ignored_properties": ignored},
         _human(result))
    return 0

"""``imgcrypt verify``: check an image against its signature properties and certificate."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from cryptography import x509

from imgcrypt.cli.output import add_json_argument, emit
from imgcrypt.cli.sign import add_key_manager_options, feed_image, key_manager
from imgcrypt.errors import UsageError
from imgcrypt.signing.certs import (
    CertificatePolicy,
    certificates_from_key_manager,
    check_certificate,
    load_certificate_file,
)
from imgcrypt.signing.propfile import MAX_DOCUMENT_BYTES, parse_properties
from imgcrypt.signing.verify import ImageVerifier, VerificationResult, certificate_uuid
from imgcrypt.text import escape


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "verify",
        help="verify an image's signature; exit 0 when valid, 4 when not",
        description=(
            "Verify IMAGE against the signature properties in --properties (a flat JSON "
            "object, as 'imgcrypt sign' writes it or as the image service shows it). Both "
            "Glance (img_signature*) and imgcrypt (imgcrypt_sign_*) signatures are checked when "
            "present. The certificate comes from --cert, --cert-id, or the certificate id in "
            "the properties through the key manager; its dates, key usage and algorithms are "
            "checked, and with --trust its chain. Exits 0 when valid, 4 otherwise, saying why."
        ),
        epilog="example: imgcrypt verify disk.raw --properties props.json --cert signer.crt "
        "--trust ca.pem",
    )
    parser.add_argument("image", metavar="IMAGE", help="image file, or - for stdin")
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
    add_key_manager_options(parser)
    add_json_argument(parser)
    parser.set_defaults(func=run)


def _read_properties(path: str) -> dict[str, str]:
    with open(path, "rb") as handle:
        return parse_properties(handle.read(MAX_DOCUMENT_BYTES + 1))


def _clock(text: str | None) -> dt.datetime:
    if text is None:
        return dt.datetime.now(dt.UTC)
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--at wants an ISO 8601 time, not {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _signing_certificates(
    args: argparse.Namespace, properties: dict[str, str]
) -> list[x509.Certificate]:
    if args.cert:
        return load_certificate_file(args.cert)
    secret_id = args.cert_id or certificate_uuid(properties)
    if not secret_id:
        raise UsageError("no certificate: give --cert or --cert-id")
    return certificates_from_key_manager(key_manager(args), secret_id)


def _trust(args: argparse.Namespace) -> list[x509.Certificate] | None:
    if not args.trust and not args.trust_id:
        return None
    trusted: list[x509.Certificate] = []
    for path in args.trust:
        trusted.extend(load_certificate_file(path))
    if args.trust_id:
        manager = key_manager(args)
        for secret_id in args.trust_id:
            trusted.extend(certificates_from_key_manager(manager, secret_id))
    return trusted


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
    checked = check_certificate(
        _signing_certificates(args, properties),
        trust=_trust(args),
        clock=lambda: at,
        policy=CertificatePolicy(allow_legacy=args.allow_legacy),
    )
    verifier = ImageVerifier(properties, checked, allow_legacy=args.allow_legacy)
    result: VerificationResult = feed_image(verifier, args.image)
    emit(args, result.as_dict(), _human(result))
    return 0

"""``imgcrypt download``: stream an image from the image service, verify it and decrypt it."""

from __future__ import annotations

import argparse
import tomllib
from typing import Any

from imgcrypt.cli import common, keyopts
from imgcrypt.cli.output import emit
from imgcrypt.errors import UsageError
from imgcrypt.fileio import atomic_output
from imgcrypt.text import escape

EXAMPLE = """example:
  imgcrypt download 0f3e... disk.raw             # verified and decrypted
  imgcrypt download 0f3e... disk.luks --encrypted  # verified, kept encrypted
  imgcrypt download 0f3e... disk.raw --trust release-ca.pem --require-trust

Exactly the size the image record declares is read; its os_hash_value, its md5 checksum and,
when present, its signature (Glance or imgcrypt mode; the certificate comes from the key
manager) are checked on the bytes as they stream; the target appears (0600) only if every check
passed. Without --trust a signature shows only that the certificate the image names in the
cloud's key manager signed it: whoever can edit the image's properties can re-sign it.
imgcrypt.toml may set [download] trust = ["ca.pem", ...] and require_trust = true.
Credentials as for imgcrypt upload."""

_CONFIG_KEYS: dict[str, type] = {"trust": list, "require_trust": bool}


def register(sub: Any) -> None:
    parser = common.command_parser(
        sub, "download", summary="download an image from the image service, verify and decrypt it",
        description="Download image IMAGE_ID to TARGET, verifying and decrypting it.",
        example=EXAMPLE,
    )
    parser.add_argument("image_id", metavar="IMAGE_ID")
    parser.add_argument("target", metavar="TARGET")
    parser.add_argument("--encrypted", action="store_true",
                        help="keep the LUKS container (verify only, no decryption)")
    parser.add_argument("--force", action="store_true", help="replace an existing TARGET")
    parser.add_argument("--os-cloud", metavar="NAME", default=None,
                        help="clouds.yaml entry (default: OS_CLOUD / the OS_* variables)")
    parser.add_argument("--trust", action="append", default=[], metavar="CA.pem",
                        help="trusted certificates (PEM bundle or DER): a signature's chain "
                        "must lead to one (repeatable), as imgcrypt verify --trust")
    parser.add_argument("--trust-id", action="append", default=[], metavar="ID",
                        help="key-manager id of a trusted certificate (repeatable)")
    parser.add_argument("--require-trust", action="store_true", default=None,
                        help="refuse an unsigned image, and any download without a trust "
                        "anchor")
    parser.add_argument("--connect-timeout", type=float, default=30.0, metavar="SECONDS",
                        help="seconds to connect (default 30)")
    parser.add_argument("--read-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="seconds the service may send nothing (default 120)")
    parser.add_argument("--timeout", type=float, default=21600.0, metavar="SECONDS",
                        help="seconds the whole download may take (default 21600, 6 hours)")
    common.add_max_size_argument(parser)
    common.add_progress_argument(parser)
    common.finish_command(parser, run)


def _config() -> dict[str, Any]:
    """The ``[download]`` table of imgcrypt.toml: a deployment's trust anchors."""
    path = keyopts.config_path()
    try:
        document = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    table = document.get("download", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [download] must be a table")
    for key, value in table.items():
        kind = _CONFIG_KEYS.get(key.replace("-", "_"))
        if kind is None:
            raise UsageError(f"{path}: unknown setting download.{key}")
        if not isinstance(value, kind) or (isinstance(value, list) and not all(
                isinstance(v, str) for v in value)):
            raise UsageError(f"{path}: download.{key} must be a {kind.__name__}")
    return {k.replace("-", "_"): v for k, v in table.items()}


def run(args: argparse.Namespace) -> int:
    from imgcrypt import imageservice
    from imgcrypt.service.download import open_download
    from imgcrypt.signing.verify import CertificateSources, trusted_certificates

    config = _config()
    timeouts = imageservice.Timeouts(args.connect_timeout, args.read_timeout, args.timeout)
    conn = imageservice.connect(args.os_cloud)
    sources = CertificateSources(trust_files=tuple(args.trust or config.get("trust", [])),
                                 trust_ids=tuple(args.trust_id))
    trust = trusted_certificates(sources, lambda: imageservice.key_manager(conn))
    require = args.require_trust if args.require_trust is not None \
        else bool(config.get("require_trust", False))
    download = open_download(conn, args.image_id, keep_encrypted=args.encrypted,
                             trust=tuple(trust) if trust else None, require_trust=require,
                             timeouts=timeouts)
    with atomic_output(args.target, force=args.force, mode=0o600, size=download.output_size,
                       max_size=args.max_size) as out, \
            common.progress_bar(args, download.output_size, "download") as progress:
        result = download.write_to(out, progress)  # a failed check: the target never appears
    signature = result.signature
    data = {"image_id": args.image_id, "target": args.target,
            "bytes_written": result.bytes_written, "decrypted": result.decrypted,
            "hash_checked": result.hash_checked, "hashes_checked": list(result.hashes),
            "signature": sorted(s.scheme for s in signature.schemes) if signature else None,
            "trust_anchor": result.trust_anchor}
    emit(args, data, f"downloaded {escape(args.image_id)} -> {args.target}: "
         f"{result.bytes_written} bytes" + (", decrypted" if result.decrypted else "")
         + f"; checked: {', '.join(result.hashes)}" + _signature_line(result),
         to_stderr=args.target == "-")
    return 0


def _signature_line(result: Any) -> str:
    signature = result.signature
    if signature is None:
        return "\n  not signed: nothing shows who made this image"
    if result.trust_anchor:
        return (f"\n  signature verified: signed by {escape(signature.certificate_subject)}, "
                "whose chain leads to a trusted certificate")
    return (f"\n  signature verified against the cloud's own certificate only (signed by "
            f"{escape(signature.certificate_subject)}, no trust anchor): anyone who can edit "
            "the image's properties could have re-signed it; give --trust to know who signed")

"""``imgcrypt download``: stream an image from the image service, verify it and decrypt it."""

from __future__ import annotations

import argparse
import hmac
import io
from typing import Any

from imgcrypt.cli import common
from imgcrypt.cli.output import emit
from imgcrypt.errors import FormatError, VerificationError
from imgcrypt.fileio import ChunkReader, atomic_output

EXAMPLE = """example:
  imgcrypt download 0f3e... disk.raw             # verified and decrypted
  imgcrypt download 0f3e... disk.luks --encrypted  # verified, kept encrypted

The image's os_hash_value and, when present, its signature (Glance or imgcrypt mode; the
certificate comes from the key manager) are checked on the bytes as they stream; the target
appears only if every check passed. Credentials as for imgcrypt upload."""


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
    common.add_progress_argument(parser)
    common.finish_command(parser, run)


def run(args: argparse.Namespace) -> int:
    from imgcrypt import imageservice
    from imgcrypt.keys.rules import passphrase_for
    from imgcrypt.luks.stream import CHUNK_SIZE, iter_payload, unlock_stream
    from imgcrypt.service.claims import encryption_claim
    from imgcrypt.service.upload import HASH_ALGORITHMS, UploadInspector, UploadPolicy
    from imgcrypt.signing import schemes_present

    conn = imageservice.connect(args.os_cloud)
    images = imageservice.ImageService(conn)
    image = images.get(args.image_id)
    properties = imageservice.extra_properties(image)
    claim = encryption_claim(properties)
    manager = (imageservice.key_manager(conn)
               if claim is not None or schemes_present(properties) else None)
    expected_algo = str(properties.get("os_hash_algo") or "sha512")
    if expected_algo not in HASH_ALGORITHMS:  # the image record's value: malformed input
        raise FormatError(f"unsupported os_hash_algo {expected_algo!r}")
    inspector = UploadInspector(properties, key_manager=manager, policy=UploadPolicy(
        allowed_luks_versions=frozenset({1, 2}), register_consumer=False,
        hash_algo=expected_algo))
    size = image.properties.get("size")
    decrypt = claim is not None and not args.encrypted
    written = 0
    with atomic_output(args.target, force=args.force) as out, \
            common.progress_bar(args, size if isinstance(size, int) else None,
                                "download") as progress:
        stream = inspector.wrap(images.download(args.image_id))
        if decrypt:
            assert claim is not None and manager is not None
            reader = io.BufferedReader(ChunkReader(stream), buffer_size=CHUNK_SIZE)
            opened = unlock_stream(reader, passphrase_for(manager.get(claim.key_id)))
            chunks = iter_payload(opened, reader, size=claim.decrypt_size)
        else:
            chunks = stream
        for chunk in chunks:
            out.write(chunk)
            written += len(chunk)
            if progress:
                progress(len(chunk))
        if decrypt:
            for _ in stream:  # the padding after os_decrypt_size still counts for the hash
                pass
        verdict = inspector.finalize()  # a bad signature raises: the target never appears
        expected = str(properties.get("os_hash_value") or "")
        if expected and not hmac.compare_digest(expected, verdict.os_hash_value):
            raise VerificationError(
                f"image {args.image_id}: the downloaded bytes do not match its os_hash_value")
    signature = verdict.signature
    data = {"image_id": args.image_id, "target": args.target, "bytes_written": written,
            "decrypted": decrypt, "hash_checked": bool(expected),
            "signature": sorted(s.scheme for s in signature.schemes) if signature else None}
    emit(args, data, f"downloaded {args.image_id} -> {args.target}: {written} bytes"
         + (", decrypted" if decrypt else "") + (", signature verified" if signature else ""),
         to_stderr=args.target == "-")
    return 0

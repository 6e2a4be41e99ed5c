"""``imgcrypt upload``: create an image in the cloud's image service, with its properties."""

from __future__ import annotations

import argparse
import os
from typing import Any

from imgcrypt.cli import common, inputs
from imgcrypt.cli.output import emit
from imgcrypt.text import escape

EXAMPLE = """example:
  imgcrypt sign disk.luks --key signer.key --cert-id CERT_ID --properties-out sig.json
  imgcrypt properties disk.luks --key-id KEY_ID --json > enc.json
  imgcrypt upload disk.luks --name my-image --properties enc.json --properties sig.json

Credentials: --os-cloud NAME (clouds.yaml), or OS_CLOUD / the OS_* variables, as the
openstack client reads them. With glance-direct offered, the data is staged and imported
(so the deployment's import plugins, imgcrypt_verify among them, check it); otherwise it is
uploaded. An encrypted image's key gets the new image as a Barbican consumer. A failed
upload or a refused import leaves the image record (queued, without data, with the reason in
imgcrypt_verdict when imgcrypt_verify refused it) and no consumer. Exit 5 when the key
manager failed (unreachable, or the token expired: re-authenticate), 4 when the image was
refused; `imgcrypt keys consumers --stale` lists consumers left by imports that died."""


def register(sub: Any) -> None:
    parser = common.command_parser(
        sub, "upload", summary="create an image in the image service (Glance) with its properties",
        description="Upload IMAGE to the cloud's image service with the properties given.",
        example=EXAMPLE,
    )
    common.add_image_argument(parser, "the image file")
    parser.add_argument("--name", required=True, help="image name")
    parser.add_argument("--properties", metavar="FILE", action="append", default=[],
                        help="JSON object of properties (imgcrypt properties --json, "
                             "imgcrypt sign --properties-out); repeatable")
    parser.add_argument("--property", metavar="NAME=VALUE", action="append", default=[],
                        help="one more property; repeatable")
    parser.add_argument("--disk-format", default="raw", help="disk_format (default raw)")
    parser.add_argument("--container-format", default="bare",
                        help="container_format (default bare)")
    parser.add_argument("--method", choices=("auto", "glance-direct", "upload"),
                        default="auto", help="glance-direct import when offered (auto), or "
                                             "a plain upload")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="how long to wait for the import to finish (default 600)")
    parser.add_argument("--os-cloud", metavar="NAME", default=None,
                        help="clouds.yaml entry (default: OS_CLOUD / the OS_* variables)")
    common.add_progress_argument(parser)
    common.finish_command(parser, run)


def collect_properties(files: list[str], pairs: list[str]) -> dict[str, str]:
    """Properties from each --properties FILE in turn, then --property NAME=VALUE (which wins
    over a file's value: it is the more explicit of the two)."""
    from imgcrypt.imageprops import upload_properties
    from imgcrypt.signing.propfile import MAX_DOCUMENT_BYTES

    properties: dict[str, str] = {}
    for path in files:
        properties.update(upload_properties(inputs.read_small_file(
            path, MAX_DOCUMENT_BYTES, name=f"properties file {path}")))
    properties.update(inputs.property_assignments(pairs))
    return properties


def run(args: argparse.Namespace) -> int:
    from imgcrypt import imageservice
    from imgcrypt.service.publish import open_upload
    from imgcrypt.service.verdict import effective_verdict

    properties = collect_properties(args.properties, args.property)
    size = os.stat(args.image).st_size
    upload = open_upload(properties, lambda: imageservice.connect(args.os_cloud),
                         method=args.method)
    with open(args.image, "rb") as f, \
            common.progress_bar(args, size, "stage" if upload.staged else "upload") as progress:
        result = upload.send(f, size, name=args.name, disk_format=args.disk_format,
                             container_format=args.container_format, timeout=args.timeout,
                             progress=progress)
    image, consumer = result.image, result.consumer_registered
    # The verdict as it stands now: imgcrypt_verify's "pending" is "accepted" only for an
    # active image whose stored data is the data it checked.
    data = {"image_id": image.image_id, "name": args.name, "status": image.status,
            "method": upload.method, "size": size, "consumer_registered": consumer,
            "verdict": effective_verdict(image.status, image.properties)}
    emit(args, data, f"uploaded {args.image} as image {escape(image.image_id)} "
         f"({escape(image.status)}, "
         f"{upload.method})" + (", key consumer registered" if consumer else ""))
    return 0

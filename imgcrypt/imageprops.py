"""The image properties imgcrypt writes, and the documents that carry them: the flat object of
strings 'imgcrypt sign' and 'imgcrypt properties' write, or an image record as
'openstack image show -f json' and the image API give it. One list of names for every command
and one reader of such records, so that sign, verify and properties agree on what a property
is."""

from __future__ import annotations

import io
import itertools
import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, BinaryIO

from imgcrypt import imageservice
from imgcrypt.errors import (
    FormatError,
    UsageError,
    VerificationError,
    VerificationFault,
    WrongPassphraseError,
)
from imgcrypt.jsonkeys import unique_keys
from imgcrypt.signing import glance, imgcrypt_mode
from imgcrypt.signing.manifest import BOUND_DIGEST_KEY, BOUND_PROPERTIES, bound_digest
from imgcrypt.signing.propfile import load_document, parse_properties

if TYPE_CHECKING:
    from imgcrypt.luks.container import LuksHeader

# The image property names imgcrypt writes, which a property document (--properties,
# --signature) may hold.
FORMAT_NAMES = frozenset({"disk_format", "container_format"})
# What imgcrypt attaches to an encrypted image: the properties a signature binds, less the two
# image fields.
ENCRYPTION_NAMES = frozenset(BOUND_PROPERTIES) - FORMAT_NAMES
_IMGCRYPT_SIGN_NAME = re.compile(
    r"imgcrypt_sign_(version|algorithm|hash|size|bound_sha256|certificate_uuid"
    r"|signature_count|signature_sha256|signature_[1-9][0-9]{0,3})"
)


def known_property(name: str) -> bool:
    """A property name imgcrypt writes (encryption, format, Glance or imgcrypt signature)."""
    return (name in ENCRYPTION_NAMES or name in FORMAT_NAMES or name in glance.KEYS
            or _IMGCRYPT_SIGN_NAME.fullmatch(name) is not None)


# Fields of a Glance image record (and what `openstack image show` adds) that are not custom
# properties: present in image-service output, never signed, not worth a warning.
IMAGE_FIELDS = imageservice.RECORD_FIELDS | {"properties"}
_CLIENT_PROPERTY_PREFIX = "owner_specified.openstack."


def image_show_properties(data: bytes) -> dict[str, str]:
    """Image properties from a flat object of strings (what 'imgcrypt sign' writes) or from
    'openstack image show -f json' / the image API: integers (min_disk, size) become strings,
    the nested 'properties' object is merged in, and nulls, booleans and lists (not property
    values imgcrypt reads) are left out. A property imgcrypt reads must be a string or an
    integer; one name with two values is refused."""
    document = load_document(data)
    nested = document.get("properties")
    layers = [document, nested] if isinstance(nested, dict) else [document]
    flat: dict[str, str] = {}
    for layer in layers:
        for name, value in layer.items():
            if isinstance(value, str):
                text = value
            elif isinstance(value, int) and not isinstance(value, bool):
                text = str(value)
            elif known_property(name) and value is not None:
                raise VerificationError(f"property {name!r} is not a string",
                                        reason=VerificationFault.MALFORMED_PROPERTIES)
            else:
                continue
            if flat.setdefault(name, text) != text:
                raise VerificationError(f"property {name!r} is given two values",
                                        reason=VerificationFault.MALFORMED_PROPERTIES)
    return flat


def bound_properties(data: bytes) -> dict[str, str]:
    """The properties an imgcrypt-mode signature binds, taken from a property document (the
    output of 'imgcrypt properties --json', say): other names in it, such as signature
    properties, are not bound and are left out. Read as every property document is."""
    return {k: v for k, v in parse_properties(data).items() if k in BOUND_PROPERTIES}


def upload_properties(data: bytes) -> dict[str, str]:
    """The properties an upload sets, from a flat JSON object of strings ('imgcrypt sign
    --properties-out') or from the ``properties`` object of 'imgcrypt properties --json';
    read as every property document is (no name twice, bounded)."""
    document = load_document(data)
    nested = document.get("properties")
    if isinstance(nested, dict):
        document = nested
    for name, value in document.items():
        if not isinstance(value, str):
            raise VerificationError(f"property {name[:64]!r} is not a string",
                                    reason=VerificationFault.MALFORMED_PROPERTIES)
    return dict(document)


def unknown_properties(properties: dict[str, str]) -> list[str]:
    """Names that are neither imgcrypt's nor the image service's own: verify ignores them, so
    they are not covered by any signature, and it says so."""
    return sorted(
        name for name in properties
        if not known_property(name) and name not in IMAGE_FIELDS
        and not name.startswith(_CLIENT_PROPERTY_PREFIX)
    )


def drop_bound_as_absent(properties: dict[str, str], signature: Mapping[str, str],
                         path: str) -> list[str]:
    """An imgcrypt-mode signature binds each of BOUND_PROPERTIES to a value or to "absent".
    Find which of this image's values it binds (the bound-digest hint tells), and leave out
    the ones it binds as absent: attaching them would make verification fail. The names left
    out of ``properties``; none for a signature of another scheme. ``path`` names the
    signature's file in the errors."""
    if not imgcrypt_mode.present(signature):
        return []
    stated = signature.get(BOUND_DIGEST_KEY)
    if stated is None:
        raise FormatError(f"{path} has no {BOUND_DIGEST_KEY}")
    choices = [(name, (properties.get(name), None) if name in properties else (None,))
               for name in BOUND_PROPERTIES]
    for values in itertools.product(*(options for _name, options in choices)):
        bound = tuple((name, value) for (name, _o), value in zip(choices, values, strict=True))
        if bound_digest(bound) == stated:
            break
    else:
        raise FormatError(
            f"the signature in {path} binds other values than this image and key give to "
            f"its signed properties ({', '.join(BOUND_PROPERTIES)}); sign the image again"
        )
    absent = [name for name, value in bound if value is None and name in properties]
    for name in absent:
        del properties[name]
    return absent


# What 'imgcrypt properties' prints is pasted unquoted into a shell command line ($(...)),
# where quotes are not interpreted: a value must be one word that no shell splits or globs.
SAFE_VALUE = re.compile(r"[A-Za-z0-9._:+/=-]*")


def check_attachable(name: str, value: str, where: str) -> None:
    """Refuse, never escape: a name imgcrypt does not write, or a value a shell would split
    (:data:`SAFE_VALUE`). ``where`` names the document in the error."""
    if not known_property(name):
        raise FormatError(f"{where} sets {name[:64]!r}, not a property imgcrypt knows")
    if SAFE_VALUE.fullmatch(value) is None:
        raise FormatError(
            f"{where}: the value of {name} has characters outside letters, digits and ._:+/=-"
        )


MAX_SIGNATURE_DOCUMENT = 1 << 20


def signature_document(data: bytes, where: str) -> dict[str, str]:
    """The properties of a signature file ('imgcrypt sign' output) to attach with an image:
    a flat JSON object of strings, no name twice, every entry attachable. Every fault is a
    :class:`FormatError` naming ``where`` (the document is input to attach, not a signature
    being verified, so it is not read with :func:`load_document`'s VerificationError)."""
    if len(data) > MAX_SIGNATURE_DOCUMENT:
        raise FormatError(f"{where} is too large for a properties file")
    # the duplicate-key rule every property document imgcrypt reads follows
    twice = unique_keys(lambda key: FormatError(f"{where} sets {key[:64]!r} more than once"))
    try:
        document = json.loads(data, object_pairs_hook=twice)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FormatError(f"{where} is not a JSON object of properties") from None
    if not isinstance(document, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in document.items()
    ):
        raise FormatError(f"{where} is not a flat JSON object of strings")
    for name, value in document.items():
        check_attachable(name, value, where)
    return document


def merge_signature(properties: dict[str, str], signature: Mapping[str, str], where: str,
                    *, dropped: Callable[[list[str]], None] | None = None) -> None:
    """Add a signature's properties to an image's, in place. Values the signature binds as
    absent are dropped first (see :func:`drop_bound_as_absent`) and their names, when there
    are any, given to ``dropped``; then a property the signature sets differently from the
    image is refused."""
    absent = drop_bound_as_absent(properties, signature, where)
    if absent and dropped is not None:
        dropped(absent)
    for key, value in signature.items():
        if key in properties and properties[key] != value:
            raise FormatError(f"{where} sets {key} differently from the image")
        properties[key] = value


def payload_size(header: LuksHeader, stream: BinaryIO, position: int) -> int:
    """The bytes of payload an encrypted image carries (:func:`payload_span`'s rule: the
    header's fixed segment, or whole sectors from the payload offset to the image's end).
    ``stream`` is the image after its first ``position`` bytes; a file's end is found by
    seeking, a pipe's by reading it to its end in bounded pieces."""
    from imgcrypt.luks.container import payload_span

    if stream.seekable():
        here = stream.tell()
        total = position + stream.seek(0, io.SEEK_END) - here
    else:
        total = position
        while chunk := stream.read(1 << 20):
            total += len(chunk)
    size = payload_span(header, image_size=total).size
    assert size is not None  # the image's size is known
    return size


# ``--size payload``: the plaintext is the whole payload (an image whose size was a whole
# number of sectors), said by the person who knows it.
WHOLE_PAYLOAD = "payload"

# How much of an image is read at once to find its LUKS header (a LUKS2 header region is at
# most a few MiB; the rest of the image is only counted, see payload_size).
_HEADER_READ = 128 << 20


def attach_properties(
    stream: BinaryIO,
    *,
    image: str,
    key_id: str | None,
    open_key: Callable[[], tuple[str, bytes]],
    size: int | str | None,
    deletion_policy: str,
) -> dict[str, str]:
    """The properties an image service needs for the image read from ``stream`` (named
    ``image`` in errors): its disk and container format and, for a LUKS image, the encryption
    properties naming ``key_id``, which must open it. ``open_key`` gives the key's resolved id
    and the LUKS passphrase it stands for; it is called only for a LUKS image, after its header
    has been read.

    ``size`` is the plaintext size, ``os_decrypt_size``: a number of bytes, or
    :data:`WHOLE_PAYLOAD` to say the whole payload is the plaintext. A LUKS header records only
    the payload, rounded up to whole sectors, so without ``size`` the plaintext size is not
    known and a :class:`~imgcrypt.errors.UsageError` asks for it: publishing the rounded figure
    as if it were exact would give downloaders zeros the image never had."""
    # Imported here: sign, verify and upload read property documents through this module and
    # need neither the LUKS code nor the key manager's property rules (start-up time).
    from imgcrypt.keys.properties import encryption_properties
    from imgcrypt.luks.container import is_luks
    from imgcrypt.luks.unlock import read_header, unlock_stream

    properties: dict[str, str] = {"disk_format": "raw", "container_format": "bare"}
    prefix = stream.read(8)
    if not is_luks(prefix):
        if key_id:
            raise FormatError(f"{image} is not a LUKS image, yet a key id was given")
        return properties
    if not key_id:
        raise UsageError("IMAGE is encrypted: give --key-id, the secret that opens it")
    start = io.BytesIO(prefix + stream.read(_HEADER_READ))
    header, region = read_header(start)
    resolved_id, passphrase = open_key()
    try:
        unlock_stream(io.BytesIO(region), passphrase)
    except WrongPassphraseError:
        raise WrongPassphraseError(f"key {resolved_id} does not open {image}") from None
    payload = payload_size(header, stream, len(start.getvalue()))
    if size is None:
        raise UsageError(
            f"{image}'s LUKS header does not record its plaintext size (the payload is {payload} "
            f"bytes, whole sectors): give --size BYTES, the size of the image encrypted (encrypt "
            f"prints it as os_decrypt_size), or --size {WHOLE_PAYLOAD} if the payload is exactly "
            "the plaintext")
    if size == WHOLE_PAYLOAD:
        size = payload
    if not isinstance(size, int) or not 0 <= size <= payload:
        raise UsageError(f"--size {size} does not fit the payload of {payload} bytes")
    properties.update(encryption_properties(key_id, header.version, size, deletion_policy))
    return properties

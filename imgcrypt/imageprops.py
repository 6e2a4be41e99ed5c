"""The image properties imgcrypt writes, and the documents that carry them: the flat object of
strings 'imgcrypt sign' and 'imgcrypt properties' write, or an image record as
'openstack image show -f json' and the image API give it. One list of names for every command
and one reader of such records, so that sign, verify and properties agree on what a property
is."""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping

from imgcrypt.errors import FormatError, VerificationError, VerificationFault
from imgcrypt.signing import glance, imgcrypt_mode
from imgcrypt.signing.manifest import BOUND_DIGEST_KEY, BOUND_PROPERTIES, bound_digest
from imgcrypt.signing.propfile import load_document

# The image property names imgcrypt writes, which a property document (--properties,
# --signature) may hold.
ENCRYPTION_NAMES = frozenset({
    "cinder_encryption_key_id", "cinder_encryption_key_deletion_policy", "os_encrypt_format",
    "os_encrypt_key_id", "os_encrypt_key_deletion_policy", "os_decrypt_size",
    "os_decrypt_container_format",
})
FORMAT_NAMES = frozenset({"disk_format", "container_format"})
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
IMAGE_FIELDS = frozenset({
    "checksum", "container_format", "created_at", "direct_url", "disk_format", "file", "id",
    "locations", "min_disk", "min_ram", "name", "os_hash_algo", "os_hash_value", "os_hidden",
    "owner", "properties", "protected", "schema", "self", "size", "status", "stores", "tags",
    "updated_at", "virtual_size", "visibility",
})
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

"""The image properties imgcrypt writes, and the documents that carry them: the flat object of
strings 'imgcrypt sign' and 'imgcrypt properties' write, or an image record as
'openstack image show -f json' and the image API give it. One list of names for every command
and one reader of such records, so that sign, verify and properties agree on what a property
is."""

from __future__ import annotations

import json
import re

from imgcrypt.errors import MalformedPropertiesError
from imgcrypt.jsonkeys import unique_keys
from imgcrypt.signing import glance
from imgcrypt.signing.propfile import MAX_DOCUMENT_BYTES

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

_no_duplicates = unique_keys(
    lambda key: MalformedPropertiesError(f"property {key[:64]!r} appears more than once")
)


def image_show_properties(data: bytes) -> dict[str, str]:
    """Image properties from a flat object of strings (what 'imgcrypt sign' writes) or from
    'openstack image show -f json' / the image API: integers (min_disk, size) become strings,
    the nested 'properties' object is merged in, and nulls, booleans and lists (not property
    values imgcrypt reads) are left out. A property imgcrypt reads must be a string or an
    integer; one name with two values is refused."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise MalformedPropertiesError(f"property document larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        raise MalformedPropertiesError(
            f"not a JSON property document: {type(exc).__name__}"
        ) from None
    if not isinstance(document, dict):
        raise MalformedPropertiesError("a property document must be a JSON object")
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
                raise MalformedPropertiesError(f"property {name!r} is not a string")
            else:
                continue
            if flat.setdefault(name, text) != text:
                raise MalformedPropertiesError(f"property {name!r} is given two values")
    return flat


def unknown_properties(properties: dict[str, str]) -> list[str]:
    """Names that are neither imgcrypt's nor the image service's own: verify ignores them, so
    they are not covered by any signature, and it says so."""
    return sorted(
        name for name in properties
        if not known_property(name) and name not in IMAGE_FIELDS
        and not name.startswith(_CLIENT_PROPERTY_PREFIX)
    )

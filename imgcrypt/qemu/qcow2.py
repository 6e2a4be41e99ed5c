"""The qcow2 header, as far as finding qemu's built-in LUKS header inside an image goes.

Format code: bytes in, a validated :class:`Qcow2Header` out; it never opens files. The layout is
qemu's ``docs/interop/qcow2.txt``: a big-endian header (72 bytes in version 2, at least 104 in
version 3), then header extensions (type, length, data padded to 8 bytes) up to an end marker,
all inside the first cluster. ``crypt_method`` 2 means LUKS, and the full disk encryption header
extension then gives the offset and length of a LUKS1 header stored in clusters of the image
file. Every number comes from the file, i.e. from whoever made it, and is bounded here.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgcrypt.errors import FormatError, FormatFault, UnsupportedError
from imgcrypt.luks.layout import Kind, Layout, fields

MAGIC = b"QFI\xfb"
CRYPT_NONE, CRYPT_AES, CRYPT_LUKS = 0, 1, 2
EXT_END = 0x00000000
EXT_CRYPTO_HEADER = 0x0537BE77
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21  # qemu's limits: 512 bytes .. 2 MiB
# What a reader needs to see to find the LUKS header: the whole first cluster at most.
MAX_HEADER_READ = 1 << MAX_CLUSTER_BITS
# qemu writes LUKS1 (about 2 MiB of header and keyslots); cryptsetup's largest LUKS2 metadata
# plus keyslot area is about 136 MiB. Anything beyond is not a header.
MAX_CRYPT_HEADER = 136 << 20

_V2_FIELDS = (
    ("magic", 4, Kind.RAW),
    ("version", 4, Kind.UINT_BE),
    ("backing_file_offset", 8, Kind.UINT_BE),
    ("backing_file_size", 4, Kind.UINT_BE),
    ("cluster_bits", 4, Kind.UINT_BE),
    ("size", 8, Kind.UINT_BE),
    ("crypt_method", 4, Kind.UINT_BE),
    ("l1_size", 4, Kind.UINT_BE),
    ("l1_table_offset", 8, Kind.UINT_BE),
    ("refcount_table_offset", 8, Kind.UINT_BE),
    ("refcount_table_clusters", 4, Kind.UINT_BE),
    ("nb_snapshots", 4, Kind.UINT_BE),
    ("snapshots_offset", 8, Kind.UINT_BE),
)
V2_LAYOUT = Layout("qcow2 header", 72, fields(*_V2_FIELDS))
V3_LAYOUT = Layout("qcow2 v3 header", 104, fields(
    *_V2_FIELDS,
    ("incompatible_features", 8, Kind.UINT_BE),
    ("compatible_features", 8, Kind.UINT_BE),
    ("autoclear_features", 8, Kind.UINT_BE),
    ("refcount_order", 4, Kind.UINT_BE),
    ("header_length", 4, Kind.UINT_BE),
))
EXTENSION_LAYOUT = Layout("qcow2 header extension", 8, fields(
    ("type", 4, Kind.UINT_BE),
    ("length", 4, Kind.UINT_BE),
))
CRYPTO_EXTENSION_LAYOUT = Layout("qcow2 crypto header extension", 16, fields(
    ("offset", 8, Kind.UINT_BE),
    ("length", 8, Kind.UINT_BE),
))


@dataclass(frozen=True)
class CryptHeader:
    """Where qemu keeps the LUKS header: ``length`` bytes at ``offset`` of the image file."""

    offset: int
    length: int


@dataclass(frozen=True)
class Qcow2Header:
    version: int
    cluster_size: int
    virtual_size: int
    crypt_method: int
    has_backing_file: bool
    crypt_header: CryptHeader | None

    @property
    def encryption(self) -> str | None:
        return {CRYPT_NONE: None, CRYPT_AES: "aes", CRYPT_LUKS: "luks"}.get(
            self.crypt_method, "unknown")


def is_qcow2(prefix: bytes) -> bool:
    return prefix[:4] == MAGIC


def _extensions(data: bytes, start: int, end: int) -> dict[int, bytes]:
    found: dict[int, bytes] = {}
    at = start
    while True:
        if at + EXTENSION_LAYOUT.size > end:
            raise FormatError("qcow2 header extensions run past the first cluster",
                              reason=FormatFault.TRUNCATED)
        ext = EXTENSION_LAYOUT.unpack(data, at)
        at += EXTENSION_LAYOUT.size
        if ext["type"] == EXT_END:
            return found
        length = ext["length"]
        if length > end - at:
            raise FormatError("qcow2 header extension longer than the header cluster")
        if ext["type"] in found:
            raise FormatError(f"qcow2 header extension 0x{ext['type']:08x} appears twice")
        found[ext["type"]] = data[at:at + length]
        at += (length + 7) & ~7


def parse_header(data: bytes, file_size: int) -> Qcow2Header:
    """Parse the start of a qcow2 image (``data``: at least its header cluster, or the whole
    file if shorter) of ``file_size`` bytes."""
    if len(data) < 4 or not is_qcow2(data):
        raise FormatError("not a qcow2 image (bad magic)", reason=FormatFault.BAD_MAGIC)
    if len(data) < V2_LAYOUT.size:
        raise FormatError("qcow2 header truncated", reason=FormatFault.TRUNCATED)
    head = V2_LAYOUT.unpack(data)
    version = head["version"]
    if version not in (2, 3):
        raise UnsupportedError(f"qcow2 version {version} is not supported")
    if not MIN_CLUSTER_BITS <= head["cluster_bits"] <= MAX_CLUSTER_BITS:
        raise FormatError(f"qcow2 cluster_bits {head['cluster_bits']} out of range")
    cluster_size = 1 << head["cluster_bits"]
    if version == 2:
        header_length = V2_LAYOUT.size
    else:
        head = V3_LAYOUT.unpack(data)
        header_length = head["header_length"]
        if header_length < V3_LAYOUT.size or header_length % 8:
            raise FormatError(f"qcow2 header_length {header_length} is invalid")
    if header_length > cluster_size:
        raise FormatError("qcow2 header larger than its cluster")
    # Extensions end at the backing file name if there is one, else at the cluster's end.
    end = min(cluster_size, len(data))
    if head["backing_file_offset"]:
        if not header_length <= head["backing_file_offset"] <= cluster_size:
            raise FormatError("qcow2 backing file name outside the header cluster")
        end = min(end, head["backing_file_offset"])
    extensions = _extensions(data, header_length, end)
    crypt = None
    if head["crypt_method"] == CRYPT_LUKS:
        crypt = _crypt_header(extensions.get(EXT_CRYPTO_HEADER), cluster_size, file_size)
    elif EXT_CRYPTO_HEADER in extensions:
        raise FormatError("qcow2 crypto header extension without LUKS encryption")
    return Qcow2Header(version=version, cluster_size=cluster_size, virtual_size=head["size"],
                       crypt_method=head["crypt_method"],
                       has_backing_file=head["backing_file_offset"] != 0, crypt_header=crypt)


def _crypt_header(data: bytes | None, cluster_size: int, file_size: int) -> CryptHeader:
    if data is None:
        raise FormatError("qcow2 with LUKS encryption has no crypto header extension")
    if len(data) != CRYPTO_EXTENSION_LAYOUT.size:
        raise FormatError("qcow2 crypto header extension has the wrong length")
    ext = CRYPTO_EXTENSION_LAYOUT.unpack(data)
    offset, length = ext["offset"], ext["length"]
    if offset % cluster_size or offset < cluster_size:
        raise FormatError("qcow2 LUKS header is not in a cluster of its own")
    if not 592 <= length <= MAX_CRYPT_HEADER:
        raise FormatError(f"qcow2 LUKS header length {length} out of range")
    if offset + length > file_size:
        raise FormatError("qcow2 LUKS header lies beyond the end of the file",
                          reason=FormatFault.TRUNCATED)
    return CryptHeader(offset, length)


__all__ = ["MAX_HEADER_READ", "CryptHeader", "Qcow2Header", "is_qcow2", "parse_header"]

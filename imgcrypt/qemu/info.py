"""``qemu-img info --output=json`` as a validated :class:`ImageInfo`: bytes in, object out.

qemu-img's output is parsed with bounds (size, value ranges, types), since a hostile image
shapes parts of it; :meth:`ImageInfo.external_files` names the host files reading the image's
guest data would open (backing file, qcow2 external data file, vmdk extents elsewhere).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from imgcrypt.errors import FormatError

# qemu-img info of a sane image is a few hundred bytes; a vmdk with many extents a few KiB.
MAX_INFO_JSON = 1 << 20
MAX_SIZE = (1 << 63) - 1
FORMAT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info`` says about an image, validated."""

    format: str
    virtual_size: int
    actual_size: int | None = None
    encrypted: bool = False
    backing_file: str | None = None
    cluster_size: int | None = None
    filename: str | None = None
    format_specific: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def specific_data(self) -> Mapping[str, Any]:
        data = self.format_specific.get("data")
        return data if isinstance(data, dict) else {}

    @property
    def encryption_format(self) -> str | None:
        """``luks`` for qcow2 with built-in LUKS, ``aes`` for the legacy scheme, else None."""
        encrypt = self.specific_data.get("encrypt")
        if isinstance(encrypt, dict) and isinstance(encrypt.get("format"), str):
            return str(encrypt["format"])
        return None

    def external_files(self, image_path: str) -> list[str]:
        """Host files other than ``image_path`` that reading this image's guest data would open."""
        found: list[str] = []
        if self.backing_file is not None:
            found.append(f"backing file {self.backing_file}")
        data = self.specific_data
        data_file = data.get("data-file")
        if isinstance(data_file, str):
            found.append(f"external data file {data_file}")
        extents = data.get("extents")
        if isinstance(extents, list):
            for extent in extents:
                name = extent.get("filename") if isinstance(extent, dict) else None
                if not isinstance(name, str) or not _same_path(name, image_path):
                    found.append(f"extent {name!r}")
        return found


def _same_path(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return os.path.realpath(a) == os.path.realpath(b)


def _optional(obj: Mapping[str, Any], key: str, kind: type, what: str) -> Any:
    value = obj.get(key)
    # bool is an int subclass: "virtual-size": true must not pass as 1
    if value is None or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
        return value
    raise FormatError(f"qemu-img info: {what} is not a {kind.__name__}")


def _size(obj: Mapping[str, Any], key: str, *, required: bool) -> int | None:
    value = _optional(obj, key, int, key)
    if value is None:
        if required:
            raise FormatError(f"qemu-img info: {key} missing")
        return None
    if not 0 <= value <= MAX_SIZE:
        raise FormatError(f"qemu-img info: {key} {value} out of range")
    return int(value)


def parse_image_info(data: bytes | str) -> ImageInfo:
    """Parse ``qemu-img info --output=json`` output; malformed input is a :class:`FormatError`."""
    if len(data) > MAX_INFO_JSON:
        raise FormatError(f"qemu-img info output larger than {MAX_INFO_JSON} bytes")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise FormatError(f"qemu-img info output is not JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise FormatError("qemu-img info output is not a JSON object")
    fmt = _optional(obj, "format", str, "format")
    if fmt is None or not FORMAT_NAME.fullmatch(fmt):
        raise FormatError("qemu-img info: missing or malformed format name")
    virtual_size = _size(obj, "virtual-size", required=True)
    assert virtual_size is not None
    encrypted = _optional(obj, "encrypted", bool, "encrypted")
    backing = _optional(obj, "full-backing-filename", str, "full-backing-filename")
    if backing is None:
        backing = _optional(obj, "backing-filename", str, "backing-filename")
    specific = _optional(obj, "format-specific", dict, "format-specific")
    if specific is not None and not isinstance(specific.get("data", {}), dict):
        raise FormatError("qemu-img info: format-specific data is not an object")
    return ImageInfo(
        format=fmt,
        virtual_size=virtual_size,
        actual_size=_size(obj, "actual-size", required=False),
        encrypted=bool(encrypted),
        backing_file=backing,
        cluster_size=_size(obj, "cluster-size", required=False),
        filename=_optional(obj, "filename", str, "filename"),
        format_specific=specific or {},
    )

"""The qemu edge: image metadata, the source safety checks, guest content as raw, and qcow2 with
qemu's built-in LUKS encryption.

Everything that reads an image's guest data runs ``qemu-img`` or ``qemu-nbd`` as a subprocess,
described by a :class:`QemuImg` value that every such function takes as ``qemu_img=``
(default :data:`DEFAULT_QEMU_IMG`). The package is split by concern; data flows one way,
tool and info at the bottom, source over them, guest and luks over source:

* :mod:`imgcrypt.qemu.tool` — running qemu-img: retries of its spurious CPU-usage failure,
  kernel resource limits, stderr quoting, and passphrases only through 0600 secret files in a
  private 0700 directory (``--object secret,id=s0,file=PATH``, never ``data=``).
* :mod:`imgcrypt.qemu.info` — ``qemu-img info`` JSON as a validated :class:`ImageInfo`
  (bytes in, object out).
* :mod:`imgcrypt.qemu.source` — what an image is and whether reading it is safe: format
  detection and safety checks through oslo.utils' format inspector (:mod:`imgcrypt.inspector`,
  imported where first used), images naming other host files refused, the format always named
  to qemu.
* :mod:`imgcrypt.qemu.guest` — guest content: ``qemu-img convert`` to raw, or read in place
  through ``qemu-nbd`` (:func:`guest_source`, :func:`raw_view`, :func:`open_guest`).
* :mod:`imgcrypt.qemu.luks` — qcow2 with qemu's built-in LUKS: inspect, create, encrypt,
  decrypt, re-key (not imported here: it pulls in imgcrypt's LUKS code).
"""

from __future__ import annotations

from imgcrypt.qemu.guest import (
    GuestReader,
    GuestSource,
    convert_to_raw,
    guest_source,
    open_guest,
    raw_view,
)
from imgcrypt.qemu.info import MAX_INFO_JSON, MAX_SIZE, ImageInfo, parse_image_info
from imgcrypt.qemu.source import (
    BACKING_DRIVERS,
    CONVERTIBLE_FORMATS,
    MAX_VIRTUAL_SIZE,
    SNIFF_SIZE,
    detect_format,
    format_by_magic,
    image_info,
    sniff_format,
    source_spec,
)
from imgcrypt.qemu.tool import (
    ATTEMPTS,
    DEFAULT_QEMU_IMG,
    INFO_LIMITS,
    MAX_STDERR_QUOTE,
    QemuImg,
    ResourceLimits,
    secret_file,
    secret_object,
    stderr_line,
)

__all__ = [
    "ATTEMPTS",
    "BACKING_DRIVERS",
    "CONVERTIBLE_FORMATS",
    "DEFAULT_QEMU_IMG",
    "INFO_LIMITS",
    "MAX_INFO_JSON",
    "MAX_SIZE",
    "MAX_STDERR_QUOTE",
    "MAX_VIRTUAL_SIZE",
    "SNIFF_SIZE",
    "GuestReader",
    "GuestSource",
    "ImageInfo",
    "QemuImg",
    "ResourceLimits",
    "convert_to_raw",
    "detect_format",
    "format_by_magic",
    "guest_source",
    "image_info",
    "open_guest",
    "parse_image_info",
    "raw_view",
    "secret_file",
    "secret_object",
    "sniff_format",
    "source_spec",
    "stderr_line",
]

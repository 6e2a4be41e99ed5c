"""The oslo.utils format-inspector edge: an image's format and safety as the cloud judges them.

Glance, Nova and Cinder decide what an uploaded image is, and whether reading it could make qemu
open other host files, with ``oslo_utils.imageutils.format_inspector``. imgcrypt asks the same
code, so a qcow2, vmdk, vhdx, vhd or vdi that the cloud would refuse is refused here too, and
for the same reason. Its outcomes become imgcrypt's typed errors: an unsafe image (backing file,
qcow2 data file, unknown qcow2 feature bits, a vmdk extent naming a path) is an
:class:`UnsupportedError`, an image that does not parse as its format a :class:`FormatError`.

imgcrypt keeps its own rules only where the inspector has none:

* LUKS2: the inspector recognises any ``LUKS\\xba\\xbe`` header as ``luks`` but its safety check
  refuses version 2 ("LUKS version 2 is not supported"); imgcrypt reads LUKS2 itself, so a LUKS
  container is named ``luks`` and never put through that check.
* qemu formats the inspector does not know: qcow version 1 (it calls every ``QFI\\xfb`` qcow2),
  the vmdk3 ``COWD`` header and vmdk descriptor text files (which it calls raw). For those,
  :func:`imgcrypt.qemu.image_info` still checks ``qemu-img info`` for backing files and extents.
* GPT and ISO 9660 are raw disks to qemu: they convert as raw, so they are named raw here.
"""

from __future__ import annotations

import io
import logging
import os

from oslo_utils.imageutils import format_inspector

from imgcrypt.errors import FormatError, UnsupportedError

# The inspector logs every failed check as a warning; imgcrypt reports it as one error instead,
# and Python's last-resort handler would otherwise print the warning on stderr too.
logging.getLogger(format_inspector.__name__).addHandler(logging.NullHandler())

# How much of a file or stream the format decision looks at: the largest region an inspector
# needs to decide (a vmdk header and its embedded descriptor, a vhdx region table) fits.
HEAD_SIZE = 1 << 20
# Enough for the magics imgcrypt still recognises itself.
SNIFF_OWN = 64
# Inspector names that differ from qemu's driver names.
_QEMU_NAMES = {"vhd": "vpc"}
# Formats qemu reads as raw bytes: a partitioned disk or a CD image is a raw guest disk.
_RAW_FAMILY = frozenset({"raw", "gpt", "iso"})
# The inspector's check names in imgcrypt's words.
_CHECK_NAMES = {"backing_file": "backing file", "data_file": "external data file",
                "descriptor": "vmdk descriptor or extent", "unknown_features": "qcow2 features",
                "footer": "vmdk footer"}
# Inspector formats whose safety checks imgcrypt runs (luks: see the module docstring).
_CHECKED = frozenset({"qcow2", "vhd", "vhdx", "vmdk", "vdi", "qed"})


def _own_sniff(head: bytes) -> str | None:
    """The qemu formats the inspector does not recognise, by their magic."""
    if head[:4] == b"QFI\xfb" and head[4:8] == b"\0\0\0\x01":
        return "qcow"
    if head[:4] == b"COWD" or head.startswith(b"# Disk DescriptorFile"):
        return "vmdk"
    return None


def _inspector_format(head: bytes) -> str:
    """The inspector's single verdict on ``head`` (raw when nothing specific matches)."""
    wrapper = format_inspector.InspectWrapper(io.BytesIO(head))
    try:
        wrapper.read(len(head))
        wrapper.close()  # end of data: an inspector still waiting for bytes is no match
        matches = wrapper.formats or []
    except format_inspector.ImageFormatError as exc:
        raise FormatError(f"format inspector: {exc}") from None
    except Exception as exc:
        # hostile bytes breaking one of its parsers: malformed input, not a crash
        raise FormatError(f"format inspector: {type(exc).__name__}") from None
    names = {str(match) for match in matches} - _RAW_FAMILY
    if len(names) > 1:
        # The cloud refuses an image that is two formats at once: one may hide behind the other.
        raise FormatError(f"image matches several formats ({', '.join(sorted(names))})")
    return names.pop() if names else "raw"


def sniff(head: bytes) -> str | None:
    """The qemu format name of the image starting with ``head``, or None for raw."""
    own = _own_sniff(head)
    if own is not None:
        return own
    name = _inspector_format(head)
    return None if name == "raw" else _QEMU_NAMES.get(name, name)


def detect_file(path: str | os.PathLike[str]) -> str:
    """The qemu format name of the file at ``path`` (``raw`` when nothing specific matches)."""
    with open(path, "rb") as f:
        return sniff(f.read(HEAD_SIZE)) or "raw"


def safety_check(path: str | os.PathLike[str], fmt: str, *, shown: str | None = None) -> None:
    """Run the inspector's safety checks for ``fmt`` (a qemu format name) on the file at ``path``.

    Raises :class:`UnsupportedError` for an image the cloud would refuse as unsafe, and
    :class:`FormatError` for one that is not a valid ``fmt`` image. Formats the inspector does
    not check (raw, luks, qcow v1, vmdk descriptor files) pass: see the module docstring.
    ``shown`` names the file in messages (default ``path``).
    """
    name = {v: k for k, v in _QEMU_NAMES.items()}.get(fmt, fmt)
    shown = shown if shown is not None else os.fspath(path)
    if name not in _CHECKED:
        return
    with open(path, "rb") as f:
        if _own_sniff(f.read(SNIFF_OWN)) is not None:
            return
    inspector_type = format_inspector.get_inspector(name)
    assert inspector_type is not None
    try:
        inspector = inspector_type.from_file(os.fspath(path))
        inspector.safety_check()
    except format_inspector.SafetyCheckFailed as exc:
        reasons = "; ".join(f"{_CHECK_NAMES.get(name, name)}: {failure}"
                            for name, failure in sorted(exc.failures.items()))
        raise UnsupportedError(
            f"{shown} is a {fmt} image the cloud's format inspector refuses ({reasons}); "
            "reading it could make qemu read other host files") from None
    except format_inspector.ImageFormatError as exc:
        raise FormatError(f"{shown} is not a valid {fmt} image ({exc})") from None
    except Exception as exc:
        # Its parsers read hostile headers with struct and slicing; any fault there is malformed
        # input, as InspectWrapper itself treats it.
        raise FormatError(f"{shown} is not a valid {fmt} image ({type(exc).__name__})") from None


"""LUKS2, split by concern as cryptsetup's ``lib/luks2/`` is.

- :mod:`.disk`: the binary header, its checksum, both metadata copies and which one wins;
- :mod:`.rules`: cryptsetup's validity rules for the JSON (the one validator);
- :mod:`.metadata`: the JSON model read through those rules, and every entry imgcrypt writes;
- :mod:`.keyslots`, :mod:`.digests`, :mod:`.segments`: what each JSON section means to imgcrypt;
- :mod:`.header`: :class:`Luks2Header`, tying them to the keys; :mod:`.format`: a new header.
"""

from __future__ import annotations

from imgcrypt.luks.luks2.format import format_region
from imgcrypt.luks.luks2.header import Luks2Header, bytes_to_parse

__all__ = ["Luks2Header", "bytes_to_parse", "format_region"]

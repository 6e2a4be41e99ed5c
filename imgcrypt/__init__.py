"""imgcrypt: encrypt and sign virtual-machine disk images for OpenStack-like clouds."""

from __future__ import annotations

__version__ = "0.1.0"

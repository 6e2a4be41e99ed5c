"""Algorithms `cryptography` has deprecated, touched only when an image or key really uses one.

`cryptography` 51 warns when DSA's classes are touched or a DSA key is loaded. imgcrypt still
verifies DSA signatures (cursive lists DSA, so legacy Glance images carry them) and re-encodes
DSA certificates, so those places silence exactly that warning; the person is told once, by the
command that met the DSA image, in words naming the image's algorithm. Whatever `cryptography`
deprecates next is not silenced here: it surfaces in the test suite, where warnings raised from
imgcrypt's modules are errors.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from cryptography.utils import CryptographyDeprecationWarning


@contextmanager
def legacy_dsa() -> Iterator[None]:
    """Touch DSA without `cryptography`'s deprecation warning reaching the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="DSA is deprecated",
                                category=CryptographyDeprecationWarning)
        yield


__all__ = ["legacy_dsa"]

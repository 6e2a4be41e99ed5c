"""Loading the private signing key (PEM or DER, optionally passphrase-protected)."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization

from imgcrypt.errors import FormatError, PassphraseRequiredError, WrongPassphraseError
from imgcrypt.legacy import legacy_dsa
from imgcrypt.signing.algorithms import PrivateKey

MAX_KEY_BYTES = 1 << 20




def load_private_key(data: bytes, passphrase: bytes | None = None) -> PrivateKey:
    """The private key in ``data``; the passphrase never appears in any message."""
    if len(data) > MAX_KEY_BYTES:
        raise FormatError("private key file is too large")
    loader = (
        serialization.load_pem_private_key
        if b"-----BEGIN" in data
        else serialization.load_der_private_key
    )
    try:
        with legacy_dsa():  # a DSA key is loaded so that signing can refuse it by name
            return loader(data, password=passphrase)
    except TypeError:
        # cryptography says TypeError both for "encrypted, no password" and the reverse.
        if passphrase is None:
            raise PassphraseRequiredError(
                "the private key is encrypted; give its passphrase"
            ) from None
        return load_private_key(data, None)
    except ValueError:
        if passphrase is not None:
            raise WrongPassphraseError(
                "cannot decrypt the private key: wrong passphrase or damaged key"
            ) from None
        raise FormatError("not a PEM or DER private key") from None
    except Exception as exc:  # UnsupportedAlgorithm and friends
        raise FormatError(f"unsupported private key: {type(exc).__name__}") from None


__all__ = ["load_private_key"]

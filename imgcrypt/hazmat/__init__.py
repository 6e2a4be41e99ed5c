"""The expert layer: LUKS headers, KDFs, the sector engine, secrets and signature schemes.

**Hazardous materials.** These are the primitives :mod:`imgcrypt.recipes` is built from. They
do exactly what they are told: nothing here orders or deletes a key, registers a consumer,
rolls back a failed job, writes a file atomically or checks that an image's properties match
its bytes. A mistake with them gives images that open nowhere else, or keys left behind. Use
the recipes (``import imgcrypt``) unless you are building a new one.

Each name is imported from its module on first use, like :mod:`imgcrypt`'s own names.
"""

from __future__ import annotations

from imgcrypt import lazy_exports

_EXPORTS = {
    # LUKS containers: headers in, objects out; streams through the sector engine
    "FormatOptions": "imgcrypt.luks.options",
    "KdfOptions": "imgcrypt.luks.options",
    "LuksHeader": "imgcrypt.luks.container",
    "parse_header": "imgcrypt.luks.container",
    "is_luks": "imgcrypt.luks.container",
    "read_header": "imgcrypt.luks.unlock",
    "unlock_stream": "imgcrypt.luks.unlock",
    "encrypt_stream": "imgcrypt.luks.transfer",
    "decrypt_stream": "imgcrypt.luks.transfer",
    "decrypt_payload": "imgcrypt.luks.transfer",
    "iter_payload": "imgcrypt.luks.transfer",
    "open_payload": "imgcrypt.luks.reader",
    "rekey_file": "imgcrypt.luks.rekey",
    "EncryptResult": "imgcrypt.luks.transfer",
    "RekeyResult": "imgcrypt.luks.rekey",
    # KDFs and their limits (a header's KDF parameters come from whoever made the image)
    "Kdf": "imgcrypt.crypto.kdf",
    "Pbkdf2": "imgcrypt.crypto.kdf",
    "Argon2": "imgcrypt.crypto.kdf",
    "KdfLimits": "imgcrypt.crypto.kdf",
    "DEFAULT_LIMITS": "imgcrypt.crypto.kdf",
    # secrets: the passphrase rule, the volume-type check, the property rule, the key lease
    "Secret": "imgcrypt.keys.secret",
    "passphrase_for": "imgcrypt.keys.rules",
    "check_secret": "imgcrypt.keys.rules",
    "apply_deletion_policy": "imgcrypt.keys.rules",
    "encryption_properties": "imgcrypt.keys.properties",
    "KeyLease": "imgcrypt.keys.lease",
    "Consumer": "imgcrypt.keys.manager",
    # signature schemes and certificates
    "GlanceSigner": "imgcrypt.signing",
    "ImgcryptSigner": "imgcrypt.signing",
    "ImageVerifier": "imgcrypt.signing",
    "make_signer": "imgcrypt.signing",
    "feed_file": "imgcrypt.signing",
    "check_certificate": "imgcrypt.signing",
    "load_certificates": "imgcrypt.signing",
    "CertificatePolicy": "imgcrypt.signing",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())

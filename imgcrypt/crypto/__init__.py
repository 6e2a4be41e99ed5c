"""Cryptographic primitives under the LUKS formats, as cryptsetup's ``lib/crypto_backend/`` is.

- :mod:`.backend`: the one crypto table (hashes and block ciphers: their LUKS names, their
  OpenSSL implementation, their measured PBKDF2 cost weight);
- :mod:`.kdf`: PBKDF2 and Argon2 with the limits a stranger's header is held to; :mod:`.cost`:
  the cost model those limits are written in; :mod:`.benchmark`: iteration counts for new slots;
- :mod:`.af`: the anti-forensic splitter;
- :mod:`.sectors`: the sector cipher (cipher, mode, IV generator) and its kernels: OpenSSL's
  AES-XTS through the C extension ``_evpxts``, the numpy and ``_xtsmul`` fallbacks, and
  ``_sector_generic`` for every other specification.

Nothing here knows a header layout or opens a file.
"""

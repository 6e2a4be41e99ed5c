"""imgcrypt's Glance import plugins (``pip install 'imgcrypt[glance]'`` beside Glance).

- :mod:`imgcrypt.glance.verify` — ``imgcrypt_verify``: checks the staged data's signatures and
  encryption claims, that the named key opens the LUKS header, registers the image as a
  consumer of its key and records the verdict as image properties.
- :mod:`imgcrypt.glance.encrypt` — ``imgcrypt_encrypt``: encrypts a plaintext image as LUKS1
  with a new key ordered for the image's owner.

Both are registered in the entry-point group ``glance.image_import.plugins`` and configured
in Glance's own configuration file, section ``[imgcrypt]`` (:mod:`imgcrypt.glance.options`).
:mod:`imgcrypt.glance.checks` holds the work itself and does not import Glance.
"""

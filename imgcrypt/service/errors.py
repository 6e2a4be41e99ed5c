"""Errors of the service flows; each belongs to the imgcrypt family and its exit code."""

from __future__ import annotations

from imgcrypt.errors import FormatError, UnsupportedError, UsageError, VerificationError


class EncryptionClaimError(FormatError):
    """The properties claim encryption that the image bytes do not show (or contradict)."""


class LuksVersionRefusedError(UnsupportedError):
    """The deployment does not accept this LUKS version (LUKS1 only, as Glance, by default)."""


class SignatureRequiredError(VerificationError):
    """The policy requires a signature and the properties carry none."""


class VolumeTypeMismatchError(UsageError):
    """An encrypted image was asked into an unencrypted volume type without an explicit decrypt."""


class TargetTooSmallError(UsageError):
    """The target volume cannot hold the image."""


class KeyBindingError(VerificationError):
    """The key the properties name does not open the image's LUKS header."""

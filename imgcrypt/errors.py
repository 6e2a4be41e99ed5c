"""The imgcrypt error family.

Every failure imgcrypt reports on purpose is an :class:`ImgcryptError`. Each class carries the
exit code the command line uses for it, so the mapping lives in one place:

====  ==========================================================================
code  meaning
====  ==========================================================================
0     success
1     unexpected failure (:class:`ImgcryptError` itself, :class:`ToolError`, I/O)
2     usage error (:class:`UsageError`, :class:`TargetExistsError`)
3     malformed, truncated or unsupported input (:class:`FormatError` and family)
4     wrong passphrase or key, failed verification (:class:`WrongPassphraseError`,
      :class:`VerificationError` and family)
5     key manager unreachable or secret not found (:class:`KeyManagerError` family)
130   interrupted (Ctrl-C)
====  ==========================================================================

Messages never contain secret material: callers pass descriptions, not values.
"""

from __future__ import annotations


class ImgcryptError(Exception):
    """Base class of every error imgcrypt raises deliberately."""

    exit_code: int = 1


class UsageError(ImgcryptError):
    """The caller asked for something contradictory or incomplete."""

    exit_code = 2


class TargetExistsError(UsageError):
    """The output already exists and overwriting was not requested."""


class FormatError(ImgcryptError):
    """Input bytes are malformed or truncated."""

    exit_code = 3


class TruncatedError(FormatError):
    """Input ended before a structure it announced was complete."""


class BadMagicError(FormatError):
    """Input does not start with the expected magic bytes."""


class ChecksumError(FormatError):
    """A header checksum does not match its contents."""


class UnsupportedError(FormatError):
    """Input is well-formed but uses a version, cipher or feature imgcrypt does not implement."""


class LimitExceededError(FormatError):
    """Input asks for more resources (memory, time, size, count) than the configured caps allow."""


class WrongPassphraseError(ImgcryptError):
    """No keyslot opens with the given passphrase or key."""

    exit_code = 4


class VerificationError(ImgcryptError):
    """A signature, digest or certificate check failed."""

    exit_code = 4


class KeyManagerError(ImgcryptError):
    """The key manager failed or refused a request."""

    exit_code = 5


class KeyManagerUnavailableError(KeyManagerError):
    """The key manager could not be reached."""


class SecretNotFoundError(KeyManagerError):
    """The key manager has no secret with the requested id."""


class ToolError(ImgcryptError):
    """An external tool (qemu-img) failed; the message quotes its own words."""


__all__ = [
    "BadMagicError",
    "ChecksumError",
    "FormatError",
    "ImgcryptError",
    "KeyManagerError",
    "KeyManagerUnavailableError",
    "LimitExceededError",
    "SecretNotFoundError",
    "TargetExistsError",
    "ToolError",
    "TruncatedError",
    "UnsupportedError",
    "UsageError",
    "VerificationError",
    "WrongPassphraseError",
]

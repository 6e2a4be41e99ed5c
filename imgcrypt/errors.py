"""The imgcrypt error family: every error imgcrypt raises on purpose, and its exit code.

Seven classes decide the exit code; every other class here is one of them with a reason a
caller can act on (which verification check failed, that a secret is still in use, that a
device is busy). A class's ``exit_code`` is its family's, and :data:`EXIT_CODES` is the one
table of codes the command line returns; README's exit-code table lists exactly these.

====  ==========================================================================
code  meaning
====  ==========================================================================
0     success
1     unexpected failure (:class:`ImgcryptError` itself, :class:`ToolError`, I/O)
2     usage error (:class:`UsageError` and family)
3     malformed, truncated or unsupported input (:class:`FormatError` and family)
4     wrong passphrase or key, failed verification (:class:`WrongPassphraseError`,
      :class:`VerificationError` and family)
5     key manager unreachable, secret not found, keystore not private
      (:class:`KeyManagerError` family)
130   interrupted (Ctrl-C)
141   the reader of standard output went away
====  ==========================================================================

Messages never contain secret material: callers pass descriptions, not values.
"""

from __future__ import annotations

SUCCESS_EXIT = 0
INTERRUPTED_EXIT = 130
# What a shell reports for a process killed by SIGPIPE (128 + 13), as `cat big | head` gives.
CLOSED_PIPE_EXIT = 141


class ImgcryptError(Exception):
    """Base class of every error imgcrypt raises deliberately."""

    exit_code: int = 1


class ToolError(ImgcryptError):
    """An external tool (qemu-img) or service (the image service) failed; the message quotes
    its own words."""


class UsageError(ImgcryptError):
    """The caller asked for something contradictory or incomplete, or a setting is invalid."""

    exit_code = 2


class FormatError(ImgcryptError):
    """Input bytes are malformed or truncated."""

    exit_code = 3


class WrongPassphraseError(ImgcryptError):
    """No keyslot opens with the given passphrase or key."""

    exit_code = 4


class VerificationError(ImgcryptError):
    """A signature, digest or certificate check failed."""

    exit_code = 4


class KeyManagerError(ImgcryptError):
    """The key manager failed or refused a request, or the local keystore is not private."""

    exit_code = 5


EXIT_CODES: dict[int, str] = {
    SUCCESS_EXIT: "ok",
    ImgcryptError.exit_code: "unexpected failure",
    UsageError.exit_code: "usage",
    FormatError.exit_code: "malformed or unsupported input",
    VerificationError.exit_code: "wrong passphrase or failed verification",
    KeyManagerError.exit_code: "key manager unreachable or secret not found",
    INTERRUPTED_EXIT: "interrupted",
    CLOSED_PIPE_EXIT: "output pipe closed by its reader",
}


# -- usage ------------------------------------------------------------------------------------


class TargetExistsError(UsageError):
    """The output already exists and overwriting was not requested."""


class NoTerminalError(UsageError):
    """A passphrase was needed, none was given, and there is no terminal to ask on."""


class PassphraseRequiredError(UsageError):
    """The private key is encrypted and no passphrase was given."""


class DeviceBusyError(UsageError):
    """The target device is in use; ``reasons`` says by what."""

    def __init__(self, path: str, reasons: tuple[str, ...]) -> None:
        super().__init__(f"{path} is in use, refusing to overwrite it: {'; '.join(reasons)}")
        self.path = path
        self.reasons = reasons


class UnusableSecretError(UsageError):
    """A secret the cloud's own code could not turn into a passphrase (os-brick would raise)."""


class SpecMismatchError(UsageError):
    """A secret does not fit a volume type's encryption spec; ``mismatches`` lists how."""

    def __init__(self, mismatches: tuple[str, ...]) -> None:
        self.mismatches = mismatches
        super().__init__("secret does not fit the encryption spec: " + "; ".join(mismatches))


class VolumeTypeMismatchError(UsageError):
    """An encrypted image was asked into an unencrypted volume type without an explicit decrypt."""


# -- input ------------------------------------------------------------------------------------


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


class EncryptionClaimError(FormatError):
    """The properties claim encryption that the image bytes do not show (or contradict)."""


class LuksVersionRefusedError(UnsupportedError):
    """The deployment does not accept this LUKS version (LUKS1 only, as Glance, by default)."""


# -- verification: one class a reason, so a person learns which check failed ------------------


class KeyBindingError(VerificationError):
    """The key the properties name does not open the image's LUKS header."""


class SignatureRequiredError(VerificationError):
    """The policy requires a signature and the properties carry none."""


class BadSignatureError(VerificationError):
    """The signature does not match the image bytes, the manifest or the public key."""


class MalformedSignatureError(VerificationError):
    """A signature property is present but cannot be decoded (bad base64, bad number...)."""


class MissingPropertyError(VerificationError):
    """A property the scheme needs is absent."""


class DuplicatePropertyError(VerificationError):
    """The same property name appears more than once in a property document."""


class MalformedPropertiesError(VerificationError):
    """A property document is not a flat JSON object of strings."""


class UnknownAlgorithmError(VerificationError):
    """A key type, algorithm or hash name is not one imgcrypt accepts."""


class AlgorithmMismatchError(VerificationError):
    """The declared key type or algorithm does not match the certificate's public key."""


class WeakAlgorithmError(VerificationError):
    """The policy refuses this algorithm (MD5, SHA-1, RSA under 2048 bits, DSA without legacy)."""


class BoundPropertyMismatchError(VerificationError):
    """A security-relevant property differs from the value the signed manifest binds."""


class SignedSizeMismatchError(VerificationError):
    """The image is shorter or longer than the size the signed manifest states."""


class PartsError(VerificationError):
    """A value stored as numbered parts cannot be reassembled."""


class MissingPartError(PartsError):
    """A numbered part (or the count or digest record) is absent."""


class ExtraPartError(PartsError):
    """A part numbered beyond the announced count is present."""


class DuplicatePartError(PartsError):
    """Two parts carry the same number."""


class ReorderedPartError(PartsError):
    """Parts are all present but stored under the wrong numbers."""


class MalformedPartError(PartsError):
    """A part record is not in the documented form."""


class CorruptPartsError(PartsError):
    """The parts join up, but the result does not match the recorded digest of the whole value."""


class CertificateError(VerificationError):
    """The certificate cannot be used to verify a signature."""


class CertificateLoadError(CertificateError):
    """The certificate bytes are neither a PEM nor a DER X.509 certificate."""


class CertificateExpiredError(CertificateError):
    """The certificate's notAfter lies before the verification time."""


class CertificateNotYetValidError(CertificateError):
    """The certificate's notBefore lies after the verification time."""


class KeyUsageError(CertificateError):
    """The certificate's key usage does not allow digitalSignature."""


class CAConstraintError(CertificateError):
    """An issuer is not a CA, may not sign certificates, or its path length is exceeded."""


class UntrustedChainError(CertificateError):
    """No valid chain leads from the certificate to the trust store."""


class WrongCertificateTypeError(CertificateError):
    """The key manager secret is not of type ``certificate``."""


# -- key manager ------------------------------------------------------------------------------


class KeyManagerUnavailableError(KeyManagerError):
    """The key manager could not be reached."""


class SecretNotFoundError(KeyManagerError):
    """The key manager has no secret with the requested id."""


class SecretInUseError(KeyManagerError):
    """The key manager refused to delete a secret that still has consumers."""


class ConsumersUnsupportedError(KeyManagerError):
    """The key manager (or its API version) has no consumer registration."""

"""The imgcrypt error family: every error imgcrypt raises on purpose, and its exit code.

Seven classes decide the exit code. A subclass exists only where a caller catches it to act
differently, or it is the name a library user naturally catches (as pyca's InvalidSignature);
every other fault is its family's class with a ``reason`` (a member of that family's
:class:`Fault` enum: :class:`UsageFault`, :class:`FormatFault`, :class:`VerificationFault`,
:class:`CertificateFault`, :class:`KeyManagerFault`), so a caller learns which check failed
without a class for each. A class's ``exit_code`` is its family's, and :data:`EXIT_CODES` is
the one table of codes the command line returns; README's exit-code table lists exactly these.

====  ==========================================================================
code  meaning and classes
====  ==========================================================================
0     success
1     unexpected failure, I/O: :class:`ImgcryptError` itself, :class:`ToolError`
2     usage error: :class:`UsageError` (reason :class:`UsageFault`),
      :class:`TargetExistsError`, :class:`NoTerminalError`,
      :class:`PassphraseRequiredError`, :class:`UnusableSecretError`
3     malformed, truncated or unsupported input: :class:`FormatError` (reason
      :class:`FormatFault`), :class:`UnsupportedError`, and
      :class:`imgcrypt.luks.rules.HeaderRuleError` (a header rule cryptsetup enforces)
4     wrong passphrase or key, failed verification: :class:`WrongPassphraseError`,
      :class:`VerificationError` (reason :class:`VerificationFault`),
      :class:`BadSignatureError`, :class:`UnknownAlgorithmError`,
      :class:`WeakAlgorithmError`, :class:`CertificateError` (reason
      :class:`CertificateFault`)
5     key manager unreachable, secret not found, keystore not private:
      :class:`KeyManagerError` (reason :class:`KeyManagerFault`),
      :class:`KeyManagerUnavailableError`, :class:`SecretNotFoundError`,
      :class:`SecretInUseError`
130   interrupted (Ctrl-C)
141   the reader of standard output went away
====  ==========================================================================

Messages never contain secret material: callers pass descriptions, not values.
"""

from __future__ import annotations

from enum import StrEnum

SUCCESS_EXIT = 0
INTERRUPTED_EXIT = 130
# What a shell reports for a process killed by SIGPIPE (128 + 13), as `cat big | head` gives.
CLOSED_PIPE_EXIT = 141


class Fault(StrEnum):
    """Base of the per-family reason enums; an error's ``reason`` is one of their members."""


class UsageFault(Fault):
    DEVICE_BUSY = "device-busy"  # ``details`` says by what
    SPEC_MISMATCH = "spec-mismatch"  # ``details`` lists how the secret differs from the spec
    VOLUME_TYPE_MISMATCH = "volume-type-mismatch"  # encrypted image, unencrypted volume type


class FormatFault(Fault):
    TRUNCATED = "truncated"  # input ended before a structure it announced was complete
    BAD_MAGIC = "bad-magic"  # input does not start with the expected magic bytes
    CHECKSUM = "checksum"  # a header checksum does not match its contents
    UNSUPPORTED = "unsupported"  # a version (or feature) imgcrypt does not implement
    LIMIT_EXCEEDED = "limit-exceeded"  # asks for more memory, time, size or count than the caps
    ENCRYPTION_CLAIM = "encryption-claim"  # properties claim encryption the bytes do not show
    LUKS_VERSION_REFUSED = "luks-version-refused"  # the deployment does not accept this version


class VerificationFault(Fault):
    KEY_BINDING = "key-binding"  # the key the properties name does not open the LUKS header
    SIGNATURE_REQUIRED = "signature-required"  # the policy requires a signature, none given
    MALFORMED_SIGNATURE = "malformed-signature"  # a signature property cannot be decoded
    MISSING_PROPERTY = "missing-property"  # a property the scheme needs is absent
    DUPLICATE_PROPERTY = "duplicate-property"  # a property name appears twice in a document
    MALFORMED_PROPERTIES = "malformed-properties"  # not a flat JSON object of strings
    ALGORITHM_MISMATCH = "algorithm-mismatch"  # declared algorithm is not the certificate's key
    BOUND_PROPERTY_MISMATCH = "bound-property-mismatch"  # differs from the signed manifest
    SIGNED_SIZE_MISMATCH = "signed-size-mismatch"  # image size differs from the signed size
    # A value stored as numbered parts cannot be reassembled:
    MISSING_PART = "missing-part"  # a part (or the count or digest record) is absent
    EXTRA_PART = "extra-part"  # a part numbered beyond the announced count is present
    DUPLICATE_PART = "duplicate-part"  # two parts carry the same number
    REORDERED_PART = "reordered-part"  # parts all present but stored under the wrong numbers
    MALFORMED_PART = "malformed-part"  # a part record is not in the documented form
    CORRUPT_PARTS = "corrupt-parts"  # joined parts do not match the recorded digest


class CertificateFault(Fault):
    LOAD = "load"  # the bytes are neither a PEM nor a DER X.509 certificate
    EXPIRED = "expired"  # notAfter lies before the verification time
    NOT_YET_VALID = "not-yet-valid"  # notBefore lies after the verification time
    KEY_USAGE = "key-usage"  # key usage does not allow digitalSignature
    CA_CONSTRAINT = "ca-constraint"  # issuer not a CA, may not sign, or path length exceeded
    UNTRUSTED_CHAIN = "untrusted-chain"  # no valid chain leads to the trust store
    WRONG_TYPE = "wrong-type"  # the key manager secret is not of type ``certificate``


class KeyManagerFault(Fault):
    CONSUMERS_UNSUPPORTED = "consumers-unsupported"  # no consumer registration (API version)
    # The identity service refused a token: expired or revoked (not a secret: a reason name).
    TOKEN_REFUSED = "token-refused"  # noqa: S105


class ImgcryptError(Exception):
    """Base class of every error imgcrypt raises deliberately; catch it to catch them all."""

    exit_code: int = 1
    reason: Fault | None = None


class ToolError(ImgcryptError):
    """Catch when an external tool (qemu-img) or the image service failed (message quotes it)."""


class UsageError(ImgcryptError):
    """Catch for any contradictory or incomplete request or invalid setting (see ``reason``)."""

    exit_code = 2

    # ``details``: the individual findings the message joins (what holds a device, how a
    # secret differs from the spec), for a caller that shows or checks them one by one.
    def __init__(self, *args: object, reason: UsageFault | None = None,
                 details: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.reason = reason
        self.details = details


class FormatError(ImgcryptError):
    """Catch for input that is malformed, truncated, too costly or unsupported (see ``reason``)."""

    exit_code = 3

    def __init__(self, *args: object, reason: FormatFault | None = None) -> None:
        super().__init__(*args)
        self.reason = reason


class WrongPassphraseError(ImgcryptError):
    """Catch when no keyslot opens with the given passphrase or key (try another)."""

    exit_code = 4


class VerificationError(ImgcryptError):
    """Catch for any failed signature, digest or certificate check (``reason`` says which)."""

    exit_code = 4

    def __init__(self, *args: object, reason: VerificationFault | None = None) -> None:
        super().__init__(*args)
        self.reason = reason


class KeyManagerError(ImgcryptError):
    """Catch for any key-manager failure or refusal, or a local keystore that is not private."""

    exit_code = 5

    def __init__(self, *args: object, reason: KeyManagerFault | None = None) -> None:
        super().__init__(*args)
        self.reason = reason


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
    """Catch when the output already exists and overwriting was not requested."""


class NoTerminalError(UsageError):
    """Catch when a passphrase is needed and there is no terminal to ask on (ask otherwise)."""


class PassphraseRequiredError(UsageError):
    """Catch when a private key is encrypted and no passphrase was given (then prompt)."""


class UnusableSecretError(UsageError):
    """Catch when the cloud's code could not turn a secret into a passphrase (os-brick raises)."""


# -- input ------------------------------------------------------------------------------------


# Also raised with reason ``LUKS_VERSION_REFUSED`` when the deployment does not accept the
# version (LUKS1 only by default, as Glance).
class UnsupportedError(FormatError):
    """Catch when well-formed input uses a version, cipher or feature imgcrypt cannot handle."""


# -- verification -----------------------------------------------------------------------------


class BadSignatureError(VerificationError):
    """Catch when the signature does not match the image bytes, the manifest or the key."""


class UnknownAlgorithmError(VerificationError):
    """Catch when a key type, algorithm or hash name is not one imgcrypt accepts."""


class WeakAlgorithmError(VerificationError):
    """Catch when the policy refuses an algorithm (MD5, SHA-1, RSA under 2048 bits, DSA)."""


class CertificateError(VerificationError):
    """Catch when a certificate cannot be used to verify a signature (``reason`` says why)."""

    def __init__(self, *args: object, reason: CertificateFault | None = None) -> None:
        super().__init__(*args)
        self.reason = reason


# -- key manager ------------------------------------------------------------------------------


class KeyManagerUnavailableError(KeyManagerError):
    """Catch when the key manager could not be reached (retry later)."""


class SecretNotFoundError(KeyManagerError):
    """Catch when the key manager has no secret with the requested id."""


class SecretInUseError(KeyManagerError):
    """Catch when the key manager refused to delete a secret that still has consumers."""

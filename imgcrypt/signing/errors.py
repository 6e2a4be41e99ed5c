"""Why a signature, a property set or a certificate was refused: one class a reason.

All of them are :class:`~imgcrypt.errors.VerificationError` (exit 4), so a caller that only
wants "valid or not" catches one class, and a person reading the message learns which check
failed instead of a generic "bad signature".
"""

from __future__ import annotations

from imgcrypt.errors import VerificationError


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


# Size-safe storage: each way a split value can be damaged has its own class.


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


# Certificates.


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


__all__ = [
    "AlgorithmMismatchError",
    "BadSignatureError",
    "BoundPropertyMismatchError",
    "CAConstraintError",
    "CertificateError",
    "CertificateExpiredError",
    "CertificateLoadError",
    "CertificateNotYetValidError",
    "CorruptPartsError",
    "DuplicatePartError",
    "DuplicatePropertyError",
    "ExtraPartError",
    "KeyUsageError",
    "MalformedPartError",
    "MalformedPropertiesError",
    "MalformedSignatureError",
    "MissingPartError",
    "MissingPropertyError",
    "PartsError",
    "ReorderedPartError",
    "SignedSizeMismatchError",
    "UnknownAlgorithmError",
    "UntrustedChainError",
    "WeakAlgorithmError",
    "WrongCertificateTypeError",
]

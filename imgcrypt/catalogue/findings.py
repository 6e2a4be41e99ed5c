"""What the catalogue jobs find, one record an image, and the summary an operator reads.

A record is a plain JSON object (it is stored by taskflow's persistence and printed as one JSON
line): the job, the image, the list of finding codes and the details behind them. Each code
is listed here once with whether it needs an operator's attention; the summary groups images
by code and the exit code says whether any record needs attention.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from imgcrypt.errors import VerificationError

# code -> (needs attention, what it means)
FINDINGS: dict[str, tuple[bool, str]] = {
    # audit: claims and bytes
    "plaintext": (False, "not encrypted and claims nothing"),
    "encrypted": (False, "LUKS, as claimed, and its key opens the header"),
    "no-data": (False, "no image data to read (not active)"),
    "claims-encryption-not-luks": (True, "claims encryption but its bytes are not LUKS"),
    "luks-without-claim": (True, "LUKS bytes, but the properties claim no encryption"),
    "malformed-claim": (True, "encryption properties that cannot be read or disagree"),
    "version-mismatch": (True, "os_encrypt_format names another LUKS version than the bytes"),
    "damaged-header": (True, "the LUKS header fails its checks"),
    "cinder-properties-only": (False, "only cinder_encryption_* (migrate-properties adds "
                                      "os_encrypt_*)"),
    "os-encrypt-properties-only": (False, "only os_encrypt_* (clouds not yet upgraded read "
                                          "cinder_encryption_*)"),
    "signed": (False, "carries signature properties"),
    # keys
    "key-missing": (True, "the key it names does not exist"),
    "key-unreadable": (True, "the key manager would not hand over the key it names"),
    "key-does-not-open": (True, "the key it names does not open its LUKS header"),
    "no-consumer": (True, "not registered as a consumer of its key (deleting another image "
                          "that shares the key would delete it)"),
    "shared-key": (False, "its key is named by other images too"),
    "shared-across-projects": (True, "its key is named by images of other projects"),
    # backfill-consumers
    "consumer-present": (False, "already a consumer of its key"),
    "consumer-registered": (False, "registered as a consumer of its key"),
    "would-register": (False, "would be registered as a consumer of its key (--dry-run)"),
    "not-encrypted": (False, "claims no encryption: nothing to do"),
    # migrate-properties
    "properties-added": (False, "the other property family was added"),
    "would-add-properties": (False, "the other property family would be added (--dry-run)"),
    "properties-complete": (False, "both property families present and in agreement"),
    "properties-disagree": (True, "the two property families disagree (left unchanged)"),
    # verify
    "verified": (False, "stored hash and signatures match its bytes"),
    "tampered": (True, "its bytes do not match the stored hash or the signature"),
    "untrusted": (True, "the signing certificate does not chain to the trust anchor"),
    "unverifiable": (True, "the signature cannot be checked (certificate or property missing "
                           "or unusable)"),
    "unsigned": (False, "carries no signature: nothing to verify"),
    "encryption-claim-refused": (True, "the signature checks, but its encryption claims "
                                       "do not hold"),
    # any job
    "gone": (False, "deleted while the run went on"),
    "error": (True, "the job failed for this image (see message)"),
}

# The exit code when some image needs attention: that of a failed verification.
ATTENTION_EXIT = VerificationError.exit_code


def needs_attention(codes: Iterable[str]) -> bool:
    return any(FINDINGS[code][0] for code in codes)


def record(job: str, image_id: str, codes: Iterable[str], **details: Any) -> dict[str, Any]:
    """The JSON record of one image: unknown codes are a programming error, caught here."""
    listed = sorted(set(codes))
    for code in listed:
        if code not in FINDINGS:
            raise ValueError(f"unknown finding {code!r}")
    return {"job": job, "image_id": image_id, "findings": listed,
            "attention": needs_attention(listed), **details}


@dataclass(frozen=True)
class Summary:
    """Records grouped by finding: code -> image ids, in the order the codes are listed."""

    job: str
    total: int
    groups: dict[str, tuple[str, ...]]

    @property
    def attention(self) -> bool:
        return any(FINDINGS[code][0] for code in self.groups)

    @property
    def exit_code(self) -> int:
        return ATTENTION_EXIT if self.attention else 0

    def as_dict(self) -> dict[str, Any]:
        return {"summary": {"job": self.job, "images": self.total, "attention": self.attention,
                            "findings": {code: len(ids) for code, ids in self.groups.items()}}}

    def human(self, shown: int = 5) -> str:
        lines = [f"{self.job}: {self.total} image(s)"]
        for code, ids in self.groups.items():
            mark = "!" if FINDINGS[code][0] else " "
            more = f" (+{len(ids) - shown} more)" if len(ids) > shown else ""
            lines.append(f"{mark} {code}: {len(ids)} - {FINDINGS[code][1]}")
            lines.append(f"    {', '.join(ids[:shown])}{more}")
        lines.append("needs attention" if self.attention else "nothing needs attention")
        return "\n".join(lines)


def summarize(job: str, records: Iterable[Mapping[str, Any]]) -> Summary:
    groups: dict[str, list[str]] = {}
    total = 0
    for rec in records:
        total += 1
        for code in rec["findings"]:
            groups.setdefault(code, []).append(str(rec["image_id"]))
    ordered = {code: tuple(sorted(groups[code])) for code in FINDINGS if code in groups}
    return Summary(job, total, ordered)


__all__ = ["ATTENTION_EXIT", "FINDINGS", "Summary", "needs_attention", "record", "summarize"]

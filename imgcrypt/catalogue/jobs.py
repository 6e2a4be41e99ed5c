"""The four catalogue jobs, one image at a time: each call is idempotent and safe to repeat.

A job reads the image afresh (its properties may have changed since the catalogue was listed),
decides with the library's own checks (the claims parser, the LUKS header parser, the key
rule, the upload inspector) and returns one record (:mod:`imgcrypt.catalogue.findings`). A job
that changes something (``backfill-consumers``, ``migrate-properties``) first looks whether the
change is already there, so a repeated or resumed run changes nothing twice.

The catalogue-wide facts a job needs (which images share a key, in which projects) come from
the :class:`Snapshot` taken when the run was listed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imgcrypt.catalogue.cloud import Cloud, not_found
from imgcrypt.catalogue.findings import record
from imgcrypt.errors import (
    BadSignatureError,
    CertificateError,
    CertificateFault,
    FormatError,
    ImgcryptError,
    KeyManagerError,
    SecretNotFoundError,
    ToolError,
    VerificationError,
    WrongPassphraseError,
)
from imgcrypt.imageservice import Image, extra_properties
from imgcrypt.keys.consumers import image_consumer
from imgcrypt.keys.rules import parse_deletion_policy, passphrase_for
from imgcrypt.luks.container import PROBE_SIZE, LuksHeader, bytes_to_parse, is_luks, parse_header
from imgcrypt.service.claims import KEY_ID_PROPERTIES, claims_encryption, encryption_claim
from imgcrypt.service.upload import (
    MAX_HEADER_CAPTURE,
    UPLOAD_UNLOCK_LIMITS,
    UploadInspector,
    UploadPolicy,
    unlock_extent,
)
from imgcrypt.signing import schemes_present

JOBS = ("audit", "backfill-consumers", "migrate-properties", "verify")
# migrate-properties: each Cinder property and its standardized twin.
PROPERTY_PAIRS = (("cinder_encryption_key_id", "os_encrypt_key_id"),
                  ("cinder_encryption_key_deletion_policy", "os_encrypt_key_deletion_policy"))
DIRECTIONS = ("to-os-encrypt", "to-cinder")


@dataclass(frozen=True)
class JobOptions:
    """What a run was asked to do; plain data, stored with the run so a resume or a remote
    conductor does exactly the same."""

    dry_run: bool = False
    direction: str = "to-os-encrypt"
    trust_pem: tuple[str, ...] = ()  # verify: trusted certificates (PEM); none: no chain check

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "direction": self.direction,
                "trust_pem": list(self.trust_pem)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobOptions:
        return cls(bool(data.get("dry_run", False)), str(data.get("direction", "to-os-encrypt")),
                   tuple(str(p) for p in data.get("trust_pem", ())))


@dataclass(frozen=True)
class Snapshot:
    """Who names which key, as listed when the run began: key id -> {image id: owner}."""

    keys: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, images: Iterable[Image]) -> Snapshot:
        keys: dict[str, dict[str, str]] = {}
        for image in images:
            for key_id in named_keys(image.properties):
                keys.setdefault(key_id, {})[image.image_id] = str(
                    image.properties.get("owner") or "")
        return cls(keys)

    def sharing(self, key_id: str, image_id: str) -> dict[str, Any]:
        """The other images naming ``key_id`` and whether any belongs to another project."""
        users = self.keys.get(key_id, {})
        others = sorted(i for i in users if i != image_id)
        projects = {owner for owner in users.values()}
        return {"shared_with": others, "projects": sorted(projects)}

    def as_dict(self) -> dict[str, Any]:
        return {"keys": self.keys}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Snapshot:
        return cls({str(k): {str(i): str(o) for i, o in v.items()}
                    for k, v in data.get("keys", {}).items()})


def named_keys(properties: Mapping[str, Any]) -> set[str]:
    """Every key id the image's properties name, in either family, well-formed or not."""
    found = set()
    for name in KEY_ID_PROPERTIES:
        value = properties.get(name)
        if isinstance(value, str) and value:
            try:
                found.add(str(uuid.UUID(value)))
            except ValueError:
                continue
    return found


# -- reading the header through byte ranges --------------------------------------------------


@dataclass(frozen=True)
class HeaderView:
    """What the first bytes of an image say: a LUKS header (and the bytes holding its keyslot
    material, for an unlock), not LUKS, or a damaged header."""

    header: LuksHeader | None
    problem: str | None  # the parser's complaint when the header is damaged
    head: bytes

    @property
    def version(self) -> int | None:
        return self.header.version if self.header is not None else None


def read_header(cloud: Cloud, image: Image) -> HeaderView | None:
    """Read the image's LUKS header by ranges: 4096 bytes, then what the header announces.
    None when the image has no data to read."""
    size = _size(image)
    if image.status != "active" or not size:
        return None
    head = cloud.read_range(image.image_id, 0, min(PROBE_SIZE, size))
    if not is_luks(head):
        return HeaderView(None, None, head)
    try:
        needed = min(bytes_to_parse(head), size)
        if needed > len(head):
            head += cloud.read_range(image.image_id, len(head), needed - len(head))
        header = parse_header(head, UPLOAD_UNLOCK_LIMITS, image_size=size)
    except FormatError as exc:
        return HeaderView(None, " ".join(str(exc).split())[:200], head)
    return HeaderView(header, None, head)


def _size(image: Image) -> int:
    try:
        return int(image.properties.get("size") or 0)
    except (TypeError, ValueError):
        return 0


def key_opens(cloud: Cloud, image: Image, view: HeaderView, passphrase: bytes) -> bool:
    """Whether ``passphrase`` opens a keyslot of the header (the keyslot material is read by a
    range too: the header's own extent, never the payload)."""
    header = view.header
    assert header is not None
    extent = min(material_extent(header), MAX_HEADER_CAPTURE, _size(image))
    head = view.head
    if extent > len(head):
        head += cloud.read_range(image.image_id, len(head), extent - len(head))
    region = head[: header.region_size] + bytes(max(0, header.region_size - len(head)))
    try:
        header.unlock(region, passphrase, UPLOAD_UNLOCK_LIMITS)
    except WrongPassphraseError:
        return False
    return True


def material_extent(header: LuksHeader) -> int:
    """Bytes from the image's start that an unlock reads: the header and the key material of
    the active keyslots (for LUKS1 about 130 KiB a keyslot, not the 2 MiB the layout reserves
    before the payload)."""
    from imgcrypt.luks.luks1 import HEADER_SIZE, SECTOR, Luks1Header

    if not isinstance(header, Luks1Header):
        return unlock_extent(header)
    return max([HEADER_SIZE] + [
        header.keyslots[i].key_material_offset * SECTOR
        + header.keyslots[i].material_size(header.key_bytes) for i in header.active_keyslots()])


@dataclass(frozen=True)
class KeyCheck:
    """What the key an image names is: ``opens``, ``does-not-open``, ``missing`` or
    ``unreadable`` (the key manager refused or failed, ``message`` says how)."""

    state: str
    message: str | None = None


def check_key(cloud: Cloud, image: Image, view: HeaderView, key_id: str) -> KeyCheck:
    try:
        passphrase = passphrase_for(cloud.secret(key_id))
    except SecretNotFoundError:
        return KeyCheck("missing")
    except KeyManagerError as exc:
        return KeyCheck("unreadable", _one_line(exc))
    return KeyCheck("opens" if key_opens(cloud, image, view, passphrase) else "does-not-open")


def _one_line(exc: BaseException) -> str:
    return " ".join((str(exc) or type(exc).__name__).split())[:300]


def _families(properties: Mapping[str, Any]) -> list[str]:
    cinder = any(properties.get(a) for a, _ in PROPERTY_PAIRS)
    standard = any(properties.get(b) for _, b in PROPERTY_PAIRS) or bool(
        properties.get("os_encrypt_format"))
    return (["cinder"] if cinder else []) + (["os_encrypt"] if standard else [])


# -- the jobs --------------------------------------------------------------------------------


def _look_up(cloud: Cloud, image_id: str) -> tuple[Image, dict[str, str], dict[str, Any]]:
    """The image's record, its properties as imgcrypt reads them, and the details every job's
    record starts with (name and owner)."""
    image = cloud.image(image_id)
    return image, extra_properties(image), {"name": image.properties.get("name"),
                                            "owner": image.properties.get("owner")}


def audit(cloud: Cloud, image_id: str, options: JobOptions, snapshot: Snapshot
          ) -> dict[str, Any]:
    image, props, details = _look_up(cloud, image_id)
    codes: set[str] = set()
    families = _families(props)
    details.update(status=image.status, families=families,
                   signature=list(schemes_present(props)))
    if details["signature"]:
        codes.add("signed")
    if families == ["cinder"]:
        codes.add("cinder-properties-only")
    elif families == ["os_encrypt"]:
        codes.add("os-encrypt-properties-only")
    view = read_header(cloud, image)
    claim = None
    try:
        claim = encryption_claim(props)
    except FormatError as exc:
        codes.add("malformed-claim")
        details["claim_problem"] = _one_line(exc)
    claimed = claims_encryption(props)
    if view is None:
        codes.add("no-data")
    else:
        details["luks_version"] = view.version
        if view.problem is not None:
            codes.add("damaged-header")
            details["header_problem"] = view.problem
        elif view.header is None and claimed:
            codes.add("claims-encryption-not-luks")
        elif view.header is not None and not claimed:
            codes.add("luks-without-claim")
        elif view.header is None:
            codes.add("plaintext")
    if claim is not None:
        details["key_id"] = claim.key_id
        if view is not None and view.header is not None:
            if claim.version is not None and claim.version != view.version:
                codes.add("version-mismatch")
            key = check_key(cloud, image, view, claim.key_id)
            details["key"] = key.state
            if key.message:
                details["key_message"] = key.message
            codes.update(_key_codes(key))
            if key.state == "opens":
                codes.update(_consumer_codes(cloud, claim.key_id, image_id, details))
                if not codes & {"version-mismatch", "no-consumer"}:
                    codes.add("encrypted")
        _sharing(snapshot, claim.key_id, image_id, codes, details)
    details["bytes_read"] = cloud.thread_bytes()
    return record("audit", image_id, codes, **details)


def _key_codes(key: KeyCheck) -> set[str]:
    return {"missing": {"key-missing"}, "unreadable": {"key-unreadable"},
            "does-not-open": {"key-does-not-open"}}.get(key.state, set())


def _consumer_codes(cloud: Cloud, key_id: str, image_id: str,
                    details: dict[str, Any]) -> set[str]:
    try:
        listed = image_consumer(image_id) in cloud.consumers(key_id)
    except KeyManagerError as exc:
        details["consumer_message"] = _one_line(exc)
        return {"key-unreadable"}
    details["consumer"] = listed
    return set() if listed else {"no-consumer"}


def _sharing(snapshot: Snapshot, key_id: str, image_id: str, codes: set[str],
             details: dict[str, Any]) -> None:
    sharing = snapshot.sharing(key_id, image_id)
    if sharing["shared_with"]:
        codes.add("shared-key")
        details["shared_with"] = sharing["shared_with"]
        if len(sharing["projects"]) > 1:
            codes.add("shared-across-projects")
            details["projects"] = sharing["projects"]


def backfill_consumers(cloud: Cloud, image_id: str, options: JobOptions, snapshot: Snapshot
                       ) -> dict[str, Any]:
    image, props, details = _look_up(cloud, image_id)
    try:
        claim = encryption_claim(props)
    except FormatError as exc:
        return record("backfill-consumers", image_id, {"malformed-claim"},
                      claim_problem=_one_line(exc), **details)
    if claim is None:
        return record("backfill-consumers", image_id, {"not-encrypted"}, **details)
    details["key_id"] = claim.key_id
    codes: set[str] = set()
    _sharing(snapshot, claim.key_id, image_id, codes, details)
    view = read_header(cloud, image)
    if view is None:
        return record("backfill-consumers", image_id, codes | {"no-data"}, **details)
    if view.header is None:
        codes.add("damaged-header" if view.problem else "claims-encryption-not-luks")
        return record("backfill-consumers", image_id, codes, **details)
    # Only a key shown to open the header earns the image a place among its consumers.
    key = check_key(cloud, image, view, claim.key_id)
    details["key"] = key.state
    if key.state != "opens":
        return record("backfill-consumers", image_id, codes | _key_codes(key), **details)
    consumer = image_consumer(image_id)
    if consumer in cloud.consumers(claim.key_id):
        codes.add("consumer-present")
    elif options.dry_run:
        codes.add("would-register")
    else:
        cloud.add_consumer(claim.key_id, consumer)
        codes.add("consumer-registered")
    return record("backfill-consumers", image_id, codes, **details)


def migrate_properties(cloud: Cloud, image_id: str, options: JobOptions, snapshot: Snapshot
                       ) -> dict[str, Any]:
    image, props, details = _look_up(cloud, image_id)
    if not claims_encryption(props):
        return record("migrate-properties", image_id, {"not-encrypted"}, **details)
    pairs = PROPERTY_PAIRS if options.direction == "to-os-encrypt" else [
        (b, a) for a, b in PROPERTY_PAIRS]
    add: dict[str, str] = {}
    disagree: list[str] = []
    for source, target in pairs:
        value, present = props.get(source), props.get(target)
        if not value:
            continue
        if not present:
            add[target] = value
        elif not _same(source, value, present):
            disagree.append(f"{source}={value[:64]!r} but {target}={present[:64]!r}")
    if options.direction == "to-os-encrypt" and add and not props.get("os_encrypt_format"):
        view = read_header(cloud, image)
        if view is not None and view.version is not None:
            add["os_encrypt_format"] = f"LUKSv{view.version}"
    if disagree:
        # Nothing is written to an image whose families disagree: an operator decides.
        return record("migrate-properties", image_id, {"properties-disagree"},
                      disagreements=disagree, **details)
    if not add:
        return record("migrate-properties", image_id, {"properties-complete"}, **details)
    details["properties"] = add
    if options.dry_run:
        return record("migrate-properties", image_id, {"would-add-properties"}, **details)
    cloud.add_properties(image_id, add)
    return record("migrate-properties", image_id, {"properties-added"}, **details)


def _same(name: str, a: str, b: str) -> bool:
    try:
        if name.endswith("key_id"):
            return uuid.UUID(a) == uuid.UUID(b)
        return parse_deletion_policy(a) == parse_deletion_policy(b)
    except (ValueError, ImgcryptError):
        return a == b


def verify(cloud: Cloud, image_id: str, options: JobOptions, snapshot: Snapshot
           ) -> dict[str, Any]:
    image, props, details = _look_up(cloud, image_id)
    if not schemes_present(props):
        return record("verify", image_id, {"unsigned"}, **details)
    if image.status != "active":
        return record("verify", image_id, {"no-data"}, **details)
    algo = str(props.get("os_hash_algo") or "sha512")
    policy = UploadPolicy(allowed_luks_versions=frozenset({1, 2}), register_consumer=False,
                          check_key=False, trust=_trust(options),
                          hash_algo=algo if algo in _hash_algos() else "sha512")
    try:
        inspector = UploadInspector(props, key_manager=cloud.key_manager, policy=policy)
        for chunk in cloud.stream(image_id, image.declared_size()):
            inspector.update(chunk)
        verdict = inspector.finalize()
    except ImgcryptError as exc:
        details["message"] = _one_line(exc)
        return record("verify", image_id, {_refusal(exc)}, **details)
    mismatched = [name for name, stored, seen in (
        ("os_hash_value", props.get("os_hash_value"), verdict.os_hash_value),
        ("checksum", props.get("checksum"), verdict.checksum),
        ("size", props.get("size"), str(verdict.size))) if stored and stored != seen]
    if mismatched:
        details["mismatched"] = mismatched
        return record("verify", image_id, {"tampered"}, **details)
    assert verdict.signature is not None
    details["schemes"] = [s.scheme for s in verdict.signature.schemes]
    details["certificate_subject"] = verdict.signature.certificate_subject
    return record("verify", image_id, {"verified"}, **details)


def _hash_algos() -> tuple[str, ...]:
    from imgcrypt.service.upload import HASH_ALGORITHMS

    return HASH_ALGORITHMS


def _trust(options: JobOptions) -> tuple[Any, ...] | None:
    if not options.trust_pem:
        return None
    from imgcrypt.signing.certs import load_certificates

    found: list[Any] = []
    for pem in options.trust_pem:
        found.extend(load_certificates(pem.encode("ascii")))
    return tuple(found)


def _refusal(exc: ImgcryptError) -> str:
    if isinstance(exc, BadSignatureError):
        return "tampered"
    if isinstance(exc, CertificateError) and exc.reason is CertificateFault.UNTRUSTED_CHAIN:
        return "untrusted"
    if isinstance(exc, (VerificationError, KeyManagerError)):
        return "unverifiable"
    if isinstance(exc, FormatError):
        return "encryption-claim-refused"
    return "error"


JobFunction = Callable[[Cloud, str, JobOptions, Snapshot], dict[str, Any]]
JOB_FUNCTIONS: dict[str, JobFunction] = {
    "audit": audit, "backfill-consumers": backfill_consumers,
    "migrate-properties": migrate_properties, "verify": verify,
}


def run_job(job: str, cloud: Cloud, image_id: str, options: JobOptions,
            snapshot: Snapshot) -> dict[str, Any]:
    """One job on one image; whatever goes wrong for this image becomes its record (an
    ``error`` finding), so one bad image never stops the run."""
    cloud.reset_thread_bytes()
    try:
        return JOB_FUNCTIONS[job](cloud, image_id, options, snapshot)
    except ImgcryptError as exc:
        if not_found(exc) and isinstance(exc, ToolError):  # the image, not a key
            return record(job, image_id, {"gone"})
        return record(job, image_id, {"error"}, message=_one_line(exc))
    except Exception as exc:  # a fault of ours or a client library's: this image's record
        return record(job, image_id, {"error"}, message=f"{type(exc).__name__}: "
                                                        f"{_one_line(exc)}")


__all__ = ["DIRECTIONS", "JOBS", "JOB_FUNCTIONS", "HeaderView", "JobOptions", "KeyCheck",
           "Snapshot", "audit", "backfill_consumers", "check_key", "migrate_properties",
           "named_keys", "read_header", "run_job", "verify"]

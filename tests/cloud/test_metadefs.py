"""Glance metadata definitions (imgcrypt/metadefs/*.json) for every image property imgcrypt
writes, checked two ways: against the code that writes the properties (every name has a
definition, every value it can write satisfies it, the enums and limits are the code's own), and
against a real Glance 33, which loads them with ``glance-manage db_load_metadefs`` and serves
them through its metadefs API."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from imgcrypt.digests import IMGCRYPT_HASHES
from imgcrypt.glance.checks import MAX_PROPERTY, VerifyOutcome
from imgcrypt.glance.taskbase import mark_failed
from imgcrypt.imageprops import FORMAT_NAMES
from imgcrypt.keys.properties import encryption_properties
from imgcrypt.keys.rules import DELETION_POLICIES
from imgcrypt.service.claims import MAX_DECRYPT_SIZE, EncryptionClaim
from imgcrypt.service.upload import UploadVerdict
from imgcrypt.signing import certs, glance, imgcrypt_mode, storage
from imgcrypt.signing.algorithms import IMGCRYPT_ALGORITHMS, MAX_RSA_BITS
from imgcrypt.signing.manifest import (
    ALGORITHM_KEY,
    BOUND_PROPERTIES,
    HASH_KEY,
    PREFIX,
    SIGNATURE_NAME,
)
from imgcrypt.signing.signer import MODES
from imgcrypt.signing.stream import feed_iterable
from imgcrypt.signing.verify import ImageVerifier, VerificationResult
from tests.helpers.openstack_servers import (
    GLANCE_VENV,
    Glance,
    Keystone,
    KeystoneBarbican,
    _json_request,
    base_env,
    keystone_token,
    start_glance,
    stop,
)
from tests.helpers.pki import NOW, key, make_cert

METADEFS = Path(str(files("imgcrypt") / "metadefs"))
KEY_ID = "0b6a1a3e-3b0c-4c55-8e1a-6a3b0c7a1e11"
IMAGE = b"metadefs" * 1000
# A key of every imgcrypt-mode algorithm; RSA at the largest size imgcrypt signs with.
SIGNING_KEYS = ("ed25519", "p256", "p384", "p521", f"rsa{MAX_RSA_BITS}",
                "mldsa44", "mldsa65", "mldsa87")


class _ImageRecorder:
    """Glance's action wrapper as far as the plugins use it: it records the image's new extra
    properties (the only thing read here)."""

    def __init__(self) -> None:
        self.extra: dict[str, str] = {}

    def __enter__(self) -> _ImageRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_image_attribute(self, **_: object) -> None:
        return None

    def remove_importing_stores(self, _: object) -> None:
        return None

    def add_failed_stores(self, _: object) -> None:
        return None

    def set_image_extra_properties(self, properties: dict[str, str]) -> None:
        self.extra.update(properties)


def namespaces() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(METADEFS.glob("*.json")):
        document = json.loads(path.read_text())
        found[document["namespace"]] = document
    return found


def definitions() -> dict[str, dict[str, Any]]:
    """Every property of every namespace; a name defined twice fails."""
    merged: dict[str, dict[str, Any]] = {}
    for document in namespaces().values():
        for name, schema in document["properties"].items():
            assert name not in merged, f"{name} is defined in two namespaces"
            merged[name] = schema
    return merged


# What imgcrypt writes, from the code that writes it: each name with every value seen.

def encryption_written() -> dict[str, set[str]]:
    written: dict[str, set[str]] = {}
    for version, policy in itertools.product((1, 2), DELETION_POLICIES):
        for name, value in encryption_properties(KEY_ID, version, 1 << 30, policy).items():
            written.setdefault(name, set()).add(value)
    return written


@pytest.fixture(scope="module")
def imgcrypt_signed() -> dict[str, dict[str, str]]:
    """imgcrypt-mode properties of every algorithm, binding every bound property."""
    bound = {name: value for name, values in encryption_written().items()
             for value in sorted(values)[:1]} | {"disk_format": "raw", "container_format": "bare"}
    assert set(bound) == set(BOUND_PROPERTIES)
    signed = {}
    for kind in SIGNING_KEYS:
        signer = imgcrypt_mode.ImgcryptSigner(key(kind), properties=bound,
                                              certificate_uuid=KEY_ID)
        signed[kind] = feed_iterable(signer, [IMAGE])
    return signed


def signature_written(signed: dict[str, dict[str, str]]) -> dict[str, set[str]]:
    written: dict[str, set[str]] = {}
    for properties in signed.values():
        for name, value in properties.items():
            if name.startswith(PREFIX):
                written.setdefault(name, set()).add(value)
    return written


def verdict_written() -> dict[str, set[str]]:
    """What imgcrypt_verify records, for every shape of outcome (signed by either scheme or
    both, or not; LUKS1 or LUKS2; key checked or not; consumer registered or not; warnings)."""
    checked = certs.check_certificate([make_cert(key("p384"))], clock=lambda: NOW)
    glance_signed = feed_iterable(glance.GlanceSigner(key("p384"), certificate_uuid=KEY_ID),
                                  [IMAGE])
    imgcrypt_signed = feed_iterable(imgcrypt_mode.ImgcryptSigner(key("p384")), [IMAGE])
    results: list[VerificationResult | None] = [None]
    for chosen in (glance_signed, imgcrypt_signed, glance_signed | imgcrypt_signed):
        verifier = ImageVerifier(chosen, checked, glance_certificate=checked)
        results.append(feed_iterable(verifier, [IMAGE]))
    claim = EncryptionClaim(KEY_ID, 1, "on_image_deletion", len(IMAGE))
    written: dict[str, set[str]] = {}
    shapes = itertools.product(results, (None, claim), (None, 1, 2), ((), ("w1", "w" * 300)),
                               (False, True), (False, True))
    for result, encryption, version, warnings, opens, registered in shapes:
        verdict = UploadVerdict(len(IMAGE), "sha512", "0" * 128, "0" * 32, result, encryption,
                                version, warnings)
        outcome = VerifyOutcome(verdict, opens, registered, checked_at="2026-12-07T22:50:00Z")
        for name, value in outcome.properties().items():
            written.setdefault(name, set()).add(value)
    # What a failed import writes, through the plugins' own mark_failed: a refusal, checks that
    # could not run, and what the revert left behind.
    for message in ("bad signature", "x" * 400):
        for checked in (True, False):
            recorder = _ImageRecorder()
            mark_failed(recorder, ["fs"], message, checked=checked,
                        leftover="consumer image/image/IMAGE of key KEY; run imgcrypt keys "
                                 "consumers --clear-stale" + "x" * 300)
            for name, value in recorder.extra.items():
                written.setdefault(name, set()).add(value)
    return written


def all_written(signed: dict[str, dict[str, str]]) -> dict[str, set[str]]:
    """Every property imgcrypt writes, less the image's own fields (disk and container
    format) and Glance's img_signature* (Glance's own OS::Glance::Signatures covers those)."""
    written: dict[str, set[str]] = {}
    for part in (encryption_written(), signature_written(signed), verdict_written()):
        for name, values in part.items():
            written.setdefault(name, set()).update(values)
    for name in (*FORMAT_NAMES, *glance.KEYS):
        written.pop(name, None)
    return written


def satisfies(value: str, schema: dict[str, Any]) -> bool:
    """A property value (image properties are strings) against its definition."""
    if schema["type"] == "integer":
        if not re.fullmatch(r"0|[1-9][0-9]*", value):
            return False
        number = int(value)
        return (schema.get("minimum", number) <= number <= schema.get("maximum", number))
    assert schema["type"] == "string"
    return ((value in schema["enum"] if "enum" in schema else True)
            and len(value) <= schema.get("maxLength", len(value))
            and (re.search(schema["pattern"], value) is not None if "pattern" in schema
                 else True))


# Against the code.

def test_every_property_imgcrypt_writes_has_a_definition(
        imgcrypt_signed: dict[str, dict[str, str]]) -> None:
    written = all_written(imgcrypt_signed)
    defined = definitions()
    assert sorted(set(written) - set(defined)) == [], "written but not defined"
    assert sorted(set(defined) - set(written)) == [], "defined but never written"


def test_every_value_imgcrypt_writes_satisfies_its_definition(
        imgcrypt_signed: dict[str, dict[str, str]]) -> None:
    defined = definitions()
    for name, values in all_written(imgcrypt_signed).items():
        for value in values:
            assert satisfies(value, defined[name]), (name, value[:80], defined[name])


def test_signature_parts_cover_the_longest_signature_at_the_default_limit(
        imgcrypt_signed: dict[str, dict[str, str]]) -> None:
    counts = {kind: int(p[storage.count_key(SIGNATURE_NAME)])
              for kind, p in imgcrypt_signed.items()}
    defined = definitions()
    parts = sorted(int(name.rsplit("_", 1)[1]) for name in defined
                   if re.fullmatch(rf"{SIGNATURE_NAME}_[0-9]+", name))
    assert parts == list(range(1, max(counts.values()) + 1))
    assert defined[storage.count_key(SIGNATURE_NAME)]["maximum"] == storage.MAX_PARTS
    for number in parts:
        part = defined[storage.part_key(SIGNATURE_NAME, number)]
        assert part["maxLength"] == storage.DEFAULT_MAX_LENGTH
        assert not satisfies(f"{number + 1}:AAAA", part), "a part under another number's name"


def test_enums_and_limits_are_the_codes_own(
        imgcrypt_signed: dict[str, dict[str, str]]) -> None:
    defined = definitions()
    for name in ("os_encrypt_key_deletion_policy", "cinder_encryption_key_deletion_policy"):
        assert defined[name]["enum"] == list(DELETION_POLICIES)
    algorithms = {p[ALGORITHM_KEY] for p in imgcrypt_signed.values()}
    assert algorithms == set(IMGCRYPT_ALGORITHMS), "a signing key of every algorithm"
    assert defined[ALGORITHM_KEY]["enum"] == list(IMGCRYPT_ALGORITHMS)
    assert defined[HASH_KEY]["enum"] == list(IMGCRYPT_HASHES)
    assert defined["os_decrypt_size"]["maximum"] == MAX_DECRYPT_SIZE
    schemes = {",".join(sorted(c)) for n in range(1, len(MODES) + 1)
               for c in itertools.combinations(MODES, n)}
    assert set(defined["imgcrypt_signature"]["enum"]) == {"none"} | schemes
    assert MAX_PROPERTY == storage.DEFAULT_MAX_LENGTH
    for name, schema in defined.items():
        assert schema.get("maxLength", 0) <= storage.DEFAULT_MAX_LENGTH, name
        if schema["type"] == "string" and "enum" not in schema:
            assert "maxLength" in schema, f"{name} has no length limit"


def test_namespaces_are_complete_glance_documents() -> None:
    for name, document in namespaces().items():
        assert name.startswith("OS::Imgcrypt::")
        assert document["display_name"] and document["description"]
        assert document["visibility"] == "public" and document["protected"] is True
        assert {"name": "OS::Glance::Image"} in document["resource_type_associations"]
        for prop, schema in document["properties"].items():
            assert schema["title"] and schema["description"], prop


def test_the_definitions_ship_in_the_package() -> None:
    assert sorted(p.name for p in METADEFS.glob("*.json")) == [
        "encryption.json", "signature.json", "verdict.json"]


# Against a real Glance.

@pytest.fixture(scope="module")
def glance_with_metadefs(tmp_path_factory: pytest.TempPathFactory, keystone: Keystone,
                         keystone_barbican: KeystoneBarbican) -> Iterator[Glance]:
    """A Glance (no import plugins) whose database holds imgcrypt's namespaces and Glance's
    own OS::Glance::Signatures, loaded by glance-manage as an operator would."""
    workdir = tmp_path_factory.mktemp("glance-metadefs")
    glance_ = start_glance(workdir, keystone, keystone_barbican, ())
    try:
        load = workdir / "metadefs"
        load.mkdir()
        for path in METADEFS.glob("*.json"):
            shutil.copy(path, load)
        shutil.copy(GLANCE_VENV / "etc" / "glance" / "metadefs"
                    / "image-signature-verification.json", load)
        env = {**base_env(workdir / "home"), "OS_GLANCE_CONFIG_DIR": str(workdir)}
        proc = subprocess.run([str(GLANCE_VENV / "bin" / "glance-manage"), "--config-file",
                               str(workdir / "glance-api.conf"), "db_load_metadefs", str(load)],
                              capture_output=True, text=True, env=env, cwd=workdir,
                              stdin=subprocess.DEVNULL, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        # glance-manage logs a file it cannot parse and carries on: look for that too.
        assert "Failed to parse" not in proc.stdout + proc.stderr
        yield glance_
    finally:
        for process in glance_.processes:
            stop(process)


def served(glance_: Glance, keystone: Keystone, namespace: str) -> dict[str, Any]:
    token = keystone_token(keystone.auth_url, "demo", keystone.credentials()["OS_PASSWORD"],
                           "demo")
    url = f"{glance_.endpoint}/v2/metadefs/namespaces/{urllib.parse.quote(namespace)}"
    body, _ = _json_request(url, token=token)
    return body


@pytest.mark.glance
@pytest.mark.barbican
def test_glance_loads_and_serves_every_namespace(glance_with_metadefs: Glance,
                                                 keystone: Keystone) -> None:
    for name, document in namespaces().items():
        body = served(glance_with_metadefs, keystone, name)
        assert body["namespace"] == name
        assert body["display_name"] == document["display_name"]
        assert body["protected"] is True and body["visibility"] == "public"
        assert sorted(a["name"] for a in body["resource_type_associations"]) == sorted(
            a["name"] for a in document["resource_type_associations"])
        assert body["properties"] == document["properties"], name


@pytest.mark.glance
@pytest.mark.barbican
def test_glance_signature_properties_are_glances_own_namespace(glance_with_metadefs: Glance,
                                                               keystone: Keystone) -> None:
    body = served(glance_with_metadefs, keystone, "OS::Glance::Signatures")
    assert set(glance.KEYS) <= set(body["properties"])

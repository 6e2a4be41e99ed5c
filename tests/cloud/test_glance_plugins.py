"""The import plugins' work without Glance: imgcrypt.glance.checks on real files and the local
key store, and the upload command's property files. Glance itself runs in test_glance_e2e."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imgcrypt.cli.upload import collect_properties
from imgcrypt.errors import (
    FormatFault,
    UnsupportedError,
    UsageError,
    VerificationError,
    VerificationFault,
)
from imgcrypt.glance.checks import (
    MAX_PROPERTY,
    check_plugin_order,
    encrypt_staged,
    is_already_encrypted,
    refusal_properties,
    staged_path,
    verify_staged,
)
from imgcrypt.keys.local import LocalKeyStore
from imgcrypt.keys.manager import KeyOrder
from imgcrypt.keys.rules import passphrase_for
from imgcrypt.luks.transfer import decrypt_stream
from imgcrypt.service.upload import UploadPolicy
from tests.helpers.util import raises_fault


@pytest.fixture
def store(tmp_path: Path) -> LocalKeyStore:
    return LocalKeyStore(tmp_path / "keys")


def test_plugin_order_convert_then_encrypt() -> None:
    check_plugin_order(["image_conversion", "imgcrypt_encrypt", "imgcrypt_verify"])
    check_plugin_order(["imgcrypt_encrypt"])
    with pytest.raises(UsageError, match="list image_conversion first"):
        check_plugin_order(["imgcrypt_encrypt", "image_conversion"])


def test_refusal_fits_a_property() -> None:
    value = refusal_properties("x" * 1000)["imgcrypt_verdict"]
    assert value.startswith("refused: x") and len(value) == MAX_PROPERTY


def test_staged_path() -> None:
    assert staged_path("file:///var/lib/glance/staging/abc") == "/var/lib/glance/staging/abc"
    assert staged_path("/tmp/x") == "/tmp/x"


def test_encrypt_then_verify_round_trip(tmp_path: Path, store: LocalKeyStore) -> None:
    plain = tmp_path / "staged"
    data = os.urandom((1 << 20) + 123)
    plain.write_bytes(data)
    assert not is_already_encrypted(str(plain), {})
    outcome = encrypt_staged(str(plain), store, image_id="img-1", iterations=1000)
    assert outcome.properties["os_encrypt_format"] == "LUKSv1"
    assert outcome.properties["os_decrypt_size"] == str(len(data))
    assert is_already_encrypted(outcome.path, {})
    assert oct(os.stat(outcome.path).st_mode & 0o777) == "0o600"
    out = tmp_path / "out"
    with open(outcome.path, "rb") as src, open(out, "wb") as dst:
        decrypt_stream(src, dst, passphrase_for(store.get(outcome.key_id)), size=len(data))
    assert out.read_bytes() == data

    verdict = verify_staged(outcome.path, {**outcome.properties, "disk_format": "raw"}, store,
                            image_id="img-1", policy=UploadPolicy())
    assert verdict.key_opens
    assert verdict.properties()["imgcrypt_key_check"] == "opens"
    assert verdict.properties()["imgcrypt_signature"] == "none"
    with raises_fault(UnsupportedError, FormatFault.LUKS_VERSION_REFUSED):
        verify_staged(outcome.path, outcome.properties, store, image_id="img-1",
                      policy=UploadPolicy(allowed_luks_versions=frozenset({2})))
    with raises_fault(VerificationError, VerificationFault.SIGNATURE_REQUIRED):
        verify_staged(outcome.path, outcome.properties, store, image_id="img-1",
                      policy=UploadPolicy(require_signature=True))


def claimed_by_another_key(tmp_path: Path, store: LocalKeyStore,
                           image_id: str) -> tuple[str, dict[str, str]]:
    """A staged image encrypted under one key, and properties naming another that exists."""
    plain = tmp_path / "staged"
    plain.write_bytes(os.urandom(1 << 20))
    outcome = encrypt_staged(str(plain), store, image_id=image_id, iterations=1000)
    other = store.create_key(KeyOrder(bit_length=256))
    return outcome.path, {**outcome.properties, "os_encrypt_key_id": other,
                          "cinder_encryption_key_id": other}


def test_verify_refuses_a_key_that_does_not_open(tmp_path: Path, store: LocalKeyStore) -> None:
    path, claimed = claimed_by_another_key(tmp_path, store, "img-2")
    # The same fact as the upload hook's (one class, exit 4), whichever check finds it first.
    with raises_fault(VerificationError, VerificationFault.KEY_BINDING,
                      match="does not open the image's LUKS header") as refused:
        verify_staged(path, claimed, store, image_id="img-2", policy=UploadPolicy())
    assert refused.value.exit_code == 4


def test_encrypt_failure_leaves_nothing(tmp_path: Path, store: LocalKeyStore) -> None:
    missing = tmp_path / "absent"
    before = {s.secret_id for s in store.list()}
    with pytest.raises(OSError):
        encrypt_staged(str(missing), store, image_id="img-3", iterations=1000)
    assert not (tmp_path / "absent.luks").exists()
    assert {s.secret_id for s in store.list()} == before


def test_collect_properties(tmp_path: Path) -> None:
    a = tmp_path / "a.json"
    a.write_text(json.dumps({"properties": {"os_encrypt_format": "LUKSv1"}}))
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"img_signature": "abc"}))
    assert collect_properties([str(a), str(b)], ["x=1=2"]) == {
        "os_encrypt_format": "LUKSv1", "img_signature": "abc", "x": "1=2"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"n": 1}))
    # read as sign --bind and verify --properties read a property document
    with raises_fault(VerificationError, VerificationFault.MALFORMED_PROPERTIES,
                      match="'n' is not a string"):
        collect_properties([str(bad)], [])
    with pytest.raises(UsageError):
        collect_properties([], ["novalue"])


def _imgcrypt(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", **env}
    return subprocess.run([sys.executable, "-m", "imgcrypt", *args], capture_output=True,
                          text=True, env=clean, timeout=120, check=False,
                          cwd=Path(__file__).resolve().parents[2])


def test_upload_without_credentials_is_a_usage_error(tmp_path: Path) -> None:
    image = tmp_path / "x.raw"
    image.write_bytes(bytes(1024))
    result = _imgcrypt("upload", str(image), "--name", "x")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "incomplete OpenStack credentials" in result.stderr


def test_download_from_an_unreachable_cloud(tmp_path: Path) -> None:
    result = _imgcrypt("download", "0" * 8, str(tmp_path / "out"),
                       OS_AUTH_URL="http://127.0.0.1:9/v3", OS_USERNAME="u", OS_PASSWORD="p",
                       OS_PROJECT_NAME="p", OS_USER_DOMAIN_ID="default",
                       OS_PROJECT_DOMAIN_ID="default")
    assert result.returncode == 1
    assert result.stderr.startswith("imgcrypt: error: cannot reach the cloud")
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_unknown_cloud_name(tmp_path: Path) -> None:
    result = _imgcrypt("download", "x", str(tmp_path / "out"), OS_CLOUD="nope")
    assert result.returncode == 2
    assert "Cloud nope was not found" in result.stderr


def test_verify_unlocks_the_header_once_within_the_upload_limits(
        tmp_path: Path, store: LocalKeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """One unlock per upload (it was two: the inspector's, then a second with the general
    limits), and it is the inspector's, with the policy's tighter limits."""
    from imgcrypt.luks.luks1 import Luks1Header

    plain = tmp_path / "staged"
    plain.write_bytes(os.urandom(1 << 20))
    outcome = encrypt_staged(str(plain), store, image_id="img-4", iterations=1000)
    seen: list[object] = []
    unlock = Luks1Header.unlock

    def counted(self: Luks1Header, *args: object, **kwargs: object) -> object:
        seen.append(args[2] if len(args) > 2 else kwargs.get("limits"))
        return unlock(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Luks1Header, "unlock", counted)
    policy = UploadPolicy()
    verify_staged(outcome.path, outcome.properties, store, image_id="img-4", policy=policy)
    assert seen == [policy.unlock_limits]


def test_check_key_false_turns_the_key_check_off(tmp_path: Path, store: LocalKeyStore) -> None:
    """``check_key = false`` in [imgcrypt]: the named key need not open the header (it must
    still exist); the verdict says it was not checked."""
    from oslo_config import cfg

    from imgcrypt.glance import options

    conf = cfg.ConfigOpts()
    options.register(conf)
    conf([], default_config_files=[])
    conf.set_override("check_key", False, group=options.GROUP)
    policy = options.upload_policy(conf)
    assert policy.check_key is False

    path, claimed = claimed_by_another_key(tmp_path, store, "img-5")
    verdict = verify_staged(path, claimed, store, image_id="img-5", policy=policy)
    assert not verdict.key_opens
    assert verdict.properties()["imgcrypt_key_check"] == "not checked"
    with raises_fault(VerificationError, VerificationFault.KEY_BINDING):
        verify_staged(path, claimed, store, image_id="img-5", policy=UploadPolicy())

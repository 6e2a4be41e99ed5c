"""The key options contract (keyopts) and OpenStack credential loading for Barbican."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from imgcrypt.cli.keyopts import (
    ResolvedKey,
    add_key_arguments,
    key_manager_from_args,
    load_config,
    resolve_key,
)
from imgcrypt.errors import KeyManagerUnavailableError, UsageError
from imgcrypt.keys.barbican import BarbicanKeyManager, openstack_settings
from imgcrypt.keys.castellan import CastellanKeyManager
from imgcrypt.keys.local import LocalKeyStore
from imgcrypt.keys.manager import KeyOrder
from imgcrypt.keys.secret import Secret
from tests.helpers.barbican_server import free_port


@pytest.fixture(autouse=True)
def no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for name in ("OS_CLOUD", "OS_AUTH_URL", "OS_CLIENT_CONFIG_FILE", "OS_AUTH_TYPE", "OS_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def parse(argv: list[str], *, creating: bool = True) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_key_arguments(parser, creating=creating)
    return parser.parse_args(argv)


def test_neither_key_id_nor_new_key_gives_none(tmp_path: Path) -> None:
    assert resolve_key(parse([]), creating=True) is None
    assert resolve_key(parse([], creating=False), creating=False) is None


def test_both_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        resolve_key(parse(["--key-id", "x", "--new-key"]), creating=True)


def test_decrypt_side_has_no_new_key() -> None:
    with pytest.raises(SystemExit):
        parse(["--new-key"], creating=False)


def test_new_symmetric_key(tmp_path: Path) -> None:
    args = parse(["--new-key", "--keystore", str(tmp_path / "ks")])
    resolved = resolve_key(args, creating=True)
    assert isinstance(resolved, ResolvedKey)
    assert resolved.created and resolved.manager_name == "local"
    secret = LocalKeyStore(tmp_path / "ks").get(resolved.key_id)
    assert (secret.algorithm, secret.bit_length, secret.mode) == ("AES", 512, "XTS")
    assert resolved.passphrase == secret.payload_bytes.hex().encode()
    assert resolved.passphrase.decode() not in repr(resolved)
    assert secret.payload_bytes.hex() not in repr(resolved)


def test_new_passphrase_key_and_existing_key(tmp_path: Path) -> None:
    ks = str(tmp_path / "ks")
    made = resolve_key(parse(["--new-key", "--new-key-type", "passphrase", "--keystore", ks]),
                       creating=True)
    assert made is not None and made.secret.secret_type == "passphrase"
    assert made.passphrase == made.secret.payload_bytes
    key_id = LocalKeyStore(ks).store(Secret(payload=b"\x01" * 32))
    found = resolve_key(parse(["--key-id", key_id, "--keystore", ks], creating=False),
                        creating=False)
    assert found is not None and not found.created
    assert found.passphrase == b"01" * 32


def test_default_manager_is_local_in_the_data_dir(tmp_path: Path) -> None:
    manager = key_manager_from_args(parse([]))
    assert isinstance(manager, LocalKeyStore)
    assert manager.directory == tmp_path / "data" / "imgcrypt" / "keys"


def test_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config" / "imgcrypt"
    config.mkdir(parents=True)
    (config / "imgcrypt.toml").write_text(
        '[keys]\nkey-manager = "barbican"\nbarbican_endpoint = "http://127.0.0.1:9"\n'
        'project_id = "p1"\n')
    assert load_config()["key_manager"] == "barbican"
    assert isinstance(key_manager_from_args(parse([])), BarbicanKeyManager)
    # The command line wins over the file.
    assert isinstance(key_manager_from_args(parse(["--key-manager", "local"])), LocalKeyStore)
    for bad in ("[keys]\nkey_manager = 3\n", "keys = 1\n", "[keys\n", "[keys]\nfoo = 'x'\n"):
        (config / "imgcrypt.toml").write_text(bad)
        with pytest.raises(UsageError):
            key_manager_from_args(parse([]))
    (config / "imgcrypt.toml").write_text('[keys]\nkey_manager = "vault"\n')
    with pytest.raises(UsageError):
        key_manager_from_args(parse([]))


def test_castellan_config_errors(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("[key_manager]\nbackend = no-such-backend\n")
    with pytest.raises(UsageError):
        CastellanKeyManager.from_config_file(conf)
    conf.write_text("this is not ini\n")
    with pytest.raises(UsageError):
        CastellanKeyManager.from_config_file(conf)


# -- OpenStack credentials ----------------------------------------------------------------------


def test_no_credentials_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--barbican-endpoint"):
        key_manager_from_args(parse(["--key-manager", "barbican"]))


def test_os_environment_variables() -> None:
    env = {"OS_AUTH_URL": "http://keystone:5000/v3", "OS_USERNAME": "alice",
           "OS_PASSWORD": "pw", "OS_PROJECT_NAME": "demo", "OS_USER_DOMAIN_NAME": "Default",
           "OS_TENANT_ID": "legacy", "OS_REGION_NAME": "R1"}
    settings = openstack_settings(None, env)
    assert settings["auth_type"] == "password"
    assert settings["auth"] == {"auth_url": "http://keystone:5000/v3", "username": "alice",
                                "password": "pw", "project_name": "demo",
                                "user_domain_name": "Default", "project_id": "legacy"}
    assert settings["region_name"] == "R1"
    token = openstack_settings(None, {"OS_AUTH_URL": "http://k/v3", "OS_TOKEN": "t"})
    assert token["auth_type"] == "v3token" and token["auth"]["token"] == "t"


def test_clouds_yaml(tmp_path: Path) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(
        f"clouds:\n  lab:\n    auth:\n      auth_url: http://127.0.0.1:{free_port()}/v3\n"
        "      username: bob\n      password: pw\n      project_name: demo\n"
        "      user_domain_name: Default\n      project_domain_name: Default\n"
        "    region_name: R2\n    interface: internal\n")
    env = {"OS_CLIENT_CONFIG_FILE": str(clouds)}
    settings = openstack_settings("lab", env)
    assert settings["auth"]["username"] == "bob" and settings["interface"] == "internal"
    with pytest.raises(UsageError, match=r"not in any clouds\.yaml"):
        openstack_settings("other", env)
    clouds.write_text("clouds: [1, 2\n")
    with pytest.raises(UsageError):
        openstack_settings("lab", env)


def test_unreachable_keystone_is_unavailable(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A real keystoneauth password flow against a loopback port nobody listens on.
    monkeypatch.setenv("OS_AUTH_URL", f"http://127.0.0.1:{free_port()}/v3")
    monkeypatch.setenv("OS_USERNAME", "alice")
    monkeypatch.setenv("OS_PASSWORD", "pw")
    monkeypatch.setenv("OS_PROJECT_NAME", "demo")
    monkeypatch.setenv("OS_USER_DOMAIN_NAME", "Default")
    monkeypatch.setenv("OS_PROJECT_DOMAIN_NAME", "Default")
    manager = key_manager_from_args(parse(["--key-manager", "barbican"]))
    with pytest.raises(KeyManagerUnavailableError):
        manager.create_key(KeyOrder())

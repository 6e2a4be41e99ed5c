"""Key-manager options shared by the commands that take keys (encrypt, decrypt, keys ...).

The contract other commands call: :func:`add_key_manager_arguments`,
:func:`add_key_arguments`, :func:`key_manager_from_args` and :func:`resolve_key`.
Options not given on the command line fall back to the ``[keys]`` table of ``imgcrypt.toml``
in the user's configuration directory, then to the built-in defaults (``local``).
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from imgcrypt.errors import UsageError
from imgcrypt.keys.lease import KeyLease
from imgcrypt.keys.manager import KeyManager, KeyOrder
from imgcrypt.keys.secret import PASSPHRASE, SYMMETRIC, Secret

MANAGERS = ("local", "barbican", "castellan")
NEW_KEY_TYPES = (SYMMETRIC, PASSPHRASE)
_CONFIG_KEYS = (
    "key_manager",
    "keystore",
    "barbican_endpoint",
    "project_id",
    "os_cloud",
    "castellan_config",
)


@dataclass(frozen=True)
class ResolvedKey:
    """The secret a command will use, the LUKS passphrase it stands for, and the lease that
    rolls a new key back if the command fails."""

    key_id: str
    secret: Secret
    passphrase: bytes = field(repr=False)
    manager_name: str
    created: bool
    manager: KeyManager = field(repr=False, compare=False)
    lease: KeyLease = field(repr=False, compare=False)


def config_path() -> Path:
    return Path(platformdirs.user_config_dir("imgcrypt")) / "imgcrypt.toml"


def load_config(path: Path | None = None) -> dict[str, str]:
    """The ``[keys]`` table of imgcrypt.toml (empty when there is no such file)."""
    path = config_path() if path is None else path
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from None
    table: Any = document.get("keys", {})
    if not isinstance(table, dict):
        raise UsageError(f"{path}: [keys] must be a table")
    config: dict[str, str] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in _CONFIG_KEYS:
            raise UsageError(f"{path}: unknown setting keys.{key}")
        if not isinstance(value, str):
            raise UsageError(f"{path}: keys.{key} must be a string")
        config[name] = value
    return config


def add_key_manager_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("key manager")
    group.add_argument(
        "--key-manager",
        choices=MANAGERS,
        default=None,
        help="where secrets live (default: local, or keys.key_manager in imgcrypt.toml)",
    )
    group.add_argument(
        "--keystore", metavar="DIR", default=None,
        help="local keystore directory (default: the user's data directory)",
    )
    group.add_argument(
        "--barbican-endpoint", metavar="URL", default=None,
        help="standalone Barbican URL (with --project-id); otherwise Keystone finds Barbican",
    )
    group.add_argument(
        "--project-id", metavar="ID", default=None,
        help="project for a standalone Barbican (sent as X-Project-Id)",
    )
    group.add_argument(
        "--os-cloud", metavar="NAME", default=None,
        help="clouds.yaml entry for a Keystone-backed cloud (default: OS_CLOUD / OS_* variables)",
    )
    group.add_argument(
        "--castellan-config", metavar="FILE", default=None,
        help="oslo.config file configuring castellan ([key_manager] backend = ...)",
    )


def add_key_arguments(parser: argparse.ArgumentParser, *, creating: bool) -> None:
    add_key_manager_arguments(parser)
    group = parser.add_argument_group("key")
    group.add_argument(
        "--key-id", metavar="ID", default=None, help="use this existing secret from the key manager"
    )
    if creating:
        group.add_argument(
            "--new-key", action="store_true",
            help="create a new secret in the key manager (symmetric AES-512 XTS by default)",
        )
        group.add_argument(
            "--new-key-type", choices=NEW_KEY_TYPES, default=SYMMETRIC,
            help="type of the secret --new-key creates (default: symmetric)",
        )


def _setting(args: argparse.Namespace, name: str, config: dict[str, str]) -> str | None:
    value = getattr(args, name, None)
    if value is not None:
        return str(value)
    return config.get(name)


def key_manager_from_args(args: argparse.Namespace) -> KeyManager:
    config = load_config()
    manager = _setting(args, "key_manager", config) or "local"
    if manager not in MANAGERS:
        raise UsageError(f"unknown key manager {manager!r}; expected one of {', '.join(MANAGERS)}")
    if manager == "local":
        from imgcrypt.keys.local import LocalKeyStore

        keystore = _setting(args, "keystore", config)
        return LocalKeyStore(Path(keystore).expanduser() if keystore else None)
    if manager == "barbican":
        from imgcrypt.keys.barbican import BarbicanKeyManager

        endpoint = _setting(args, "barbican_endpoint", config)
        project_id = _setting(args, "project_id", config)
        if endpoint:
            if not project_id:
                raise UsageError("--barbican-endpoint needs --project-id (standalone Barbican)")
            return BarbicanKeyManager.standalone(endpoint, project_id)
        if project_id:
            raise UsageError("--project-id is for a standalone Barbican: add --barbican-endpoint")
        return BarbicanKeyManager.from_environment(_setting(args, "os_cloud", config))
    from imgcrypt.keys.castellan import CastellanKeyManager

    castellan_config = _setting(args, "castellan_config", config)
    if not castellan_config:
        raise UsageError("--key-manager castellan needs --castellan-config FILE")
    return CastellanKeyManager.from_config_file(Path(castellan_config).expanduser())


@dataclass(frozen=True)
class KeyRequest:
    """The key the options name, not yet fetched or made: an existing secret (``key_id``) or
    a new one (``order``), in ``manager``."""

    manager: KeyManager = field(repr=False)
    key_id: str | None = None
    order: KeyOrder | None = None


def new_key_order(secret_type: str) -> KeyOrder:
    """What ``--new-key`` orders: a symmetric AES-512-XTS key (the recipes' default order), or
    a passphrase secret."""
    if secret_type == PASSPHRASE:
        return KeyOrder(secret_type=PASSPHRASE, mode=None)
    return KeyOrder(secret_type=SYMMETRIC, algorithm="AES", bit_length=512, mode="XTS")


def key_request(args: argparse.Namespace, *, creating: bool) -> KeyRequest | None:
    """``--key-id`` or ``--new-key`` (in the key manager the options name); None for neither."""
    key_id = getattr(args, "key_id", None)
    new_key = bool(getattr(args, "new_key", False)) if creating else False
    if key_id and new_key:
        raise UsageError("give either --key-id or --new-key, not both")
    if not key_id and not new_key:
        return None
    manager = key_manager_from_args(args)
    if new_key:
        secret_type = getattr(args, "new_key_type", SYMMETRIC) or SYMMETRIC
        return KeyRequest(manager, order=new_key_order(secret_type))
    return KeyRequest(manager, key_id=key_id)


def resolve_key(args: argparse.Namespace, *, creating: bool) -> ResolvedKey | None:
    """The secret named by ``--key-id``, or a new one for ``--new-key``; None for neither."""
    request = key_request(args, creating=creating)
    if request is None:
        return None
    manager = request.manager
    if request.order is not None:
        lease = KeyLease.new(manager, request.order)
    else:
        assert request.key_id is not None
        lease = KeyLease.existing(manager, request.key_id)
    try:
        secret = lease.secret
        passphrase = lease.passphrase
    except BaseException as exc:
        lease.rollback(exc)
        raise
    return ResolvedKey(
        key_id=secret.secret_id or lease.key_id,
        secret=secret,
        passphrase=passphrase,
        manager_name=manager.name,
        created=lease.created,
        manager=manager,
        lease=lease,
    )

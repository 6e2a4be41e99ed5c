"""LocalKeyStore: the embedded key manager, a private directory with one JSON file a secret.

For people at a terminal and for demos: no server. The directory is 0700, each secret file
0600 and written atomically (temporary file, fsync, rename, fsync of the directory), so a
crash leaves either the old file or the new one. Files that are not ours, corrupted, or
readable by others are refused with typed errors rather than trusted.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import datetime
import fcntl
import json
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import platformdirs

from imgcrypt.errors import (
    FormatError,
    KeyManagerError,
    SecretInUseError,
    SecretNotFoundError,
    UsageError,
)
from imgcrypt.fileio import atomic_file
from imgcrypt.keys.manager import Consumer, KeyOrder, SecretInfo, require_uuid
from imgcrypt.keys.rules import generate_secret
from imgcrypt.keys.secret import SECRET_TYPES, Secret

FILE_FORMAT = "imgcrypt-local-secret"
FILE_VERSION = 1
MAX_FILE_BYTES = 1 << 20
_LOCK_NAME = ".lock"


def default_keystore_dir() -> Path:
    """The local keystore's directory when none is given: the user's data directory."""
    return Path(platformdirs.user_data_dir("imgcrypt")) / "keys"


class LocalKeyStore:
    """The key manager for a directory; ``directory`` defaults to the user's data directory."""

    name = "local"
    supports_consumers = True

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_keystore_dir()

    def __repr__(self) -> str:
        return f"LocalKeyStore({str(self.directory)!r})"

    # -- the KeyManager interface -------------------------------------------------------------

    def get(self, key_id: str) -> Secret:
        secret, _created, _consumers = self._read(require_uuid(key_id))
        return secret

    def describe(self, key_id: str) -> SecretInfo:
        secret, created, _consumers = self._read(require_uuid(key_id))
        return SecretInfo.of(secret, created)

    def store(self, secret: Secret) -> str:
        key_id = str(uuid.uuid4())
        created = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        with self._locked():
            self._write(secret.with_id(key_id), created, [])
        return key_id

    def create_key(self, order: KeyOrder) -> str:
        return self.store(generate_secret(order))

    def delete(self, key_id: str, *, force: bool = False) -> None:
        key_id = require_uuid(key_id)
        with self._locked():
            _secret, _created, consumers = self._read(key_id)
            if consumers and not force:
                raise SecretInUseError(
                    f"secret {key_id} still has {len(consumers)} consumer(s); not deleted"
                )
            os.unlink(self._path(key_id))
            self._fsync_dir()

    def list(self) -> builtins.list[SecretInfo]:
        if not self.directory.exists():
            return []
        self._check_directory()
        infos = []
        for entry in sorted(os.listdir(self.directory)):
            stem, dot, ext = entry.partition(".")
            if ext != "json" or not dot:
                continue  # lock file, temporary files, anything else that is not a secret
            try:
                key_id = require_uuid(stem)
            except UsageError:  # a foreign *.json whose stem is no UUID is simply not ours
                continue
            secret, created, _consumers = self._read(key_id)
            infos.append(SecretInfo.of(secret, created))
        return infos

    def add_consumer(self, key_id: str, consumer: Consumer) -> None:
        key_id = require_uuid(key_id)
        with self._locked():
            secret, created, consumers = self._read(key_id)
            if consumer not in consumers:
                self._write(secret, created, [*consumers, consumer])

    def remove_consumer(self, key_id: str, consumer: Consumer) -> None:
        key_id = require_uuid(key_id)
        with self._locked():
            secret, created, consumers = self._read(key_id)
            if consumer in consumers:
                self._write(secret, created, [c for c in consumers if c != consumer])

    def list_consumers(self, key_id: str) -> builtins.list[Consumer]:
        _secret, _created, consumers = self._read(require_uuid(key_id))
        return consumers

    # -- files ----------------------------------------------------------------------------------

    def _path(self, key_id: str) -> Path:
        return self.directory / f"{key_id}.json"

    def _ensure_directory(self) -> None:
        if not self.directory.exists():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)  # mkdir's mode is filtered by the umask
        self._check_directory()

    def _check_directory(self) -> None:
        info = os.stat(self.directory, follow_symlinks=False)
        if not stat.S_ISDIR(info.st_mode):
            raise KeyManagerError(f"keystore {self.directory} is not a directory")
        _check_private(info, f"keystore {self.directory}", f"chmod 700 {self.directory}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise read-modify-write cycles between processes sharing the keystore."""
        self._ensure_directory()
        fd = os.open(self.directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write(
        self, secret: Secret, created: str | None, consumers: builtins.list[Consumer]
    ) -> None:
        assert secret.secret_id is not None
        document = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "secret_id": secret.secret_id,
            "name": secret.name,
            "secret_type": secret.secret_type,
            "algorithm": secret.algorithm,
            "bit_length": secret.bit_length,
            "mode": secret.mode,
            "created": created,
            "payload_is_text": isinstance(secret.payload, str),
            "payload": base64.b64encode(secret.payload_bytes).decode("ascii"),
            "consumers": [c.as_dict() for c in consumers],
        }
        data = json.dumps(document, indent=1, sort_keys=True).encode("utf-8")
        # imgcrypt's one writer: 0600 from the first byte whatever the umask, written through
        # its descriptor, fsynced, renamed, the directory fsynced.
        with atomic_file(self._path(secret.secret_id), force=True, mode=0o600,
                         temp_naming=(".tmp-", ".part")) as out:
            view = memoryview(data)
            while view:
                view = view[os.write(out.fd, view):]

    def _read(self, key_id: str) -> tuple[Secret, str | None, builtins.list[Consumer]]:
        path = self._path(key_id)
        if not self.directory.exists():
            raise SecretNotFoundError(f"no secret {key_id} in keystore {self.directory}")
        self._check_directory()
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise SecretNotFoundError(f"no secret {key_id} in keystore {self.directory}") from None
        except OSError as exc:
            raise FormatError(
                f"{path}: cannot be opened as a secret file ({exc.strerror})"
            ) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise FormatError(f"{path} is not a regular file")
        with os.fdopen(fd, "rb") as handle:
            # Not private: the same fault as a keystore directory that is not (exit 5).
            _check_private(info, str(path), f"chmod 600 {path}")
            raw = handle.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise FormatError(f"{path} is larger than {MAX_FILE_BYTES} bytes: not a secret file")
        return _parse(raw, key_id, path)


def _check_private(info: os.stat_result, what: str, fix: str) -> None:
    """The keystore directory and its files: owned by the user running imgcrypt (root
    included: root can read anyone's files, which is no reason to trust them) and closed to
    everyone else. ``fix`` is the command that closes ``what``."""
    if info.st_uid != os.geteuid():
        raise KeyManagerError(
            f"{what} is owned by uid {info.st_uid}, not by the user running imgcrypt "
            f"(uid {os.geteuid()})"
        )
    if info.st_mode & 0o077:
        raise KeyManagerError(
            f"{what} is accessible by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
            f"run: {fix}"
        )


def _parse(raw: bytes, key_id: str, path: Path) -> tuple[Secret, str | None, list[Consumer]]:
    try:
        document = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, or an oversized integer
        raise FormatError(f"{path} is not valid JSON (corrupted?)") from None
    if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
        raise FormatError(f"{path} is not an imgcrypt keystore file")
    if document.get("version") != FILE_VERSION:
        raise FormatError(
            f"{path} has unsupported keystore file version {document.get('version')!r}"
        )
    if document.get("secret_id") != key_id:
        raise FormatError(f"{path} holds a different secret id than its name says")

    def text(name: str, required: bool = False) -> str | None:
        value = document.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise FormatError(f"{path}: field {name!r} must be a string")
        return value

    secret_type = text("secret_type", required=True)
    if secret_type not in SECRET_TYPES:
        raise FormatError(f"{path}: unknown secret type")
    bit_length = document.get("bit_length")
    if bit_length is not None and (
        isinstance(bit_length, bool) or not isinstance(bit_length, int) or bit_length <= 0
    ):
        raise FormatError(f"{path}: field 'bit_length' must be a positive integer")
    encoded = text("payload", required=True)
    assert encoded is not None
    try:
        payload_bytes = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{path}: payload is not base64") from None
    payload: bytes | str = payload_bytes
    if document.get("payload_is_text") is True:
        try:
            payload = payload_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{path}: text payload is not UTF-8") from None
    consumers_raw: Any = document.get("consumers", [])
    if not isinstance(consumers_raw, list):
        raise FormatError(f"{path}: field 'consumers' must be a list")
    consumers = []
    for item in consumers_raw:
        if not isinstance(item, dict) or set(item) != {"service", "resource_type", "resource_id"}:
            raise FormatError(f"{path}: malformed consumer entry")
        try:
            consumers.append(Consumer(**{k: item[k] for k in item}))
        except UsageError:
            raise FormatError(f"{path}: malformed consumer entry") from None
    secret = Secret(
        payload=payload,
        secret_type=secret_type,
        algorithm=text("algorithm"),
        bit_length=bit_length,
        mode=text("mode"),
        secret_id=key_id,
        name=text("name"),
    )
    return secret, text("created"), consumers

"""The error family: one exit code a class, one table, and README agreeing with it."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import imgcrypt
from imgcrypt import errors
from imgcrypt.errors import EXIT_CODES, ImgcryptError, UsageError
from imgcrypt.service.upload import UploadInspector, UploadPolicy

README = Path(__file__).resolve().parent.parent / "README.md"
# Modules that need the optional Glance/TaskFlow stack to import; they define no errors.
OPTIONAL = ("imgcrypt.glance.encrypt", "imgcrypt.glance.verify", "imgcrypt.glance.importtask",
            "imgcrypt.__main__")


def _family() -> set[type[ImgcryptError]]:
    for module in pkgutil.walk_packages(imgcrypt.__path__, "imgcrypt."):
        if module.name not in OPTIONAL:
            importlib.import_module(module.name)
    found: set[type[ImgcryptError]] = set()
    pending: list[type[ImgcryptError]] = [ImgcryptError]
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending += cls.__subclasses__()
    return found


def _readme_codes() -> list[int]:
    text = README.read_text(encoding="utf-8")
    table = text.split("| exit code | meaning |", 1)[1].split("\n\n", 1)[0]
    return [int(code) for code in re.findall(r"^\| (\d+) \|", table, re.M)]


def test_readme_table_lists_exactly_the_codes_errors_maps() -> None:
    assert _readme_codes() == sorted(EXIT_CODES)


def test_every_error_class_has_a_code_of_the_table() -> None:
    family = _family()
    codes = {cls.exit_code for cls in family}
    assert codes <= set(EXIT_CODES)
    outside = set(EXIT_CODES) - codes
    assert outside == {errors.SUCCESS_EXIT, errors.INTERRUPTED_EXIT, errors.CLOSED_PIPE_EXIT}


def test_the_family_lives_in_errors_py() -> None:
    """Every class of the family is declared in imgcrypt/errors.py, except the LUKS header
    rule errors (imgcrypt.luks.rules), which are restructured with the LUKS packages."""
    elsewhere = {f"{cls.__module__}.{cls.__name__}" for cls in _family()
                 if cls.__module__ != "imgcrypt.errors"}
    assert {name.rsplit(".", 1)[0] for name in elsewhere} <= {
        "imgcrypt.luks.rules", "imgcrypt.luks.luks2.disk"}


def test_a_bad_hash_setting_is_a_configuration_error() -> None:
    """The deployment's hash_algo is a setting, not input: usage (2), not malformed input (3)."""
    with pytest.raises(UsageError, match="md4") as refused:
        UploadInspector({}, policy=UploadPolicy(hash_algo="md4"))
    assert refused.value.exit_code == 2

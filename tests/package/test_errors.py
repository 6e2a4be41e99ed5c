"""The error family: one exit code a class, one table, and README agreeing with it."""

from __future__ import annotations

import importlib
import pickle
import pkgutil
import re
import sys
from pathlib import Path

import pytest

import imgcrypt
from imgcrypt import errors
from imgcrypt.errors import (
    EXIT_CODES,
    CertificateError,
    CertificateFault,
    Fault,
    FormatError,
    FormatFault,
    ImgcryptError,
    KeyManagerError,
    KeyManagerFault,
    UsageError,
    UsageFault,
    VerificationError,
    VerificationFault,
)
from imgcrypt.luks.rules import LUKS_MAGIC, HeaderRuleError
from imgcrypt.service.upload import UploadInspector, UploadPolicy

README = Path(__file__).resolve().parents[2] / "README.md"
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


# The family's size: a new class needs a caller that catches it to act differently (or is the
# name a library user catches); every other fault is a ``reason`` on its family's class.
MAX_CLASSES = 20


def test_every_class_of_the_family_has_its_own_exit_code_in_the_table() -> None:
    for cls in _family():
        assert cls.exit_code in EXIT_CODES, cls
        assert cls.exit_code not in (errors.SUCCESS_EXIT, errors.INTERRUPTED_EXIT,
                                     errors.CLOSED_PIPE_EXIT), cls


def test_the_family_lives_in_errors_py() -> None:
    """Every class of the family is declared in imgcrypt/errors.py, except the LUKS header
    rule error (imgcrypt.luks.rules), which carries the rule it names."""
    elsewhere = {f"{cls.__module__}.{cls.__name__}" for cls in _family()
                 if cls.__module__ != "imgcrypt.errors"}
    assert elsewhere == {"imgcrypt.luks.rules.HeaderRuleError"}


def test_the_family_stays_small() -> None:
    family = _family()
    assert len(family) <= MAX_CLASSES, sorted(cls.__name__ for cls in family)


def test_no_class_inherits_from_two_error_classes() -> None:
    """Walk every class imgcrypt defines (not only the family's known members): none has two
    bases from the family, so an error is exactly one kind with one exit code."""
    _family()  # imports every module
    for name, module in list(sys.modules.items()):
        if name != "imgcrypt" and not name.startswith("imgcrypt."):
            continue
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, ImgcryptError):
                family_bases = [b for b in value.__bases__ if issubclass(b, ImgcryptError)]
                assert len(family_bases) <= 1, (value, family_bases)
                assert len(value.__bases__) == 1, (value, value.__bases__)


def test_every_class_says_when_to_catch_it_and_is_in_the_table() -> None:
    """One table: the errors module docstring names every class of the family."""
    table = errors.__doc__ or ""
    for cls in _family():
        assert cls.__doc__ and cls.__doc__.strip() and "\n" not in cls.__doc__, cls
        assert f":class:`{cls.__name__}`" in table or \
            f":class:`{cls.__module__}.{cls.__name__}`" in table, cls


def test_every_reason_belongs_to_one_family_and_is_kept() -> None:
    """A reason rides on its family's class; the error keeps it, and the message is the
    caller's words unchanged."""
    cases: list[tuple[type[ImgcryptError], Fault]] = [
        (UsageError, UsageFault.DEVICE_BUSY),
        (FormatError, FormatFault.TRUNCATED),
        (VerificationError, VerificationFault.MISSING_PART),
        (CertificateError, CertificateFault.EXPIRED),
        (KeyManagerError, KeyManagerFault.CONSUMERS_UNSUPPORTED),
    ]
    for cls, reason in cases:
        error = cls("as the caller wrote it", reason=reason)  # type: ignore[call-arg]
        assert error.reason is reason and str(error) == "as the caller wrote it"
        # taskflow (Glance's import flows) pickles a task's failure: the reason survives it
        copied = pickle.loads(pickle.dumps(error))
        assert type(copied) is cls and copied.reason is reason and str(copied) == str(error)
        assert cls("no reason").reason is None
    assert {type(reason) for _, reason in cases} == set(Fault.__subclasses__())
    rule = HeaderRuleError(LUKS_MAGIC, "copy at 0", reason=FormatFault.BAD_MAGIC)
    assert rule.reason is FormatFault.BAD_MAGIC and rule.rule is LUKS_MAGIC
    assert isinstance(rule, FormatError) and rule.exit_code == 3


def test_a_bad_hash_setting_is_a_configuration_error() -> None:
    """The deployment's hash_algo is a setting, not input: usage (2), not malformed input (3)."""
    with pytest.raises(UsageError, match="md4") as refused:
        UploadInspector({}, policy=UploadPolicy(hash_algo="md4"))
    assert refused.value.exit_code == 2

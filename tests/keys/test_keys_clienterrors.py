"""One translation of key-manager client failures for both adapters.

A real Barbican cannot be made to answer 403, 502 or a payload refusal on demand, so these
faults are raised as the real barbicanclient/keystoneauth exception objects: directly, as
python-barbicanclient raises them to imgcrypt's Barbican adapter, and wrapped in castellan's
KeyManagerError, as castellan's Barbican backend hands them to imgcrypt's castellan adapter.
The same fault must become the same imgcrypt class (and so the same exit code) either way.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from barbicanclient import exceptions as bexc
from castellan.common import exception as cexc
from keystoneauth1 import exceptions as kexc

from imgcrypt.errors import (
    ImgcryptError,
    KeyManagerError,
    KeyManagerUnavailableError,
    SecretInUseError,
    SecretNotFoundError,
    UsageError,
)
from imgcrypt.keys import barbican, castellan

FAULTS: list[tuple[Callable[[], BaseException], type[ImgcryptError]]] = [
    (lambda: bexc.HTTPClientError("not found", status_code=404), SecretNotFoundError),
    (lambda: bexc.HTTPClientError("forbidden", status_code=403), KeyManagerError),
    (lambda: bexc.HTTPClientError("bad request", status_code=400), KeyManagerError),
    (lambda: bexc.HTTPAuthError("unauthorized"), KeyManagerError),
    (lambda: bexc.HTTPServerError("bad gateway", status_code=502), KeyManagerUnavailableError),
    (lambda: bexc.HTTPServerError("internal", status_code=500), KeyManagerError),
    (lambda: bexc.SecretHasConsumers(), SecretInUseError),
    (lambda: bexc.PayloadException("unsupported payload"), UsageError),
    (lambda: kexc.ConnectFailure("refused"), KeyManagerUnavailableError),
    (lambda: kexc.MissingRequiredOptions([]), UsageError),
    (lambda: ConnectionRefusedError("refused"), KeyManagerUnavailableError),
]


def _through_barbican(fault: BaseException) -> ImgcryptError:
    with pytest.raises(ImgcryptError) as caught, barbican.translate_errors("k1"):
        raise fault
    return caught.value


def _through_castellan(fault: BaseException) -> ImgcryptError:
    with pytest.raises(ImgcryptError) as caught, castellan.translate_errors("k1"):
        try:
            raise fault
        except BaseException:  # castellan wraps the backend's failure, keeping the context
            raise cexc.KeyManagerError("Key manager error") from None
    return caught.value


@pytest.mark.parametrize(("make", "expected"), FAULTS)
def test_same_fault_same_class_through_either_adapter(
        make: Callable[[], BaseException], expected: type[ImgcryptError]) -> None:
    direct, wrapped = _through_barbican(make()), _through_castellan(make())
    assert type(direct) is expected
    assert type(wrapped) is expected
    assert direct.exit_code == wrapped.exit_code


def test_errors_raised_inside_pass_through() -> None:
    """imgcrypt's own error inside the block (an order that failed) is not re-classified."""
    with pytest.raises(KeyManagerUnavailableError, match="order"), barbican.translate_errors():
        try:
            raise bexc.HTTPClientError("earlier", status_code=404)
        except bexc.HTTPClientError:
            raise KeyManagerUnavailableError("order not completed") from None

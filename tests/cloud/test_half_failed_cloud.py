"""The pieces that keep a half-failed cloud honest, each on its own: the verdict rule, the
stale-consumer audit (against a real local keystore), the token-refusal and HTML-page
translations. tests/cloud/test_cloud_faults.py injects the faults into the real services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from castellan.common import exception as cexc
from keystoneauth1 import exceptions as kexc

from imgcrypt.errors import ImgcryptError, KeyManagerError, KeyManagerFault, ToolError
from imgcrypt.keys import castellan
from imgcrypt.keys.consumers import file_consumer, image_consumer
from imgcrypt.keys.local import LocalKeyStore
from imgcrypt.keys.manager import KeyOrder
from imgcrypt.service.audit import (
    GONE,
    ImageState,
    audit_consumers,
    clear_stale,
    is_stale,
    parse_time,
)
from imgcrypt.service.verdict import (
    ACCEPTED,
    PENDING,
    effective_verdict,
    is_unchecked,
    pending_properties,
    refusal_properties,
    unchecked_properties,
)

NOW = datetime(2026, 12, 7, 21, 0, tzinfo=UTC)
HASH = "ab" * 64


def stored(status: str, value: str = HASH) -> dict[str, Any]:
    return {**pending_properties("sha512", HASH, "2026-12-07T20:59:00Z"),
            "status": status, "os_hash_algo": "sha512", "os_hash_value": value}


def test_pending_becomes_accepted_only_when_the_checked_data_is_stored() -> None:
    assert effective_verdict("active", stored("active")) == ACCEPTED
    for status in ("importing", "queued", "saving", "killed"):
        verdict = effective_verdict(status, stored(status))
        assert verdict is not None and verdict.startswith(PENDING) and status in verdict
    other = effective_verdict("active", stored("active", "cd" * 64))
    assert other is not None and other != ACCEPTED and other.startswith(PENDING)
    assert effective_verdict("active", {}) is None


def test_refused_and_unchecked_verdicts_are_never_accepted() -> None:
    refused = refusal_properties("imgcrypt_verify refused the image: bad signature")
    unchecked = unchecked_properties("imgcrypt_verify could not check the image: x")
    assert effective_verdict("queued", refused) == refused["imgcrypt_verdict"]
    assert effective_verdict("queued", unchecked) == unchecked["imgcrypt_verdict"]
    assert is_unchecked(unchecked["imgcrypt_verdict"])
    assert not is_unchecked(refused["imgcrypt_verdict"]) and not is_unchecked(None)
    assert len(unchecked_properties("x" * 1000)["imgcrypt_verdict"]) == 255
    assert len(pending_properties("sha512", "f" * 300, "t")["imgcrypt_verified"]) == 255


@pytest.mark.parametrize(("status", "age", "expected"), [
    ("active", 10_000, False), ("deactivated", 10_000, False),
    (GONE, 0, True), ("queued", 0, True), ("killed", 0, True), ("deleted", 0, True),
    ("pending_delete", 0, True),
    ("importing", 3599, False), ("importing", 3600, True), ("uploading", 7200, True),
    ("saving", 10, False),
])
def test_which_images_are_stale(status: str, age: int, expected: bool) -> None:
    image = ImageState(status, NOW - timedelta(seconds=age) if status != GONE else None)
    assert is_stale(image, now=NOW, min_age=3600) is expected


def test_an_import_without_a_time_is_never_called_dead() -> None:
    assert not is_stale(ImageState("importing", None), now=NOW, min_age=0)


def test_glance_times_parse() -> None:
    assert parse_time("2026-12-07T21:00:00Z") == NOW
    assert parse_time("2026-12-07T21:00:00") == NOW
    assert parse_time("yesterday") is None and parse_time(None) is None


def test_the_audit_finds_and_clears_only_stale_image_consumers(tmp_path: Path) -> None:
    store = LocalKeyStore(tmp_path / "keys")
    key = store.create_key(KeyOrder(bit_length=256, mode="XTS"))
    images = {"11111111-1111-1111-1111-111111111111": ImageState("active", NOW),
              "22222222-2222-2222-2222-222222222222": ImageState("importing",
                                                                 NOW - timedelta(hours=2)),
              "33333333-3333-3333-3333-333333333333": ImageState(GONE, None),
              "44444444-4444-4444-4444-444444444444": ImageState("importing", NOW)}
    for image_id in images:
        store.add_consumer(key, image_consumer(image_id))
    store.add_consumer(key, file_consumer(str(tmp_path / "disk.luks")))
    asked: list[str] = []

    def state(image_id: str) -> ImageState:
        asked.append(image_id)
        return images[image_id]

    states = audit_consumers(store, [key], state, min_age=3600, now=NOW)
    assert sorted(asked) == sorted(images)  # the file entry is not an image: never asked
    stale = sorted(s.consumer.resource_id for s in states if s.stale)
    assert stale == ["22222222-2222-2222-2222-222222222222",
                     "33333333-3333-3333-3333-333333333333"]
    shown = {s.consumer.resource_id: s.as_dict() for s in states}
    assert shown["33333333-3333-3333-3333-333333333333"]["image_status"] == GONE
    assert shown[str(tmp_path / "disk.luks")]["image_status"] is None

    cleared = clear_stale(store, states)
    assert sorted(s.consumer.resource_id for s in cleared) == stale
    left = {c.resource_id for c in store.list_consumers(key)}
    assert left == {"11111111-1111-1111-1111-111111111111",
                    "44444444-4444-4444-4444-444444444444", str(tmp_path / "disk.luks")}


def _keystone_404() -> kexc.NotFound:
    return kexc.NotFound(message="Failed to validate token", http_status=404,
                         url="http://127.0.0.1:5000/v3/auth/tokens", method="POST")


def test_an_expired_token_through_castellan_says_re_authenticate() -> None:
    """castellan lets keystoneauth's failure through unwrapped when it re-authenticates with an
    expired token; wrapped or not, it is the key manager's token refusal."""
    for wrap in (False, True):
        with pytest.raises(KeyManagerError) as caught, castellan.translate_errors("k1"):
            if not wrap:
                raise _keystone_404()
            try:
                raise _keystone_404()
            except kexc.NotFound:
                raise cexc.KeyManagerError("Key manager error") from None
        assert caught.value.reason is KeyManagerFault.TOKEN_REFUSED
        assert "re-authenticate" in str(caught.value)
        assert "Failed to validate token" not in str(caught.value)


def test_a_404_that_is_not_keystone_s_is_not_a_token_refusal() -> None:
    with pytest.raises(KeyManagerError) as caught, castellan.translate_errors("k1"):
        raise kexc.NotFound(message="no", http_status=404, url="http://b/v1/secrets/x")
    assert caught.value.reason is not KeyManagerFault.TOKEN_REFUSED


class _Response:
    def __init__(self, text: str, body: object = None) -> None:
        self.text, self._body = text, body

    def json(self) -> object:
        if self._body is None:
            raise ValueError("not JSON")
        return self._body


def _image_service_error(exc: BaseException) -> str:
    from imgcrypt.imageservice import _translate

    with pytest.raises(ToolError) as caught, _translate("sending the image data"):
        raise exc
    return str(caught.value)


def test_glance_s_html_pages_become_one_line() -> None:
    page = ("<html>\n <head>\n  <title>500 Internal Server Error</title>\n </head>\n <body>\n"
            "  <h1>500 Internal Server Error</h1>\n  boom<br /><br />\n </body>\n</html>")
    message = _image_service_error(kexc.InternalServerError(
        http_status=500, response=_Response(page)))
    assert "<" not in message and "\n" not in message
    assert message.startswith("sending the image data: HTTP 500: 500 Internal Server Error")
    full = _image_service_error(kexc.RequestEntityTooLarge(
        http_status=413, response=_Response("<html><h1>413 Request Entity Too Large</h1>")))
    assert "image service (Glance) has no room" in full and "413" in full
    assert "free space" in full and "<" not in full
    expired = _image_service_error(_keystone_404())
    assert "re-authenticate" in expired and "Failed to validate token" not in expired
    json_error = _image_service_error(kexc.Conflict(http_status=409, response=_Response(
        "{}", {"message": "Image is locked"})))
    assert json_error == "sending the image data: HTTP 409: Image is locked"


class _FailedImport:
    """The image API as Glance answers after a failed import whose revert could not remove the
    consumer (Barbican down at that moment, a fault no real service here produces on cue)."""

    def __init__(self, verdict: str) -> None:
        self.image = {"id": "55555555-5555-5555-5555-555555555555", "status": "queued",
                      "os_glance_failed_import": "fs", "imgcrypt_verdict": verdict,
                      "imgcrypt_leftover": "consumer of key k not removed (cannot reach "
                                           "Barbican): run imgcrypt keys consumers "
                                           "--clear-stale once the key manager answers"}

    def request(self, url: str, method: str, **kwargs: Any) -> Any:
        return _Response("", {"tasks": []} if url.endswith("/tasks") else self.image)


class _Conn:
    def __init__(self, api: Any) -> None:
        self.image = api


@pytest.mark.parametrize(("verdict", "code"), [
    ("unchecked: imgcrypt_verify could not check the image: cannot reach Barbican", 5),
    ("refused: imgcrypt_verify refused the image: bad signature", 4)])
def test_a_failed_import_reports_what_its_revert_left_behind(verdict: str, code: int) -> None:
    from imgcrypt.imageservice import ImageService
    from imgcrypt.keys.lease import leftover_notes

    images = ImageService(_Conn(_FailedImport(verdict)))
    with pytest.raises(ImgcryptError) as caught:
        images.wait_for_import("55555555-5555-5555-5555-555555555555", 5)
    assert caught.value.exit_code == code
    assert verdict.split(": ", 1)[1] in str(caught.value)
    [note] = leftover_notes(caught.value)
    assert "--clear-stale" in note and "55555555-5555-5555-5555-555555555555" in note

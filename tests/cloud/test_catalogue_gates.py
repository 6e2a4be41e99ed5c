"""The catalogue's request gates, finding records and option parsing, without a cloud.

A real Glance or Barbican cannot be made to answer 429 or 503 on demand, so the faults here
are the client libraries' own exception objects raised by a stand-in call; everything else
about the jobs is tested against the real services in test_catalogue_e2e.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from keystoneauth1 import exceptions as kexc

from imgcrypt.catalogue.cloud import Gate, GatePolicy, transient
from imgcrypt.catalogue.distributed import parse_board_url
from imgcrypt.catalogue.findings import FINDINGS, record, summarize
from imgcrypt.catalogue.jobs import JobOptions, Snapshot
from imgcrypt.errors import KeyManagerUnavailableError, ToolError, UsageError


def http_error(status: int) -> kexc.HttpError:
    return kexc.HttpError(http_status=status)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_busy_answers_are_retried_with_growing_pauses(status: int) -> None:
    pauses: list[float] = []
    gate = Gate("glance", GatePolicy(retries=3, backoff=1.0), sleep=pauses.append)
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise http_error(status)
        return "ok"

    assert gate.call(flaky) == "ok"
    assert calls == 3 and gate.retried == 2
    assert 0.5 <= pauses[0] <= 1.0 and 1.0 <= pauses[1] <= 2.0  # doubling, with jitter


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
def test_refusals_are_not_retried(status: int) -> None:
    gate = Gate("glance", GatePolicy(retries=3), sleep=lambda _s: None)
    with pytest.raises(kexc.HttpError):
        gate.call(lambda: (_ for _ in ()).throw(http_error(status)))
    assert gate.retried == 0


def test_retries_give_up_with_the_last_failure() -> None:
    gate = Gate("barbican", GatePolicy(retries=2), sleep=lambda _s: None)
    with pytest.raises(kexc.ConnectFailure):
        gate.call(lambda: (_ for _ in ()).throw(kexc.ConnectFailure("refused")))
    assert gate.retried == 2


def test_a_translated_error_is_retried_by_what_it_was_raised_from() -> None:
    """imgcrypt's typed errors are raised ``from None``; the client's exception stays their
    context, and decides."""
    def translated(status: int) -> None:
        try:
            raise http_error(status)
        except kexc.HttpError:
            raise ToolError(f"HTTP {status}") from None

    for status, expected in ((503, True), (404, False)):
        try:
            translated(status)
        except ToolError as exc:
            assert transient(exc) is expected
    assert transient(KeyManagerUnavailableError("Barbican is restarting"))


def test_the_gate_bounds_requests_in_flight() -> None:
    gate = Gate("glance", GatePolicy(limit=2))

    def slow() -> None:
        time.sleep(0.05)

    threads = [threading.Thread(target=gate.call, args=(slow,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert gate.peak == 2 and gate.in_flight == 0


def test_records_and_summary() -> None:
    records = [record("audit", "b", {"plaintext"}), record("audit", "a", {"no-consumer",
                                                                          "shared-key"}),
               record("audit", "c", {"no-consumer"})]
    assert [r["attention"] for r in records] == [False, True, True]
    summary = summarize("audit", records)
    assert summary.groups == {"plaintext": ("b",), "no-consumer": ("a", "c"),
                              "shared-key": ("a",)}
    assert summary.exit_code == 4
    assert summarize("audit", records[:1]).exit_code == 0
    assert summary.as_dict()["summary"]["findings"] == {"plaintext": 1, "no-consumer": 2,
                                                        "shared-key": 1}
    assert "! no-consumer: 2" in summary.human()
    with pytest.raises(ValueError, match="unknown finding"):
        record("audit", "x", {"made-up"})
    assert all(isinstance(meaning, str) and meaning for _, meaning in FINDINGS.values())


def test_options_and_snapshot_survive_storage() -> None:
    options = JobOptions(dry_run=True, direction="to-cinder", trust_pem=("PEM",))
    assert JobOptions.from_dict(options.as_dict()) == options
    snapshot = Snapshot({"k": {"i1": "p1", "i2": "p2"}})
    assert Snapshot.from_dict(snapshot.as_dict()) == snapshot
    assert snapshot.sharing("k", "i1") == {"shared_with": ["i2"], "projects": ["p1", "p2"]}


def test_board_urls() -> None:
    assert parse_board_url("redis://127.0.0.1:6400/cat") == {
        "board": "redis", "host": "127.0.0.1", "port": 6400, "namespace": "cat"}
    assert parse_board_url("redis://h")["namespace"] == "imgcrypt-catalogue"
    with pytest.raises(UsageError):
        parse_board_url("zookeeper://h:2181")


def test_a_missing_image_is_told_from_other_failures() -> None:
    from imgcrypt.catalogue.cloud import not_found

    def translated(status: int) -> ToolError:
        try:
            try:
                raise http_error(status)
            except kexc.HttpError:
                raise ToolError(f"HTTP {status}") from None
        except ToolError as exc:
            return exc

    assert not_found(translated(404))
    assert not not_found(translated(403))
    assert not not_found(ToolError("HTTP 404 in a message is not a status"))

"""Size-safe property storage: split/join round trips for every limit, and each kind of damage."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from imgcrypt.errors import UsageError, VerificationError, VerificationFault
from imgcrypt.signing import storage
from tests.helpers.util import raises_fault

NAME = "imgcrypt_sign_signature"
# The faults of a value stored as numbered parts that cannot be reassembled.
PARTS_FAULTS = {VerificationFault.MISSING_PART, VerificationFault.EXTRA_PART,
                VerificationFault.DUPLICATE_PART, VerificationFault.REORDERED_PART,
                VerificationFault.MALFORMED_PART, VerificationFault.CORRUPT_PARTS}
limits = st.integers(min_value=storage.MIN_MAX_LENGTH, max_value=1024)
values = st.text(max_size=7000)
b64 = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=",
    min_size=1,
    max_size=7000,
)


@st.composite
def long_value_and_limit(draw: st.DrawFn) -> tuple[str, int]:
    """A limit and a value needing at least two parts under it."""
    limit = draw(limits)
    body = draw(
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789+/", min_size=1, max_size=64)
    )
    length = draw(st.integers(2 * limit + 1, 7000))
    return (body * (length // len(body) + 1))[:length], limit


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def count(records: dict[str, str]) -> int:
    return int(records[f"{NAME}_count"])


@SETTINGS
@given(value=values, limit=limits)
def test_round_trip_every_limit(value: str, limit: int) -> None:
    records = storage.split_value(NAME, value, max_length=limit)
    assert all(len(v) <= limit for v in records.values())
    assert storage.join_value(NAME, records) == value
    assert storage.has_parts(NAME, records)
    # Unrelated properties beside the records do not matter.
    assert storage.join_value(NAME, {**records, "disk_format": "raw", f"{NAME}x_1": "1:a"}) == value


@pytest.mark.parametrize("limit", [64, 65, 100, 254, 255, 256, 1000])
@pytest.mark.parametrize("length", [0, 1, 88, 344, 3228, 4412, 6172])
def test_exact_limits_and_signature_sizes(limit: int, length: int) -> None:
    value = "A" * length
    records = storage.split_value(NAME, value, max_length=limit)
    assert max(len(v) for v in records.values()) <= limit
    assert storage.join_value(NAME, records) == value


def test_limit_below_minimum_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        storage.split_value(NAME, "x", max_length=storage.MIN_MAX_LENGTH - 1)


@SETTINGS
@given(value=b64, limit=limits, data=st.data())
def test_missing_part(value: str, limit: int, data: st.DataObject) -> None:
    records = storage.split_value(NAME, value, max_length=limit)
    index = data.draw(st.integers(1, count(records)))
    del records[f"{NAME}_{index}"]
    with raises_fault(VerificationError, VerificationFault.MISSING_PART):
        storage.join_value(NAME, records)


@pytest.mark.parametrize("record", ["count", "sha256"])
def test_missing_count_or_digest(record: str) -> None:
    records = storage.split_value(NAME, "A" * 600)
    del records[f"{NAME}_{record}"]
    with raises_fault(VerificationError, VerificationFault.MISSING_PART):
        storage.join_value(NAME, records)


@SETTINGS
@given(value=b64, limit=limits)
def test_extra_part(value: str, limit: int) -> None:
    records = storage.split_value(NAME, value, max_length=limit)
    extra = count(records) + 1
    records[f"{NAME}_{extra}"] = f"{extra}:AAAA"
    with raises_fault(VerificationError, VerificationFault.EXTRA_PART):
        storage.join_value(NAME, records)


@SETTINGS
@given(case=long_value_and_limit(), data=st.data())
def test_duplicated_part(case: tuple[str, int], data: st.DataObject) -> None:
    value, limit = case
    records = storage.split_value(NAME, value, max_length=limit)
    n = count(records)
    assert n >= 2
    source = data.draw(st.integers(1, n))
    target = data.draw(st.integers(1, n).filter(lambda i: i != source))
    records[f"{NAME}_{target}"] = records[f"{NAME}_{source}"]
    with raises_fault(VerificationError, VerificationFault.DUPLICATE_PART):
        storage.join_value(NAME, records)


@pytest.mark.parametrize("value", ["0:", "0:AAAA", "1:AAAA"])
def test_part_zero_is_extra(value: str) -> None:
    records = {**storage.split_value(NAME, "A" * 600), f"{NAME}_0": value}
    with pytest.raises(VerificationError) as err:
        storage.join_value(NAME, records)
    assert err.value.reason in (VerificationFault.EXTRA_PART, VerificationFault.DUPLICATE_PART)
    if value.startswith("0"):
        with raises_fault(VerificationError, VerificationFault.EXTRA_PART):
            storage.join_value(NAME, records)


def test_duplicated_part_under_a_padded_number() -> None:
    records = storage.split_value(NAME, "A" * 600)
    records[f"{NAME}_01"] = records[f"{NAME}_1"]
    with raises_fault(VerificationError, VerificationFault.DUPLICATE_PART):
        storage.join_value(NAME, records)


@SETTINGS
@given(case=long_value_and_limit(), data=st.data())
def test_reordered_parts(case: tuple[str, int], data: st.DataObject) -> None:
    value, limit = case
    records = storage.split_value(NAME, value, max_length=limit)
    n = count(records)
    assert n >= 2
    order = data.draw(st.permutations(range(1, n + 1)))
    assume(list(order) != list(range(1, n + 1)))
    originals = {i: records[f"{NAME}_{i}"] for i in range(1, n + 1)}
    for slot, source in zip(range(1, n + 1), order, strict=True):
        records[f"{NAME}_{slot}"] = originals[source]
    with raises_fault(VerificationError, VerificationFault.REORDERED_PART):
        storage.join_value(NAME, records)


@SETTINGS
@given(value=b64, limit=limits, data=st.data())
def test_corrupted_part(value: str, limit: int, data: st.DataObject) -> None:
    records = storage.split_value(NAME, value, max_length=limit)
    index = data.draw(st.integers(1, count(records)))
    key = f"{NAME}_{index}"
    prefix, body = records[key].split(":", 1)
    records[key] = f"{prefix}:{body}!"
    with raises_fault(VerificationError, VerificationFault.CORRUPT_PARTS):
        storage.join_value(NAME, records)


@pytest.mark.parametrize(
    "change",
    [
        {f"{NAME}_count": "abc"},
        {f"{NAME}_count": "01"},
        {f"{NAME}_count": "0"},
        {f"{NAME}_count": "99999999999999999999"},
        {f"{NAME}_1": "no number here"},
        {f"{NAME}_07": "7:x"},
    ],
)
def test_malformed_records(change: dict[str, str]) -> None:
    records = {**storage.split_value(NAME, "A" * 600), **change}
    with raises_fault(VerificationError, VerificationFault.MALFORMED_PART):
        storage.join_value(NAME, records)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.one_of(
            st.sampled_from([f"{NAME}_count", f"{NAME}_sha256"]),
            st.integers(0, 5000).map(lambda i: f"{NAME}_{i}"),
            st.from_regex(rf"{NAME}_0*[0-9]{{1,3}}", fullmatch=True),
        ),
        st.one_of(st.text(max_size=20), st.from_regex(r"[0-9]{1,4}:[A-Za-z]{0,9}", fullmatch=True)),
        max_size=12,
    )
)
def test_hostile_records_give_parts_errors_only(records: dict[str, str]) -> None:
    try:
        storage.join_value(NAME, records)
    except VerificationError as exc:
        assert type(exc) is VerificationError and exc.reason in PARTS_FAULTS, exc


def test_too_many_parts_is_bounded() -> None:
    records = {f"{NAME}_count": "3", f"{NAME}_sha256": "x"}
    records.update({f"{NAME}_{i}": f"{i}:A" for i in range(1, storage.MAX_PARTS + 10)})
    with raises_fault(VerificationError, VerificationFault.EXTRA_PART):
        storage.join_value(NAME, records)

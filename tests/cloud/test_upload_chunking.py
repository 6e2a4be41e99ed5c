"""The upload inspector's verdict does not depend on how the stream is cut.

Glance hands the verify plugin 64 KiB reads, a proxy may hand it anything: empty chunks,
single bytes, a chunk that ends one byte into the LUKS header or one byte past its keyslots,
``bytes`` or a buffer the caller overwrites as soon as ``update`` returns. Whatever the cut,
the hashes are hashlib's over the whole stream and the verdict (or the refusal, to its type,
message and reason) is the one a single pass over the same bytes gives. The digests run on
threads of their own (issue 25): these tests hold that to the single-pass semantics.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgcrypt.errors import ImgcryptError
from imgcrypt.keys.local import LocalKeyStore
from imgcrypt.luks.container import parse_header
from imgcrypt.service import lanes
from imgcrypt.service.upload import UploadInspector, UploadPolicy, UploadVerdict
from tests.helpers.prepared import prepare_image

MIB = 1 << 20


@dataclass(frozen=True)
class Case:
    image: bytes
    properties: dict[str, str]
    policy: UploadPolicy
    edges: tuple[int, ...]  # offsets where the inspector's judgement changes (header, keyslots)


def _edges(image: bytes) -> tuple[int, ...]:
    try:
        header = parse_header(image)
    except ImgcryptError:
        return (6, 8, 592, 4096)
    return (6, 8, 592, 4096, header.unlock_extent, header.region_size, header.payload_offset)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Case, LocalKeyStore]]:
    """Images that exercise every verdict: accepted (LUKS1, signed, its key opening it, more
    than one batch of the digests' threads), LUKS2 refused and accepted by policy, a truncated
    keyslot area, an undeclared LUKS image, a damaged header, plain data of one batch or less."""
    store = LocalKeyStore(Path(tmp_path_factory.mktemp("keys")))
    out: dict[str, tuple[Case, LocalKeyStore]] = {}
    default = UploadPolicy()
    both = UploadPolicy(allowed_luks_versions=frozenset({1, 2}))
    luks1, props1 = prepare_image(store, os.urandom(MIB + 12345))
    luks2, props2 = prepare_image(store, os.urandom(300_000), version=2, sign=False)
    undeclared = {"disk_format": "raw"}
    damaged = bytearray(luks1[: 2 * MIB])
    damaged[8:40] = b"\xff" * 32  # the cipher name: no longer a header cryptsetup accepts
    for name, image, properties, policy in (
        ("luks1 signed", luks1, props1, default),
        ("luks2 refused", luks2, props2, default),
        ("luks2 accepted", luks2, props2, both),
        ("luks1 cut in its keyslots", luks1[:300_000], props1, default),
        ("luks1 undeclared", luks1, undeclared, default),
        ("damaged header", bytes(damaged), undeclared, default),
        ("plain, more than a batch", os.urandom(2 * MIB + 1), undeclared, default),
        ("plain, less than a batch", os.urandom(5000), undeclared, default),
        ("empty", b"", undeclared, default),
    ):
        out[name] = (Case(image, properties, policy, _edges(image)), store)
    return out


Feed = Callable[[UploadInspector], None]


def _outcome(case: Case, store: LocalKeyStore, feed: Feed) -> tuple[object, ...]:
    try:
        inspector = UploadInspector(case.properties, key_manager=store, policy=case.policy)
        feed(inspector)
        verdict: UploadVerdict = inspector.finalize()
    except ImgcryptError as exc:
        return ("refused", type(exc), str(exc), getattr(exc, "reason", None))
    return ("verdict", verdict)


@st.composite
def chunkings(draw: st.DrawFn, size: int, edges: tuple[int, ...]) -> list[tuple[int, int]]:
    """Cut points anywhere, at the judgement edges and one byte either side, repeated (empty
    chunks) and adjacent (1-byte chunks)."""
    near = [e + d for e in edges for d in (-1, 0, 1) if 0 <= e + d <= size]
    points = draw(st.lists(st.one_of(st.integers(0, size), st.sampled_from(near or [0])),
                           max_size=40))
    cuts = sorted([0, size, *points])
    return list(itertools.pairwise(cuts))


KINDS = st.sampled_from(["bytes", "view of bytes", "reused bytearray"])


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), kind=KINDS)
@pytest.mark.parametrize("name", ["luks1 signed", "luks2 refused", "luks2 accepted",
                                  "luks1 cut in its keyslots", "luks1 undeclared",
                                  "damaged header", "plain, more than a batch",
                                  "plain, less than a batch", "empty"])
def test_any_chunking_gives_the_single_pass_verdict(
        cases: dict[str, tuple[Case, LocalKeyStore]], name: str, data: st.DataObject,
        kind: str) -> None:
    case, store = cases[name]
    image = case.image
    spans = data.draw(chunkings(len(image), case.edges))

    def single_pass(inspector: UploadInspector) -> None:
        inspector.update(image)

    def cut(inspector: UploadInspector) -> None:
        view = memoryview(image)
        scratch = bytearray(max((b - a for a, b in spans), default=0))
        for a, b in spans:
            if kind == "bytes":
                inspector.update(image[a:b])
            elif kind == "view of bytes":
                inspector.update(view[a:b])
            else:  # as a readinto() loop: the caller overwrites the buffer straight after
                chunk = memoryview(scratch)[: b - a]
                chunk[:] = view[a:b]
                inspector.update(chunk)
                chunk[:] = b"\xa5" * (b - a)

    expected = _outcome(case, store, single_pass)
    assert _outcome(case, store, cut) == expected
    if expected[0] == "verdict":
        verdict = expected[1]
        assert isinstance(verdict, UploadVerdict)
        assert verdict.os_hash_value == hashlib.sha512(image).hexdigest()
        assert verdict.checksum == hashlib.md5(image, usedforsecurity=False).hexdigest()
        assert verdict.size == len(image)


def test_the_verdicts_cover_acceptance_and_each_refusal(
        cases: dict[str, tuple[Case, LocalKeyStore]]) -> None:
    """The cases above are the ones they claim to be (so the property test compares
    acceptances and refusals, not one outcome many times)."""
    seen = {name: _outcome(case, store, lambda i, c=case: i.update(c.image))
            for name, (case, store) in cases.items()}
    accepted = seen["luks1 signed"][1]
    assert isinstance(accepted, UploadVerdict) and accepted.signature is not None
    assert accepted.luks_version == 1 and accepted.encryption is not None
    assert seen["luks2 refused"][0] == "refused"
    assert isinstance(seen["luks2 accepted"][1], UploadVerdict)
    assert seen["luks1 cut in its keyslots"][:1] == ("refused",)
    undeclared = seen["luks1 undeclared"][1]
    assert isinstance(undeclared, UploadVerdict) and undeclared.warnings
    damaged = seen["damaged header"][1]
    assert isinstance(damaged, UploadVerdict) and "damaged" in damaged.warnings[0]
    assert len(cases["plain, more than a batch"][0].image) > 2 * lanes.BATCH_BYTES


def _digest_threads() -> int:
    return sum(t.name == "imgcrypt-digest" for t in threading.enumerate())


def test_an_abandoned_inspection_leaves_no_thread_behind() -> None:
    """An upload that fails half-way (the store refused a write, the client went away) drops
    its inspector without a verdict: the digests' threads end with it."""
    before = _digest_threads()
    inspector = UploadInspector({})
    for _ in range(4):
        inspector.update(os.urandom(MIB))
    assert _digest_threads() == before + 2  # the sha512 and the md5
    del inspector
    gc.collect()
    for _ in range(1000):  # the threads take their stop from the queue behind any batch
        if _digest_threads() == before:
            break
        time.sleep(0.01)
    assert _digest_threads() == before


def test_a_finished_inspection_leaves_no_thread_behind() -> None:
    before = _digest_threads()
    inspector = UploadInspector({})
    inspector.update(os.urandom(3 * MIB))
    assert _digest_threads() == before + 2
    verdict = inspector.finalize()
    assert _digest_threads() == before  # finalize() waits for them to end
    assert verdict.size == 3 * MIB

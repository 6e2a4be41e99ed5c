"""ordered_map and transform_file_range: order, bounded in-flight work, exceptions, early
close, real parallelism, and engine workers that always end."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgcrypt.errors import TruncatedError, UnsupportedError
from imgcrypt.luks.pipeline import (
    MAX_WORKERS,
    default_workers,
    ordered_map,
    transform_file_range,
)
from imgcrypt.luks.sectors import CipherSpec, SectorCipher


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name.startswith(("imgcrypt-worker", "imgcrypt-transfer"))]


class Tracker:
    """Counts items pulled from the input and calls running at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pulled = 0
        self.running = 0
        self.max_running = 0
        self.started: list[int] = []

    def items(self, count: int) -> Iterator[int]:
        for i in range(count):
            with self.lock:
                self.pulled += 1
            yield i

    def call(self, fn: Callable[[int], object]) -> Callable[[int], object]:
        def wrapped(item: int) -> object:
            with self.lock:
                self.running += 1
                self.max_running = max(self.max_running, self.running)
                self.started.append(item)
            try:
                return fn(item)
            finally:
                with self.lock:
                    self.running -= 1
        return wrapped


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(st.integers(), max_size=60), workers=st.integers(1, 5),
       in_flight=st.integers(1, 8), delays=st.lists(st.floats(0, 0.002), min_size=1, max_size=7))
def test_results_come_in_input_order(items: list[int], workers: int, in_flight: int,
                                     delays: list[float]) -> None:
    def fn(x: int) -> int:
        time.sleep(delays[x % len(delays)])  # uneven work finishes out of order
        return x * 3 + 1

    got = list(ordered_map(fn, items, workers=workers, in_flight=in_flight))
    assert got == [x * 3 + 1 for x in items]
    assert worker_threads() == []


@pytest.mark.parametrize("workers, in_flight", [(2, 2), (2, 4), (4, 3), (3, 1)])
def test_in_flight_items_are_bounded(workers: int, in_flight: int) -> None:
    tracker = Tracker()
    consumed = 0
    for _ in ordered_map(tracker.call(lambda x: x), tracker.items(200), workers=workers,
                         in_flight=in_flight):
        consumed += 1
        # Pulled but not yet consumed: the queue plus the item whose submit triggered the yield.
        assert tracker.pulled - consumed <= in_flight
        time.sleep(0.0005)
    assert consumed == 200
    assert tracker.max_running <= workers


def test_default_in_flight_is_one_more_than_the_workers() -> None:
    tracker = Tracker()
    consumed = 0
    for _ in ordered_map(lambda x: x, tracker.items(50), workers=2):
        consumed += 1
        assert tracker.pulled - consumed <= 3


def test_work_really_runs_concurrently() -> None:
    barrier = threading.Barrier(2, timeout=10)

    def fn(x: int) -> int:
        barrier.wait()  # deadlocks (and times out) unless two calls run at once
        return x

    assert list(ordered_map(fn, range(8), workers=2)) == list(range(8))


class Boom(Exception):
    pass


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_exception_reaches_the_consumer_at_its_place(workers: int) -> None:
    def fn(x: int) -> int:
        if x == 5:
            raise Boom(f"item {x}")
        return x

    got: list[int] = []
    with pytest.raises(Boom, match="item 5"):
        for value in ordered_map(fn, range(20), workers=workers):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]
    assert worker_threads() == []


def test_exception_from_the_input_propagates_and_stops_the_pool() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise Boom("input broke")

    with pytest.raises(Boom, match="input broke"):
        list(ordered_map(lambda x: x, items(), workers=2))
    assert worker_threads() == []


def test_closing_early_cancels_queued_work_and_joins_threads() -> None:
    tracker = Tracker()

    def slow(x: int) -> int:
        time.sleep(0.01)
        return x

    results = ordered_map(tracker.call(slow), tracker.items(10_000), workers=2, in_flight=4)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    results.close()  # type: ignore[attr-defined]
    assert worker_threads() == []
    started = len(tracker.started)
    time.sleep(0.05)
    assert len(tracker.started) == started  # nothing runs after close
    assert tracker.pulled <= 3 + 4 + 1


def test_abandoning_a_generator_midway_with_break_cleans_up() -> None:
    for value in ordered_map(lambda x: x, range(100), workers=3):
        if value == 10:
            break
    # The for loop drops its reference; CPython closes the generator at once.
    assert worker_threads() == []


@pytest.mark.parametrize("kwargs", [{"workers": 0}, {"workers": -1}, {"in_flight": 0}])
def test_bad_arguments_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ordered_map(lambda x: x, [1], **kwargs)


def test_default_workers_follow_the_cpus_with_a_cap() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert default_workers() == max(1, min(cpus, MAX_WORKERS))


def test_sector_cipher_through_the_pool_matches_one_call() -> None:
    # The streaming layer's use: chunks of one payload on several threads, one shared cipher.
    key = os.urandom(64)
    cipher = SectorCipher(CipherSpec.parse("aes-xts-plain64"), key, 4096)
    chunk = 64 << 10
    data = os.urandom(40 * chunk + 3 * 4096)
    pieces = [(offset, data[offset : offset + chunk]) for offset in range(0, len(data), chunk)]
    joined = b"".join(
        ordered_map(lambda p: cipher.encrypt(p[1], p[0] // 512), pieces, workers=2)
    )
    assert joined == cipher.encrypt(data, 0)


# -- transform_file_range ------------------------------------------------------------------------


def child_pids() -> set[int]:
    """This process's children, zombies included, without reaping anyone else's."""
    pids: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            pids.update(int(p) for p in (task / "children").read_text().split())
        except FileNotFoundError:  # a thread that was just joined is still leaving the kernel
            continue
    return pids


@pytest.fixture(autouse=True)
def _children_before() -> Iterator[None]:
    global BEFORE
    BEFORE = child_pids()
    yield


BEFORE: set[int] = set()


def no_child_processes() -> bool:
    """No child started during this test is left running or unreaped."""
    return child_pids() <= BEFORE


def run_range(tmp: Path, source: bytes, *, src_offset: int, length: int, dst_offset: int,
              write_length: int | None, block: int, chunk_size: int, workers: int,
              transform: Callable[[memoryview, int], None],
              processes: bool | None = None) -> tuple[bytes, list[int]]:
    src, dst = tmp / "src", tmp / "dst"
    src.write_bytes(source)
    dst.write_bytes(b"")
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        done = list(transform_file_range(
            transform, src_fd=fin.fileno(), src_offset=src_offset, length=length,
            dst_fd=fout.fileno(), dst_offset=dst_offset, write_length=write_length,
            block=block, chunk_size=chunk_size, workers=workers, processes=processes,
        ))
    return dst.read_bytes(), done


def xor_position(view: memoryview, start: int) -> None:
    # A transform whose result depends on where the piece lies, like a sector cipher's IV.
    for i in range(0, len(view), 64):
        view[i] ^= (start + i) // 64 % 251


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), block=st.sampled_from([16, 512]), blocks_per_chunk=st.integers(1, 6),
       workers=st.integers(1, 3), processes=st.booleans())
def test_transform_file_range_matches_one_pass(tmp_path_factory: pytest.TempPathFactory,
                                               data: st.DataObject,
                                               block: int, blocks_per_chunk: int,
                                               workers: int, processes: bool) -> None:
    tmp = tmp_path_factory.mktemp("range")
    chunk = block * blocks_per_chunk
    src_offset = data.draw(st.integers(0, 700))
    length = data.draw(st.integers(0, 12 * chunk))
    source = os.urandom(src_offset + length + data.draw(st.integers(0, 100)))
    padded_length = -(-length // block) * block
    write_length = data.draw(st.one_of(st.none(), st.integers(0, padded_length)))
    dst_offset = data.draw(st.integers(0, 1000))

    out, done = run_range(tmp, source, src_offset=src_offset, length=length,
                          dst_offset=dst_offset, write_length=write_length, block=block,
                          chunk_size=chunk, workers=workers, transform=xor_position,
                          processes=processes)

    expected = bytearray(source[src_offset : src_offset + length] + bytes(padded_length - length))
    for start in range(0, len(expected), chunk):
        piece = memoryview(expected)[start : start + chunk]
        xor_position(piece, start)
    limit = padded_length if write_length is None else write_length
    assert out == bytes(dst_offset if limit else 0) + bytes(expected[:limit])
    assert sum(done) == length
    assert sorted(done) == sorted(min(chunk, length - s) for s in range(0, length, chunk))
    assert worker_threads() == [] and no_child_processes()


@pytest.mark.parametrize("processes", [False, True])
def test_transform_file_range_refuses_short_input(tmp_path: Path, processes: bool) -> None:
    with pytest.raises(TruncatedError, match="bytes before its end"):
        run_range(tmp_path, os.urandom(5000), src_offset=0, length=9000, dst_offset=0,
                  write_length=None, block=512, chunk_size=2048, workers=2,
                  transform=lambda view, start: None, processes=processes)
    assert worker_threads() == [] and no_child_processes()


@pytest.mark.parametrize("processes", [False, True])
def test_transform_file_range_passes_typed_errors_on(tmp_path: Path, processes: bool) -> None:
    def transform(view: memoryview, start: int) -> None:
        if start == 3 * 1024:
            raise UnsupportedError(f"piece at {start}")

    with pytest.raises(UnsupportedError, match="piece at 3072"):
        run_range(tmp_path, os.urandom(8192), src_offset=0, length=8192, dst_offset=0,
                  write_length=None, block=512, chunk_size=1024, workers=2,
                  transform=transform, processes=processes)
    assert worker_threads() == [] and no_child_processes()


def test_closing_a_range_early_stops_and_joins_the_workers(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(os.urandom(64 * 1024))
    dst.write_bytes(b"")

    def slow(view: memoryview, start: int) -> None:
        time.sleep(0.05)

    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        pieces = transform_file_range(slow, src_fd=fin.fileno(), src_offset=0,
                                      length=64 * 1024, dst_fd=fout.fileno(), dst_offset=0,
                                      block=512, chunk_size=1024, workers=2, processes=True)
        assert next(pieces) == 1024
        began = time.monotonic()
        pieces.close()  # type: ignore[attr-defined]
        assert time.monotonic() - began < 1  # stopped, not waited for 60 more pieces
    assert worker_threads() == [] and no_child_processes()


@pytest.mark.parametrize("kwargs", [
    {"chunk_size": 1000}, {"chunk_size": 0}, {"length": -1}, {"write_length": 5000},
    {"write_length": -1},
])
def test_transform_file_range_refuses_bad_arguments(kwargs: dict[str, int]) -> None:
    arguments = {"src_fd": 0, "src_offset": 0, "length": 4096, "dst_fd": 1, "dst_offset": 0,
                 "block": 512, "chunk_size": 1024, **kwargs}
    with pytest.raises(ValueError):
        transform_file_range(lambda view, start: None, **arguments)  # type: ignore[arg-type]


def test_transform_file_range_encrypts_like_one_call(tmp_path: Path) -> None:
    key = os.urandom(64)
    cipher = SectorCipher(CipherSpec.parse("aes-xts-plain64"), key, 512)
    source = os.urandom(3 * (256 << 10) + 1000)
    out, _ = run_range(tmp_path, source, src_offset=0, length=len(source), dst_offset=4096,
                       write_length=None, block=512, chunk_size=256 << 10, workers=2,
                       transform=lambda view, start: cipher.encrypt_into(view, start // 512, view))
    padded = source + bytes(-len(source) % 512)
    assert out == bytes(4096) + cipher.encrypt(padded, 0)


def pid_stamp(view: memoryview, start: int) -> None:
    view[:8] = os.getpid().to_bytes(8, "little")


def stamped_pids(tmp: Path, processes: bool | None) -> set[int]:
    out, _ = run_range(tmp, bytes(8 * 1024), src_offset=0, length=8 * 1024, dst_offset=0,
                       write_length=None, block=512, chunk_size=1024, workers=2,
                       transform=pid_stamp, processes=processes)
    return {int.from_bytes(out[i : i + 8], "little") for i in range(0, len(out), 1024)}


def test_workers_are_threads_of_this_process_whatever_is_asked(tmp_path: Path) -> None:
    # One engine whether or not other threads run: never a forked copy of the process.
    for processes in (True, False, None):
        assert stamped_pids(tmp_path, processes) == {os.getpid()}



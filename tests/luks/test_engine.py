"""The transfer engine: one loop for files and streams, holes in and out, plans checked once."""

from __future__ import annotations

import io
import os
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgcrypt.errors import FormatError, FormatFault
from imgcrypt.luks.engine import (
    FileSource,
    FileTarget,
    PayloadPlan,
    StreamSource,
    StreamTarget,
    iter_transfer,
    nonzero_spans,
    transfer,
)
from imgcrypt.luks.options import FormatOptions
from imgcrypt.luks.transfer import decrypt_stream, encrypt_stream
from tests.conftest import require_tool
from tests.helpers.util import raises_fault

FAST = FormatOptions(iterations=1000)
PASS = b"engine passphrase"


class Trickle(io.RawIOBase):
    """A pipe-like stream that hands out at most ``step`` bytes a read."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self._step, len(self._data) - self._pos)
        memoryview(buffer)[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def position_xor(view: memoryview, at: int) -> None:
    for i in range(0, len(view), 16):
        view[i] ^= (at + i) // 16 % 253


def expected_of(data: bytes, sector: int, chunk: int) -> bytes:
    padded = bytearray(data + bytes(-len(data) % sector))
    for start in range(0, len(padded), chunk):
        position_xor(memoryview(padded)[start : start + chunk], start)
    return bytes(padded)


def transfer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("imgcrypt-transfer")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(length=st.integers(0, 20 * 1024), step=st.integers(1, 5000),
       workers=st.integers(1, 3), to_file=st.booleans())
def test_stream_source_into_file_or_stream(tmp_path: Path, length: int, step: int,
                                           workers: int, to_file: bool) -> None:
    data = os.urandom(length)
    plan = PayloadPlan(512, 0, None, None, pad_tail=True)
    chunk = 2048
    source = StreamSource(io.BufferedReader(Trickle(data, step)))  # type: ignore[arg-type]
    if to_file:
        path = tmp_path / f"out-{length}-{step}-{workers}"
        with open(path, "wb") as f:
            result = transfer(plan, source, FileTarget(f.fileno(), 0), position_xor,
                              workers=workers, chunk_size=chunk)
        out = path.read_bytes()
    else:
        sink = io.BytesIO()
        result = transfer(plan, source, StreamTarget(sink), position_xor, workers=workers,
                          chunk_size=chunk)
        out = sink.getvalue()
    assert out == expected_of(data, 512, chunk)
    assert (result.read, result.written) == (length, len(out))
    assert transfer_threads() == []


def test_iter_transfer_closed_early_stops_its_workers() -> None:
    plan = PayloadPlan(512, 0, None, None, pad_tail=True)
    chunks = iter_transfer(plan, StreamSource(io.BytesIO(os.urandom(1 << 20))), position_xor,
                           chunk_size=4096)
    assert len(next(chunks)) == 4096
    chunks.close()  # type: ignore[attr-defined]
    assert transfer_threads() == []


def test_an_error_in_one_worker_stops_all_and_is_raised() -> None:
    def failing(view: memoryview, at: int) -> None:
        if at == 8192:
            raise FormatError("boom at 8192", reason=FormatFault.TRUNCATED)

    plan = PayloadPlan(512, 0, None, None, pad_tail=True)
    with raises_fault(FormatError, FormatFault.TRUNCATED, match="boom"):
        transfer(plan, StreamSource(io.BytesIO(bytes(1 << 20))), StreamTarget(io.BytesIO()),
                 failing, chunk_size=4096)
    assert transfer_threads() == []


def test_nonzero_spans_numpy_and_c_agree() -> None:
    import numpy as np

    rng = np.random.default_rng(7)
    for _ in range(20):
        blocks = rng.integers(0, 2, size=40)
        data = bytearray(40 * 512 - int(rng.integers(0, 511)))
        for k, on in enumerate(blocks):
            if on and k * 512 < len(data):
                data[min(len(data) - 1, k * 512 + int(rng.integers(0, 511)))] = 1
        spans = nonzero_spans(memoryview(data), 512)
        marked = bytearray(len(data))
        for start, end in spans:
            marked[start:end] = b"\1" * (end - start)
        for k in range(0, len(data), 512):
            assert (any(data[k : k + 512])) == bool(marked[k])


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_decrypt_writes_holes_for_zero_blocks_like_qemu_img(tmp_path: Path) -> None:
    # 8 MiB of which 1 MiB is data: the decrypted file holds (about) 1 MiB, as qemu-img's.
    require_tool("qemu-img")
    plain = bytearray(8 << 20)
    plain[3 << 20 : 4 << 20] = os.urandom(1 << 20)
    plain[5000:5001] = b"x"
    image = tmp_path / "disk.luks"
    with open(image, "wb") as f:
        encrypt_stream(io.BytesIO(bytes(plain)), f, PASS, FAST)
    out = tmp_path / "disk.raw"
    with open(image, "rb") as src, open(out, "wb") as dst:
        assert decrypt_stream(src, dst, PASS) == len(plain)
    assert out.read_bytes() == plain
    assert allocated(out) <= (1 << 20) + 2 * 4096
    qemu_out = tmp_path / "qemu.raw"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw", str(out), str(qemu_out)],
                   check=True)
    assert allocated(out) <= allocated(qemu_out) + 4096


def test_decrypt_into_a_file_with_old_content_writes_every_block(tmp_path: Path) -> None:
    # A hole would let the old bytes show through: sparse output only into a fresh file.
    plain = bytes(1 << 20)
    image = tmp_path / "zeros.luks"
    with open(image, "wb") as f:
        encrypt_stream(io.BytesIO(plain), f, PASS, FAST)
    out = tmp_path / "old.raw"
    out.write_bytes(b"\xff" * (2 << 20))
    with open(image, "rb") as src, open(out, "r+b") as dst:
        decrypt_stream(src, dst, PASS)
    assert out.read_bytes()[: 1 << 20] == plain


def test_decrypt_ending_in_a_hole_still_has_its_size(tmp_path: Path) -> None:
    plain = os.urandom(4096) + bytes(3 << 20)
    image = tmp_path / "tail.luks"
    with open(image, "wb") as f:
        encrypt_stream(io.BytesIO(plain), f, PASS, FAST)
    out = tmp_path / "tail.raw"
    with open(image, "rb") as src, open(out, "wb") as dst:
        decrypt_stream(src, dst, PASS)
    assert out.stat().st_size == len(plain)
    assert out.read_bytes() == plain


def read_bytes_so_far() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def test_encrypt_does_not_read_the_holes_of_a_sparse_source(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.raw"
    with open(sparse, "wb") as f:
        f.truncate(256 << 20)
        f.seek(100 << 20)
        f.write(os.urandom(1 << 20))
    dense = tmp_path / "dense.raw"
    dense.write_bytes(sparse.read_bytes())
    key = os.urandom(64)
    images = []
    for name, source in (("from-sparse", sparse), ("from-dense", dense)):
        image = tmp_path / f"{name}.luks"
        before = read_bytes_so_far()
        with open(source, "rb") as src, open(image, "wb") as dst:
            result = encrypt_stream(src, dst, PASS, FAST, master_key=key)
        read = read_bytes_so_far() - before
        assert result.payload_size == 256 << 20
        images.append((image, read))
    (sparse_image, sparse_read), (dense_image, dense_read) = images
    assert sparse_read < 8 << 20 < 256 << 20 <= dense_read
    header = 2 << 20  # both headers differ (salts); the payloads must not
    a, b = sparse_image.read_bytes(), dense_image.read_bytes()
    assert a[header:] == b[header:] and a[header:] != bytes(len(a) - header)


def test_a_source_file_that_shrinks_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "src"
    path.write_bytes(os.urandom(10000))
    with open(path, "rb") as f:
        source = FileSource(f.fileno(), 0, 20000)
        plan = PayloadPlan(512, 0, 20000, None, pad_tail=True)
        with raises_fault(FormatError, FormatFault.TRUNCATED):
            transfer(plan, source, StreamTarget(io.BytesIO()), position_xor, chunk_size=4096)


def test_closing_while_a_worker_waits_on_a_stalled_pipe_returns(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C (or a consumer that stops) while the producer of stdin stalls must not hang.
    import time

    from imgcrypt.luks import engine

    monkeypatch.setattr(engine, "STOP_GRACE", 0.3)
    read_end, write_end = os.pipe()
    os.write(write_end, bytes(4096))
    plan = PayloadPlan(512, 0, None, None, pad_tail=True)
    with open(read_end, "rb", buffering=0) as stream:
        chunks = iter_transfer(plan, StreamSource(stream), position_xor,  # type: ignore[arg-type]
                               chunk_size=4096)
        assert len(next(chunks)) == 4096
        began = time.monotonic()
        chunks.close()  # type: ignore[attr-defined]
        assert time.monotonic() - began < 2
        os.close(write_end)  # the blocked worker's read returns; it writes nothing
        deadline = time.monotonic() + 5
        while transfer_threads() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert transfer_threads() == []

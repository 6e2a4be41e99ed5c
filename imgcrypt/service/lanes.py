"""Several digests of one stream, each on a thread of its own.

hashlib releases the GIL while it hashes a buffer of more than 2047 bytes, so the sha512 and
the md5 of an upload can use both cores while the caller reads and stores the next chunk.
Chunks are handed over by reference, never copied: an immutable chunk (``bytes``, or a view of
``bytes``) is queued and the caller goes on; a large mutable one the caller may overwrite as
soon as :meth:`ParallelDigests.update` returns, so ``update`` returns only once every digest
has taken it in (still in parallel). Small chunks are gathered into batches first, so a
stream of 64 KiB chunks costs one hand-over per 256 KiB, not one per chunk.

A stream shorter than one batch never starts a thread: :meth:`ParallelDigests.close` hashes
it on the caller's thread.
"""

from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Callable, Sequence

Chunk = bytes | bytearray | memoryview
Update = Callable[[Chunk], object]

#: Bytes gathered before a hand-over to the digests' threads.
BATCH_BYTES = 256 << 10
#: A mutable chunk up to this size is copied (cheaper than waiting for the threads).
SMALL_COPY = 64 << 10
#: Batches queued per digest before the caller waits: bounds the memory held (the chunks are
#: the caller's own; at most this many batches of them are kept alive a little longer).
DEPTH = 2


def _immutable(chunk: Chunk) -> bool:
    return isinstance(chunk, bytes) or (isinstance(chunk, memoryview)
                                        and isinstance(chunk.obj, bytes))


class _Lane:
    """One digest's thread: takes batches of chunks in order. It holds no reference to the
    :class:`ParallelDigests` that feeds it, so an abandoned one is collected and stops it."""

    def __init__(self, update: Update) -> None:
        self._update = update
        self._queue: queue.Queue[list[Chunk] | None] = queue.Queue(DEPTH)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="imgcrypt-digest", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is None:
                    return
                if self.error is None:
                    for chunk in batch:
                        self._update(chunk)
            except BaseException as exc:  # re-raised on the caller's thread by wait()
                self.error = exc
            finally:
                self._queue.task_done()

    def put(self, batch: list[Chunk] | None) -> None:
        self._queue.put(batch)

    def wait(self) -> None:
        self._queue.join()

    def join(self) -> None:
        self._thread.join()


def _stop(lanes: tuple[_Lane, ...]) -> None:
    for lane in lanes:
        lane.put(None)


class ParallelDigests:
    """Feeds each chunk to every ``update`` callable (hashlib's ``update``, a verifier's),
    each on its own thread, in the order the chunks came."""

    def __init__(self, updates: Sequence[Update]) -> None:
        self._updates = tuple(updates)
        self._pending: list[Chunk] = []
        self._pending_bytes = 0
        self._lanes: tuple[_Lane, ...] = ()
        self._stopper: weakref.finalize | None = None  # type: ignore[type-arg]

    def update(self, chunk: Chunk) -> None:
        if not _immutable(chunk):
            if len(chunk) > SMALL_COPY:
                self._pending.append(chunk)
                self._hand_over()
                self._wait()  # the caller may reuse the buffer once this returns
                return
            chunk = bytes(chunk)
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        if self._pending_bytes >= BATCH_BYTES:
            self._hand_over()

    def _hand_over(self) -> None:
        if not self._lanes:
            self._lanes = tuple(_Lane(update) for update in self._updates)
            self._stopper = weakref.finalize(self, _stop, self._lanes)
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        for lane in self._lanes:
            lane.put(batch)

    def _wait(self) -> None:
        for lane in self._lanes:
            lane.wait()
        for lane in self._lanes:
            if lane.error is not None:
                raise lane.error

    def close(self) -> None:
        """Every chunk given so far is in every digest; the threads end. Raises what an
        ``update`` raised. More chunks may follow (they start new threads)."""
        try:
            if self._lanes:
                self._hand_over()
                self._wait()
            else:
                for chunk in self._pending:
                    for update in self._updates:
                        update(chunk)
                self._pending, self._pending_bytes = [], 0
        finally:
            if self._stopper is not None:
                self._stopper()
            for lane in self._lanes:
                lane.join()
            self._lanes, self._stopper = (), None


__all__ = ["BATCH_BYTES", "DEPTH", "SMALL_COPY", "ParallelDigests"]

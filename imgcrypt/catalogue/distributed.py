"""Catalogue runs across hosts: taskflow's Redis jobboard and conductors, flow state in SQL.

The poster (``imgcrypt catalogue JOB --jobboard ... --persistence ...``) lists the images,
stores the run as :mod:`imgcrypt.catalogue.engine` does, and posts one job an image: a logbook
whose flow detail names :func:`image_job_flow` as its factory, with the job, the image, the
options and the part of the snapshot that image needs. Conductors (``imgcrypt catalogue
conductor``) on any host claim jobs, rebuild the flow from the stored factory, run it and
consume the job; the image's record is the task's stored result, which the poster collects.

A claim expires unless its conductor keeps extending it while the job runs (as Octavia's
conductors do): a conductor killed mid-job stops extending, its claim lapses, and another
conductor takes the job over from the stored flow state. The jobs are idempotent, so the one
that ran part-way before the kill has no visible effect twice.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from imgcrypt.catalogue.cloud import Cloud
from imgcrypt.catalogue.engine import (
    META,
    JobContext,
    RunInfo,
    stored_records,
    task_class,
    taskflow,
)
from imgcrypt.catalogue.jobs import JobOptions, Snapshot
from imgcrypt.errors import ToolError, UsageError

# How long a claim lives without its conductor extending it; a dead conductor's jobs wait
# this long before another conductor takes them.
CLAIM_EXPIRY = 30.0
POLL_SECONDS = 0.5
_JOB_BOOKS = uuid.UUID("5b0e7f0c-2f55-4b8e-9a43-6a1d3c0f9e21")

# The cloud of this conductor process, made on first use by the factory Conductor set.
_cloud_lock = threading.Lock()
_cloud_factory: Callable[[], Cloud] | None = None
_cloud: Cloud | None = None


def _conductor_cloud() -> Cloud:
    global _cloud
    with _cloud_lock:
        if _cloud is None:
            if _cloud_factory is None:
                raise UsageError("catalogue jobs run only inside imgcrypt catalogue conductor")
            _cloud = _cloud_factory()
        return _cloud


def image_job_flow(job: str, image_id: str, options: dict[str, Any],
                   snapshot: dict[str, Any]) -> Any:
    """The flow of one posted job (taskflow calls this in the conductor, by its name)."""
    tf = taskflow()
    context = JobContext(_conductor_cloud(), JobOptions.from_dict(options),
                         Snapshot.from_dict(snapshot))
    flow = tf.patterns.linear_flow.Flow(f"imgcrypt-{job}-{image_id}")
    flow.add(task_class()(job, image_id, lambda: context))
    return flow


def job_book_id(run_id: str, image_id: str) -> str:
    """The logbook of one image's job: derived, so the poster finds it without a listing."""
    return str(uuid.uuid5(_JOB_BOOKS, f"{run_id}/{image_id}"))


def parse_board_url(url: str) -> dict[str, Any]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "redis" or not parsed.hostname:
        raise UsageError("--jobboard must be redis://HOST:PORT[/NAMESPACE]")
    conf: dict[str, Any] = {"board": "redis", "host": parsed.hostname,
                            "port": parsed.port or 6379,
                            "namespace": parsed.path.strip("/") or "imgcrypt-catalogue"}
    if parsed.password:
        conf["password"] = urllib.parse.unquote(parsed.password)
    return conf


def _board_class() -> type:
    taskflow()
    from taskflow.jobs.backends import impl_redis

    class ExpiringRedisJobBoard(impl_redis.RedisJobBoard):  # type: ignore[misc]
        """Redis jobboard whose claims expire unless extended (taskflow's own claims are
        permanent unless given an expiry)."""

        claim_expiry = CLAIM_EXPIRY

        def claim(self, job: Any, who: str, expiry: float | None = None) -> Any:
            return super().claim(job, who, expiry=expiry or self.claim_expiry)

    return ExpiringRedisJobBoard


def open_board(url: str, backend: Any, *, name: str, claim_expiry: float = CLAIM_EXPIRY) -> Any:
    board = _board_class()(name, parse_board_url(url), persistence=backend)
    board.claim_expiry = claim_expiry
    try:
        board.connect()
    except Exception as exc:
        raise ToolError(f"cannot reach the jobboard at {url}: {exc}") from None
    return board


def on_board(board: Any, run_id: str) -> set[str]:
    """The images whose job of run ``run_id`` is still on the board (posted or claimed)."""
    return {str(job.details.get("image")) for job in board.iterjobs(ensure_fresh=True)
            if job.details and job.details.get("run") == run_id}


def post(board: Any, backend: Any, info: RunInfo, image_ids: Iterable[str]) -> int:
    """Post the jobs of ``image_ids`` (their logbooks saved first); how many were posted."""
    tf = taskflow()
    posted = 0
    for image_id in image_ids:
        keys = {k: users for k, users in info.snapshot.keys.items() if image_id in users}
        book = tf.persistence.models.LogBook(f"imgcrypt-{info.job}-{image_id}",
                                             uuid=job_book_id(info.run_id, image_id))
        book.meta = {META: {"run": info.run_id, "image": image_id}}
        detail = tf.persistence.models.FlowDetail(f"imgcrypt-{info.job}-{image_id}",
                                                  str(uuid.uuid4()))
        book.add(detail)
        tf.engines.save_factory_details(
            detail, image_job_flow, [info.job, image_id, info.options.as_dict(),
                                     {"keys": keys}], {})
        with contextlib.closing(backend.get_connection()) as conn:
            conn.save_logbook(book)
        board.post(f"imgcrypt-{info.job}-{image_id}", book=book,
                   details={"run": info.run_id, "image": image_id})
        posted += 1
    return posted


def collect(backend: Any, info: RunInfo, have: dict[str, dict[str, Any]]) -> None:
    """Add to ``have`` the records conductors have stored."""
    from taskflow import exceptions as tf_exc

    with contextlib.closing(backend.get_connection()) as conn:
        for image_id in info.image_ids:
            if image_id in have:
                continue
            try:
                book = conn.get_logbook(job_book_id(info.run_id, image_id))
            except tf_exc.NotFound:
                continue
            for detail in book:
                have.update(stored_records(detail))


def repost_missing(board: Any, backend: Any, info: RunInfo) -> dict[str, dict[str, Any]]:
    """The records stored so far; the jobs of the images that have neither a record nor a job
    on the board are posted again (the poster stopped while posting, or the board lost them)."""
    have: dict[str, dict[str, Any]] = {}
    collect(backend, info, have)
    waiting = on_board(board, info.run_id)
    post(board, backend, info, [i for i in info.image_ids if i not in have and i not in waiting])
    return have


def wait_for_run(board: Any, backend: Any, info: RunInfo, *,
                 have: dict[str, dict[str, Any]] | None = None, timeout: float | None = None,
                 progress: Callable[[], None] = lambda: None) -> dict[str, dict[str, Any]]:
    """Wait until no job of the run is left on the board (or ``timeout`` passes, or Ctrl-C),
    then collect the records. Watching the board costs one Redis listing a poll, whatever the
    number of images; the records are read from the database once, at the end. ``have``: the
    records already stored when the wait starts (:func:`repost_missing`); ``progress`` is
    called once for each image done after that."""
    have = dict(have or {})
    deadline = None if timeout is None else time.monotonic() + timeout
    ticked = len(have)
    try:
        while True:
            left = len(on_board(board, info.run_id))
            for _ in range(max(0, len(info.image_ids) - left - ticked)):
                progress()
                ticked += 1
            if not left or (deadline is not None and time.monotonic() > deadline):
                break
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        pass  # the jobs stay posted; --resume waits for them again
    collect(backend, info, have)
    return have


class Conductor:
    """A taskflow conductor running posted catalogue jobs until :meth:`stop`."""

    def __init__(self, name: str, board_url: str, persistence_url: str,
                 cloud_factory: Callable[[], Cloud], *, workers: int = 4,
                 claim_expiry: float = CLAIM_EXPIRY) -> None:
        global _cloud_factory
        from imgcrypt.catalogue.engine import open_backend

        taskflow()
        from taskflow.conductors.backends import impl_nonblocking

        _cloud_factory = cloud_factory
        self.name = name
        self._backend = open_backend(persistence_url)
        self._board = open_board(board_url, self._backend, name=name, claim_expiry=claim_expiry)
        expiry = claim_expiry

        class Extending(impl_nonblocking.NonBlockingConductor):  # type: ignore[misc]
            """Keeps each claimed job's claim alive while its engine runs."""

            def _dispatch_job(self, job: Any) -> Any:
                done = threading.Event()

                def heartbeat() -> None:
                    while not done.wait(expiry / 3):
                        with contextlib.suppress(Exception):
                            job.extend_expiry(expiry)

                beat = threading.Thread(target=heartbeat, daemon=True)
                beat.start()
                try:
                    return super()._dispatch_job(job)
                finally:
                    done.set()

        self._conductor = Extending(name, self._board, persistence=self._backend,
                                    engine="serial", max_simultaneous_jobs=workers)

    def run(self) -> None:
        try:
            self._conductor.run()
        finally:
            self._board.close()

    def stop(self) -> None:
        self._conductor.stop()


__all__ = ["CLAIM_EXPIRY", "Conductor", "collect", "image_job_flow", "job_book_id", "on_board",
           "open_board", "parse_board_url", "post", "repost_missing",
           "wait_for_run"]

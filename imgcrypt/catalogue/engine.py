"""Catalogue runs on taskflow: one task an image, state in taskflow's persistence.

A run is a taskflow logbook holding one flow detail: its ``meta`` records the job, the options,
the image ids and the :class:`~imgcrypt.catalogue.jobs.Snapshot` taken at the start, and each
image's task stores its record as its result. The default engine is taskflow's parallel engine
in this process with a bounded thread pool and an SQLite file for the persistence, so an
interrupted run (Ctrl-C suspends it: running tasks finish, no new one starts) continues where
it stopped: :func:`find_run` and :meth:`LocalRun.run` again, and only the images without a
stored result are done. :mod:`imgcrypt.catalogue.distributed` posts the same tasks to a
jobboard instead.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from imgcrypt.catalogue.cloud import Cloud
from imgcrypt.catalogue.jobs import JOBS, JobOptions, Snapshot, run_job
from imgcrypt.errors import UsageError

META = "imgcrypt"
ContextFactory = Callable[[], "JobContext"]


@dataclass(frozen=True)
class JobContext:
    """What a task needs besides its image: the cloud, the run's options and snapshot."""

    cloud: Cloud
    options: JobOptions
    snapshot: Snapshot


def taskflow() -> Any:
    """taskflow, imported quietly: it pulls in eventlet and dnspython, whose import-time
    deprecation warnings are not imgcrypt's to print on every command."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import taskflow.engines
            import taskflow.patterns.linear_flow
            import taskflow.patterns.unordered_flow
            import taskflow.persistence.backends
            import taskflow.persistence.models
            import taskflow.task
    except ImportError:
        raise UsageError("imgcrypt catalogue needs taskflow (pip install 'imgcrypt[catalogue]')"
                         ) from None
    return taskflow


def task_class() -> type:
    tf = taskflow()

    class ImageTask(tf.task.Task):  # type: ignore[misc, name-defined]
        """One job on one image; the record is the task's stored result."""

        def __init__(self, job: str, image_id: str, context: ContextFactory) -> None:
            super().__init__(name=image_id)
            self._job, self._image_id, self._context = job, image_id, context

        def execute(self) -> dict[str, Any]:
            ctx = self._context()
            return run_job(self._job, ctx.cloud, self._image_id, ctx.options, ctx.snapshot)

    return ImageTask


def image_flow(job: str, image_ids: list[str], context: ContextFactory) -> Any:
    tf = taskflow()
    cls = task_class()
    flow = tf.patterns.unordered_flow.Flow(f"imgcrypt-{job}")
    flow.add(*(cls(job, image_id, context) for image_id in image_ids))
    return flow


def open_backend(url: str) -> Any:
    """taskflow's persistence at ``url`` (``sqlite:////path``, ``mysql+pymysql://...``, any
    SQLAlchemy URL), its tables created or upgraded."""
    tf = taskflow()
    backend = tf.persistence.backends.fetch({"connection": url})
    with contextlib.closing(backend.get_connection()) as conn:
        conn.upgrade()
    return backend


@dataclass(frozen=True)
class RunInfo:
    """A run as stored: its id (the logbook's), job, options, images and snapshot."""

    run_id: str
    job: str
    options: JobOptions
    image_ids: tuple[str, ...]
    snapshot: Snapshot
    filters: dict[str, str]

    def meta(self) -> dict[str, Any]:
        return {"job": self.job, "options": self.options.as_dict(),
                "images": list(self.image_ids), "snapshot": self.snapshot.as_dict(),
                "filters": self.filters}

    @classmethod
    def from_meta(cls, run_id: str, meta: dict[str, Any]) -> RunInfo:
        return cls(run_id, str(meta["job"]), JobOptions.from_dict(meta["options"]),
                   tuple(str(i) for i in meta["images"]), Snapshot.from_dict(meta["snapshot"]),
                   {str(k): str(v) for k, v in meta.get("filters", {}).items()})


def create_run(backend: Any, job: str, image_ids: list[str], options: JobOptions,
               snapshot: Snapshot, filters: dict[str, str]) -> tuple[RunInfo, Any, Any]:
    if job not in JOBS:
        raise UsageError(f"unknown catalogue job {job!r}")
    tf = taskflow()
    run_id = str(uuid.uuid4())
    info = RunInfo(run_id, job, options, tuple(image_ids), snapshot, filters)
    book = tf.persistence.models.LogBook(f"imgcrypt-catalogue-{job}", uuid=run_id)
    book.meta = {META: {"job": job}}
    detail = tf.persistence.models.FlowDetail(f"imgcrypt-{job}", str(uuid.uuid4()))
    detail.meta = {META: info.meta()}
    book.add(detail)
    with contextlib.closing(backend.get_connection()) as conn:
        conn.save_logbook(book)
    return info, book, detail


def find_run(backend: Any, job: str, run_id: str | None = None
             ) -> tuple[RunInfo, Any, Any] | None:
    """The run ``run_id``, or the latest unfinished run of ``job``; None when there is none."""
    with contextlib.closing(backend.get_connection()) as conn:
        books = list(conn.get_logbooks())
    candidates = []
    for book in books:
        for detail in book:
            meta = (detail.meta or {}).get(META)
            if not meta or meta.get("job") != job:
                continue
            if run_id is not None and book.uuid != run_id:
                continue
            if run_id is None and detail.state == "SUCCESS":
                continue
            candidates.append((book.created_at, book, detail, meta))
    if not candidates:
        return None
    _, book, detail, meta = max(candidates, key=lambda c: c[0])
    return RunInfo.from_meta(book.uuid, meta), book, detail


def stored_records(detail: Any) -> dict[str, dict[str, Any]]:
    """The records the run's tasks have stored so far: image id -> record."""
    found: dict[str, dict[str, Any]] = {}
    for atom in detail:
        if atom.state == "SUCCESS" and isinstance(atom.results, dict):
            found[atom.name] = atom.results
    return found


class LocalRun:
    """A run on taskflow's parallel engine in this process."""

    def __init__(self, backend: Any, info: RunInfo, book: Any, detail: Any,
                 context: JobContext, *, workers: int = 8) -> None:
        tf = taskflow()
        self.info = info
        self._detail = detail
        flow = image_flow(info.job, list(info.image_ids), lambda: context)
        self._engine = tf.engines.load(flow, flow_detail=detail, book=book, backend=backend,
                                       engine="parallel", executor="threaded",
                                       max_workers=max(1, workers))
        self._lock = threading.Lock()

    def suspend(self) -> None:
        """Start no new image; those running finish and are stored (safe from a signal
        handler: it only asks the engine to change state)."""
        self._engine.suspend()

    def on_done(self, callback: Callable[[str], None]) -> None:
        """``callback(image_id)`` whenever an image's record is stored."""
        taskflow()
        from taskflow import states

        def seen(state: str, details: dict[str, Any]) -> None:
            callback(str(details.get("task_name")))

        self._engine.atom_notifier.register(states.SUCCESS, seen)

    def done(self) -> int:
        return len(stored_records(self._detail))

    def run(self) -> tuple[bool, dict[str, dict[str, Any]]]:
        """Run to the end or to a suspension: (finished, the records stored so far)."""
        from taskflow import states

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self._engine.run()
        finished = self._engine.storage.get_flow_state() == states.SUCCESS
        return finished, stored_records(self._detail)


@contextlib.contextmanager
def suspended_on(signum: int, run: LocalRun) -> Iterator[list[bool]]:
    """While the block runs, signal ``signum`` (SIGINT) suspends ``run`` instead of raising;
    the yielded list gets True when that happened."""
    import signal

    hit: list[bool] = []

    def handler(_signum: int, _frame: Any) -> None:
        hit.append(True)
        run.suspend()

    previous = signal.signal(signum, handler)
    try:
        yield hit
    finally:
        signal.signal(signum, previous)




def prepare_run(backend: Any, cloud: Cloud, job: str, filters: dict[str, str],
                options: JobOptions) -> tuple[RunInfo, Any, Any]:
    """List the images ``filters`` select, snapshot who names which key (over the whole
    catalogue the credentials see, so a key shared with an image outside the filter still
    counts as shared) and store the new run."""
    images = cloud.list_images(filters)
    everything = cloud.list_images({}) if filters else images
    return create_run(backend, job, [image.image_id for image in images],
                      options, Snapshot.of(everything), filters)


__all__ = ["JobContext", "LocalRun", "RunInfo", "create_run", "find_run", "image_flow",
           "open_backend", "prepare_run", "stored_records", "suspended_on", "taskflow"]

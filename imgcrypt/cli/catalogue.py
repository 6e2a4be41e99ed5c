"""``imgcrypt catalogue``: audit, back-fill consumers, migrate properties, verify: every image.

Each job runs one task an image on taskflow's parallel engine in this process, its state in a
local SQLite file, so Ctrl-C (or a crash) leaves a run that ``--resume`` continues; with
``--jobboard`` the tasks are posted to a Redis jobboard for ``imgcrypt catalogue conductor``
processes on any number of hosts, their state in any SQL database (``--persistence``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from imgcrypt.cli import common, inputs
from imgcrypt.errors import INTERRUPTED_EXIT, UsageError

EXAMPLE = """examples:
  imgcrypt catalogue audit --json > audit.jsonl
  imgcrypt catalogue backfill-consumers --dry-run
  imgcrypt catalogue backfill-consumers
  imgcrypt catalogue migrate-properties --direction to-os-encrypt
  imgcrypt catalogue verify --trust ca.pem --filter owner=PROJECT_ID
  imgcrypt catalogue audit --resume          # continue an interrupted audit

Credentials: --os-cloud NAME (clouds.yaml), or OS_CLOUD / the OS_* variables, as the
openstack client reads them. Output: a summary grouped by finding, or with --json one JSON
line an image and a last line {"summary": ...}. Exit codes: 0 nothing needs attention, 4
some image needs attention, 130 interrupted (resume with --resume)."""

JOB_HELP = {
    "audit": "what every image claims, what its header is, whether its key exists, opens "
             "it and lists it as a consumer, and who shares the key",
    "backfill-consumers": "register each encrypted image as a Barbican consumer of its key, "
                          "once the key is shown to open the image's header",
    "migrate-properties": "add os_encrypt_* from cinder_encryption_* (or the reverse), never "
                          "overwriting a value that disagrees",
    "verify": "stream each signed image once and check its stored hashes, its signatures "
              "and, with --trust, the certificate chain",
}


def default_state() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return Path(base) / "imgcrypt" / "catalogue.sqlite"


def register(sub: Any) -> None:
    parser = common.command_parser(
        sub, "catalogue", summary="catalogue-wide jobs on every image of the cloud",
        description="Audit, back-fill key consumers, migrate encryption properties or verify "
                    "signatures across the image catalogue, on taskflow.",
        example=EXAMPLE)
    jobs = parser.add_subparsers(dest="job", metavar="JOB", parser_class=type(parser))
    jobs.required = True
    for job, help_text in JOB_HELP.items():
        p = jobs.add_parser(job, help=help_text, description=help_text.capitalize() + ".",
                            epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
        _job_arguments(p, job)
        common.finish_command(p, run)
    conductor = jobs.add_parser(
        "conductor", help="claim and run posted catalogue jobs (distributed mode)",
        description="Claim jobs from the Redis jobboard and run them until stopped (SIGTERM "
                    "or Ctrl-C); a conductor that dies loses nothing: its claims expire and "
                    "another conductor finishes its jobs.")
    _distributed_arguments(conductor, required=True)
    conductor.add_argument("--name", default=None, help="this conductor's name (default: "
                                                        "host and process id)")
    conductor.add_argument("--workers", type=_positive, default=4, metavar="N",
                           help="jobs run at once (default 4)")
    conductor.add_argument("--claim-expiry", type=float, default=30.0, metavar="SECONDS",
                           help="how long a claim outlives a conductor that stopped renewing "
                                "it (it dies): then another conductor takes the job "
                                "(default 30)")
    conductor.add_argument("--os-cloud", metavar="NAME", default=None)
    _gate_arguments(conductor)
    common.finish_command(conductor, run_conductor)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _gate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-requests", type=_positive, default=8, metavar="N",
                   help="requests in flight at once to each service (Glance, Barbican); "
                        "default 8")
    p.add_argument("--retries", type=int, default=5, metavar="N",
                   help="retries of a request that failed with 429, 5xx or a connection "
                        "error, with exponential backoff (default 5)")


def _distributed_arguments(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--jobboard", metavar="URL", required=required, type=_url,
                   help="redis://[:PASSWORD@]HOST:PORT[/NAMESPACE]: post (or claim) the jobs "
                        "there; @FILE reads the URL from FILE (keeps a password off the "
                        "command line)")
    p.add_argument("--persistence", metavar="URL", required=required, type=_url,
                   help="SQLAlchemy URL of the flow state shared by conductors "
                        "(mysql+pymysql://USER:PASSWORD@HOST/DB, postgresql://...); @FILE "
                        "reads it from FILE")


def _url(value: str) -> str:
    if not value.startswith("@"):
        return value
    try:
        return inputs.read_small_file(value[1:], 4096, name=f"URL file {value[1:]}"
                                      ).decode("utf-8").strip()
    except (UsageError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _job_arguments(p: argparse.ArgumentParser, job: str) -> None:
    p.add_argument("--os-cloud", metavar="NAME", default=None,
                   help="clouds.yaml entry (default: OS_CLOUD / the OS_* variables)")
    p.add_argument("--filter", metavar="NAME=VALUE", action="append", default=[],
                   help="only images Glance lists for this filter (owner=, status=, "
                        "visibility= or a property); repeatable")
    if job in ("backfill-consumers", "migrate-properties"):
        p.add_argument("--dry-run", action="store_true",
                       help="report what would change, change nothing")
    if job == "migrate-properties":
        p.add_argument("--direction", choices=("to-os-encrypt", "to-cinder"),
                       default="to-os-encrypt",
                       help="add os_encrypt_* from cinder_encryption_* (default), or the "
                            "reverse for clouds not yet upgraded")
    if job == "verify":
        p.add_argument("--trust", metavar="FILE", action="append", default=[],
                       help="trusted certificates (PEM); signing certificates must chain to "
                            "one (repeatable)")
    p.add_argument("--workers", type=_positive, default=8, metavar="N",
                   help="images worked on at once (default 8)")
    _gate_arguments(p)
    p.add_argument("--state", metavar="FILE", default=None,
                   help=f"SQLite file of the run's state (default {default_state()})")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="RUN",
                   help="continue the latest unfinished run of this job (or run RUN)")
    p.add_argument("--report", metavar="FILE", default=None,
                   help="also write the JSON lines to FILE")
    _distributed_arguments(p, required=False)
    p.add_argument("--wait", type=float, default=None, metavar="SECONDS",
                   help="with --jobboard: how long to wait for conductors (default: forever)")
    common.add_progress_argument(p)


def _filters(pairs: list[str]) -> dict[str, str]:
    return inputs.property_assignments(pairs)


def _options(args: argparse.Namespace) -> Any:
    from imgcrypt.catalogue.jobs import JobOptions
    from imgcrypt.signing.propfile import MAX_DOCUMENT_BYTES

    trust = tuple(inputs.read_small_file(path, MAX_DOCUMENT_BYTES * 16, name=f"--trust {path}"
                                         ).decode("ascii", "replace")
                  for path in getattr(args, "trust", []))
    return JobOptions(dry_run=getattr(args, "dry_run", False),
                      direction=getattr(args, "direction", "to-os-encrypt"), trust_pem=trust)


def _cloud(args: argparse.Namespace) -> Any:
    from imgcrypt.catalogue import cloud

    policy = cloud.GatePolicy(limit=args.max_requests, retries=max(0, args.retries))
    return cloud.connect(args.os_cloud, glance=policy, barbican=policy)


def _state_url(args: argparse.Namespace) -> str:
    path = Path(args.state) if args.state else default_state()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return f"sqlite:///{path.resolve()}"


def run(args: argparse.Namespace) -> int:
    if args.jobboard or args.persistence:
        return _run_distributed(args)
    from imgcrypt.catalogue import engine

    backend = engine.open_backend(_state_url(args))
    cloud = _cloud(args)
    if args.resume:
        found = engine.find_run(backend, args.job,
                                None if args.resume == "latest" else args.resume)
        if found is None:
            raise UsageError(f"no unfinished {args.job} run to resume in the state file")
        info, book, detail = found
    else:
        info, book, detail = engine.prepare_run(backend, cloud, args.job,
                                                _filters(args.filter), _options(args))
    context = engine.JobContext(cloud, info.options, info.snapshot)
    local = engine.LocalRun(backend, info, book, detail, context, workers=args.workers)
    with _image_bar(args, len(info.image_ids), local.done()) as tick:
        local.on_done(lambda _image: tick())
        with engine.suspended_on(signal.SIGINT, local) as interrupted:
            finished, records = local.run()
    # Suspended after the last image was stored is finished all the same.
    return _finish(args, info.job, info.run_id, info.image_ids, records,
                   interrupted=(bool(interrupted) or not finished)
                   and len(records) < len(info.image_ids))


def _run_distributed(args: argparse.Namespace) -> int:
    if not (args.jobboard and args.persistence):
        raise UsageError("the distributed mode needs both --jobboard and --persistence")
    from imgcrypt.catalogue import distributed, engine

    cloud = _cloud(args)
    backend = engine.open_backend(args.persistence)
    board = distributed.open_board(args.jobboard, backend, name="imgcrypt-poster")
    try:
        if args.resume:
            found = engine.find_run(backend, args.job,
                                    None if args.resume == "latest" else args.resume)
            if found is None:
                raise UsageError(f"no unfinished {args.job} run to resume")
            info = found[0]
            have = distributed.repost_missing(board, backend, info)
        else:
            info, _, _ = engine.prepare_run(backend, cloud, args.job, _filters(args.filter),
                                            _options(args))
            have = {}
            try:
                distributed.post(board, backend, info, info.image_ids)
            except KeyboardInterrupt:
                # Stored, partly posted: --resume posts the rest.
                return _finish(args, info.job, info.run_id, info.image_ids, have,
                               interrupted=True)
        with _image_bar(args, len(info.image_ids), len(have)) as tick:
            records = distributed.wait_for_run(board, backend, info, have=have,
                                               timeout=args.wait, progress=tick)
    finally:
        board.close()
    return _finish(args, info.job, info.run_id, info.image_ids, records,
                   interrupted=len(records) < len(info.image_ids))


def _finish(args: argparse.Namespace, job: str, run_id: str, image_ids: tuple[str, ...],
            records: dict[str, dict[str, Any]], *, interrupted: bool) -> int:
    from imgcrypt.catalogue.findings import summarize

    ordered = [records[i] for i in image_ids if i in records]
    summary = summarize(job, ordered)
    if args.report:
        _write_report(Path(args.report), ordered, summary.as_dict())
    if args.json:
        out: TextIO = sys.stdout
        for rec in ordered:
            out.write(json.dumps(rec, sort_keys=True) + "\n")
        out.write(json.dumps({**summary.as_dict(), "run": run_id,
                              "complete": not interrupted}, sort_keys=True) + "\n")
        out.flush()
    else:
        sys.stdout.write(summary.human() + f"\nrun {run_id}\n")
        sys.stdout.flush()
    if interrupted:
        sys.stderr.write(f"imgcrypt: interrupted: {len(ordered)} of {len(image_ids)} image(s) "
                         f"done; continue with: imgcrypt catalogue {job} --resume {run_id}\n")
        return INTERRUPTED_EXIT
    return summary.exit_code


def _write_report(path: Path, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    from imgcrypt.fileio import atomic_file

    # The one atomic write (fsync, rename, no temporary file left behind on any failure); a
    # report from an earlier run is replaced.
    with atomic_file(path, force=True) as out, os.fdopen(os.dup(out.fd), "w") as f:
        for rec in records:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
        f.write(json.dumps(summary, sort_keys=True) + "\n")
        f.flush()


@contextlib.contextmanager
def _image_bar(args: argparse.Namespace, total: int, done: int) -> Iterator[Any]:
    """Images done, rate and time remaining on stderr when it is a terminal."""
    if args.no_progress or args.json or not sys.stderr.isatty():
        yield lambda: None
        return
    import tqdm as tqdm_module
    from tqdm import tqdm

    tqdm_module.tqdm.monitor_interval = 0
    with tqdm(total=total, initial=done, unit="img", desc=args.job, file=sys.stderr,
              leave=False, mininterval=0.2) as bar:
        yield lambda: bar.update(1)


def run_conductor(args: argparse.Namespace) -> int:
    from imgcrypt.catalogue import distributed

    name = args.name or f"{os.uname().nodename}-{os.getpid()}"
    conductor = distributed.Conductor(name, args.jobboard, args.persistence,
                                      lambda: _cloud(args), workers=args.workers,
                                      claim_expiry=args.claim_expiry)

    def stop(_signum: int, _frame: Any) -> None:
        conductor.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    conductor.run()
    return 0

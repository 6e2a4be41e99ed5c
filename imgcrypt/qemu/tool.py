"""Running qemu-img: the program, its retries and limits, and the secret files it reads.

:class:`QemuImg` is a small immutable description of the tools (which ``qemu-img`` and
``qemu-nbd``, where secret files go, how often to retry); every function of :mod:`imgcrypt.qemu`
that runs one takes it as ``qemu_img=`` and defaults to :data:`DEFAULT_QEMU_IMG`. A caller or a
test wanting another program or secret directory passes its own instance.

Passphrases reach qemu-img only through a 0600 file in a private 0700 directory
(``--object secret,id=s0,file=PATH``), removed afterwards; never ``data=`` on its command line,
where every local user could read it in ``/proc/PID/cmdline``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from imgcrypt.errors import ToolError, UsageError, WrongPassphraseError
from imgcrypt.fileio import handle_fds, handle_names

MAX_STDERR_QUOTE = 400
SPURIOUS_FAILURE = "Unable to get accurate CPU usage"
# qemu-img fails its own PBKDF2 benchmark this way in up to 40 % of runs on a loaded machine
# (measured here); each failure costs milliseconds, so retry generously.
ATTEMPTS = 20
WRONG_PASSPHRASE = re.compile(r"Invalid password|cannot unlock any keyslot")


@dataclass(frozen=True)
class ResourceLimits:
    """Kernel limits for one qemu-img run (what OpenStack applies to ``qemu-img info``)."""

    address_space: int
    cpu_seconds: int


# Parsing a hostile header must not cost the host unbounded memory or CPU (CVE-2015-5162).
INFO_LIMITS = ResourceLimits(address_space=1 << 30, cpu_seconds=30)

# Runs between fork and exec in a fresh interpreter, so it is safe in threaded callers, unlike
# subprocess's preexec_fn.
_LIMIT_LAUNCHER = """\
import os, resource, sys
limits = ((resource.RLIMIT_AS, int(sys.argv[1])), (resource.RLIMIT_CPU, int(sys.argv[2])))
for which, value in limits:
    hard = resource.getrlimit(which)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (value, value))
os.execv(sys.argv[3], sys.argv[3:])
"""


def stderr_line(stderr: bytes | str) -> str:
    """The one line of qemu-img's stderr worth quoting: its own ``qemu-img: ...`` error."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    errors = [line for line in lines
              if line.startswith("qemu-img:") and not line.startswith("qemu-img: warning:")]
    line = errors[0] if errors else lines[-1]
    line = "".join(ch if ch.isprintable() else "?" for ch in line)
    return line if len(line) <= MAX_STDERR_QUOTE else line[:MAX_STDERR_QUOTE] + "..."


def _spec_filename(spec: str) -> str:
    try:
        name = json.loads(spec[len("json:"):])["file"]["filename"]
    except (ValueError, KeyError, TypeError):
        return spec
    return name if isinstance(name, str) else spec


def _default_secret_dir() -> str | None:
    # tmpfs keeps the passphrase off persistent storage where the machine has one.
    shm = "/dev/shm"  # noqa: S108 - mkdtemp below makes a private 0700 directory in it
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


@contextlib.contextmanager
def secret_file(passphrase: bytes, *, directory: str | None = None) -> Iterator[str]:
    """A 0600 file holding ``passphrase`` in a fresh 0700 directory (made in ``directory``,
    else /dev/shm where usable, else the temp dir); both removed afterwards."""
    if not passphrase:
        raise UsageError("empty passphrase")
    private = tempfile.mkdtemp(prefix="imgcrypt-secret-",
                               dir=directory if directory is not None else _default_secret_dir())
    try:
        os.chmod(private, 0o700)
        path = os.path.join(private, "s0")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(passphrase)
        yield path
    finally:
        shutil.rmtree(private, ignore_errors=True)


def secret_object(path: str, ident: str = "s0") -> list[str]:
    if "," in path:
        raise UsageError("secret file path contains a comma")
    return ["--object", f"secret,id={ident},file={path}"]


@dataclass(frozen=True)
class QemuImg:
    """The qemu tools imgcrypt runs, and how.

    ``program`` and ``nbd_program`` are looked up on PATH unless given as paths (qemu-nbd comes
    from the same package as qemu-img); ``secret_dir`` is where private secret directories are
    made (None: /dev/shm where usable, else the temp dir); ``attempts`` bounds the retries of
    qemu-img's spurious CPU-usage failure.
    """

    program: str = "qemu-img"
    nbd_program: str = "qemu-nbd"
    secret_dir: str | None = None
    attempts: int = ATTEMPTS

    def command(self, args: Sequence[str], limits: ResourceLimits | None) -> list[str]:
        """The argv running qemu-img with ``args``, under ``limits`` if given."""
        if limits is None:
            return [self.program, *args]
        program = shutil.which(self.program)
        if program is None:
            raise FileNotFoundError(self.program)
        # Embedded interpreters (uwsgi, mod_wsgi) have a sys.executable that is no python.
        python = sys.executable if os.path.basename(sys.executable).startswith("python") \
            else shutil.which("python3")
        if not python:
            return [program, *args]
        return [python, "-I", "-S", "-c", _LIMIT_LAUNCHER, str(limits.address_space),
                str(limits.cpu_seconds), program, *args]

    def run(self, args: Sequence[str], *, what: str, timeout: float | None = None,
            limits: ResourceLimits | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run qemu-img, retrying its spurious CPU-usage failure; errors become imgcrypt errors.

        ``args`` must never hold a secret: callers pass secrets through :meth:`secret_file`.
        Files named by handle (``/proc/self/fd/N``, :mod:`imgcrypt.fileio`) are inherited.
        """
        proc: subprocess.CompletedProcess[bytes] | None = None
        for attempt in range(self.attempts):
            try:
                proc = subprocess.run(self.command(args, limits), capture_output=True,
                                      timeout=timeout, stdin=subprocess.DEVNULL, check=False,
                                      pass_fds=handle_fds(args))
            except FileNotFoundError:
                raise ToolError("qemu-img is not installed (Debian/Ubuntu: apt install "
                                "qemu-utils; Fedora: dnf install qemu-img)") from None
            except subprocess.TimeoutExpired:
                raise ToolError(f"qemu-img {what}: no answer within {timeout:.0f} s") from None
            if proc.returncode == 0 or SPURIOUS_FAILURE.encode() not in proc.stderr:
                break
            # A known qemu bug: its iteration-time benchmark sometimes measures nothing.
            time.sleep(0.05 * (attempt + 1))
        assert proc is not None
        if proc.returncode < 0:
            raise ToolError(f"qemu-img {what} was killed by signal {-proc.returncode}"
                            + (" (resource limit reached)" if limits is not None else ""))
        if proc.returncode != 0:
            line = stderr_line(proc.stderr)
            for arg in args:
                # qemu quotes a json: spec whole; the file name inside is what a person knows
                if arg.startswith("json:") and arg in line:
                    line = line.replace(arg, _spec_filename(arg))
            line = handle_names(line)
            if WRONG_PASSPHRASE.search(line):
                raise WrongPassphraseError(f"qemu-img {what}: wrong passphrase ({line})")
            raise ToolError(f"qemu-img {what} failed: {line}")
        return proc

    def secret_file(self, passphrase: bytes) -> contextlib.AbstractContextManager[str]:
        """:func:`secret_file` in this tool's ``secret_dir``."""
        return secret_file(passphrase, directory=self.secret_dir)


DEFAULT_QEMU_IMG = QemuImg()

"""Run the imgcrypt CLI and SIGKILL it at the N-th file-system event, deterministically.

    python -m fuzz.killhook KILL_AT EVENT_LOG -- imgcrypt-arguments...

The events are the calls through which imgcrypt commits data: ``os.pwrite``, ``os.fsync``,
``os.replace``, ``os.rename``, ``os.unlink`` and ``os.ftruncate``, each counted once before and
once after the call. ``KILL_AT`` 0 never kills and only logs, which tells how many kill points a
command has. The hook changes nothing else: the kill is a real SIGKILL of this process, at a
moment a random-time kill could also hit, only chosen on purpose.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

HOOKED = ("pwrite", "fsync", "replace", "rename", "unlink", "ftruncate")


def install(kill_at: int, log_fd: int | None) -> None:
    count = 0
    real_write = os.write

    def event(label: str) -> None:
        nonlocal count
        count += 1
        if log_fd is not None:
            real_write(log_fd, f"{count} {label}\n".encode())
        if count == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def hooked(*args: Any, **kwargs: Any) -> Any:
            event(f"{name}:before")
            result = real(*args, **kwargs)
            event(f"{name}:after")
            return result

        return hooked

    for name in HOOKED:
        setattr(os, name, wrap(name, getattr(os, name)))


def main() -> None:
    kill_at = int(sys.argv[1])
    log_path = sys.argv[2]
    if sys.argv[3] != "--":
        raise SystemExit("usage: python -m fuzz.killhook KILL_AT EVENT_LOG -- ARGS...")
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) \
        if log_path != "-" else None
    install(kill_at, log_fd)
    from imgcrypt.cli.main import main as imgcrypt_main

    sys.exit(imgcrypt_main(sys.argv[4:]))


if __name__ == "__main__":
    main()

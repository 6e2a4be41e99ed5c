"""Kill the imgcrypt CLI (SIGKILL) while it writes, then check what it left behind.

Two kinds of kill point:

* **timed**: the command is started and killed after a random delay drawn from its own measured
  run time (start-up included), so kills land everywhere, mostly in the long phases;
* **event**: :mod:`fuzz.killhook` kills it before or after the N-th ``pwrite``/``fsync``/
  ``replace``/... call, once for every N the command has, so the short windows where data is
  committed are hit exactly.

After each kill the invariants of the issue are checked: the source is unchanged; an output is
absent or complete and correct; a re-keyed image opens with the old or the new passphrase (by
imgcrypt and, when given, by ``cryptsetup open --test-passphrase``); a keystore holds only
complete secrets. Temporary files left by a SIGKILL are counted, not treated as failures: no
process can remove its temporary file after SIGKILL (they carry the ``.imgcrypt-tmp`` and
``.part`` suffixes and are never taken for outputs).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imgcrypt.errors import ImgcryptError

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FAST = ("--iterations", "1000")
OLD = b"old passphrase \x00\xff"
NEW = b"new passphrase"
KINDS = ("encrypt", "decrypt", "rekey", "rekey-luks2", "keystore")


@dataclass(frozen=True)
class Outcome:
    kind: str
    point: str  # "t=0.412s" or "event 3 fsync:after"
    returncode: int
    killed: bool
    state: str
    problems: tuple[str, ...] = ()
    leftovers: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Campaign:
    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def summary(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for o in self.outcomes:
            entry = out.setdefault(o.kind, {"kill_points": 0, "killed": 0, "failures": 0,
                                            "states": {}, "temp_files_left": 0})
            entry["kill_points"] = int(entry["kill_points"]) + 1  # type: ignore[call-overload]
            entry["killed"] = int(entry["killed"]) + o.killed  # type: ignore[call-overload]
            entry["failures"] = int(entry["failures"]) + (not o.ok)  # type: ignore[call-overload]
            entry["temp_files_left"] = (
                int(entry["temp_files_left"]) + o.leftovers)  # type: ignore[call-overload]
            states = entry["states"]
            assert isinstance(states, dict)
            states[o.state] = states.get(o.state, 0) + 1
        return out

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _secret_file(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir()
            if p.name.endswith((".imgcrypt-tmp", ".part")) or p.name.startswith(".tmp-")]


class Workspace:
    """Inputs for every kind of kill: a random source, its LUKS1 image, passphrase files."""

    def __init__(self, directory: Path, size: int = 24 << 20, *, cryptsetup: str | None = None,
                 seed: int = 0) -> None:
        from imgcrypt.luks.options import FormatOptions
        from imgcrypt.luks.transfer import encrypt_stream

        self.dir = directory
        self.cryptsetup = cryptsetup
        self.rng = random.Random(seed)
        directory.mkdir(parents=True, exist_ok=True)
        self.src = directory / "source.raw"
        self.src.write_bytes(self.rng.randbytes(size))
        self.src_hash = sha256(self.src)
        self.old = _secret_file(directory / "old.pw", OLD)
        self.new = _secret_file(directory / "new.pw", NEW)
        self.image = directory / "image.luks"
        with open(self.src, "rb") as s, open(self.image, "wb") as t:
            encrypt_stream(s, t, OLD, FormatOptions(iterations=1000))
        self.image_hash = sha256(self.image)
        # LUKS2 with pbkdf2 keyslots: two metadata copies to rewrite, and cheap to open.
        self.image2 = directory / "image2.luks"
        with open(self.src, "rb") as s, open(self.image2, "wb") as t:
            encrypt_stream(s, t, OLD, FormatOptions(version=2, pbkdf="pbkdf2", iterations=1000))
        self.image2_hash = sha256(self.image2)
        self.work = directory / "work"
        self.work.mkdir(exist_ok=True)
        self.durations: dict[str, float] = {}

    # -- the commands --------------------------------------------------------------------------

    def command(self, kind: str) -> list[str]:
        w = self.work
        if kind == "encrypt":
            return ["encrypt", str(self.src), str(w / "out.luks"), "--passphrase-file",
                    str(self.old), *FAST]
        if kind == "decrypt":
            return ["decrypt", str(self.image), str(w / "out.raw"), "--passphrase-file",
                    str(self.old), "--size", str(self.src.stat().st_size)]
        if kind == "rekey":
            return ["rekey", str(w / "rekey.luks"), "--passphrase-file", str(self.old),
                    "--change", "--new-passphrase-file", str(self.new), *FAST]
        if kind == "rekey-luks2":
            return ["rekey", str(w / "rekey2.luks"), "--passphrase-file", str(self.old),
                    "--change", "--new-passphrase-file", str(self.new), "--pbkdf", "pbkdf2",
                    *FAST]
        if kind == "keystore":
            return ["keys", "create", "--key-manager", "local", "--keystore",
                    str(w / "keystore"), "--type", "passphrase", "--json"]
        raise ValueError(kind)

    def prepare(self, kind: str) -> None:
        shutil.rmtree(self.work)
        self.work.mkdir()
        if kind == "rekey":
            shutil.copyfile(self.image, self.work / "rekey.luks")
        if kind == "rekey-luks2":
            shutil.copyfile(self.image2, self.work / "rekey2.luks")
        if kind == "keystore":
            # Existing secrets must survive a kill during the creation of another one.
            from imgcrypt.keys.local import LocalKeyStore
            from imgcrypt.keys.secret import PASSPHRASE, Secret

            store = LocalKeyStore(self.work / "keystore")
            self.existing = store.store(Secret(b"existing secret", secret_type=PASSPHRASE))

    # -- running and killing -------------------------------------------------------------------

    def run_to_end(self, kind: str) -> float:
        self.prepare(kind)
        start = time.monotonic()
        proc = subprocess.run([PYTHON, "-m", "imgcrypt", *self.command(kind)],
                              capture_output=True, env=_env(), cwd=self.work, timeout=300)
        elapsed = time.monotonic() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} failed without a kill: {proc.stderr.decode()}")
        problems = list(self.check(kind))
        if problems:
            raise RuntimeError(f"{kind} without a kill leaves a bad state: {problems}")
        self.durations[kind] = elapsed
        return elapsed

    def event_count(self, kind: str) -> int:
        self.prepare(kind)
        log = self.dir / f"events-{kind}.log"
        log.unlink(missing_ok=True)
        subprocess.run([PYTHON, "-m", "fuzz.killhook", "0", str(log), "--", *self.command(kind)],
                       capture_output=True, env=_env(), cwd=self.work, timeout=300, check=True)
        return len(log.read_text().splitlines())

    def kill_timed(self, kind: str, delay: float) -> Outcome:
        self.prepare(kind)
        proc = subprocess.Popen([PYTHON, "-m", "imgcrypt", *self.command(kind)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(),
                                cwd=self.work)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
        return self._outcome(kind, f"t={delay:.3f}s", proc.returncode, stderr)

    def kill_event(self, kind: str, number: int) -> Outcome:
        self.prepare(kind)
        log = self.dir / f"kill-{kind}.log"
        log.unlink(missing_ok=True)
        proc = subprocess.run(
            [PYTHON, "-m", "fuzz.killhook", str(number), str(log), "--", *self.command(kind)],
            capture_output=True, env=_env(), cwd=self.work, timeout=300)
        lines = log.read_text().splitlines() if log.exists() else []
        label = lines[-1].split(" ", 1)[1] if lines else "?"
        return self._outcome(kind, f"event {number} {label}", proc.returncode, proc.stderr)

    def _outcome(self, kind: str, point: str, returncode: int, stderr: bytes) -> Outcome:
        killed = returncode == -signal.SIGKILL
        problems = list(self.check(kind))
        if not killed and returncode != 0:
            problems.append(f"exit {returncode} without a kill: {stderr.decode()[-300:]}")
        state = self.state(kind)
        leftovers = _leftovers(self.work)
        if kind == "keystore" and (self.work / "keystore").exists():
            leftovers += _leftovers(self.work / "keystore")
        return Outcome(kind, point, returncode, killed, state, tuple(problems), len(leftovers))

    # -- the invariants ------------------------------------------------------------------------

    def state(self, kind: str) -> str:
        w = self.work
        if kind in ("encrypt", "decrypt"):
            return "complete" if (w / ("out.luks" if kind == "encrypt" else "out.raw")).exists() \
                else "absent"
        if kind in ("rekey", "rekey-luks2"):
            image = w / ("rekey.luks" if kind == "rekey" else "rekey2.luks")
            opens = [name for name, pw in (("old", OLD), ("new", NEW)) if self._opens(image, pw)]
            return "+".join(opens) or "neither"
        directory = w / "keystore"
        count = len([p for p in directory.iterdir() if p.suffix == ".json"]) \
            if directory.exists() else 0
        return f"{count} secret(s)"

    def _opens(self, image: Path, passphrase: bytes) -> bool:
        from imgcrypt.luks.unlock import unlock_stream

        try:
            with open(image, "rb") as f:
                unlock_stream(f, passphrase)
        except ImgcryptError:
            return False
        return True

    def check(self, kind: str) -> Iterator[str]:
        if sha256(self.src) != self.src_hash:
            yield "the source image changed"
        if sha256(self.image) != self.image_hash or sha256(self.image2) != self.image2_hash:
            yield "the encrypted input changed"
        w = self.work
        if kind == "encrypt":
            yield from self._check_encrypted(w / "out.luks")
        elif kind == "decrypt":
            out = w / "out.raw"
            if out.exists() and sha256(out) != self.src_hash:
                yield "decrypt left an incomplete or wrong output"
        elif kind == "rekey":
            yield from self._check_rekeyed(w / "rekey.luks", self.image)
        elif kind == "rekey-luks2":
            yield from self._check_rekeyed(w / "rekey2.luks", self.image2)
        elif kind == "keystore":
            yield from self._check_keystore(w / "keystore")

    def _check_encrypted(self, out: Path) -> Iterator[str]:
        from imgcrypt.luks.transfer import decrypt_stream

        if not out.exists():
            return
        plain = io.BytesIO()
        try:
            with open(out, "rb") as f:
                decrypt_stream(f, plain, OLD, size=self.src.stat().st_size)
        except ImgcryptError as exc:
            yield f"encrypt left an output that does not decrypt: {exc}"
            return
        if hashlib.sha256(plain.getvalue()).hexdigest() != self.src_hash:
            yield "encrypt left an output that decrypts to other bytes"

    def _check_rekeyed(self, image: Path, pristine: Path) -> Iterator[str]:
        from imgcrypt.luks.unlock import read_header

        old, new = self._opens(image, OLD), self._opens(image, NEW)
        if not (old or new):
            yield "the re-keyed image opens with neither passphrase"
        with open(image, "rb") as f:
            header, _ = read_header(f)
            f.seek(header.payload_offset)
            payload = f.read()
        with open(pristine, "rb") as f:
            f.seek(header.payload_offset)
            if payload != f.read():
                yield "rekey changed the payload"
        if self.cryptsetup is not None:
            for name, path, ours in (("old", self.old, old), ("new", self.new, new)):
                rc = subprocess.run(
                    [self.cryptsetup, "open", "--test-passphrase", "--key-file", str(path),
                     str(image)], capture_output=True, timeout=120).returncode
                if (rc == 0) != ours:
                    yield (f"cryptsetup and imgcrypt disagree on the {name} passphrase "
                           f"(cryptsetup rc {rc}, imgcrypt {'opens' if ours else 'refuses'})")

    def _check_keystore(self, directory: Path) -> Iterator[str]:
        from imgcrypt.keys.local import LocalKeyStore

        store = LocalKeyStore(directory)
        try:
            infos = store.list()
        except ImgcryptError as exc:
            yield f"the keystore no longer lists: {exc}"
            return
        ids = {info.secret_id for info in infos}
        if self.existing not in ids:
            yield "an existing secret was lost"
        elif store.get(self.existing).payload != b"existing secret":
            yield "an existing secret changed"
        for info in infos:
            assert info.secret_id is not None
            try:
                secret = store.get(info.secret_id)
            except ImgcryptError as exc:
                yield f"secret {info.secret_id} is half-written: {exc}"
                continue
            if info.secret_id != self.existing and len(secret.payload_bytes) < 16:
                yield f"secret {info.secret_id} has a truncated payload"
        for path in directory.iterdir():
            if path.suffix == ".json" and path.stat().st_mode & 0o077:
                yield f"{path.name} is readable by others"
            if path.name.endswith(".part") and path.stat().st_mode & 0o077:
                yield f"temporary {path.name} is readable by others"


def run_campaign(workspace: Workspace, kinds: tuple[str, ...], timed: int, *,
                 events: bool = True, rng: random.Random | None = None,
                 progress: bool = False) -> Campaign:
    """``timed`` random-time kills per kind, plus every event kill point when ``events``."""
    rng = rng or random.Random(1)
    campaign = Campaign()
    for kind in kinds:
        duration = workspace.run_to_end(kind)
        if events:
            for number in range(1, workspace.event_count(kind) + 1):
                campaign.add(workspace.kill_event(kind, number))
        for _ in range(timed):
            campaign.add(workspace.kill_timed(kind, rng.uniform(0.05, duration * 1.1)))
        if progress:
            print(json.dumps({kind: campaign.summary().get(kind)}), flush=True)
    return campaign

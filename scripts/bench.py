#!/usr/bin/env python3
"""imgcrypt's data-path benchmark (issues 4 and 17): run with ``make bench`` or
``.venv/bin/python scripts/bench.py [--size 1G]``.

In one run, on the same data on tmpfs, it measures against the ceilings that bound it:

* the copy ceiling (``cp`` of the raw image) and the pipe ceiling (``cat | cat``);
* the fixed cost of a command: interpreter start and imports (``imgcrypt decrypt --help``)
  against ``python -c pass`` on the same interpreter;
* the cipher ceiling: ``openssl speed -evp aes-256-xts`` on one core, at 512 and 4096 bytes;
* ``imgcrypt encrypt`` / ``decrypt`` end to end, file to file, through the console script
  (LUKS1/512, LUKS2/512, LUKS2/4096), against ``qemu-img convert`` to and from LUKS1;
* a qcow2 of 4x the size, a quarter of it random data and the rest zeros: ``imgcrypt encrypt``
  from the qcow2 and ``imgcrypt decrypt`` to a sparse raw, against ``qemu-img convert``, with
  the scratch space used (``TMPDIR`` sampled during the run) and the output's allocation;
* streams: ``cat raw | imgcrypt encrypt - out`` and ``imgcrypt decrypt in - | cat > out``
  against ``cat | cat``, each with its fixed cost (the same command on an empty payload) and
  the rate of its data path alone;
* the upload hook's verification (multihash + md5 + header capture) against a bare hash;
* the XTS kernel in-process on 1 and 2 threads, and the file-to-file engine with 1 and 2
  workers (the scaling);
* ``imgcrypt rekey --change`` of a 10 GiB sparse LUKS1 image against the KDF time alone;
* with ``--http``: ``imgcrypt upload`` and ``download`` against a real Glance on loopback,
  beside the same transfers by ``curl`` (``scripts/bench_http.py``).

Every imgcrypt process's peak RSS comes from ``os.wait4``. It prints the table, then PASS/FAIL
per target. It exits 0 when it could measure everything (``--strict``: 1 when a target fails)
and 2 when a tool is missing or a step fails.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1 << 20
RSS_LIMIT_MIB = 128
SCRATCH_LIMIT_MIB = 64
SPEEDUP_TARGET = 5.0
COPY_FRACTION_TARGET = 0.80
PIPE_FRACTION_TARGET = 0.80
KERNEL_FRACTION_TARGET = 0.70
REKEY_SLACK_S = 0.050
CONFIGS = [  # (label, encrypt arguments)
    ("LUKS1 512", ["--format", "luks1"]),
    ("LUKS2 512", ["--format", "luks2", "--pbkdf", "pbkdf2", "--sector-size", "512"]),
    ("LUKS2 4096", ["--format", "luks2", "--pbkdf", "pbkdf2", "--sector-size", "4096"]),
]

Row = tuple[str, str, str, str, str, str]


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class Run:
    seconds: float
    max_rss_kib: int
    scratch: int | None = None  # peak bytes allocated under the run's TMPDIR, if sampled
    cpu: float = 0.0  # user + system seconds of the command and its children


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]?)(i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256M, 1G)")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(match.group(1)) << (10 * power)


def imgcrypt_command() -> list[str]:
    script = Path(sys.executable).parent / "imgcrypt"
    return [str(script)] if script.exists() else [sys.executable, "-m", "imgcrypt"]


def allocated(path: Path) -> int:
    """Bytes allocated to a file, or to everything under a directory."""
    if not path.is_dir():
        return path.stat().st_blocks * 512
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


class ScratchSampler:
    """Peak allocation under a directory while a command runs (sampled every 5 ms)."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.peak = directory, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, allocated(self.directory))

    def __enter__(self) -> ScratchSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_timed(cmd: list[str] | str, *, retry_qemu: bool = False, scratch: Path | None = None,
              shell: bool = False) -> Run:
    """Wall time and peak RSS of one child process (``os.wait4`` gives the rusage of it and
    the descendants it waited for: a shell pipeline reports its largest member)."""
    env = dict(os.environ)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        env["TMPDIR"] = str(scratch)
    argv = ["bash", "-o", "pipefail", "-c", cmd] if shell else cmd
    assert isinstance(argv, list)
    # The peak RSS a child inherits includes this (large) Python process's, from before its
    # exec; GNU time forks the command from its own small process and reports the command's.
    timer = shutil.which("time") or "/usr/bin/time"
    for attempt in range(6):
        with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as peak:
            if os.path.exists(timer):
                argv = [timer, "-q", "-f", "%M %U %S", "-o", peak.name, *argv]
            sampler = ScratchSampler(scratch) if scratch is not None else None
            if sampler:
                sampler.__enter__()
            start = time.perf_counter()
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err, env=env)
            _, status, usage = os.wait4(proc.pid, 0)
            elapsed = time.perf_counter() - start
            if sampler:
                sampler.__exit__()
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            message = err.read().decode(errors="replace").strip()
            fields = (peak.read().strip().splitlines() or [""])[-1].split()
            if len(fields) == 3:
                rss_kib, cpu = int(fields[0]), float(fields[1]) + float(fields[2])
            else:
                rss_kib, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
            argv = argv[6:] if argv[0] == timer else argv
        if proc.returncode == 0:
            return Run(elapsed, rss_kib, sampler.peak if sampler else None, cpu)
        # qemu-img with a short iter-time fails now and then (a known qemu bug): retry.
        if retry_qemu and "accurate CPU usage" in message and attempt < 5:
            continue
        shown = cmd if isinstance(cmd, str) else " ".join(cmd[:3])
        raise BenchError(f"{shown} ... failed ({proc.returncode}): {message}")
    raise AssertionError("unreachable")


def best(runs: list[Run]) -> Run:
    fastest = min(runs, key=lambda r: r.seconds)
    sampled = [r.scratch for r in runs if r.scratch is not None]
    return Run(fastest.seconds, max(r.max_rss_kib for r in runs),
               max(sampled) if sampled else None, fastest.cpu)


def repeat(n: int, fn: Callable[[], Run]) -> Run:
    return best([fn() for _ in range(n)])


def random_bytes(size: int) -> Callable[[int], bytes]:
    # AES-CTR keystream: incompressible like real ciphertext, and far faster than os.urandom.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    stream = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    zeros = bytes(4 * MIB)
    return lambda n: stream.update(zeros[:n])


def make_random_file(path: Path, size: int) -> None:
    chunk = random_bytes(size)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(chunk(n))
            left -= n


def make_sparse_guest(path: Path, virtual: int, data: int) -> None:
    """A raw guest of ``virtual`` bytes: ``data`` bytes of random 1 MiB extents, the rest holes."""
    chunk = random_bytes(MIB)
    extents = sorted(random.Random(17).sample(range(virtual // MIB), data // MIB))
    with open(path, "wb") as f:
        f.truncate(virtual)
        for extent in extents:
            f.seek(extent * MIB)
            f.write(chunk(MIB))


def secret_file(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return path


def same_content(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x = fa.read(8 * MIB)
            if x != fb.read(8 * MIB):
                return False
            if not x:
                return True


def openssl_xts_mib_s(block: int) -> float:
    """``openssl speed -evp aes-256-xts`` at ``block`` bytes, one process."""
    out = subprocess.run(["openssl", "speed", "-seconds", "3", "-bytes", str(block), "-evp",
                          "aes-256-xts"], capture_output=True, text=True, check=True,
                         timeout=300).stdout
    line = next(x for x in out.splitlines() if x.upper().startswith("AES-256-XTS"))
    value = line.split()[-1]
    if not value.endswith("k"):
        raise BenchError(f"unexpected openssl speed output: {line!r}")
    return float(value[:-1]) * 1000 / MIB


def kernel_mib_s(sector_size: int, data: bytes, threads: int) -> float:
    """In-process XTS throughput on ``data`` in 4 MiB calls on ``threads`` threads, best of 3."""
    from imgcrypt.crypto.sectors import CipherSpec, SectorCipher

    cipher = SectorCipher(CipherSpec.parse("aes-xts-plain64"), os.urandom(64), sector_size)
    chunk = 4 * MIB
    view = memoryview(data)
    outputs = [bytearray(chunk) for _ in range(threads)]

    def work(k: int) -> None:
        for start in range(k * chunk, len(data), threads * chunk):
            cipher.encrypt_into(view[start : start + chunk], start // 512, outputs[k])

    times = []
    for _ in range(3):
        pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        began = time.perf_counter()
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        times.append(time.perf_counter() - began)
    return len(data) / MIB / min(times)


def engine_mib_s(src: Path, dst: Path, workers: int) -> float:
    """The file-to-file engine in-process (pread, XTS in place, pwrite), best of 3."""
    from imgcrypt.crypto.sectors import CipherSpec, SectorCipher
    from imgcrypt.luks.engine import FileSource, FileTarget, PayloadPlan, transfer

    cipher = SectorCipher(CipherSpec.parse("aes-xts-plain64"), os.urandom(64), 512)
    length = src.stat().st_size
    times = []
    for _ in range(3):
        dst.unlink(missing_ok=True)
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            began = time.perf_counter()
            transfer(PayloadPlan(512, 0, length, None, pad_tail=True),
                     FileSource(fin.fileno(), 0, length), FileTarget(fout.fileno(), 0),
                     lambda view, at: cipher.encrypt_into(view, at // 512, view),
                     workers=workers)
            times.append(time.perf_counter() - began)
    dst.unlink()
    return length / MIB / min(times)


def verify_rates(src: Path) -> tuple[float, float]:
    """The upload hook's inspection (sha512 multihash, md5, header capture) and a bare sha512
    over the same file in 4 MiB chunks, MiB/s, best of 2."""
    from imgcrypt.service.upload import UploadInspector

    size = src.stat().st_size

    def chunks() -> object:
        with open(src, "rb") as f:
            while block := f.read(4 * MIB):
                yield block

    def hook() -> None:
        inspector = UploadInspector({})
        for _ in inspector.wrap(chunks()):  # type: ignore[arg-type]
            pass
        inspector.finalize()

    def bare() -> None:
        digest = hashlib.sha512()
        for block in chunks():  # type: ignore[attr-defined]
            digest.update(block)
        digest.hexdigest()

    rates = []
    for fn in (hook, bare):
        times = []
        for _ in range(2):
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
        rates.append(size / MIB / min(times))
    return rates[0], rates[1]


def rekey_kdf_seconds(image: Path, passphrase: bytes, new_iterations: int) -> float:
    """The PBKDF2 work ``rekey --change`` cannot avoid: open the old slot, check the digest,
    derive the new slot's key; best of 3."""
    from imgcrypt.luks.unlock import read_header

    with open(image, "rb") as f:
        header, _ = read_header(f)
    info = header.describe()
    hash_name = info["hash"]
    slots = [s for s in info["keyslots"] if s.get("active", True)]
    slot_iterations = int(slots[0]["iterations"])
    digest_iterations = int(info["mk_digest_iterations"])
    key_bytes = header.key_bytes
    times = []
    for _ in range(3):
        began = time.perf_counter()
        key = hashlib.pbkdf2_hmac(hash_name, passphrase, os.urandom(32), slot_iterations,
                                  key_bytes)
        hashlib.pbkdf2_hmac(hash_name, key, os.urandom(32), digest_iterations, 20)
        hashlib.pbkdf2_hmac(hash_name, passphrase, os.urandom(32), new_iterations, key_bytes)
        times.append(time.perf_counter() - began)
    return min(times)


def rekey_in_process_seconds(image: Path, passphrases: list[Path], current: int,
                             iterations: int) -> float:
    """``rekey_file`` itself, without interpreter start and argument parsing; best of 5."""
    from imgcrypt.crypto.kdf import Pbkdf2
    from imgcrypt.luks.rekey import rekey_file

    secrets = [p.read_bytes() for p in passphrases]
    times = []
    for _ in range(5):
        began = time.perf_counter()
        rekey_file(str(image), secrets[current], new_passphrase=secrets[1 - current],
                   remove_old=True, kdf=Pbkdf2("sha256", iterations, os.urandom(32)))
        times.append(time.perf_counter() - began)
        current = 1 - current
    return min(times)


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return "missing"
    return out.splitlines()[0].strip() if out else "?"


def machine_summary() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cryptography
    import numpy

    return (f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}, numpy {numpy.__version__}, "
            f"cryptography {cryptography.__version__}; "
            f"{tool_version(['openssl', 'version'])}; {tool_version(['qemu-img', '--version'])}")


def machine_load() -> str:
    try:
        one, five, _ = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        return "?"
    return f"load average {one} (1 min), {five} (5 min)"


def rate_row(label: str, run: Run, mib: float, ceiling: float | None, qemu: float | None,
             ceiling_name: str = "") -> tuple[str, ...]:
    rate = mib / run.seconds
    return (label, f"{run.seconds:.2f}", f"{run.cpu:.2f}" if run.cpu else "", f"{rate:.0f}",
            f"{rate / ceiling:.0%} {ceiling_name}".strip() if ceiling else "",
            f"{rate / qemu:.1f}x" if qemu else "",
            f"{run.max_rss_kib / 1024:.0f}" if run.max_rss_kib else "",
            f"{run.scratch / MIB:.1f}" if run.scratch is not None else "")


def start_row(label: str, run: Run, bare: Run | None) -> tuple[str, ...]:
    """A command's fixed cost: seconds and CPU, and what it adds to a bare interpreter."""
    extra = f"+{(run.seconds - bare.seconds) * 1000:.0f} ms over python" if bare else ""
    return (label, f"{run.seconds:.3f}", f"{run.cpu:.3f}" if run.cpu else "", "", extra, "",
            f"{run.max_rss_kib / 1024:.0f}" if run.max_rss_kib else "", "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"),
                        help="raw image size, e.g. 256M or 1G (default 1G); the qcow2 is 4x")
    parser.add_argument("--dir", default="/dev/shm", help="tmpfs directory (default /dev/shm)")
    parser.add_argument("--rekey-size", type=parse_size, default=parse_size("10G"),
                        help="sparse image size for the re-key (default 10G)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each timed command; the fastest counts (default 2)")
    parser.add_argument("--iterations", type=int, default=1000,
                        help="KDF iterations for imgcrypt (default 1000)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--http", action="store_true",
                        help="also time imgcrypt upload/download against a real Glance "
                        "(needs the Keystone, Barbican and Glance virtualenvs, and curl)")
    parser.add_argument("--imgcrypt", metavar="COMMAND",
                        help="command that runs imgcrypt (default: this virtualenv's console "
                        "script), e.g. to compare two checkouts")
    args = parser.parse_args()
    if args.size < 64 * MIB or args.size % (4 * MIB):
        parser.error("--size must be a multiple of 4M and at least 64M")
    for tool in ("qemu-img", "qemu-nbd", "openssl", "cp", "cat"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed (make tools installs it)", file=sys.stderr)
            return 2
    try:
        return bench(args)
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2


def bench(args: argparse.Namespace) -> int:
    imgcrypt = shlex.split(args.imgcrypt) if args.imgcrypt else imgcrypt_command()
    ic = " ".join(shlex.quote(x) for x in imgcrypt)
    size_mib = args.size / MIB
    work = Path(tempfile.mkdtemp(prefix="imgcrypt-bench-", dir=args.dir))
    scratch = work / "tmp"
    rows: list[tuple[str, ...]] = []
    checks: list[tuple[str, bool, str]] = []
    n = args.repeat

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append((name, ok, detail))

    # Byte-compile imgcrypt once, so that no command pays for compiling it (with
    # PYTHONDONTWRITEBYTECODE set, every start would).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "imgcrypt")],
                   check=False)
    try:
        print(f"machine: {machine_summary()}")
        print(f"at start: {machine_load()}")
        print(f"raw image: {size_mib:.0f} MiB of random data in {work}; best of {n} runs\n",
              flush=True)
        src = work / "src.raw"
        make_random_file(src, args.size)
        pw = secret_file(work / "pw", os.urandom(16).hex().encode())
        secret = ["--object", f"secret,id=s0,file={pw}"]
        kdf = ["--iterations", str(args.iterations), "--passphrase-file", str(pw), "--force"]

        # -- ceilings ------------------------------------------------------------------------
        copy = work / "copy.raw"
        cp = repeat(n, lambda: run_timed(["cp", str(src), str(copy)]))
        copy.unlink()
        pipe = repeat(n, lambda: run_timed(f"cat {src} | cat > {copy}", shell=True))
        copy.unlink()
        cp_rate, pipe_rate = size_mib / cp.seconds, size_mib / pipe.seconds
        rows.append(rate_row("cp (the copy ceiling)", cp, size_mib, None, None))
        rows.append(rate_row("cat | cat (the pipe ceiling)", pipe, size_mib, None, None))
        ossl = {block: openssl_xts_mib_s(block) for block in (512, 4096)}
        for block, rate in ossl.items():
            rows.append((f"openssl speed -evp aes-256-xts, {block} B, 1 core", "", "",
                         f"{rate:.0f}", "", "", "", ""))

        # -- interpreter start and imports: paid once by every command ----------------------
        bare = repeat(3 * n, lambda: run_timed([sys.executable, "-c", "pass"]))
        start = repeat(3 * n, lambda: run_timed([*imgcrypt, "decrypt", "--help"]))
        rows.append(start_row("start + imports: imgcrypt decrypt --help", start, bare))
        rows.append(start_row("start: python -c pass (same interpreter)", bare, None))

        # -- qemu-img, the baseline ----------------------------------------------------------
        qemu_luks, qemu_raw = work / "qemu.luks", work / "qemu.raw"
        q_enc = repeat(n, lambda: run_timed(
            ["qemu-img", "convert", "-f", "raw", "-O", "luks", *secret, "-o",
             "key-secret=s0,iter-time=10", str(src), str(qemu_luks)], retry_qemu=True))
        q_dec = repeat(n, lambda: run_timed(
            ["qemu-img", "convert", *secret, "--image-opts",
             f"driver=luks,key-secret=s0,file.filename={qemu_luks}", "-O", "raw",
             str(qemu_raw)], retry_qemu=True))
        if not same_content(src, qemu_raw):
            raise BenchError("qemu-img round trip changed the data")
        qemu_luks.unlink()
        qemu_raw.unlink()
        q_enc_rate, q_dec_rate = size_mib / q_enc.seconds, size_mib / q_dec.seconds
        rows.append(rate_row("qemu-img convert raw -> LUKS1", q_enc, size_mib, cp_rate, None,
                             "of cp"))
        rows.append(rate_row("qemu-img convert LUKS1 -> raw", q_dec, size_mib, cp_rate, None,
                             "of cp"))

        # -- imgcrypt end to end, raw --------------------------------------------------------
        enc_path, dec_path, luks1 = work / "img.luks", work / "img.raw", work / "luks1.luks"
        for label, extra in CONFIGS:
            enc = repeat(n, lambda extra=extra: run_timed(  # type: ignore[misc]
                [*imgcrypt, "encrypt", str(src), str(enc_path), *extra, *kdf]))
            dec = repeat(n, lambda: run_timed(
                [*imgcrypt, "decrypt", str(enc_path), str(dec_path), *kdf[2:]]))
            if not same_content(src, dec_path):
                raise BenchError(f"imgcrypt {label} round trip changed the data")
            for verb, run, base in (("encrypt", enc, q_enc_rate), ("decrypt", dec, q_dec_rate)):
                rate = size_mib / run.seconds
                rows.append(rate_row(f"imgcrypt {verb} {label}", run, size_mib, cp_rate, base,
                                     "of cp"))
                check(f"{verb} {label} >= {COPY_FRACTION_TARGET:.0%} of cp",
                      rate >= COPY_FRACTION_TARGET * cp_rate,
                      f"{rate / cp_rate:.0%} ({rate:.0f} of {cp_rate:.0f} MiB/s)")
                check(f"{verb} {label} >= {SPEEDUP_TARGET:.0f}x qemu-img",
                      rate >= SPEEDUP_TARGET * base, f"{rate / base:.2f}x")
                check(f"{verb} {label} peak RSS < {RSS_LIMIT_MIB} MiB",
                      run.max_rss_kib / 1024 < RSS_LIMIT_MIB, f"{run.max_rss_kib / 1024:.1f} MiB")
            if label == CONFIGS[0][0]:
                enc_path.rename(luks1)  # the streams below decrypt this one
            else:
                enc_path.unlink()
            dec_path.unlink()

        # -- streams (LUKS1 image from above) ------------------------------------------------
        out = work / "stream.out"
        s_enc = repeat(n, lambda: run_timed(
            f"cat {src} | {ic} encrypt - {out} --format luks1 "
            f"--iterations {args.iterations} --passphrase-file {pw} --force", shell=True))
        out.unlink()
        s_dec = repeat(n, lambda: run_timed(
            f"{ic} decrypt {luks1} - --passphrase-file {pw} | cat > {out}", shell=True))
        if not same_content(src, out):
            raise BenchError("imgcrypt stream round trip changed the data")
        out.unlink()
        luks1.unlink()
        # The same two commands on an empty payload: what each pays whatever the size
        # (interpreter, imports, the keyslot), so the data path's own rate can be told apart.
        empty, empty_out = work / "empty.raw", work / "empty.out"
        empty.touch()
        e_enc = repeat(n, lambda: run_timed(
            f"cat {empty} | {ic} encrypt - {out} --format luks1 "
            f"--iterations {args.iterations} --passphrase-file {pw} --force", shell=True))
        e_dec = repeat(n, lambda: run_timed(
            f"{ic} decrypt {out} - --passphrase-file {pw} | cat > {empty_out}", shell=True))
        out.unlink()
        for label, run, fixed in (
                ("stdin -> file: cat raw | imgcrypt encrypt - out", s_enc, e_enc),
                ("file -> stdout: imgcrypt decrypt in - | cat", s_dec, e_dec)):
            rate = size_mib / run.seconds
            rows.append(rate_row(label, run, size_mib, pipe_rate, None, "of pipe"))
            name = label.split(":")[0]
            rows.append(start_row(f"  {name}, empty payload (the fixed cost)", fixed, None))
            if run.seconds > fixed.seconds:
                alone = size_mib / (run.seconds - fixed.seconds)
                rows.append((f"  {name}, data path alone (less the fixed cost)", "", "",
                             f"{alone:.0f}", f"{alone / pipe_rate:.0%} of pipe", "", "", ""))
            check(f"stream {name} >= {PIPE_FRACTION_TARGET:.0%} of cat | cat",
                  rate >= PIPE_FRACTION_TARGET * pipe_rate,
                  f"{rate / pipe_rate:.0%} ({rate:.0f} of {pipe_rate:.0f} MiB/s)")
            check(f"stream {name} peak RSS < {RSS_LIMIT_MIB} MiB",
                  run.max_rss_kib / 1024 < RSS_LIMIT_MIB, f"{run.max_rss_kib / 1024:.1f} MiB")

        # -- the upload hook's verification --------------------------------------------------
        hook_rate, hash_rate = verify_rates(src)
        rows.append(("upload hook inspection (sha512 + md5 + header), in-process", "", "",
                     f"{hook_rate:.0f}", f"{hook_rate / hash_rate:.0%} of bare sha512", "", "",
                     ""))
        rows.append(("bare hashlib sha512, same chunks", "", "", f"{hash_rate:.0f}", "", "", "",
                     ""))

        # -- kernel and engine scaling, in-process -------------------------------------------
        with open(src, "rb") as f:
            sample = f.read(64 * MIB)
        kernel = {(sector, threads): kernel_mib_s(sector, sample, threads)
                  for sector in (512, 4096) for threads in (1, 2)}
        del sample
        for (sector, threads), rate in kernel.items():
            rows.append((f"XTS kernel, {sector}-byte sectors, {threads} thread(s)", "", "",
                         f"{rate:.0f}", f"{rate / ossl[sector]:.0%} of openssl 1 core", "", "",
                         ""))
            if threads == 1:
                check(f"XTS kernel {sector} (1 thread) >= {KERNEL_FRACTION_TARGET:.0%} of "
                      f"openssl at {sector} B", rate >= KERNEL_FRACTION_TARGET * ossl[sector],
                      f"{rate / ossl[sector]:.0%} ({rate:.0f} of {ossl[sector]:.0f} MiB/s)")
        for workers in (1, 2):
            rate = engine_mib_s(src, work / "engine.out", workers)
            rows.append((f"engine file -> file encrypt in-process, {workers} worker(s)", "", "",
                         f"{rate:.0f}", f"{rate / cp_rate:.0%} of cp", "", "", ""))
        if args.http:  # bench_http imports this module's helpers as ``bench``
            sys.modules.setdefault("bench", sys.modules[__name__])
            from bench_http import section

            http_rows, http_checks = section(imgcrypt, work, src, repeat=n,
                                             iterations=args.iterations)
            rows += http_rows
            checks += http_checks
        src.unlink()

        # -- qcow2: 4x the size, a quarter data ----------------------------------------------
        virtual = 4 * args.size
        guest, qcow2 = work / "guest.raw", work / "guest.qcow2"
        make_sparse_guest(guest, virtual, args.size)
        run_timed(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(guest), str(qcow2)])
        guest.unlink()
        vmib = virtual / MIB
        q_luks, q_back = work / "q.luks", work / "q.raw"
        qq_enc = repeat(n, lambda: run_timed(
            ["qemu-img", "convert", "-f", "qcow2", "-O", "luks", *secret, "-o",
             "key-secret=s0,iter-time=10", str(qcow2), str(q_luks)], retry_qemu=True))
        qq_dec = repeat(n, lambda: run_timed(
            ["qemu-img", "convert", *secret, "--image-opts",
             f"driver=luks,key-secret=s0,file.filename={q_luks}", "-O", "raw", str(q_back)],
            retry_qemu=True))
        qemu_alloc = allocated(q_back)
        q_luks.unlink()
        i_luks, i_back = work / "i.luks", work / "i.raw"
        iq_enc = repeat(n, lambda: run_timed(
            [*imgcrypt, "encrypt", str(qcow2), str(i_luks), "--format", "luks1", *kdf],
            scratch=scratch))
        iq_dec = repeat(n, lambda: run_timed(
            [*imgcrypt, "decrypt", str(i_luks), str(i_back), *kdf[2:]], scratch=scratch))
        if not same_content(q_back, i_back):
            raise BenchError("imgcrypt's qcow2 round trip differs from qemu-img's")
        ours_alloc = allocated(i_back)
        for path in (q_back, i_back, i_luks, qcow2):
            path.unlink()
        label = f"{vmib / 1024:.0f} GiB-virtual qcow2, 25% data"
        rows.append(rate_row(f"qemu-img convert {label} -> LUKS1", qq_enc, vmib, None, None))
        rows.append(rate_row(f"qemu-img convert LUKS1 -> sparse raw "
                             f"({qemu_alloc / MIB:.0f} MiB allocated)", qq_dec, vmib, None, None))
        rows.append(rate_row(f"imgcrypt encrypt {label} -> LUKS1", iq_enc, vmib, None,
                             vmib / qq_enc.seconds))
        rows.append(rate_row(f"imgcrypt decrypt -> sparse raw ({ours_alloc / MIB:.0f} MiB "
                             "allocated)", iq_dec, vmib, None, vmib / qq_dec.seconds))
        for verb, ours, theirs in (("encrypt", iq_enc, qq_enc), ("decrypt", iq_dec, qq_dec)):
            ratio = theirs.seconds / ours.seconds
            check(f"qcow2 {verb} >= {SPEEDUP_TARGET:.0f}x qemu-img",
                  ratio >= SPEEDUP_TARGET, f"{ratio:.2f}x")
            check(f"qcow2 {verb} peak RSS < {RSS_LIMIT_MIB} MiB",
                  ours.max_rss_kib / 1024 < RSS_LIMIT_MIB, f"{ours.max_rss_kib / 1024:.1f} MiB")
            used = (ours.scratch or 0) / MIB
            check(f"qcow2 {verb} scratch < {SCRATCH_LIMIT_MIB} MiB",
                  ours.scratch is not None and used < SCRATCH_LIMIT_MIB, f"{used:.1f} MiB")
        check("sparse decrypt allocates no more than qemu-img's output",
              ours_alloc <= qemu_alloc + 4 * MIB,
              f"{ours_alloc / MIB:.0f} vs {qemu_alloc / MIB:.0f} MiB")

        # -- re-key of a sparse image --------------------------------------------------------
        small = work / "small.raw"
        make_random_file(small, MIB)
        image = work / "rekey.luks"
        run_timed([*imgcrypt, "encrypt", str(small), str(image), "--format", "luks1", *kdf])
        os.truncate(image, args.rekey_size)  # sparse: the payload is never touched
        passphrases = [pw, secret_file(work / "pw2", os.urandom(16).hex().encode())]
        rekeys = []
        for i in range(max(n, 5)):
            old, new = passphrases[i % 2], passphrases[(i + 1) % 2]
            rekeys.append(run_timed([*imgcrypt, "rekey", str(image), "--passphrase-file",
                                     str(old), "--change", "--new-passphrase-file", str(new),
                                     "--iterations", str(args.iterations)]))
        current = passphrases[len(rekeys) % 2]
        startup = best([run_timed([*imgcrypt, "rekey", "--help"]) for _ in range(5)])
        kdf_s = rekey_kdf_seconds(image, current.read_bytes(), args.iterations)
        in_process = rekey_in_process_seconds(image, passphrases, len(rekeys) % 2,
                                              args.iterations)
        rekey = best(rekeys)
        overhead = rekey.seconds - startup.seconds - kdf_s
        rows.append((f"imgcrypt rekey --change, {args.rekey_size / 2**30:.0f} GiB sparse",
                     f"{rekey.seconds:.3f}", f"{rekey.cpu:.2f}", "", "", "",
                     f"{rekey.max_rss_kib / 1024:.0f}", ""))
        rows.append(("  of which interpreter start (rekey --help)", f"{startup.seconds:.3f}",
                     f"{startup.cpu:.2f}", "", "", "", "", ""))
        rows.append(("  rekey_file() in-process", f"{in_process:.3f}", "", "", "", "", "", ""))
        check("rekey <= KDF + 50 ms (after interpreter start)", overhead <= REKEY_SLACK_S,
              f"KDF + {overhead * 1000:.0f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    return report(rows, checks, strict=args.strict)


def report(rows: list[tuple[str, ...]], checks: list[tuple[str, bool, str]], *,
           strict: bool) -> int:
    """The table, then PASS/FAIL per target; the exit status (1 with ``strict`` and a miss)."""
    print(f"at end: {machine_load()}\n")
    print_table(("step", "seconds", "CPU s", "MiB/s", "vs ceiling", "vs qemu-img",
                 "peak RSS MiB", "scratch MiB"), rows)
    print()
    failed = 0
    for name, ok, detail in checks:
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print(f"\n{len(checks) - failed} of {len(checks)} targets met")
    return 1 if failed and strict else 0


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""imgcrypt's data-path benchmark (issue 4): run with ``make bench`` or
``.venv/bin/python scripts/bench.py [--size 1G]``.

In one run, on one random image on tmpfs, it measures:

* ``imgcrypt encrypt`` and ``imgcrypt decrypt`` end to end, file to file, through the console
  script (LUKS1/512, LUKS2/512 and LUKS2/4096-byte sectors), with each process's peak RSS;
* ``qemu-img convert`` to and from LUKS1 on the same data;
* the XTS kernel in-process (``SectorCipher`` on 64 MiB, one thread and all workers);
* ``openssl speed -evp aes-256-xts`` (one core, largest block size);
* ``imgcrypt rekey --change`` of a 10 GiB sparse LUKS1 image against the KDF time alone.

It prints a table, then PASS/FAIL for each target of issue 4. It exits 0 when it could measure
everything (use ``--strict`` to exit 1 when a target fails) and 2 when a tool is missing or a
step fails.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1 << 20
RSS_LIMIT_MIB = 128
SPEEDUP_TARGET = 5.0
KERNEL_FRACTION_TARGET = 0.25
REKEY_SLACK_S = 0.050
CONFIGS = [  # (label, encrypt arguments)
    ("LUKS1 512", ["--format", "luks1"]),
    ("LUKS2 512", ["--format", "luks2", "--pbkdf", "pbkdf2", "--sector-size", "512"]),
    ("LUKS2 4096", ["--format", "luks2", "--pbkdf", "pbkdf2", "--sector-size", "4096"]),
]


class BenchError(Exception):
    pass


@dataclass(frozen=True)
class Run:
    seconds: float
    max_rss_kib: int


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]?)(i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256M, 1G)")
    power = " KMGT".index(match.group(2).upper() or " ")
    return int(match.group(1)) << (10 * power)


def imgcrypt_command() -> list[str]:
    script = Path(sys.executable).parent / "imgcrypt"
    return [str(script)] if script.exists() else [sys.executable, "-m", "imgcrypt"]


def run_timed(cmd: list[str], *, retry_qemu: bool = False) -> Run:
    """Wall time and peak RSS of one child process (``os.wait4`` gives its own rusage)."""
    for attempt in range(6):
        with tempfile.TemporaryFile() as err:
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)
            elapsed = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            err.seek(0)
            message = err.read().decode(errors="replace").strip()
        if proc.returncode == 0:
            return Run(elapsed, usage.ru_maxrss)
        # qemu-img with a short iter-time fails now and then (a known qemu bug): retry.
        if retry_qemu and "accurate CPU usage" in message and attempt < 5:
            continue
        raise BenchError(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}): {message}")
    raise AssertionError("unreachable")


def best(runs: list[Run]) -> Run:
    return Run(min(r.seconds for r in runs), max(r.max_rss_kib for r in runs))


def make_random_file(path: Path, size: int) -> None:
    # AES-CTR keystream: incompressible like real ciphertext, and far faster than os.urandom.
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    stream = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16))).encryptor()
    zeros = bytes(4 * MIB)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(zeros))
            f.write(stream.update(zeros[:n]))
            left -= n


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


def openssl_xts_mib_s() -> float:
    """``openssl speed -evp aes-256-xts``, one process, the largest block size column."""
    out = subprocess.run(["openssl", "speed", "-seconds", "3", "-evp", "aes-256-xts"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    line = next(x for x in out.splitlines() if x.upper().startswith("AES-256-XTS"))
    value = line.split()[-1]
    if not value.endswith("k"):
        raise BenchError(f"unexpected openssl speed output: {line!r}")
    return float(value[:-1]) * 1000 / MIB


def kernel_mib_s(sector_size: int, data: bytes, *, parallel: bool) -> float:
    """In-process XTS throughput on ``data`` (64 MiB) in 4 MiB chunks, best of 3."""
    from imgcrypt.luks.pipeline import ordered_map
    from imgcrypt.luks.sectors import CipherSpec, SectorCipher

    cipher = SectorCipher(CipherSpec.parse("aes-xts-plain64"), os.urandom(64), sector_size)
    chunk = 4 * MIB
    starts = range(0, len(data), chunk)
    view = memoryview(data)
    buffers = [bytearray(chunk) for _ in range(8)]

    def work(start: int) -> int:
        out = buffers[(start // chunk) % len(buffers)]
        cipher.encrypt_into(view[start : start + chunk], start // 512, out)
        return start

    times = []
    for _ in range(3):
        began = time.perf_counter()
        if parallel:
            for _ in ordered_map(work, starts, in_flight=4):
                pass
        else:
            for start in starts:
                work(start)
        times.append(time.perf_counter() - began)
    return len(data) / MIB / min(times)


def gil_release_rows() -> list[tuple[str, str, str, str, str]]:
    """Two threads against one on the calls the kernel makes: a call that releases the GIL
    scales towards 2x on two cores; one that holds it stays at 1x."""
    import threading

    import numpy as np
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from imgcrypt.luks.sectors import CipherSpec, SectorCipher

    data = os.urandom(4 * MIB)
    ecb = Cipher(algorithms.AES(os.urandom(32)), modes.ECB())
    words = np.frombuffer(data, dtype=np.uint64)
    xts = SectorCipher(CipherSpec.parse("aes-xts-plain64"), os.urandom(64), 512)

    def ecb_call() -> None:
        ctx, out = ecb.encryptor(), bytearray(len(data) + 16)
        for _ in range(8):
            ctx.update_into(data, out)

    def numpy_big() -> None:
        out = np.empty_like(words)
        for _ in range(8):
            np.bitwise_xor(words, words, out=out)

    def numpy_l2() -> None:  # the kernel's size: 16384 words, in L2
        a, out = words[: 16384].copy(), np.empty(16384, dtype=np.uint64)
        for _ in range(2048):
            np.left_shift(a, np.uint64(3), out=out)

    def kernel() -> None:
        out = bytearray(len(data))
        for _ in range(4):
            xts.encrypt_into(data, 0, out)

    rows = []
    for label, fn in (("AES-ECB update_into, 4 MiB", ecb_call),
                      ("numpy ufunc, 4 MiB arrays", numpy_big),
                      ("numpy ufunc, 128 KiB arrays", numpy_l2),
                      ("XTS kernel encrypt_into, 4 MiB", kernel)):
        timings = {}
        for threads in (1, 2):
            best_time = float("inf")
            for _ in range(3):
                pool = [threading.Thread(target=fn) for _ in range(threads)]
                began = time.perf_counter()
                for t in pool:
                    t.start()
                for t in pool:
                    t.join()
                best_time = min(best_time, (time.perf_counter() - began) / threads)
            timings[threads] = best_time
        rows.append((f"GIL: {label}, 2 threads vs 1", "", "",
                     f"{timings[1] / timings[2]:.2f}x", ""))
    return rows


def file_range_mib_s(src: Path, dst: Path, length: int, *, processes: bool) -> float:
    """The file-to-file data path in-process: transform_file_range (pread, XTS in place,
    pwrite) on all workers, 512-byte sectors; best of 3."""
    from imgcrypt.luks.pipeline import transform_file_range
    from imgcrypt.luks.sectors import CipherSpec, SectorCipher

    cipher = SectorCipher(CipherSpec.parse("aes-xts-plain64"), os.urandom(64), 512)
    times = []
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for _ in range(3):
            began = time.perf_counter()
            for _ in transform_file_range(
                lambda view, at: cipher.encrypt_into(view, at // 512, view),
                src_fd=fin.fileno(), src_offset=0, length=length, dst_fd=fout.fileno(),
                dst_offset=0, processes=processes,
            ):
                pass
            times.append(time.perf_counter() - began)
    return length / MIB / min(times)


def rekey_kdf_seconds(image: Path, passphrase: bytes, new_iterations: int) -> float:
    """The PBKDF2 work ``rekey --change`` cannot avoid: open the old slot, check the digest,
    derive the new slot's key; best of 3."""
    from imgcrypt.luks.stream import read_header

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
    from imgcrypt.luks.kdf import Pbkdf2
    from imgcrypt.luks.stream import rekey_file

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"),
                        help="image size, e.g. 256M or 1G (default 1G)")
    parser.add_argument("--dir", default="/dev/shm", help="tmpfs directory (default /dev/shm)")
    parser.add_argument("--rekey-size", type=parse_size, default=parse_size("10G"),
                        help="sparse image size for the re-key (default 10G)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each timed command; the fastest counts (default 2)")
    parser.add_argument("--iterations", type=int, default=1000,
                        help="KDF iterations for imgcrypt (default 1000)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--imgcrypt", metavar="COMMAND",
                        help="command that runs imgcrypt (default: this virtualenv's console "
                        "script), e.g. to compare two checkouts")
    args = parser.parse_args()
    if args.size < 64 * MIB or args.size % 4096:
        parser.error("--size must be a multiple of 4096 and at least 64M")
    for tool in ("qemu-img", "openssl"):
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
    size_mib = args.size / MIB
    work = Path(tempfile.mkdtemp(prefix="imgcrypt-bench-", dir=args.dir))
    rows: list[tuple[str, str, str, str, str]] = []
    checks: list[tuple[str, bool, str]] = []
    try:
        print(f"machine: {machine_summary()}")
        print(f"image: {size_mib:.0f} MiB of random data in {work}; best of {args.repeat} runs\n",
              flush=True)
        src = work / "src.raw"
        make_random_file(src, args.size)
        pw = secret_file(work / "pw", os.urandom(16).hex().encode())

        # -- qemu-img, the baseline ----------------------------------------------------------
        qemu_luks, qemu_raw = work / "qemu.luks", work / "qemu.raw"
        secret = ["--object", f"secret,id=s0,file={pw}"]
        q_enc = best([run_timed(["qemu-img", "convert", "-f", "raw", "-O", "luks", *secret,
                                 "-o", "key-secret=s0,iter-time=10", str(src), str(qemu_luks)],
                                retry_qemu=True) for _ in range(args.repeat)])
        q_dec = best([run_timed(["qemu-img", "convert", *secret, "--image-opts",
                                 f"driver=luks,key-secret=s0,file.filename={qemu_luks}",
                                 "-O", "raw", str(qemu_raw)], retry_qemu=True)
                      for _ in range(args.repeat)])
        if not same_content(src, qemu_raw):
            raise BenchError("qemu-img round trip changed the data")
        qemu_luks.unlink()
        qemu_raw.unlink()
        q_enc_rate, q_dec_rate = size_mib / q_enc.seconds, size_mib / q_dec.seconds
        rows.append(("qemu-img LUKS1 encrypt", f"{q_enc.seconds:.2f}", f"{q_enc_rate:.0f}",
                     "1.0x", f"{q_enc.max_rss_kib / 1024:.0f}"))
        rows.append(("qemu-img LUKS1 decrypt", f"{q_dec.seconds:.2f}", f"{q_dec_rate:.0f}",
                     "1.0x", f"{q_dec.max_rss_kib / 1024:.0f}"))

        # -- imgcrypt end to end -------------------------------------------------------------
        enc_path, dec_path = work / "img.luks", work / "img.raw"
        for label, extra in CONFIGS:
            enc = best([run_timed([*imgcrypt, "encrypt", str(src), str(enc_path), *extra,
                                   "--iterations", str(args.iterations),
                                   "--passphrase-file", str(pw), "--force"])
                        for _ in range(args.repeat)])
            dec = best([run_timed([*imgcrypt, "decrypt", str(enc_path), str(dec_path),
                                   "--passphrase-file", str(pw), "--force"])
                        for _ in range(args.repeat)])
            if not same_content(src, dec_path):
                raise BenchError(f"imgcrypt {label} round trip changed the data")
            for verb, run, base in (("encrypt", enc, q_enc_rate), ("decrypt", dec, q_dec_rate)):
                rate = size_mib / run.seconds
                ratio = rate / base
                rss = run.max_rss_kib / 1024
                rows.append((f"imgcrypt {label} {verb}", f"{run.seconds:.2f}", f"{rate:.0f}",
                             f"{ratio:.1f}x", f"{rss:.0f}"))
                checks.append((f"{label} {verb} >= {SPEEDUP_TARGET:.0f}x qemu-img",
                               ratio >= SPEEDUP_TARGET, f"{ratio:.2f}x ({rate:.0f} MiB/s)"))
                checks.append((f"{label} {verb} peak RSS < {RSS_LIMIT_MIB} MiB",
                               rss < RSS_LIMIT_MIB, f"{rss:.1f} MiB"))
            enc_path.unlink()
            dec_path.unlink()

        # -- re-key of a sparse image --------------------------------------------------------
        small = work / "small.raw"
        make_random_file(small, MIB)
        image = work / "rekey.luks"
        run_timed([*imgcrypt, "encrypt", str(small), str(image), "--format", "luks1",
                   "--iterations", str(args.iterations), "--passphrase-file", str(pw)])
        os.truncate(image, args.rekey_size)  # sparse: the payload is never touched
        passphrases = [pw, secret_file(work / "pw2", os.urandom(16).hex().encode())]
        rekeys = []
        for i in range(max(args.repeat, 5)):
            old, new = passphrases[i % 2], passphrases[(i + 1) % 2]
            rekeys.append(run_timed([*imgcrypt, "rekey", str(image), "--passphrase-file",
                                     str(old), "--change", "--new-passphrase-file", str(new),
                                     "--iterations", str(args.iterations)]))
        current = passphrases[len(rekeys) % 2]
        startup = best([run_timed([*imgcrypt, "rekey", "--help"]) for _ in range(5)])
        kdf = rekey_kdf_seconds(image, current.read_bytes(), args.iterations)
        in_process = rekey_in_process_seconds(image, passphrases, len(rekeys) % 2,
                                              args.iterations)
        rekey = best(rekeys)
        overhead = rekey.seconds - startup.seconds - kdf
        rows.append((f"imgcrypt rekey --change, {args.rekey_size / 2**30:.0f} GiB sparse",
                     f"{rekey.seconds:.3f}", "", "", f"{rekey.max_rss_kib / 1024:.0f}"))
        rows.append(("  of which interpreter start (rekey --help)", f"{startup.seconds:.3f}",
                     "", "", ""))
        rows.append(("  of which KDF alone (in-process PBKDF2)", f"{kdf:.3f}", "", "", ""))
        rows.append(("  rekey_file() in-process, for comparison", f"{in_process:.3f}", "", "", ""))
        checks.append(("rekey <= KDF + 50 ms (after interpreter start)",
                       overhead <= REKEY_SLACK_S, f"KDF + {overhead * 1000:.0f} ms"))
        checks.append((f"rekey peak RSS < {RSS_LIMIT_MIB} MiB",
                       rekey.max_rss_kib / 1024 < RSS_LIMIT_MIB,
                       f"{rekey.max_rss_kib / 1024:.1f} MiB"))

        # -- the kernel against OpenSSL, in-process: after every child whose RSS counts -------
        openssl_rate = openssl_xts_mib_s()
        with open(src, "rb") as f:
            sample = f.read(64 * MIB)
        kernel = {}
        for sector in (512, 4096):
            for parallel in (False, True):
                kernel[sector, parallel] = kernel_mib_s(sector, sample, parallel=parallel)
        del sample
        rows.append(("openssl speed aes-256-xts (1 core)", "", f"{openssl_rate:.0f}", "", ""))
        for (sector, parallel), rate in kernel.items():
            who = "all workers" if parallel else "1 thread"
            rows.append((f"XTS kernel {sector}-byte sectors, {who}", "", f"{rate:.0f}",
                         f"{rate / openssl_rate:.0%} of openssl", ""))
        scratch = work / "range.out"
        for processes in (False, True):
            rate = file_range_mib_s(src, scratch, min(args.size, 256 * MIB), processes=processes)
            who = "forked workers" if processes else "worker threads"
            rows.append((f"file to file in-process (pread, XTS, pwrite), {who}", "",
                         f"{rate:.0f}", f"{rate / openssl_rate:.0%} of openssl", ""))
        scratch.unlink()
        rows += gil_release_rows()
        single = min(kernel[512, False], kernel[4096, False])
        checks.append((f"XTS kernel (1 thread) >= {KERNEL_FRACTION_TARGET:.0%} of openssl 1 core",
                       single >= KERNEL_FRACTION_TARGET * openssl_rate,
                       f"{single / openssl_rate:.1%} ({single:.0f} of {openssl_rate:.0f} MiB/s)"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print_table(("step", "seconds", "MiB/s", "vs qemu-img", "peak RSS MiB"), rows)
    print()
    failed = 0
    for name, ok, detail in checks:
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    print(f"\n{len(checks) - failed} of {len(checks)} targets met")
    return 1 if failed and args.strict else 0


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        print("  ".join(cells).rstrip())


if __name__ == "__main__":
    sys.exit(main())

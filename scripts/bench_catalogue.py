#!/usr/bin/env python3
"""``imgcrypt catalogue`` on a real Glance holding --images images: throughput and bytes read.

Starts Keystone, Barbican, Glance (no import plugins, imgcrypt's consumer filter), Redis and
MariaDB as child processes (the tests' helpers), fills Glance with a mixed catalogue — LUKS1
under shared keys (5 images a key) and under unique keys, plaintext, images claiming an
encryption they lack, signed images (48 MiB) of which half are tampered with in the store —
plus a few images 16 times larger than the rest (48 MiB), then measures:

* ``audit`` on the single-process default (taskflow's parallel engine, SQLite), and posted to
  the Redis jobboard for 1, 2 and 4 conductor processes (flow state in MariaDB): images/s;
* bytes read per image by ``audit`` for the small and the large images (header only);
* ``verify`` of the signed images against the copy ceiling (the same images only downloaded).

    .venv/bin/python scripts/bench_catalogue.py [--images 1000] [--workdir DIR]

Needs the three OpenStack virtualenvs (IMGCRYPT_*_VENV or ./.venv-*), cryptsetup, openssl,
redis-server and mariadbd. Prints one JSON object of figures at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.cloud.test_glance_e2e import flip_stored_byte  # noqa: E402
from tests.helpers.catalogue_cloud import (  # noqa: E402
    BATCH,
    _luks1,
    cli_env,
    connection,
    enc_props,
    imgcrypt,
    json_lines,
)
from tests.helpers.jobboard_servers import start_mariadb, start_redis  # noqa: E402
from tests.helpers.openstack_servers import running_cloud, stop  # noqa: E402

SMALL = 3 << 20
LARGE = 48 << 20


def say(text: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


class LoadAverage:
    """The one-minute load average, sampled every few seconds while a phase runs: the machine
    is shared, so each figure is reported beside the load it was taken under."""

    def __init__(self, every: float = 5.0) -> None:
        self._every = every
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self._samples.append(os.getloadavg()[0])
            if self._stop.wait(self._every):
                return

    def __enter__(self) -> LoadAverage:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict[str, float]:
        return {"load_min": round(min(self._samples), 2),
                "load_mean": round(statistics.fmean(self._samples), 2),
                "load_max": round(max(self._samples), 2)}


@contextlib.contextmanager
def services(workdir: Path) -> Iterator[dict[str, Any]]:
    for name in ("redis", "mariadb"):
        (workdir / name).mkdir()
    with running_cloud(workdir) as (keystone, _, glance), contextlib.ExitStack() as stack:
        redis, rp = start_redis(workdir / "redis")
        stack.callback(stop, rp)
        maria, mp = start_mariadb(workdir / "mariadb")
        stack.callback(stop, mp)
        yield {"keystone": keystone, "glance": glance, "redis": redis, "mariadb": maria}


def build(svc: dict[str, Any], workdir: Path, total: int, cryptsetup: str, openssl: str
          ) -> dict[str, list[str]]:
    """The catalogue: ids by group."""
    from imgcrypt.catalogue.cloud import CatalogueImages
    from imgcrypt.keys.barbican import BarbicanKeyManager
    from imgcrypt.keys.manager import KeyOrder
    from imgcrypt.keys.rules import passphrase_for

    keystone, glance = svc["keystone"], svc["glance"]
    conn = connection(keystone, glance)
    images = CatalogueImages(conn)
    barbican = BarbicanKeyManager.from_session(conn.session, region_name="RegionOne")
    files = workdir / "files"
    files.mkdir()
    groups: dict[str, list[str]] = {}
    uploads: list[tuple[str, Path, dict[str, str]]] = []

    def new_luks(name: str, size: int = SMALL) -> tuple[str, Path]:
        key_id = barbican.create_key(KeyOrder(bit_length=256))
        path = files / f"{name}.img"
        _luks1(cryptsetup, path, passphrase_for(barbican.get(key_id)), files)
        if size > SMALL:
            with path.open("r+b") as f:
                f.truncate(size)
        return key_id, path

    plain = files / "plain.img"
    plain.write_bytes(os.urandom(SMALL))
    large_plain = files / "large-plain.img"
    large_plain.write_bytes(os.urandom(LARGE))
    shared_keys = total // 25  # 5 images a key: a fifth of the catalogue
    unique = total // 5
    liars = total // 50
    signed = max(2, total // 100)
    large = max(4, total // 50)
    plaintext = total - 5 * shared_keys - unique - liars - signed - large
    say(f"making {shared_keys + unique + large // 2} LUKS1 files with cryptsetup")
    for i in range(shared_keys):
        key_id, path = new_luks(f"shared{i}")
        uploads += [("shared", path, enc_props(key_id)) for _ in range(5)]
    for i in range(unique):
        key_id, path = new_luks(f"unique{i}")
        uploads.append(("unique", path, enc_props(key_id, standard=i % 2 == 0)))
    for i in range(large // 2):
        key_id, path = new_luks(f"large{i}", LARGE)
        uploads.append(("large-luks", path, enc_props(key_id)))
    uploads += [("large-plain", large_plain, {}) for _ in range(large - large // 2)]
    uploads += [("plain", plain, {}) for _ in range(plaintext)]
    liar_key = barbican.create_key(KeyOrder(bit_length=256))
    uploads += [("liar", plain, enc_props(liar_key)) for _ in range(liars)]
    # Signed images are the large ones: verify's cost is the bytes it streams.
    sig = _sign(svc, workdir, large_plain, openssl)
    uploads += [("signed", large_plain, sig) for _ in range(signed)]
    say(f"uploading {len(uploads)} images")
    start = time.monotonic()

    def put(item: tuple[str, Path, dict[str, str]]) -> tuple[str, str]:
        group, path, props = item
        image = images.create(f"bench-{group}", "raw", "bare", {**props, BATCH: "bench"})
        with path.open("rb") as f:
            images.upload(image.image_id, f, path.stat().st_size, stage=False)
        return group, image.image_id

    # One at a time: the test Glance keeps its records in SQLite, which answers concurrent
    # image writes with "database is locked" (HTTP 500).
    for item in uploads:
        group, image_id = put(item)
        groups.setdefault(group, []).append(image_id)
    say(f"uploaded in {time.monotonic() - start:.0f} s")
    for image_id in groups["signed"][: len(groups["signed"]) // 2]:
        flip_stored_byte(glance, image_id)
    shutil.rmtree(files)
    return groups


def _sign(svc: dict[str, Any], workdir: Path, plain: Path, openssl: str) -> dict[str, str]:
    env = cli_env(svc["keystone"], svc["glance"], workdir)
    key, cert = workdir / "signer.key", workdir / "signer.crt"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:secp384r1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "30", "-subj", "/CN=bench signer", "-addext",
                    "keyUsage=critical,digitalSignature"], check=True, capture_output=True)
    made = json.loads(imgcrypt(env, "keys", "create", "--type", "certificate", "--payload-file",
                               str(cert), "--key-manager", "barbican", "--json").stdout)
    cert_id = str(made.get("key_id") or made.get("secret_id") or made["id"])
    out = workdir / "sig.json"
    done = imgcrypt(env, "sign", str(plain), "--key", str(key), "--cert-id", cert_id,
                    "--key-manager", "barbican", "--mode", "glance", "--hash", "SHA-384",
                    "--properties-out", str(out))
    assert done.returncode == 0, done.stderr
    props = json.loads(out.read_text())
    return {str(k): str(v) for k, v in props.get("properties", props).items()}


def timed(env: dict[str, str], *args: str) -> tuple[float, dict[str, dict[str, Any]]]:
    start = time.monotonic()
    result = imgcrypt(env, "catalogue", *args, "--json", timeout=7200)
    elapsed = time.monotonic() - start
    if result.returncode not in (0, 4):
        raise RuntimeError(result.stderr)
    return elapsed, json_lines(result.stdout)[0]


def distributed_audit(env: dict[str, str], svc: dict[str, Any], workdir: Path, n: int,
                      run: int) -> float:
    board = f"{svc['redis'].url}/bench{run}"
    persistence = workdir / f"persistence{run}.url"
    persistence.write_text(svc["mariadb"].url)
    persistence.chmod(0o600)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "imgcrypt", "catalogue", "conductor", "--jobboard", board,
         "--persistence", f"@{persistence}", "--name", f"c{run}-{i}", "--workers", "4"],
        env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for i in range(n)]
    try:
        elapsed, _ = timed(env, "audit", "--filter", f"{BATCH}=bench", "--jobboard",
                                 board, "--persistence", f"@{persistence}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=120)
    return elapsed


def copy_ceiling(svc: dict[str, Any], ids: list[str]) -> tuple[float, int]:
    from imgcrypt.catalogue.cloud import CatalogueImages

    images = CatalogueImages(connection(svc["keystone"], svc["glance"]))
    start = time.monotonic()
    total = 0
    for image_id in ids:
        for chunk in images.download(image_id, images.get(image_id).declared_size()):
            total += len(chunk)
    return time.monotonic() - start, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--conductors", default="1,2,4",
                        help="conductor counts to audit with; 'none' measures only the "
                        "single process and verify")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-catalogue-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cryptsetup = shutil.which("cryptsetup") or "/usr/sbin/cryptsetup"
    openssl = shutil.which("openssl") or "/usr/bin/openssl"
    figures: dict[str, Any] = {"images": args.images, "cpus": os.cpu_count()}
    with services(workdir) as svc:
        with LoadAverage() as load:
            groups = build(svc, workdir, args.images, cryptsetup, openssl)
        figures["populate"] = load.figures()
        total = sum(len(v) for v in groups.values())
        figures["catalogue"] = {g: len(v) for g, v in groups.items()}
        env = cli_env(svc["keystone"], svc["glance"], workdir)
        say("audit, single process (parallel engine, 8 workers, SQLite)")
        with LoadAverage() as load:
            elapsed, records = timed(env, "audit", "--filter", f"{BATCH}=bench", "--workers",
                                     "8", "--state", str(workdir / "audit.sqlite"))
        figures["audit_local"] = {"seconds": round(elapsed, 1),
                                  "images_per_second": round(total / elapsed, 1),
                                  **load.figures()}
        read = {g: sorted({records[i]["bytes_read"] for i in ids})
                for g, ids in groups.items()}
        figures["bytes_read_per_image"] = {
            g: (v[0] if len(v) == 1 else {"min": v[0], "median": statistics.median(v),
                                          "max": v[-1]}) for g, v in read.items()}
        say(f"so far: {json.dumps(figures)}")  # a run cut short still leaves its figures
        figures["audit_conductors"] = {}
        counts = [] if args.conductors == "none" else args.conductors.split(",")
        for run, n in enumerate(int(x) for x in counts):
            say(f"audit, {n} conductor(s) (4 jobs each), Redis jobboard, MariaDB")
            with LoadAverage() as load:
                elapsed = distributed_audit(env, svc, workdir, n, run)
            figures["audit_conductors"][n] = {"seconds": round(elapsed, 1),
                                              "images_per_second": round(total / elapsed, 1),
                                              **load.figures()}
            say(f"so far: {json.dumps(figures)}")
        signed = groups["signed"]
        say("verify of the signed images, and the copy ceiling")
        with LoadAverage() as load:
            elapsed, records = timed(env, "verify", "--filter", f"{BATCH}=bench", "--workers",
                                     "4", "--state", str(workdir / "verify.sqlite"))
            verified = [records[i] for i in signed]
            copy_s, copied = copy_ceiling(svc, signed)
        figures["verify"] = {
            "seconds_whole_catalogue": round(elapsed, 1),
            "signed_images": len(signed),
            "tampered_found": sum("tampered" in r["findings"] for r in verified),
            "copy_ceiling_mib_per_second": round(copied / copy_s / (1 << 20), 1),
            **load.figures(),
        }
        with LoadAverage() as load:
            verify_only, _ = timed(env, "verify", "--filter", f"{BATCH}=bench", "--filter",
                                   "img_signature_hash_method=SHA-384", "--workers", "1",
                                   "--state", str(workdir / "verify1.sqlite"))
        figures["verify"]["signed_only_one_worker_mib_per_second"] = round(
            copied / verify_only / (1 << 20), 1)
        figures["verify"]["signed_only_one_worker"] = load.figures()
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

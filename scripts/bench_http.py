#!/usr/bin/env python3
"""imgcrypt's HTTP lines (issue 25): ``imgcrypt upload`` and ``imgcrypt download`` (decrypting)
against a real Glance on loopback, each beside the same transfer without imgcrypt.

Starts Keystone, Barbican and Glance (the tests' helpers, no import plugins) with their data on
the benchmark's directory, encrypts the raw image with a new Barbican key, then times, best of
``--repeat``:

* ``imgcrypt upload IMAGE --method upload`` (create, PUT the data, register the key consumer)
  against ``curl``: the same create and PUT of the same bytes, with a token fetched beforehand;
* ``imgcrypt download ID OUT`` (sha512 + md5 + size checked, decrypted, written) against
  ``curl`` of ``/v2/images/ID/file`` to a file; ``imgcrypt download --encrypted`` beside them
  (checked, not decrypted) shows what the decryption costs.

Run on its own (``.venv/bin/python scripts/bench_http.py [--size 1G]``) or as the ``--http``
section of ``scripts/bench.py``. The token is read by curl from a 0600 header file, and the
password from a 0600 clouds.yaml, never from a command line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import (  # noqa: E402
    MIB,
    BenchError,
    Run,
    best,
    imgcrypt_command,
    machine_load,
    make_random_file,
    parse_size,
    rate_row,
    report,
    run_timed,
    same_content,
)

#: imgcrypt's transfer against the same transfer without it.
HTTP_FRACTION_TARGET = 0.80
Check = tuple[str, bool, str]


def say(text: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def _private(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def person_env(keystone: Any, glance: Any, home: Path) -> dict[str, str]:
    """A person's environment: a clouds.yaml entry ``bench`` (password in the 0600 file), no
    OS_* variable of this machine's user."""
    creds = keystone.credentials("demo")
    config = home / ".config"  # where openstacksdk and imgcrypt both look
    (config / "openstack").mkdir(parents=True)
    entry = {"clouds": {"bench": {
        "auth": {"auth_url": creds["OS_AUTH_URL"], "username": "demo",
                 "password": creds["OS_PASSWORD"], "project_name": "demo",
                 "user_domain_id": "default", "project_domain_id": "default"},
        "region_name": "RegionOne", "interface": "public", "identity_api_version": 3,
        "image_endpoint_override": glance.endpoint}}}
    _private(config / "openstack" / "clouds.yaml", json.dumps(entry))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update({"HOME": str(home), "XDG_CONFIG_HOME": str(config),
                "XDG_STATE_HOME": str(home / "state"), "OS_CLOUD": "bench"})
    return env


def _run(imgcrypt: list[str], env: dict[str, str], *args: str) -> dict[str, Any]:
    import subprocess

    done = subprocess.run([*imgcrypt, *args, "--json"], capture_output=True, text=True,
                          env=env, timeout=1800, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise BenchError(f"imgcrypt {args[0]} failed ({done.returncode}): {done.stderr}")
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def section(imgcrypt: list[str], work: Path, src: Path, *, repeat: int,
            iterations: int) -> tuple[list[tuple[str, ...]], list[Check]]:
    """The HTTP rows and checks, measured on ``src`` (a raw image) under ``work``."""
    from tests.helpers.openstack_servers import DEMO_PASSWORD, keystone_token, running_cloud

    rows: list[tuple[str, ...]] = []
    checks: list[Check] = []
    size_mib = src.stat().st_size / MIB
    ic = " ".join(shlex.quote(x) for x in imgcrypt)
    services = work / "services"
    services.mkdir()
    say("starting Keystone, Barbican and Glance")
    with running_cloud(services) as (keystone, _, glance):
        home = work / "home"
        env = person_env(keystone, glance, home)
        # The timed commands get that environment and nothing else of this process's.
        ic = "env -i " + " ".join(f"{k}={shlex.quote(env[k])}" for k in (
            "PATH", "HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "OS_CLOUD")) + " " + ic
        image = work / "http.luks"
        say("encrypting the image with a new Barbican key")
        key_id = _run(imgcrypt, env, "encrypt", str(src), str(image), "--new-key",
                      "--key-manager", "barbican", "--format", "luks1", "--iterations",
                      str(iterations))["key_id"]
        # do_not_delete: deleting the benchmark's images must not delete the key they share.
        props = _run(imgcrypt, env, "properties", str(image), "--key-id", key_id,
                     "--key-manager", "barbican", "--size", str(src.stat().st_size),
                     "--deletion-policy", "do_not_delete")
        props = props.get("properties", props)
        enc = work / "enc.json"
        enc.write_text(json.dumps(props))
        token = keystone_token(keystone.auth_url, "demo", DEMO_PASSWORD, "demo")
        header = _private(work / "token.hdr", f"X-Auth-Token: {token}\n")
        create = work / "create.json"
        create.write_text(json.dumps({**props, "name": "curl", "disk_format": "raw",
                                      "container_format": "bare"}))
        api = f"{glance.endpoint}/v2/images"
        curl = f"curl -sSf --noproxy '*' -H @{shlex.quote(str(header))}"
        uploaded: list[str] = []

        def curl_upload() -> Run:
            script = (
                f"id=$({curl} -H 'Content-Type: application/json' -d @{create} {api} "
                "| grep -o '\"id\": *\"[0-9a-f-]*\"' | head -1 | cut -d'\"' -f4) && "
                f"{curl} -X PUT -H 'Content-Type: application/octet-stream' "
                f"-T {shlex.quote(str(image))} {api}/$id/file && echo $id > {work}/curl.id")
            run = run_timed(script, shell=True)
            uploaded.append((work / "curl.id").read_text().strip())
            return run

        def imgcrypt_upload() -> Run:
            run = run_timed(f"{ic} upload {shlex.quote(str(image))} --name imgcrypt "
                            f"--properties {enc} --method upload --json > {work}/ic.json",
                            shell=True)
            uploaded.append(json.loads((work / "ic.json").read_text())["image_id"])
            return run

        say("timing the uploads")
        c_up = best([curl_upload() for _ in range(repeat)])
        i_up = best([imgcrypt_upload() for _ in range(repeat)])
        image_id = uploaded[-1]  # imgcrypt's own upload: the one the downloads read
        for old in uploaded[:-1]:
            run_timed(f"{curl} -X DELETE {api}/{old}", shell=True)

        out = work / "http.out"
        say("timing the downloads")
        c_down = best([run_timed(f"{curl} -o {out} {api}/{image_id}/file", shell=True)
                       for _ in range(repeat)])
        if not same_content(image, out):
            raise BenchError("curl's download differs from the uploaded image")
        out.unlink()
        ic_down = f"{ic} download {image_id} {out} --force --json > /dev/null"
        i_enc = best([run_timed(ic_down + " --encrypted", shell=True)
                      for _ in range(repeat)])
        out.unlink()
        i_dec = best([run_timed(ic_down, shell=True) for _ in range(repeat)])
        if not same_content(src, out):
            raise BenchError("imgcrypt download did not give back the raw image")
        out.unlink()
        run_timed(f"{curl} -X DELETE {api}/{image_id}", shell=True)

    for label, ours, theirs, base in (
        ("imgcrypt upload (create, PUT, key consumer)", i_up, c_up, "curl create + PUT"),
        ("imgcrypt download, decrypting", i_dec, c_down, "curl GET"),
    ):
        ratio = theirs.seconds / ours.seconds
        rows.append(rate_row(f"{base} (the HTTP ceiling)", theirs, size_mib, None, None))
        rows.append(rate_row(label, ours, size_mib, size_mib / theirs.seconds, None,
                             f"of {base.split(' ')[0]}"))
        checks.append((f"{label.split(' (')[0].split(',')[0]} >= "
                       f"{HTTP_FRACTION_TARGET:.0%} of {base}", ratio >= HTTP_FRACTION_TARGET,
                       f"{ratio:.0%} ({size_mib / ours.seconds:.0f} of "
                       f"{size_mib / theirs.seconds:.0f} MiB/s)"))
        if label.startswith("imgcrypt download"):
            rows.append(rate_row("imgcrypt download --encrypted (checked, not decrypted)",
                                 i_enc, size_mib, size_mib / theirs.seconds, None, "of curl"))
    return rows, checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"),
                        help="raw image size (default 1G)")
    parser.add_argument("--dir", default="/dev/shm", help="tmpfs directory (default /dev/shm)")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each (default 2)")
    parser.add_argument("--iterations", type=int, default=1000, help="KDF iterations")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--imgcrypt", metavar="COMMAND", help="command that runs imgcrypt")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        print("bench_http: curl is not installed", file=sys.stderr)
        return 2
    imgcrypt = shlex.split(args.imgcrypt) if args.imgcrypt else imgcrypt_command()
    work = Path(tempfile.mkdtemp(prefix="imgcrypt-bench-http-", dir=args.dir))
    try:
        print(f"at start: {machine_load()}", flush=True)
        src = work / "src.raw"
        make_random_file(src, args.size)
        rows, checks = section(imgcrypt, work, src, repeat=args.repeat,
                               iterations=args.iterations)
    except BenchError as e:
        print(f"bench_http: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(rows, checks, strict=args.strict)


if __name__ == "__main__":
    sys.exit(main())

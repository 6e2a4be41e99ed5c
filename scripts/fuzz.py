#!/usr/bin/env python3
"""``make fuzz``: coverage-guided fuzzing of every parser, then SIGKILL crash-safety runs.

    python scripts/fuzz.py                      # 1,000,000 executions per entry point
    python scripts/fuzz.py --quick              # CI-sized: 2,000 per entry point, few kills
    python scripts/fuzz.py --executions 200000 --targets luks1_header,luks2_json
    python scripts/fuzz.py --max-seconds 600    # stop each target after 10 minutes

Each entry point of :mod:`fuzz.targets` runs in its own process under atheris (libFuzzer); the
report gives, per entry point, the executions actually done, crashes (exceptions other than
imgcrypt's own), the slowest input and the peak RSS. Findings are kept under ``--out``. Then the
CLI is killed with SIGKILL at every file-system event and at random times during encrypt,
decrypt, rekey and keystore writes, and the invariants of ``fuzz.crash`` are checked.

Exit status: 0 when nothing was found, 1 otherwise.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SLOW_SECONDS = 1.0
RSS_LIMIT_MIB = 256


def _run_target(name: str, runs: int, out: Path, max_seconds: int | None,
                seed: int) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "fuzz.atheris_runner", name, "--runs", str(runs),
               "--out", str(out), "--seed", str(seed)]
    if max_seconds:
        command.append(f"-max_total_time={max_seconds}")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(out / "libfuzzer.log", "wb") as log:
        proc = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        stats: dict[str, Any] = json.loads((out / "stats.json").read_text())
    except (OSError, ValueError):
        stats = {"target": name, "executions": 0, "crashes": 0, "unique_crashes": []}
    stats["returncode"] = proc.returncode
    # The runner writes its counter every few thousand inputs; libFuzzer's own total is exact.
    done = re.search(rb"Done (\d+) runs in (\d+) second", (out / "libfuzzer.log").read_bytes())
    if done:
        stats["executions"] = int(done.group(1))
        stats["seconds"] = max(float(done.group(2)), 1.0)
    return stats


def fuzz(args: argparse.Namespace) -> list[dict[str, Any]]:
    from fuzz import targets

    available = targets.targets()
    names = args.targets.split(",") if args.targets else list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise SystemExit(f"unknown or unavailable targets: {', '.join(unknown)}")
    results = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(_run_target, name, args.executions, args.out / name, args.max_seconds,
                        args.seed + i): name
            for i, name in enumerate(names)
        }
        for future in concurrent.futures.as_completed(futures):
            stats = future.result()
            results.append(stats)
            print(_line(stats), flush=True)
    return sorted(results, key=lambda s: names.index(s["target"]))


def _line(s: dict[str, Any]) -> str:
    rate = s["executions"] / s["seconds"] if s.get("seconds") else 0
    return (f"{s['target']:<22} {s['executions']:>10,} exec  {rate:>7,.0f}/s  "
            f"crashes {s['crashes']:>4}  slowest {s.get('slowest_seconds', 0):.3f} s  "
            f"peak RSS {s.get('peak_rss_mib', 0)} MiB")


def problems_of(s: dict[str, Any], wanted: int, max_seconds: int | None) -> list[str]:
    found = [c["signature"] for c in s.get("unique_crashes", [])]
    if s.get("slow_inputs"):
        found.append(f"{s['slow_inputs']} input(s) over {SLOW_SECONDS} s")
    if s.get("memory_findings") or s.get("peak_rss_mib", 0) - s.get("baseline_rss_mib", 0) \
            > RSS_LIMIT_MIB:
        found.append(f"memory grew over {RSS_LIMIT_MIB} MiB")
    if s["executions"] < wanted and not max_seconds:
        found.append(f"stopped after {s['executions']} of {wanted} executions "
                     f"(libFuzzer exit {s.get('returncode')})")
    return found


def kill_points(args: argparse.Namespace) -> dict[str, Any]:
    from fuzz import crash

    cryptsetup = shutil.which("cryptsetup") or shutil.which("cryptsetup", path="/usr/sbin:/sbin")
    with tempfile.TemporaryDirectory(prefix="imgcrypt-kill-") as tmp:
        workspace = crash.Workspace(Path(tmp), size=args.kill_size << 20, cryptsetup=cryptsetup,
                                    seed=args.seed)
        campaign = crash.run_campaign(workspace, crash.KINDS, args.kill_points,
                                      rng=random.Random(args.seed), progress=True)
    return {"summary": campaign.summary(),
            "failures": [o.__dict__ for o in campaign.failures()],
            "cryptsetup": cryptsetup is not None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=1_000_000,
                        help="executions per entry point (default 1,000,000)")
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized run: 2,000 executions per entry point, 3 timed kills")
    parser.add_argument("--targets", help="comma-separated entry points (default: all)")
    parser.add_argument("--max-seconds", type=int, default=None,
                        help="stop each entry point after this many seconds")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--kill-points", type=int, default=50,
                        help="random-time kills per command, on top of every event kill point")
    parser.add_argument("--kill-size", type=int, default=24, help="MiB of source image")
    parser.add_argument("--no-fuzz", action="store_true", help="only the kill-point runs")
    parser.add_argument("--no-kill", action="store_true", help="only the fuzzing")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--out", type=Path, default=ROOT / "fuzz-out")
    args = parser.parse_args()
    if args.quick:
        args.executions = min(args.executions, 2000)
        args.kill_points = min(args.kill_points, 3)
        args.kill_size = min(args.kill_size, 4)
    if not args.no_fuzz and importlib.util.find_spec("atheris") is None:
        print("atheris is not installed: pip install atheris (a dev dependency)",
              file=sys.stderr)
        return 1

    report: dict[str, Any] = {"seed": args.seed, "executions_per_target": args.executions}
    failed = False
    if not args.no_fuzz:
        print(f"fuzzing: {args.executions:,} executions per entry point, {args.jobs} jobs, "
              f"seed {args.seed}", flush=True)
        results = fuzz(args)
        report["fuzz"] = results
        print("\nentry point               executions  crashes  slowest   peak RSS")
        for s in results:
            found = problems_of(s, args.executions, args.max_seconds)
            failed |= bool(found)
            print(f"  {s['target']:<22} {s['executions']:>10,}  {s['crashes']:>7}  "
                  f"{s.get('slowest_seconds', 0):>6.3f} s  {s.get('peak_rss_mib', 0):>5} MiB"
                  + ("" if not found else "  <- " + "; ".join(found)))
        total = sum(s["executions"] for s in results)
        print(f"  total {total:,} executions over {len(results)} entry points")
    if not args.no_kill:
        print("\nkill points (SIGKILL during encrypt, decrypt, rekey, keystore writes)", flush=True)
        kills = kill_points(args)
        report["kill_points"] = kills
        for kind, entry in kills["summary"].items():
            print(f"  {kind:<9} {entry['kill_points']:>4} points, {entry['killed']:>4} killed, "
                  f"{entry['failures']} failures, states {entry['states']}, "
                  f"{entry['temp_files_left']} temp files left by SIGKILL")
        for failure in kills["failures"]:
            print(f"  FAILURE {failure}")
        failed |= bool(kills["failures"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"\nreport: {args.out / 'report.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

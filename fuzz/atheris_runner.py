"""One coverage-guided (atheris/libFuzzer) run of one target, in its own process.

    python -m fuzz.atheris_runner TARGET --runs N --out DIR [libFuzzer flags...]

Every input goes through :func:`fuzz.targets.check`: an exception other than ImgcryptError, an
input slower than :data:`SLOW_SECONDS`, or resident memory growing by more than
:data:`RSS_GROWTH_LIMIT` is recorded with the input that caused it, and fuzzing goes on, so one
run counts every distinct finding. ``DIR/stats.json`` is rewritten as the run proceeds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

SLOW_SECONDS = 1.0
RSS_GROWTH_LIMIT = 256 << 20
STATS_EVERY = 2000


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("target")
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args, libfuzzer_args = parser.parse_known_args()

    import atheris  # type: ignore[import-untyped]

    with atheris.instrument_imports(include=["imgcrypt", "fuzz"]):
        from fuzz import seeds, targets

        target = targets.targets()[args.target]
        # Import every module the target touches while instrumentation is on.
        for seed in seeds.SEEDS[args.target]():
            targets.check(target, seed)

    out: Path = args.out
    corpus = out / "corpus"
    findings_dir = out / "findings"
    corpus.mkdir(parents=True, exist_ok=True)
    findings_dir.mkdir(parents=True, exist_ok=True)
    # Fresh seeds from this process (LUKS2 keyslot material must match its own JSON).
    for index, seed in enumerate(seeds.SEEDS[args.target]()):
        (corpus / f"fresh-seed-{index}").write_bytes(seed)

    baseline = _rss_bytes()
    stats: dict[str, Any] = {
        "target": args.target, "description": target.description, "executions": 0,
        "crashes": 0, "unique_crashes": [], "slow_inputs": 0, "memory_findings": 0,
        "slowest_seconds": 0.0, "slowest_input": None, "baseline_rss_mib": baseline >> 20,
        "peak_rss_mib": baseline >> 20, "seconds": 0.0, "complete": False,
    }
    started = time.monotonic()
    signatures: set[str] = set()

    def write_stats() -> None:
        stats["seconds"] = round(time.monotonic() - started, 2)
        stats["peak_rss_mib"] = _rss_bytes() >> 20
        stats["complete"] = stats["executions"] >= args.runs
        tmp = out / "stats.json.tmp"
        tmp.write_text(json.dumps(stats, indent=1))
        os.replace(tmp, out / "stats.json")

    def save(kind: str, data: bytes, detail: str) -> str:
        name = f"{kind}-{targets.digest(data)}"
        (findings_dir / name).write_bytes(data)
        (findings_dir / f"{name}.txt").write_text(detail)
        return name

    def one_input(data: bytes) -> None:
        t0 = time.perf_counter()
        error = targets.check(target, data)
        elapsed = time.perf_counter() - t0
        stats["executions"] += 1
        if error is not None:
            stats["crashes"] += 1
            tb = traceback.extract_tb(error.__traceback__)
            where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else "?"
            signature = f"{type(error).__name__} at {where}"
            if signature not in signatures and len(signatures) < 50:
                signatures.add(signature)
                detail = "".join(traceback.format_exception(error))
                stats["unique_crashes"].append(
                    {"signature": signature, "input": save("crash", data, detail)})
        if elapsed > stats["slowest_seconds"]:
            stats["slowest_seconds"] = round(elapsed, 4)
            stats["slowest_input"] = save("slowest", data, f"{elapsed:.4f} s")
        if elapsed > SLOW_SECONDS:
            stats["slow_inputs"] += 1
            save("slow", data, f"{elapsed:.4f} s")
        if _rss_bytes() - baseline > RSS_GROWTH_LIMIT and stats["memory_findings"] == 0:
            stats["memory_findings"] += 1
            save("memory", data, f"peak RSS {_rss_bytes() >> 20} MiB")
        if stats["executions"] % STATS_EVERY == 0 or stats["executions"] >= args.runs:
            write_stats()

    write_stats()
    seed_dir = Path(seeds.CORPUS_DIR) / args.target
    argv = [sys.argv[0], *libfuzzer_args, f"-runs={args.runs}", f"-seed={args.seed}",
            "-timeout=30", "-rss_limit_mb=4096", str(corpus)]
    for extra in (seed_dir, Path(seeds.CORPUS_DIR) / "regressions" / args.target):
        if extra.is_dir():
            argv.append(str(extra))
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

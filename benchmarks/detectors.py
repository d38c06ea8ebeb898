"""What the content detectors cost per body, in this process (no server): the CPU time of inspecting
a JSON body of ordinary prose of 1 KiB, 64 KiB and 1 MiB with `secrets` and `pii`, and of redacting
it (the result side), median of several runs.

    python -m benchmarks.detectors
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

from benchmarks.targets import text_body
from guard.content.detectors import Detectors

__all__ = ["main"]

SIZES = {"1 KiB": 1024, "64 KiB": 65536, "1 MiB": 1 << 20}


def _median_s(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.process_time()
        fn()
        times.append(time.process_time() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.detectors", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=21, help="runs per size (default 21)")
    args = p.parse_args(argv)
    detectors = Detectors(["secrets", "pii"], own_issuer="urn:guard")
    print("| body | inspect (args) | redact (result) |")
    print("|---|---|---|")
    for label, size in SIZES.items():
        value = json.loads(text_body(size))
        runs = args.runs if size < (1 << 20) else max(3, args.runs // 4)
        scan = _median_s(partial(detectors.scan, value, 1 << 21), runs)
        redact = _median_s(partial(detectors.redact, value, frozenset({"secret", "pii"}), 1 << 21), runs)
        print(f"| {label} | {scan * 1e3:.2f} ms | {redact * 1e3:.2f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

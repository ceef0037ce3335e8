"""How long `iotpipe --help` and each `iotpipe CMD --help` take, as whole processes.

Goal (issue: one App, lazy imports): under 0.25 s, median of 10, on this machine. Beside
each figure: the ceiling, a bare `python -c pass` (no CLI can answer before the
interpreter has started), and a peer, `pip --help`, a Python CLI everyone has.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
COMMANDS = [
    [],
    ["run"],
    ["import"],
    ["ingest", "mqtt"],
    ["ingest", "thingspeak"],
    ["simulate"],
    ["stats"],
    ["query"],
    ["anomalies"],
    ["alerts"],
    ["report"],
    ["dlq", "list"],
    ["jobs"],
    ["init"],
]
GOAL_SECONDS = 0.25


def median_seconds(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="runs per command (the median is shown)")
    args = parser.parse_args()
    ceiling = median_seconds([sys.executable, "-c", "pass"], args.repeat)
    peer = median_seconds([str(BIN / "pip"), "--help"], args.repeat)
    print(f"ceiling  python -c pass   {ceiling * 1000:6.0f} ms")
    print(f"peer     pip --help       {peer * 1000:6.0f} ms")
    print(
        f"{'command':<34}{'median ms':>10}{'x ceiling':>11}{'x pip':>8}  goal < {GOAL_SECONDS * 1000:.0f} ms"
    )
    worst = 0.0
    for command in COMMANDS:
        seconds = median_seconds([str(BIN / "iotpipe"), *command, "--help"], args.repeat)
        worst = max(worst, seconds)
        name = " ".join(["iotpipe", *command, "--help"])
        verdict = "ok" if seconds < GOAL_SECONDS else "OVER"
        print(f"{name:<34}{seconds * 1000:>10.0f}{seconds / ceiling:>11.2f}{seconds / peer:>8.2f}  {verdict}")
    print(f"slowest: {worst * 1000:.0f} ms (goal < {GOAL_SECONDS * 1000:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

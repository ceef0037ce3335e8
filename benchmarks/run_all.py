"""Run every benchmarks/*_bench.py in name order, streaming its output; exit 1 if any failed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main(argv: list[str] | None = None) -> int:
    # Names on the command line pick a subset (e.g. `import`); none means all of them.
    wanted = set(argv if argv is not None else sys.argv[1:])
    scripts = [
        p for p in sorted(HERE.glob("*_bench.py")) if not wanted or p.stem.removesuffix("_bench") in wanted
    ]
    if not scripts:
        print(f"no benchmark matches {sorted(wanted)}", file=sys.stderr)
        return 2
    failed: list[str] = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        started = time.monotonic()
        # Inherited stdout/stderr stream the benchmark's output as it goes; the repo
        # root as cwd gives every benchmark the same relative paths as `make bench`.
        code = subprocess.run([sys.executable, str(script)], cwd=ROOT).returncode
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"== {script.name}: {status} in {time.monotonic() - started:.1f} s\n", flush=True)
        if code != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

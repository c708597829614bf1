"""Run every benchmark module in this package (or the ones named): ``python -m bench [name ...] [-- args]``.

Arguments after ``--`` are passed to each module's ``main``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path
from typing import List


def modules() -> List[str]:
    """Names of the benchmark modules (every module of this package but the runner)."""
    here = str(Path(__file__).resolve().parent)
    return sorted(m.name for m in pkgutil.iter_modules([here]) if not m.name.startswith("_"))


def main(argv: List[str] | None = None) -> int:
    """Run the named benchmarks (default: all); return non-zero if any failed."""
    args = list(sys.argv[1:] if argv is None else argv)
    passthrough: List[str] = []
    if "--" in args:
        i = args.index("--")
        args, passthrough = args[:i], args[i + 1 :]
    names = args or modules()
    unknown = [n for n in names if n not in modules()]
    if unknown:
        known = ", ".join(modules())
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {known}", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        print(f"=== bench.{name}", flush=True)
        mod = importlib.import_module(f"bench.{name}")
        rc = int(mod.main(passthrough))
        if rc:
            print(f"bench.{name} failed (rc={rc})", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""SMB read throughput: the product's reader against Samba's ``smbclient`` and ``cat``, in one run.

A file (1 GiB by default) is created in a share of a private ``smbd`` on 127.0.0.1 (hvsim.samba) and
read, from the page cache, by

* ``cat`` of the local file (the ceiling of the machine),
* ``smbclient get file /dev/null`` (Samba's own client: two 8 MiB reads in flight),
* the product: ``SmbStorage.open_read`` + ``readinto`` (pipelined large reads),

first over a signed session, then over an encrypted one.  Each figure is the median of ``--runs``
runs, wall time of the whole transfer including connection set-up (the same for every tool), in
MB/s = 10^6 bytes/s.  The password reaches smbclient through a 0600 authentication file (``-A``),
never the command line.  The product is measured after ``tune_malloc_for_bulk_io()``, as the agent
process runs it (``--no-malloc-tuning`` to see the default allocator).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from bareos_hyperv.storage.locations import SmbLocation
from bareos_hyperv.storage.malloc import tune_malloc_for_bulk_io
from bareos_hyperv.storage.smb import SmbOptions, SmbStorage
from hvsim.samba import SambaServer

MiB = 1024 * 1024
BUFFER = MiB  # what the agent hands to readinto


def make_file(path: Path, size: int) -> None:
    """Write ``size`` random bytes (incompressible, nothing special for any layer)."""
    block = os.urandom(8 * MiB)
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
            block = block[1:] + block[:1]  # not the same block twice


def warm(path: Path) -> None:
    """Pull the file into the page cache so every run reads the same way."""
    with path.open("rb") as f:
        while f.read(8 * MiB):
            pass


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children (user + system)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], int]) -> Tuple[float, float, int]:
    """Wall seconds, client CPU seconds and bytes moved by ``fn``."""
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, cpu_seconds() - c0, n


def run_cat(path: Path) -> int:
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return path.stat().st_size


def run_smbclient(srv: SambaServer, name: str, authfile: Path, size: int) -> int:
    argv = ["smbclient", "//127.0.0.1/C$", "-p", str(srv.port), "-A", str(authfile), "-m", "SMB3"]
    res = subprocess.run(
        [*argv, "-c", f'get "{name}" /dev/null'], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise RuntimeError(f"smbclient failed: {res.stdout}{res.stderr}")
    return size


def run_product(srv: SambaServer, name: str, options: SmbOptions, digest: str | None = None) -> int:
    buf = bytearray(BUFFER)
    view = memoryview(buf)
    h = hashlib.sha256() if digest else None
    total = 0
    st = SmbStorage(srv.user, srv.password, endpoints={"BENCH": srv.address}, options=options)
    with st, st.open_read(SmbLocation("BENCH", "C$", name)) as r:
        while True:
            n = r.readinto(buf)
            if not n:
                break
            if h is not None:
                h.update(view[:n])
            total += n
    if h is not None and h.hexdigest() != digest:
        raise RuntimeError("the product read different bytes than the file holds")
    return total


def median_rate(fn: Callable[[], int], runs: int) -> Tuple[float, float]:
    """Median MB/s and median client CPU seconds per GiB over ``runs`` runs."""
    rates, cpus = [], []
    for _ in range(runs):
        dt, cpu, n = timed(fn)
        rates.append(n / dt / 1e6)
        cpus.append(cpu / (n / (1 << 30)))
    return statistics.median(rates), statistics.median(cpus)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(8 * MiB), b""):
            h.update(block)
    return h.hexdigest()


def main(argv: List[str] | None = None) -> int:
    """Run the benchmark and print a table; 0 on success."""
    p = argparse.ArgumentParser(prog="python -m bench smb_read", description=__doc__.split("\n")[0])
    p.add_argument("--size-mib", type=int, default=int(os.environ.get("BENCH_SMB_SIZE_MIB", "1024")))
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--read-size-mib", type=int, default=None, help="product request size")
    p.add_argument("--depth", type=int, default=None, help="product requests in flight (default: SmbOptions)")
    p.add_argument("--sweep", action="store_true", help="also try several request sizes and depths")
    p.add_argument("--no-malloc-tuning", action="store_true")
    p.add_argument("--no-encryption", action="store_true", help="skip the encrypted run")
    args = p.parse_args(argv)

    tuned = False if args.no_malloc_tuning else tune_malloc_for_bulk_io()
    defaults = SmbOptions()
    base = SmbOptions(
        read_size=(args.read_size_mib or defaults.read_size // MiB) * MiB,
        read_depth=args.depth or defaults.read_depth,
    )
    size = args.size_mib * MiB
    results: Dict[str, Dict[str, Tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-smb-", dir=os.environ.get("BENCH_TMPDIR")) as tmp:
        share = Path(tmp) / "share"
        share.mkdir()
        name = "bench file [1].vhdx"
        path = share / name
        print(f"creating {args.size_mib} MiB test file ...", flush=True)
        make_file(path, size)
        digest = sha256_file(path)
        warm(path)
        modes = [("signed", False)] + ([] if args.no_encryption else [("encrypted", True)])
        for mode, encrypt in modes:
            with SambaServer({"C$": share}, encrypt=encrypt) as srv:
                authfile = Path(tmp) / "auth"
                authfile.touch(mode=0o600)
                authfile.write_text(f"username = {srv.user}\npassword = {srv.password}\n")
                # One verified pass first: a fast wrong answer is not a result.
                run_product(srv, name, base, digest)
                row = results.setdefault(mode, {})
                row["cat"] = median_rate(functools.partial(run_cat, path), args.runs)
                row["smbclient"] = median_rate(
                    functools.partial(run_smbclient, srv, name, authfile, size), args.runs
                )
                label = f"product {base.read_size // MiB} MiB x{base.read_depth}"
                row[label] = median_rate(functools.partial(run_product, srv, name, base), args.runs)
                if args.sweep:
                    for rs, depth in ((1, 1), (8, 1), (2, 4), (4, 2), (4, 8), (8, 2), (8, 4)):
                        opts = SmbOptions(read_size=rs * MiB, read_depth=depth)
                        key = f"product {rs} MiB x{depth}"
                        if key not in row:
                            row[key] = median_rate(
                                functools.partial(run_product, srv, name, opts), args.runs
                            )
                authfile.unlink()

    print()
    print(
        f"SMB read of {args.size_mib} MiB from page cache, loopback, median of {args.runs} "
        f"(malloc tuned: {'yes' if tuned else 'no'}; Python {sys.version.split()[0]})"
    )
    print("  (client CPU = seconds of CPU per GiB in the reading process: load-independent; smbd not counted)")
    for mode, row in results.items():
        print(f"\n  {mode}")
        print(f"    {'path':<26} {'MB/s':>8} {'vs smbclient':>13} {'vs cat':>8} {'client CPU s/GiB':>17}")
        ref, ceiling = row["smbclient"][0], row["cat"][0]
        for key, (rate, cpu) in row.items():
            print(f"    {key:<26} {rate:8.0f} {rate / ref:12.2f}x {rate / ceiling:7.3f}x {cpu:17.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""P2 - peak RSS of importing a ~2 GB CSV (target: <= 1 GB absolute).

Data: ~4M synthetic inference rows as one CSV (~2 GB), generated in chunks. Each measurement runs in
a fresh child process under ``/usr/bin/time -f %M`` (peak RSS of that child; fallback:
``getrusage(RUSAGE_CHILDREN)`` read by an intermediate process):

* baseline: a child that only streams the CSV with ``pyarrow.csv.open_csv`` (default options) and
  drops each batch - the floor of reading it;
* ours: a child that runs ``import_file`` of the CSV from a ``file://`` LocalStore into a fresh
  SQLite catalog + local warehouse.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from bench import datagen
from bench.common import median_of, quick, report

ROWS = 20_000 if quick() else 4_000_000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

READ_ONLY = """
import sys, pyarrow.csv as pacsv
n = 0
with pacsv.open_csv(sys.argv[1]) as r:
    for b in r:
        n += b.num_rows
print(n)
"""

IMPORT = """
import sys
from bench import datagen
print(datagen.run_import(sys.argv[1], sys.argv[2], sys.argv[3]))
"""

RUSAGE_WRAPPER = """
import resource, subprocess, sys
out = subprocess.run(sys.argv[1:], check=True, capture_output=True, text=True).stdout
print(out.strip().splitlines()[-1])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_mb(args: list[str], expect_rows: int) -> float:
    """Run ``python <args>`` in a child; its peak RSS in MB (checks it printed ``expect_rows``)."""
    cmd = [sys.executable, *args]
    t = time.perf_counter()
    if os.path.exists("/usr/bin/time"):
        proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB=%M", *cmd], cwd=ROOT, check=True,
                              capture_output=True, text=True)
        rows = int(proc.stdout.strip().splitlines()[-1])
        kb = int([ln for ln in proc.stderr.splitlines() if ln.startswith("MAXRSS_KB=")][-1].split("=")[1])
    else:
        proc = subprocess.run([sys.executable, "-c", RUSAGE_WRAPPER, *cmd], cwd=ROOT, check=True,
                              capture_output=True, text=True)
        rows, kb = (int(x) for x in proc.stdout.strip().splitlines()[-2:])
    assert rows == expect_rows, (rows, expect_rows)
    print(f"  {args[1][:40].strip()!r}...: peak {kb / 1024:.0f} MB in {time.perf_counter() - t:.1f}s", flush=True)
    return kb / 1024


def main() -> None:
    d = datagen.bench_dir()
    try:
        path = os.path.join(d, "data.csv")
        t = time.perf_counter()
        datagen.write_csv(path, ROWS)
        size_mb = os.path.getsize(path) / 1e6
        print(f"generated data.csv: {ROWS:,} rows, {size_mb:,.0f} MB in {time.perf_counter() - t:.1f}s", flush=True)
        base, _ = median_of(lambda: peak_rss_mb(["-c", READ_ONLY, path], ROWS))
        homes = iter(range(100))

        def ours_once() -> float:
            home = os.path.join(d, f"lake-{next(homes)}")
            try:
                return peak_rss_mb(["-c", IMPORT, d, "data.csv", home], ROWS)
            finally:
                shutil.rmtree(home, ignore_errors=True)

        ours, _ = median_of(ours_once)
        report("p2_memory_csv", baseline="pyarrow open_csv stream (child)", baseline_value=base,
               ours="import_file (child)", ours_value=ours, ratio=ours / base, target="peak RSS <= 1024 MB",
               met=ours <= 1024, unit="MB", size=f"{ROWS:,} rows, {size_mb:,.0f} MB csv")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Shared helpers for the benchmarks (stdlib + the project's own dependencies only)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).with_name("results.jsonl")


def quick() -> bool:
    """``OBSLAKE_BENCH_QUICK=1``: tiny sizes, for a smoke run (never for the README table)."""
    return os.environ.get("OBSLAKE_BENCH_QUICK") == "1"


def median_of(fn: Callable[[], float], repeats: int = 3) -> tuple[float, list[float]]:
    """Run ``fn`` (returns a measurement) ``repeats`` times; the median and all values."""
    values = [fn() for _ in range(repeats)]
    return statistics.median(values), values


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def machine() -> str:
    """One line describing this machine."""
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024**2:.0f} GiB"
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem}, Python {platform.python_version()}"


def report(name: str, *, baseline: str, baseline_value: float, ours: str, ours_value: float, ratio: float,
           target: str, met: bool | None, unit: str, size: str, note: str = "") -> None:
    """Print the result (its last line is 'baseline …, ours …, ratio …') and append it to results.jsonl."""
    rec = {"name": name, "baseline": baseline, "baseline_value": baseline_value, "ours": ours,
           "ours_value": ours_value, "ratio": ratio, "target": target, "met": met, "unit": unit, "size": size,
           "note": note, "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "quick": quick()}
    with RESULTS.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    verdict = "n/a" if met is None else ("MET" if met else "BELOW TARGET")
    if note:
        print(f"  note: {note}")
    print(f"{name}: baseline {baseline} = {baseline_value:.4g} {unit}, ours {ours} = {ours_value:.4g} {unit}, "
          f"ratio {ratio:.3f} (target {target}: {verdict}) [{size}]", flush=True)


def child(script: str, *args: str, env: dict[str, str]) -> tuple[float, float, int]:
    """(seconds, peak RSS MB, the last line printed as an int) of ``python -c script args`` in a child process
    run from the project root, its peak RSS read by ``/usr/bin/time``."""
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB=%M", sys.executable, "-c", script, *args],
                          cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True)
    sec = time.perf_counter() - t
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    kb = int([ln for ln in proc.stderr.splitlines() if ln.startswith("MAXRSS_KB=")][-1].split("=")[1])
    return sec, kb / 1024, int(proc.stdout.strip().splitlines()[-1])


def export_vs_floor(name: str, *, n: int, repeats: int, workdir: str, env: dict[str, str], floor: str,
                    floor_args: tuple[str, ...], ours: str, ours_args: Callable[[str], tuple[str, ...]],
                    baseline: str, ours_label: str, size: str) -> None:
    """P9's measurement: the floor script (its last argument: the Parquet file it writes under ``workdir``)
    and our first sync (``ours_args(storage)``, a fresh storage under ``workdir`` each time) interleaved
    ``repeats`` times in child processes, both checked to have moved ``n`` rows; reports rows/s (median)
    against the floor (target 0.5x) and our peak RSS (max) against 2 GB as ``name`` and ``name_rss``."""
    import shutil

    floors, mine, rss, floor_rss = [], [], [], []
    for r in range(repeats):
        out = os.path.join(workdir, "floor.parquet")
        sec, mb, rows = child(floor, *floor_args, out, env=env)
        assert rows == n, rows
        floors.append(n / sec)
        floor_rss.append(mb)
        os.remove(out)
        sec, mb, rows = child(ours, *ours_args(f"file://{workdir}/exports{r}"), env=env)
        assert rows == n, rows
        mine.append(n / sec)
        rss.append(mb)
        shutil.rmtree(os.path.join(workdir, f"exports{r}"), ignore_errors=True)
        print(f"repeat {r + 1}: floor {floors[-1]:,.0f} rows/s ({floor_rss[-1]:.0f} MB), ours {mine[-1]:,.0f} "
              f"rows/s = {n / mine[-1]:.0f} s (peak RSS {rss[-1]:.0f} MB)", flush=True)
    floor_value, ours_value = statistics.median(floors), statistics.median(mine)
    report(name, baseline=f"{baseline} (median of {repeats})", baseline_value=floor_value,
           ours=f"{ours_label} (median of {repeats})", ours_value=ours_value, ratio=ours_value / floor_value,
           target=">= 0.5x", met=ours_value / floor_value >= 0.5, unit="rows/s", size=size,
           note=f"floor runs {', '.join(f'{x:,.0f}' for x in floors)}; ours {', '.join(f'{x:,.0f}' for x in mine)} "
                "rows/s")
    report(f"{name}_rss", baseline="budget", baseline_value=2048.0, ours=f"peak RSS of the sync (max of {repeats})",
           ours_value=max(rss), ratio=max(rss) / 2048, target="<= 2 GB", met=max(rss) <= 2048, unit="MB", size=size,
           note=f"ours {', '.join(f'{x:.0f}' for x in rss)} MB; floor {', '.join(f'{x:.0f}' for x in floor_rss)} MB")

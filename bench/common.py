"""Shared helpers for the benchmarks (stdlib + the project's own dependencies only)."""

from __future__ import annotations

import json
import os
import platform
import statistics
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

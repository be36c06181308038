"""Run every benchmark: ``python -m bench`` (``OBSLAKE_BENCH_QUICK=1`` for a smoke run).

Each benchmark is a module ``bench/p*.py`` with a ``main()``; they run one after another in child
processes (so one's memory does not disturb the next), then the table of this run is printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem for p in HERE.glob("p[0-9]*.py"))
    started = time.time()
    failed = []
    for name in names:
        print(f"\n===== {name} =====", flush=True)
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=HERE.parent)
        if proc.returncode:
            failed.append(name)
    print("\n===== results of this run =====")
    rows = [json.loads(line) for line in (HERE / "results.jsonl").read_text().splitlines()] \
        if (HERE / "results.jsonl").exists() else []
    rows = [r for r in rows if time.mktime(time.strptime(r["date"], "%Y-%m-%d %H:%M UTC")) >= started - 120]
    print("| benchmark | size | baseline | ours | ratio | target | met |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['size']} | {r['baseline']}: {r['baseline_value']:.4g} {r['unit']} | "
              f"{r['ours']}: {r['ours_value']:.4g} {r['unit']} | {r['ratio']:.3f} | {r['target']} | "
              f"{'n/a' if r['met'] is None else ('yes' if r['met'] else 'no')} |")
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

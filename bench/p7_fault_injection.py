"""P7 - fault injection: kill -9 at every stage, then re-run; 8 concurrent writers on Postgres.

These are tests (they run in CI, at small size, with everything else); this script runs exactly
those tests again so that ``python -m bench`` prints all seven results in one place:

* ``kill -9`` of the import worker during the read, after the data files are written but before the
  commit, and after the commit before the ledger update; then a re-run: rows and keys in the lake
  are exactly the source's (tests/lake/test_importer.py);
* ``kill -9`` during a Data Fabric sync (after the data files are written, after the commit); then a
  re-run: the exported table holds exactly the source's spans (tests/fabric/test_export.py);
* 8 writer processes committing to one table on the Postgres catalog: nothing lost or duplicated.

Baseline: the number of scenarios; ours: the number that passed; ratio = passed / scenarios.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from bench.common import report

ROOT = Path(__file__).parent.parent
TESTS = [
    "tests/lake/test_importer.py::test_kill_9_at_each_stage_then_retry_is_exactly_once",
    "tests/fabric/test_export.py::test_kill_9_during_a_sync_then_rerun_gives_exactly_the_source",
    "tests/lake/test_importer.py::test_eight_concurrent_writer_processes_on_postgres_lose_nothing",
]


def main() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *TESTS],
                          cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if re.search(r"::\S+ (PASSED|FAILED|ERROR|SKIPPED)", ln)]
    for ln in lines:
        print(" ", ln.split(" ")[0].split("::", 1)[1], ln.split(" ")[1])
    passed = sum(" PASSED" in ln for ln in lines)
    if proc.returncode or not lines:
        print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
    report("p7_fault_injection", baseline="scenarios (kill -9 per stage, fabric kill, 8 writers)",
           baseline_value=len(lines), ours="passed: re-run gives exactly the source's rows and keys",
           ours_value=passed, ratio=passed / len(lines) if lines else 0.0, target="all pass",
           met=bool(lines) and passed == len(lines) and proc.returncode == 0, unit="scenarios",
           size="CI size (tests)", note="; ".join(ln.split(" ")[0].split("::", 1)[1] + " " + ln.split(" ")[1]
                                                for ln in lines))


if __name__ == "__main__":
    main()

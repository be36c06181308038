"""The scheduler's warm start (obslake.preload): what it imports, when, and that forking afterwards is safe."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from obslake import preload

SCRIPT = textwrap.dedent('''
    import os, sys
    sys.argv = ["airflow", "scheduler"]
    from obslake.plugin import ObslakePlugin
    from obslake import preload

    class Job:  # what Airflow's scheduler passes to on_starting (a Job, before its runner is set)
        pass

    [listener] = [l for l in ObslakePlugin.listeners if hasattr(l, "on_starting")]
    before = set(sys.modules)
    listener.on_starting(Job())
    missing = [m for m in preload.MODULES if m not in sys.modules]
    assert not missing, missing
    threads = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
    assert len(threads) <= 3 and "duckdb" not in sys.modules, threads  # Arrow's allocator's threads only
    children = []
    for i in range(6):  # task processes, forked as a LocalExecutor worker forks them, working side by side
        pid = os.fork()
        if pid == 0:
            try:
                import duckdb, pyarrow as pa, pyarrow.compute as pc, pyarrow.parquet as pq
                from pyiceberg.catalog.sql import SqlCatalog
                t = pa.table({"x": pa.array(range(100_000))})
                assert pc.sum(t["x"]).as_py() == sum(range(100_000))
                pq.write_table(t, f"{WORK}/t{i}.parquet")
                assert duckdb.connect().execute(f"SELECT count(*) FROM '{WORK}/t{i}.parquet'").fetchone()[0] == 100_000
                cat = SqlCatalog("c", uri=f"sqlite:///{WORK}/c{i}.db", warehouse=f"file://{WORK}/w{i}")
                cat.create_namespace("n")
                cat.create_table("n.t", schema=t.schema).append(t)
                assert cat.load_table("n.t").scan().to_arrow().num_rows == 100_000
            except BaseException:
                import traceback
                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    listener.on_starting(object())  # another component (a task runner): nothing more to do
    print(len(set(sys.modules) - before))
''')


def test_the_scheduler_imports_the_task_modules_and_forked_tasks_work(tmp_path):
    script = SCRIPT.replace("{WORK}", str(tmp_path))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.strip().splitlines()[-1]) > len(preload.MODULES)  # (and what they import)


def test_only_the_scheduler_preloads_and_it_can_be_turned_off():
    assert preload.wanted(["airflow", "scheduler"], {})
    assert preload.wanted(["/venv/bin/airflow", "scheduler", "--num-runs", "3"], {"OBSLAKE_PRELOAD": "1"})
    assert not preload.wanted(["airflow", "scheduler"], {"OBSLAKE_PRELOAD": "0"})
    for component in ("triggerer", "dag-processor", "api-server", "celery"):
        assert not preload.wanted(["airflow", component], {})
    assert not preload.wanted(["python"], {})


def test_a_module_that_cannot_be_imported_is_skipped(caplog):
    assert preload.preload(("obslake_no_such_module", "json")) == []  # json is loaded already: not counted
    assert "could not import obslake_no_such_module" in caplog.text

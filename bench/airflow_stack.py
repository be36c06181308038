"""A throwaway, real Airflow 3 deployment for benchmarks: Postgres metadata DB + api-server, dag-processor
and scheduler (LocalExecutor) as subprocesses of the benchmark.

Usage::

    template = migrate_template(workdir)            # `airflow db migrate` once, into a template database
    with AirflowStack(workdir / "af1", template=template, parallelism=2, dags_folder=..., env={...}) as s:
        s.start()
        s.wait_for_dag(dag_id)
        run_id = s.trigger(dag_id)
        state = s.wait_for_run(dag_id, run_id, timeout=600)
        tis = s.task_instances(dag_id, run_id)
    drop_template(template)

Each stack gets a fresh metadata database (``CREATE DATABASE … TEMPLATE <migrated template>``: byte for
byte what ``airflow db migrate`` leaves in an empty database, without paying the migration on every run),
its own ``AIRFLOW_HOME``, a free loopback port for the api-server and another for the log server. On exit
every process the stack started (process groups, then any descendant left) is terminated, then killed,
and the database is dropped, also when the body raised.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg2

PG_HOST = os.environ.get("OBSLAKE_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("OBSLAKE_BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("OBSLAKE_BENCH_PG_USER", "postgres")
AIRFLOW = str(Path(sys.executable).parent / "airflow")
TERMINAL_RUN_STATES = ("success", "failed")


# -- Postgres helpers ------------------------------------------------------------------------------
def pg_uri(db: str) -> str:
    """SQLAlchemy URI of database ``db`` on the bench Postgres server."""
    return f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{db}"


def pg_connect(db: str):
    """A psycopg2 connection (autocommit) to ``db``."""
    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=db)
    conn.autocommit = True
    return conn


def create_database(name: str, template: str | None = None) -> None:
    conn = pg_connect("postgres")
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
    finally:
        conn.close()


def drop_database(name: str) -> None:
    conn = pg_connect("postgres")
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text[-lines:])


def _base_env() -> dict[str, str]:
    """The parent environment without any AIRFLOW*/OBSLAKE_* setting (the stack sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OBSLAKE_"))}


def migrate_template(workdir: Path) -> str:
    """``airflow db migrate`` into a new database; returns its name (use it as ``template``)."""
    import importlib.util

    if importlib.util.find_spec("asyncpg") is None:  # Airflow 3 opens an async engine on the metadata DB too
        raise RuntimeError("Airflow 3 on a Postgres metadata DB needs the asyncpg driver (its async engine): "
                           f"{sys.executable} -m pip install asyncpg  (or apache-airflow[postgres])")
    name = unique_name("obslake_bench_af_tpl")
    create_database(name)
    home = Path(workdir) / "airflow-migrate"
    home.mkdir(parents=True, exist_ok=True)
    env = {**_base_env(), "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_uri(name)}
    proc = subprocess.run([AIRFLOW, "db", "migrate"], env=env, cwd=home, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode:
        drop_database(name)
        raise RuntimeError(f"airflow db migrate failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return name


# -- the stack -------------------------------------------------------------------------------------
class AirflowStack:
    """api-server + dag-processor + scheduler (LocalExecutor, ``parallelism``) on a fresh metadata DB.

    Args:
        home: the ``AIRFLOW_HOME`` (created); component logs go to ``home/<component>.log``.
        template: a migrated metadata database to copy (see :func:`migrate_template`).
        parallelism: ``[core] parallelism`` = LocalExecutor worker processes.
        dags_folder: ``[core] dags_folder``.
        env: extra environment for every component (and so for every task).
    """

    COMPONENTS = ("api-server", "dag-processor", "scheduler")

    def __init__(self, home: Path, *, template: str, parallelism: int, dags_folder: Path,
                 env: dict[str, str] | None = None):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        self.template = template
        self.db = unique_name("obslake_bench_af")
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self._logs: list[Any] = []
        self.env = {
            **_base_env(),
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg_uri(self.db),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.port}/execution/",
            "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
            # one secret for every component: the scheduler signs the task tokens the api-server checks
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(64),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{self.port}",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # the scheduler serves task logs (LocalExecutor): never collide on the default 8793
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # parse the (unchanging) DAG folder at start-up, then leave the CPU to the tasks
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(self.home / "bundles"),
            "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "600",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # the deployment README's "Deploying to your Airflow" recommends: an idle scheduler loop waits 0.2 s, not
            # Airflow's 1 s, before it looks again for a task to hand on (measured: P3 in the README's Performance)
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
            # small pools: three components share a server other sessions use too
            "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "3",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "5",
            **(env or {}),
        }
        create_database(self.db, template=template)

    # -- life cycle
    def __enter__(self) -> "AirflowStack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, triggerer: bool = False) -> None:
        """Start the api-server (and wait until it answers), the dag-processor and the scheduler (and, with
        ``triggerer``, a triggerer for deferrable tasks)."""
        self._spawn("api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(self.port)])
        self._wait_http(f"http://127.0.0.1:{self.port}/api/v2/monitor/health", timeout=180)
        self._spawn("dag-processor", [AIRFLOW, "dag-processor"])
        self._spawn("scheduler", [AIRFLOW, "scheduler"])
        if triggerer:
            self.start_triggerer()

    def start_triggerer(self) -> None:
        """(Re)start the triggerer (after :meth:`kill` of a previous one, say)."""
        self._spawn("triggerer", [AIRFLOW, "triggerer"])

    def start_celery_workers(self, n: int, concurrency: int) -> list[str]:
        """Start ``n`` Celery workers (separate processes, each with ``concurrency`` task slots and its own log
        server port); the stack must have been built with ``AIRFLOW__CORE__EXECUTOR=CeleryExecutor`` and a
        broker. Returns their component names (``celery-worker-1`` ...)."""
        names = []
        for i in range(1, n + 1):
            name = f"celery-worker-{i}"
            self._spawn(name, [AIRFLOW, "celery", "worker", "--concurrency", str(concurrency), "--celery-hostname",
                               f"{name}@%h", "--skip-serve-logs"],
                        env={"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())})
            names.append(name)
        return names

    def kill(self, name: str) -> None:
        """SIGKILL one component and everything it started (a crash, as an OOM kill would do it)."""
        proc = self.procs.pop(name)
        family = _descendants({proc.pid})
        _signal_group(proc.pid, signal.SIGKILL)
        for pid, started in family.items():
            if _start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        proc.wait(timeout=30)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.home / f"{name}.log", "ab")
        self._logs.append(log)
        self.procs[name] = subprocess.Popen(cmd, env={**self.env, **(env or {})}, cwd=self.home, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def _wait_http(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    r.read()
                return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"{url} did not answer within {timeout:g}s\n{self.diagnostics()}")

    def check_alive(self) -> None:
        """Raise (with the log's tail) when a component has exited."""
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"airflow {name} exited with {p.returncode}:\n{tail(self.home / f'{name}.log', 80)}")

    def close(self) -> None:
        """Stop every process (SIGTERM to each group, then SIGKILL), drop the metadata database."""
        try:
            self.stop()
        finally:
            for f in self._logs:
                f.close()
            self._logs.clear()
            drop_database(self.db)

    def stop(self) -> None:
        if not self.procs:
            return
        family = _descendants({p.pid for p in self.procs.values()})
        # scheduler first (it drains its LocalExecutor workers), then the rest
        order = sorted(self.procs.items(), key=lambda kv: kv[0] != "scheduler")
        for _, p in order:
            _signal_group(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for _, p in order:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        family.update(_descendants(set(family)))
        for _, p in order:
            _signal_group(p.pid, signal.SIGKILL)
        for pid, started in family.items():  # anything that left the groups (e.g. in its own session)
            if _start_time(pid) == started:  # the same process, not a reused pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for _, p in order:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()

    # -- CLI / metadata DB
    def cli(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run([AIRFLOW, *args], env=self.env, cwd=self.home, capture_output=True, text=True,
                              timeout=timeout)
        if proc.returncode:
            raise RuntimeError(f"airflow {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-3000:]}")
        return proc.stdout

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = pg_connect(self.db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def wait_for_dag(self, dag_id: str, timeout: float = 300) -> None:
        """Wait until the dag-processor has serialized ``dag_id``; unpause it if it is paused."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            rows = self.query("SELECT d.is_paused FROM dag d JOIN serialized_dag s ON s.dag_id = d.dag_id "
                              "WHERE d.dag_id = %s AND NOT d.is_stale", (dag_id,))
            if rows:
                if rows[0][0]:
                    self.cli("dags", "unpause", dag_id)
                return
            time.sleep(1)
        errors = self.query("SELECT filename, stacktrace FROM import_error")
        raise TimeoutError(f"DAG {dag_id} not parsed within {timeout:g}s; import errors: {errors}\n"
                           f"{self.diagnostics(('dag-processor',))}")

    def trigger(self, dag_id: str, run_id: str | None = None) -> str:
        run_id = run_id or f"bench__{uuid.uuid4().hex[:8]}"
        self.cli("dags", "trigger", dag_id, "--run-id", run_id)
        return run_id

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float, progress_every: float = 30,
                     watch_task: str | None = None) -> str:
        """Wait until the run is success/failed; print progress of ``watch_task`` now and then."""
        deadline = time.monotonic() + timeout
        t_print = time.monotonic()
        while True:
            self.check_alive()
            rows = self.query("SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", (dag_id, run_id))
            state = rows[0][0] if rows else None
            if state in TERMINAL_RUN_STATES:
                return state
            if time.monotonic() > deadline:
                return f"timeout (state {state})"
            if watch_task and time.monotonic() >= t_print:
                counts = self.query("SELECT coalesce(state, 'none'), count(*) FROM task_instance WHERE dag_id = %s "
                                    "AND run_id = %s AND task_id = %s GROUP BY 1 ORDER BY 1",
                                    (dag_id, run_id, watch_task))
                if counts:
                    print(f"    {watch_task}: {', '.join(f'{s} {n}' for s, n in counts)}", flush=True)
                t_print = time.monotonic() + progress_every
            time.sleep(1)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        rows = self.query("SELECT task_id, map_index, state, start_date, end_date, try_number FROM task_instance "
                          "WHERE dag_id = %s AND run_id = %s ORDER BY task_id, map_index", (dag_id, run_id))
        keys = ("task_id", "map_index", "state", "start_date", "end_date", "try_number")
        return [dict(zip(keys, r)) for r in rows]

    def run_times(self, dag_id: str, run_id: str) -> tuple[Any, Any, Any]:
        """(queued_at, start_date, end_date) of the run."""
        return self.query("SELECT queued_at, start_date, end_date FROM dag_run WHERE dag_id = %s AND run_id = %s",
                          (dag_id, run_id))[0]

    def task_log(self, dag_id: str, run_id: str, task_id: str, map_index: int, try_number: int) -> Path | None:
        base = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            base = base / f"map_index={map_index}"
        path = base / f"attempt={max(try_number, 1)}.log"
        return path if path.exists() else None

    def diagnostics(self, components: tuple[str, ...] = COMPONENTS, lines: int = 60) -> str:
        return "\n".join(f"----- tail of {c}.log -----\n{tail(self.home / f'{c}.log', lines)}" for c in components)

    def failure_report(self, dag_id: str, run_id: str, max_logs: int = 3) -> str:
        """Scheduler log tail, the non-successful task instances and the logs of the first failed ones."""
        out = [self.diagnostics(("scheduler",), 80)]
        bad = [t for t in self.task_instances(dag_id, run_id) if t["state"] != "success"]
        out.append(f"----- {len(bad)} task instance(s) not successful -----")
        out += [f"  {t['task_id']}[{t['map_index']}] {t['state']} try {t['try_number']}" for t in bad[:30]]
        for t in [t for t in bad if t["state"] in ("failed", "up_for_retry")][:max_logs]:
            path = self.task_log(dag_id, run_id, t["task_id"], t["map_index"], t["try_number"])
            out.append(f"----- log of {t['task_id']}[{t['map_index']}] ({path}) -----\n"
                       f"{tail(path, 40) if path else '(no log file)'}")
        return "\n".join(out)


def _fernet_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # start_new_session=True: the group id is the leader's pid
    except (ProcessLookupError, PermissionError):
        pass


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    st = _stat(pid)
    return st[19] if st and len(st) > 19 else None


def _descendants(pids: set[int]) -> dict[int, str]:
    """``{pid: start time}`` of every live descendant of ``pids`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(int(st[1]), []).append(int(entry))
    out: dict[int, str] = {}
    todo = list(pids)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out and (started := _start_time(c)) is not None:
                out[c] = started
                todo.append(c)
    return out

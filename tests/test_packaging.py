"""`pip install obslake` as a user does it: a wheel built from this tree, installed into a fresh venv (no checkout on
its path), registers the provider and the UI plugin with Airflow, builds the DAGs from a user's own DAGs folder with
one import, and runs `obslake demo` from the package data it ships."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).parent / "uv"


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_wheel_installs_as_a_provider_and_plugin_and_runs_the_demo(tmp_path):
    import os

    wheels = tmp_path / "dist"
    _run([str(UV), "build", "--wheel", "--out-dir", str(wheels), str(PROJECT)], PROJECT, dict(os.environ))
    [wheel] = list(wheels.glob("obslake-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, dict(os.environ))
    _run([str(UV), "pip", "install", "--quiet", "--compile-bytecode", "--python", str(venv / "bin" / "python"),
          f"{wheel}[local]"], tmp_path, dict(os.environ))
    home = tmp_path / "user"
    home.mkdir()
    # a user's machine: no OBSLAKE_*/AIRFLOW_* settings, no checkout on the path, an Airflow home of its own
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OBSLAKE_", "PYTHON"))}
    env.update({"AIRFLOW_HOME": str(home / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}"})
    py = str(venv / "bin" / "python")
    assert str(PROJECT) not in _run([py, "-c", "import obslake, sys; print(obslake.__file__, sys.path)"], home, env)

    assert "obslake" in _run([str(venv / "bin" / "airflow"), "providers", "list"], home, env)
    plugins = json.loads(_run([str(venv / "bin" / "airflow"), "plugins", "-o", "json"], home, env))
    [ours] = [p for p in plugins if p["name"] == "obslake"]
    assert [a["url_prefix"] for a in ours["fastapi_apps"]] == ["/obslake"]
    assert [v["href"] for v in ours["external_views"]] == ["/obslake/"]

    # the user's DAGs folder: one file, one import, their YAML (here: the examples the package ships)
    dags = home / "dags"
    dags.mkdir()
    (dags / "obslake_dags.py").write_text(textwrap.dedent("""
        # Airflow DAGs of obslake (these two words let Airflow's safe-mode discovery parse the file)
        from importlib.resources import files

        from obslake.dags import all_dags

        globals().update(all_dags(str(files("obslake_demo") / "kit" / "include")))
    """))
    out = _run([py, "-c", textwrap.dedent(f"""
        from airflow.dag_processing.dagbag import DagBag
        bag = DagBag(dag_folder={str(dags)!r})
        print(sorted(bag.dags), bag.import_errors)
    """)], home, env)
    assert "obslake_import__demo_ctr" in out and "obslake_fabric__demo_traces" in out
    assert "obslake_maintenance" in out and out.rstrip().endswith("{}"), out  # no import errors

    # the demo from the installed package, in the user's directory
    out = _run([str(venv / "bin" / "obslake"), "demo"], home, env, timeout=600)
    assert "13,600 rows" in out and "maintenance run finished: success" in out, out[-3000:]
    assert (home / ".obslake-demo").is_dir()

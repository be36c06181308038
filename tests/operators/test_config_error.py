"""The stand-in task of a job whose YAML is invalid (operators/config_error.py): it fails, once, with the reason."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from obslake.operators.config_error import ConfigErrorOperator

MESSAGE = "include/import_jobs/ctr.yaml: schema.timestamp: column 'id' is mapped to both prediction_id and ..."


def test_execute_fails_with_the_message():
    from airflow.sdk.exceptions import AirflowFailException

    op = ConfigErrorOperator(task_id="invalid_job_config", message=MESSAGE)
    assert op.message == MESSAGE
    with pytest.raises(AirflowFailException) as err:
        op.execute({})
    assert str(err.value) == MESSAGE


@pytest.mark.airflow
@pytest.mark.slow
def test_the_config_error_dag_run_fails_once_even_with_retries_left(airflow_db, tmp_path, monkeypatch):
    """The factory's DAG for an invalid YAML (DAG folder of the repo, include dir in tmp_path), run by dag.test()."""
    from airflow.dag_processing.dagbag import DagBag

    jobs = tmp_path / "include" / "import_jobs"
    jobs.mkdir(parents=True)
    (jobs / "broken_cfg.yaml").write_text("name: broken_cfg\nsource: ftp://nowhere/\n")
    monkeypatch.setenv("OBSLAKE_INCLUDE_DIR", str(tmp_path / "include"))
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dag = bag.dags["obslake_import__broken_cfg"]
    [task] = dag.tasks
    assert isinstance(task, ConfigErrorOperator) and "ftp://nowhere/" in task.message
    task.retries = 3  # retries would not help a broken YAML: the task must not be retried
    task.retry_delay = dt.timedelta(0)
    run = dag.test()
    assert str(run.state) == "failed"
    [ti] = run.get_task_instances()
    assert str(getattr(ti.state, "value", ti.state)) == "failed"  # not up_for_retry
    assert ti.try_number == 1

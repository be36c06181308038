"""The two IcebergSyncOperators: import a batch of files, export one project; thin over the lake, failures mapped."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from lake_fixtures import inference_rows, to_bytes
from obslake.config import Connector
from obslake.operators.iceberg_sync import IcebergExportOperator, IcebergImportOperator, IcebergSyncOperator
from obslake.storage.local import LocalStore


def _connector(storage: str, **overrides) -> dict:
    data = {"name": "prod", "source": {"type": "lake"}, "projects": ["rag-app"], "storage": storage,
            "namespace": "ml", "ingestion_key_variable": "k"}
    data.update(overrides)
    return Connector.model_validate(data).model_dump(mode="json")


def test_each_operator_has_its_own_arguments_and_shows_the_design_name(make_job, tmp_path):
    job = make_job(f"file://{tmp_path}/in/")
    imp = IcebergImportOperator(task_id="import_files", job=job, files=[{"key": "a.csv"}])
    exp = IcebergExportOperator(task_id="sync_project", connector=_connector("s3://some-bucket/fabric"), project="rag-app")
    for op in (imp, exp):
        assert isinstance(op, IcebergSyncOperator) and op.operator_name == "IcebergSyncOperator"
    assert imp.template_fields == ("files", "file") and exp.template_fields == ("project",)
    assert not hasattr(imp, "connector") and not hasattr(exp, "job")
    with pytest.raises(TypeError):
        IcebergImportOperator(task_id="x", connector=_connector("s3://some-bucket/fabric"))  # no job: not an import


def test_import_operator_imports_once_and_fails_a_bad_file_without_retry(lake, make_job, tmp_path):
    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    good = store.write("a.parquet", to_bytes(inference_rows(20), "parquet"))
    op = IcebergImportOperator(task_id="import_files", job=job, files=[good.to_dict()])
    [result] = op.execute({})
    assert (result["status"], result["rows"]) == ("imported", 20)
    # the one-file form of DAG runs from before batching still works
    [again] = IcebergImportOperator(task_id="again", job=job, file=good.to_dict()).execute({})
    assert again["status"] == "already-imported"
    assert lake.catalog.load_table(job.table_identifier).scan().to_arrow().num_rows == 20  # never twice
    rows = inference_rows(3, id_prefix="b")
    rows = rows.set_column(rows.schema.get_field_index("prediction_id"), "prediction_id", pa.array([None, "b1", "b2"]))
    bad = store.write("b.csv", to_bytes(rows, "csv"))
    more = [store.write(f"c{i}.parquet", to_bytes(inference_rows(5, id_prefix=f"c{i}-"), "parquet")) for i in range(3)]
    # a batch with one bad file: the good ones are committed, then the task fails naming the bad one
    with pytest.raises(AirflowFailException, match=r"1 of 4 file\(s\) failed(.|\n)*b\.csv: \[ID_MISSING\]"):
        IcebergImportOperator(task_id="import_files", job=job,
                              files=[more[0].to_dict(), bad.to_dict(), *(m.to_dict() for m in more[1:])]).execute({})
    assert lake.ledger.get(job.name, bad)["status"] == "failed"
    assert all(lake.ledger.get(job.name, m)["status"] == "succeeded" for m in more)
    assert lake.catalog.load_table(job.table_identifier).scan().to_arrow().num_rows == 20 + 15


def test_export_operator_skips_a_paused_connector_and_needs_a_project(lake, tmp_path):
    paused = IcebergExportOperator(task_id="s", connector=_connector(f"file://{tmp_path}/f", status="paused"),
                                   project="rag-app")
    with pytest.raises(AirflowSkipException, match="paused"):
        paused.execute({})
    no_project = IcebergExportOperator(task_id="s", connector=_connector(f"file://{tmp_path}/f", status="active"))
    with pytest.raises(ValueError, match="no project"):
        no_project.execute({})


def test_export_operator_with_nothing_to_export_commits_nothing(lake, tmp_path):
    op = IcebergExportOperator(task_id="s", connector=_connector(f"file://{tmp_path}/f", status="active"),
                               project="rag-app")
    result = op.execute({"run_id": "manual__" + dt.datetime.now(dt.timezone.utc).isoformat()})
    assert (result["mode"], result["rows"], result["snapshot_id"]) == ("unchanged", 0, None)


def test_the_dags_show_the_design_cards_operator_names(make_job, tmp_path):
    """The import and fabric DAGs keep S3KeyPrefixSensor, TagVerifyOperator, SchemaValidateOperator and
    IcebergSyncOperator as the names Airflow shows, with single-purpose classes underneath."""
    from obslake.dag_factory import build_fabric_dag, build_import_dag

    imports = build_import_dag(make_job(f"file://{tmp_path}/in/"))
    assert {t.task_id: t.operator_name for t in imports.tasks} == {
        "wait_for_new_files": "S3KeyPrefixSensor", "verify_bucket_ownership": "TagVerifyOperator",
        "validate_files": "SchemaValidateOperator", "import_files": "IcebergSyncOperator",
        "report_failures": "ImportReportOperator"}
    assert imports.get_task("import_files").operator_class is IcebergImportOperator
    fabric = build_fabric_dag(Connector.model_validate(_connector("s3://some-bucket/fabric")))
    assert fabric.get_task("sync_project").operator_name == "IcebergSyncOperator"
    assert fabric.get_task("sync_project").operator_class is IcebergExportOperator

"""SchemaValidateOperator: the dry run per file; failed files go to the ledger, the others go on."""

from __future__ import annotations

import pyarrow as pa

from lake_fixtures import inference_rows, to_bytes
from obslake.operators.schema_validate import SchemaValidateOperator
from obslake.storage.local import LocalStore


class _TI:
    """What the operator needs of a task instance: XCom pushes, recorded."""

    def __init__(self):
        self.pushed: dict = {}

    def xcom_push(self, key, value):
        self.pushed[key] = value


def _ctx(ti: _TI | None = None) -> dict:
    return {"ti": ti or _TI()}


def test_valid_files_pass_and_bad_ones_are_failed_in_the_ledger_with_their_location(lake, make_job, tmp_path):
    store = LocalStore(str(tmp_path / "in"))
    job = make_job(store.uri())
    good = store.write("day=1/a.parquet", to_bytes(inference_rows(10), "parquet"))
    rows = inference_rows(3, id_prefix="b")
    rows = rows.set_column(rows.schema.get_field_index("prediction_id"), "prediction_id", pa.array(["b0", None, "b2"]))
    bad = store.write("day=1/b.csv", to_bytes(rows, "csv"))
    garbage = store.write("day=2/c.parquet", b"PAR1 this is not parquet")
    op = SchemaValidateOperator(task_id="validate_files", job=job,
                                files=[good.to_dict(), bad.to_dict(), garbage.to_dict()])
    ti = _TI()
    assert op.execute(_ctx(ti)) == [[good.to_dict()]]  # only the valid file goes on to the import (one batch)
    # the refused files, for the run's report (it fails the run): file, code, located problem
    refused = {f["file"].rsplit("/", 1)[-1]: f for f in ti.pushed["failed"]}
    assert set(refused) == {"b.csv", "c.parquet"}
    assert refused["b.csv"]["code"] == "ID_MISSING" and "row 2" in refused["b.csv"]["error"]
    failed = lake.ledger.get(job.name, bad)
    assert failed["status"] == "failed" and "[ID_MISSING]" in failed["error"] and "row 2" in failed["error"]
    assert lake.ledger.get(job.name, garbage)["status"] == "failed"
    assert lake.ledger.get(job.name, good) is None  # validation writes nothing for a good file
    assert SchemaValidateOperator(task_id="v", job=job, files=[]).execute(_ctx()) == []


def test_valid_files_go_to_the_import_in_batches_a_large_file_alone(lake, make_job, tmp_path):
    store = LocalStore(str(tmp_path / "in"))
    small = [store.write(f"s{i}.parquet", to_bytes(inference_rows(5, id_prefix=f"s{i}-"), "parquet")) for i in range(5)]
    big = store.write("big.parquet", to_bytes(inference_rows(3000, id_prefix="big-"), "parquet"))
    files = [small[0], small[1], big, small[2], small[3], small[4]]
    job = make_job(store.uri(), batch={"max_files": 2, "max_bytes": 10**9, "large_file_bytes": big.size - 1})
    batches = SchemaValidateOperator(task_id="v", job=job, files=[f.to_dict() for f in files]).execute(_ctx())
    assert sorted([b["key"] for b in batch] for batch in batches) == [
        ["big.parquet"], ["s0.parquet", "s1.parquet"], ["s2.parquet", "s3.parquet"], ["s4.parquet"]]
    by_bytes = make_job(store.uri(), batch={"max_files": 50, "max_bytes": small[0].size * 3, "large_file_bytes": 10**9})
    batches = SchemaValidateOperator(task_id="v", job=by_bytes, files=[f.to_dict() for f in small]).execute(_ctx())
    assert [len(b) for b in batches] == [3, 2]
    off = make_job(store.uri(), batch={"max_files": 1})
    assert len(SchemaValidateOperator(task_id="v", job=off, files=[f.to_dict() for f in small]).execute(_ctx())) == 5

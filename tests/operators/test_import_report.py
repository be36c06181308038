"""ImportReportOperator: the run's verdict from what validation refused and what the import tasks committed."""

from __future__ import annotations

import pytest

from obslake.operators.import_report import ImportReportOperator
from obslake.status import run_summary


class _TI:
    def __init__(self, xcoms: dict):
        self.xcoms, self.pushed = xcoms, {}

    def xcom_pull(self, task_ids, key="return_value"):
        return self.xcoms.get((task_ids, key))

    def xcom_push(self, key, value):
        self.pushed[key] = value


def _op() -> ImportReportOperator:
    return ImportReportOperator(task_id="report_failures", validate_task_id="validate_files",
                                import_task_id="import_files")


IMPORTED = [[{"uri": "s3://b/a.parquet", "status": "imported", "rows": 40},
             {"uri": "s3://b/c.parquet", "status": "already-imported", "rows": 0}],
            [{"uri": "s3://b/d.parquet", "status": "imported", "rows": 60}]]


def test_a_refused_file_fails_the_report_with_its_code_and_location():
    from airflow.sdk.exceptions import AirflowFailException

    refused = [{"file": "s3://b/bad.csv", "code": "ID_MISSING",
                "error": "s3://b/bad.csv: 1 problem\n  [ID_MISSING] row 3, column prediction_id: empty; fix: ..."}]
    ti = _TI({("validate_files", "failed"): refused, ("import_files", "return_value"): IMPORTED})
    op = _op()
    assert op.trigger_rule == "none_failed_min_one_success"  # runs when every file was refused, too
    with pytest.raises(AirflowFailException) as err:
        op.execute({"ti": ti})
    text = str(err.value)
    assert "2 file(s) imported (100 rows), 1 imported before, 1 failed" in text
    assert "FAILED s3://b/bad.csv [ID_MISSING]" in text and "row 3, column prediction_id" in text
    assert ti.pushed["summary"] == {"failed": refused, "imported": 2, "rows": 100, "already_imported": 1}


def test_a_run_without_refused_files_succeeds_with_its_summary():
    ti = _TI({("validate_files", "failed"): [], ("import_files", "return_value"): IMPORTED})
    assert _op().execute({"ti": ti}) == {"failed": [], "imported": 2, "rows": 100, "already_imported": 1}


def test_the_summary_takes_one_task_or_many_and_none():
    assert run_summary(None, None) == {"failed": [], "imported": 0, "rows": 0, "already_imported": 0}
    one = run_summary([], IMPORTED[1])  # an unmapped pull gives the task's list itself
    assert one["imported"] == 1 and one["rows"] == 60
    assert run_summary([], [None, IMPORTED[0]])["imported"] == 1  # a map index without a value (failed)


def test_many_refused_files_are_listed_up_to_a_limit():
    from obslake.status import format_run_summary

    refused = [{"file": f"s3://b/f{i}.csv", "code": "X", "error": "e"} for i in range(25)]
    text = format_run_summary(run_summary(refused, []))
    assert text.count("FAILED ") == 20 and "and 5 more" in text

"""MaintenanceOperator: the lake upkeep (expire snapshots, compact small files, remove orphans) of a set of tables."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from obslake.hooks import ObslakeHook


class MaintenanceOperator(BaseOperator):
    """Run :func:`obslake.lake.maintenance.maintain` on every table of one target, each table on its own.

    Args:
        target: ``{"kind": "lake", "tables": [[namespace, name], ...], "jobs": [job names]}`` (model, quarantine
            and trace tables of import jobs, in the lake's catalog) or ``{"kind": "fabric", "connector": {...}}``
            (the project tables of a Data Fabric connector, in the customer's bucket: their
            ``latest.metadata.json`` and Delta log follow every upkeep commit).
        plan_only: plan and log only (a dry run).

    A table that fails does not stop the others; the task then fails (transient errors retry as usual). So
    does a table whose orphan files could not all be deleted (its other steps are done and committed).
    """

    template_fields = ("target",)
    ui_color = "#eef3e8"

    def __init__(self, *, target: dict, plan_only: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.target = target
        self.plan_only = plan_only

    def execute(self, context: Any) -> list[dict]:
        """Maintain each table; return the reports (files, bytes, snapshots per step)."""
        from airflow.sdk.exceptions import AirflowFailException

        from obslake.exceptions import TransientError, printable
        from obslake.lake.maintenance import NO_TABLE, maintain

        reports, failures = [], []
        for catalog, ident, after_commit, protect, carry in self._tables():
            name = ".".join(ident)
            try:
                report = maintain(
                    catalog,
                    ident,
                    dry_run=self.plan_only,
                    protect_since=protect,
                    after_commit=after_commit,
                    carry_properties=carry,
                )
            except Exception as exc:
                self.log.exception("%s: upkeep failed", name)
                failures.append((name, exc))
                continue
            self.log.info("%s", report.summary())
            if report.skipped != NO_TABLE:
                reports.append(report.to_dict())
            if report.orphans_failed:  # e.g. the writer lacks delete permission: worth an alert, not a retry
                failures.append(
                    (
                        name,
                        PermissionError(
                            f"could not remove {report.orphans_failed} orphan file(s); see the warnings above"
                        ),
                    )
                )
        if failures:
            text = "; ".join(f"{n}: {type(e).__name__}: {printable(e, 300)}" for n, e in failures)
            if all(isinstance(e, TransientError) for _, e in failures):
                raise failures[0][1]  # retried by Airflow
            raise AirflowFailException(f"lake upkeep failed for {len(failures)} table(s): {text}")
        return reports

    def _tables(self) -> list[tuple[Any, tuple[str, str], Any, Any, tuple[str, ...]]]:
        target = self.target
        if target["kind"] == "lake":
            hook = ObslakeHook()
            protect = hook.ledger.oldest_pending_since(target.get("jobs"))
            return [(hook.catalog, (ns, name), None, protect, ()) for ns, name in target["tables"]]
        from obslake.config import Connector
        from obslake.fabric.export import PROP_CURSOR, PROP_SOURCE, PROP_WATERMARK, ProjectExporter

        conn = Connector.model_validate(target["connector"])
        hook = ObslakeHook(conn.conn_id)
        catalog = hook.export_catalog(conn.storage)
        out: list[tuple[Any, tuple[str, str], Any, Any, tuple[str, ...]]] = []
        for project in conn.projects:
            exporter = ProjectExporter(conn, project, catalog)
            carry = (PROP_CURSOR, PROP_WATERMARK, PROP_SOURCE)  # the next sync starts from the cursor
            out.append((catalog, exporter.identifier, exporter.publish, None, carry))
            out.append((catalog, exporter.annotations_identifier, exporter.publish_annotations, None, ()))
        return out

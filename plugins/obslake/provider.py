"""obslake as an Airflow provider: what ``airflow providers list`` shows (entry point ``apache_airflow_provider``).

obslake adds no connection type of its own: the lake is an ``iceberg`` connection (Apache Iceberg provider),
buckets are ``aws`` / ``google_cloud_platform`` connections; its one extra key on the Iceberg connection,
``obslake.state-uri``, is documented in the README. The UI page is the plugin :class:`obslake.plugin.ObslakePlugin`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def get_provider_info() -> dict:
    """Provider metadata, in the shape of Airflow's ``provider_info.schema.json``."""
    try:
        versions = [version("obslake")]
    except PackageNotFoundError:  # run from a source tree that is not installed
        versions = []
    integration = "obslake"
    return {
        "package-name": "obslake",
        "name": "obslake",
        "description": "Exactly-once imports of model-inference files from S3/GCS into Apache Iceberg, and Data "
        "Fabric exports of LLM traces, evaluations and annotations (Iceberg + Delta).",
        "versions": versions,
        "integrations": [{"integration-name": integration, "tags": ["service"]}],
        "hooks": [{"integration-name": integration, "python-modules": ["obslake.hooks.obslake"]}],
        "operators": [
            {
                "integration-name": integration,
                "python-modules": [
                    "obslake.operators.iceberg_sync",
                    "obslake.operators.schema_validate",
                    "obslake.operators.tag_verify",
                    "obslake.operators.import_report",
                    "obslake.operators.maintenance",
                    "obslake.operators.storage_probe",
                ],
            }
        ],
        "sensors": [{"integration-name": integration, "python-modules": ["obslake.sensors.prefix"]}],
        "triggers": [{"integration-name": integration, "python-modules": ["obslake.triggers.prefix"]}],
        # the UI plugin is registered by the airflow.plugins entry point alone (listed here too, Airflow would
        # load it twice and warn "already registered")
    }

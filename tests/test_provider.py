"""obslake as an Airflow provider: valid provider info, found by Airflow once installed."""

from __future__ import annotations

import json
from pathlib import Path


def test_provider_info_is_valid_for_airflows_schema_and_names_real_modules():
    import importlib

    import airflow
    import jsonschema

    from obslake.provider import get_provider_info

    info = get_provider_info()
    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(info, schema)
    for kind in ("hooks", "operators", "sensors", "triggers"):
        for entry in info[kind]:
            for module in entry["python-modules"]:
                importlib.import_module(module)
    assert "plugins" not in info  # the airflow.plugins entry point registers it (once)


def test_airflow_lists_the_provider_and_the_plugin():
    from airflow.providers_manager import ProvidersManager

    assert "obslake" in ProvidersManager().providers

"""Where the lake lives (lake/catalog.py): settings from the environment, the cached catalog, table schemas.

``LakeSettings.from_env`` is given explicit environment dicts (the process environment is not read then);
catalogs are real pyiceberg SQL catalogs on SQLite files under tmp_path.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from obslake.exceptions import ConfigError, TerminalError
from obslake.lake.catalog import LakeSettings, load_catalog, obslake_home, table_arrow_schema


def test_defaults_are_an_embedded_sqlite_catalog_and_warehouse_under_obslake_home(tmp_path):
    home = tmp_path / "not" / "yet" / "there"
    settings = LakeSettings.from_env({"OBSLAKE_HOME": str(home)})
    assert home.is_dir() and (home / "warehouse").is_dir()  # created on first use
    assert settings.catalog_type == "sql"
    assert settings.properties == {
        "type": "sql",
        "uri": f"sqlite:///{home / 'catalog.db'}",
        "init_catalog_tables": "true",
        "warehouse": f"file://{home / 'warehouse'}",
    }
    assert settings.warehouse == f"file://{home / 'warehouse'}"
    assert settings.state_uri == settings.properties["uri"]  # the ledger shares the catalog's database
    assert [k for k, _ in settings.catalog_properties] == sorted(settings.properties)


def test_an_explicit_env_is_read_instead_of_the_process_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OBSLAKE_CATALOG_URI", "postgresql+psycopg2://nobody@127.0.0.1:1/never")
    monkeypatch.setenv("OBSLAKE_CATALOG_TYPE", "rest")
    monkeypatch.setenv("OBSLAKE_HOME", str(tmp_path / "process-home"))
    settings = LakeSettings.from_env({"OBSLAKE_HOME": str(tmp_path / "given-home")})
    assert settings.catalog_type == "sql"
    assert settings.properties["uri"] == f"sqlite:///{tmp_path / 'given-home' / 'catalog.db'}"
    assert not (tmp_path / "process-home").exists()
    # without an argument the process environment is read
    assert LakeSettings.from_env().catalog_type == "rest"


def test_catalog_uri_warehouse_and_state_uri_overrides(tmp_path):
    home = tmp_path / "home"
    env = {
        "OBSLAKE_HOME": str(home),
        "OBSLAKE_CATALOG_URI": "postgresql+psycopg2://lake@db.internal:5432/lake",
        "OBSLAKE_WAREHOUSE": "s3://warehouse-bucket/lake/",
        "OBSLAKE_STATE_URI": "postgresql+psycopg2://state@db.internal:5432/state",
    }
    settings = LakeSettings.from_env(env)
    assert settings.properties == {
        "type": "sql",
        "uri": env["OBSLAKE_CATALOG_URI"],
        "init_catalog_tables": "true",
        "warehouse": "s3://warehouse-bucket/lake/",
    }
    assert settings.state_uri == env["OBSLAKE_STATE_URI"]
    assert not home.exists(), "nothing is defaulted, so OBSLAKE_HOME is not created"
    # without OBSLAKE_STATE_URI the ledger lives in the catalog's database
    env.pop("OBSLAKE_STATE_URI")
    assert LakeSettings.from_env(env).state_uri == env["OBSLAKE_CATALOG_URI"]


def test_catalog_properties_json_wins_and_values_become_strings(tmp_path):
    env = {
        "OBSLAKE_HOME": str(tmp_path),
        "OBSLAKE_CATALOG_URI": "sqlite:////ignored.db",
        "OBSLAKE_WAREHOUSE": "file:///ignored",
        "OBSLAKE_CATALOG_PROPERTIES": '{"uri": "sqlite:////from-json.db", "warehouse": "s3://w/", '
        '"s3.endpoint": "http://127.0.0.1:9000", "pool_size": 5, '
        '"init_catalog_tables": "false"}',
    }
    props = LakeSettings.from_env(env).properties
    assert props == {
        "type": "sql",
        "uri": "sqlite:////from-json.db",
        "warehouse": "s3://w/",
        "s3.endpoint": "http://127.0.0.1:9000",
        "pool_size": "5",
        "init_catalog_tables": "false",
    }
    assert LakeSettings.from_env(env).state_uri == "sqlite:////from-json.db"


def test_a_rest_catalog_gets_no_sql_defaults_and_a_local_state_database(tmp_path):
    env = {
        "OBSLAKE_HOME": str(tmp_path / "h"),
        "OBSLAKE_CATALOG_TYPE": "REST",
        "OBSLAKE_CATALOG_URI": "sqlite:////only-for-sql.db",
        "OBSLAKE_CATALOG_PROPERTIES": '{"uri": "https://iceberg.example/api", "credential": "id:secret"}',
    }
    settings = LakeSettings.from_env(env)
    assert settings.catalog_type == "rest"
    assert settings.properties == {"type": "rest", "uri": "https://iceberg.example/api", "credential": "id:secret"}
    assert settings.warehouse is None
    assert settings.state_uri == f"sqlite:///{tmp_path / 'h' / 'state.db'}"
    env["OBSLAKE_WAREHOUSE"] = "s3://wh/"
    assert LakeSettings.from_env(env).warehouse == "s3://wh/"


@pytest.mark.parametrize("raw", ["{not json", "{'uri': 'x'}", '{"a": 1,}'])
def test_invalid_catalog_properties_json_is_a_config_error(tmp_path, raw):
    with pytest.raises(ConfigError, match="OBSLAKE_CATALOG_PROPERTIES is not valid JSON") as err:
        LakeSettings.from_env({"OBSLAKE_HOME": str(tmp_path), "OBSLAKE_CATALOG_PROPERTIES": raw})
    assert isinstance(err.value, TerminalError)


@pytest.mark.parametrize("raw", ["[]", "null", "3", '"uri"'])
def test_catalog_properties_json_that_is_not_an_object_is_a_config_error(tmp_path, raw):
    with pytest.raises(ConfigError, match="OBSLAKE_CATALOG_PROPERTIES"):
        LakeSettings.from_env({"OBSLAKE_HOME": str(tmp_path), "OBSLAKE_CATALOG_PROPERTIES": raw})


def test_obslake_home_defaults_to_dot_obslake_in_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert obslake_home({}) == (tmp_path / ".obslake").resolve()
    assert (tmp_path / ".obslake").is_dir()
    assert obslake_home({"OBSLAKE_HOME": str(tmp_path / "x" / ".." / "y")}) == (tmp_path / "y").resolve()


def test_settings_are_hashable_values(tmp_path):
    env = {"OBSLAKE_HOME": str(tmp_path)}
    a, b = LakeSettings.from_env(env), LakeSettings.from_env(dict(env))
    assert a == b and hash(a) == hash(b) and a is not b
    with pytest.raises(AttributeError):
        a.state_uri = "sqlite://"  # frozen


def test_load_catalog_is_cached_per_settings(tmp_path, monkeypatch):
    one = LakeSettings.from_env({"OBSLAKE_HOME": str(tmp_path / "one")})
    two = LakeSettings.from_env({"OBSLAKE_HOME": str(tmp_path / "two")})
    cat = load_catalog(one)
    assert (tmp_path / "one" / "catalog.db").is_file()  # a real SQLite catalog, its tables created
    assert load_catalog(one) is cat
    assert load_catalog(LakeSettings.from_env({"OBSLAKE_HOME": str(tmp_path / "one")})) is cat  # equal settings
    other = load_catalog(two)
    assert other is not cat
    cat.create_namespace("only_in_one")
    assert ("only_in_one",) in cat.list_namespaces() and ("only_in_one",) not in other.list_namespaces()
    # without settings: from the process environment, and the same cached catalog for the same settings
    for k in (
        "OBSLAKE_CATALOG_URI",
        "OBSLAKE_STATE_URI",
        "OBSLAKE_WAREHOUSE",
        "OBSLAKE_CATALOG_TYPE",
        "OBSLAKE_CATALOG_PROPERTIES",
    ):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OBSLAKE_HOME", str(tmp_path / "one"))
    assert load_catalog() is cat


def test_table_arrow_schema_is_none_until_the_table_exists_then_follows_it(lake):
    catalog = lake.catalog
    ident = ("tests", "schema_probe")
    assert table_arrow_schema(catalog, ident) is None  # no namespace yet
    catalog.create_namespace("tests")
    assert table_arrow_schema(catalog, ident) is None  # namespace, no table
    catalog.create_table(
        ident,
        schema=pa.schema(
            [
                pa.field("prediction_id", pa.string()),
                pa.field("n", pa.int64()),
                pa.field("ts", pa.timestamp("us", tz="UTC")),
            ]
        ),
    )
    schema = table_arrow_schema(catalog, ident)
    assert isinstance(schema, pa.Schema)
    assert schema.names == ["prediction_id", "n", "ts"]
    assert pa.types.is_string(schema.field("prediction_id").type) or pa.types.is_large_string(
        schema.field("prediction_id").type
    )
    assert schema.field("n").type == pa.int64()
    assert schema.field("ts").type == pa.timestamp("us", tz="UTC")

    with catalog.load_table(ident).update_schema() as update:
        update.add_column("score", _iceberg_double())
    assert table_arrow_schema(catalog, ident).names == ["prediction_id", "n", "ts", "score"]  # as it is now
    assert table_arrow_schema(catalog, ("tests", "other")) is None


def _iceberg_double():
    from pyiceberg.types import DoubleType

    return DoubleType()

"""Query DDL for Data Fabric exports (obslake.fabric.ddl).

The BigQuery/Databricks/Snowflake/Athena outputs are checked as text (real URIs in, only documented
``<placeholders>`` left, statements closed, dotted columns quoted per engine). The DuckDB output is
executed for real against Iceberg tables written by pyiceberg, on the local file system and (when the
httpfs extension package is installed) on a local moto S3 server.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obslake.fabric import ddl as ddl_mod
from obslake.fabric.ddl import (
    ENGINES,
    PLACEHOLDERS,
    ddl,
    duckdb_connect_with_iceberg,
    duckdb_extension_paths,
    metadata_uri,
    placeholders,
    quote_identifier,
    table_location,
)

duckdb = pytest.importorskip("duckdb")

NAMESPACE = "production"
PROJECT = "agent-project-a"
TABLE = "agent_project_a"  # the SQL name of PROJECT
STORAGE = {"s3": "s3://my-bucket/arize-sync", "gs": "gs://my-data-bucket/arize-sync/prod"}
COLUMNS = ["span_id", "eval.hallucination.label", "attributes.llm.model_name",
           "annotation.quality.score"]
DOTTED = [c for c in COLUMNS if "." in c]
QUOTES = {"bigquery": "`{}`", "databricks": "`{}`", "snowflake": '"{}"', "athena": '"{}"',
          "duckdb": '"{}"'}
CASES = [(e, s) for e in ENGINES for s in STORAGE if not (e == "athena" and s == "gs")]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def sql_part(text: str) -> str:
    """The text without its ``--`` comment lines (the generator writes only whole-line comments)."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


def header(text: str) -> str:
    """The leading comment block."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return "\n".join(lines)


def statements(text: str) -> list[str]:
    return [s.strip() for s in sql_part(text).split(";") if s.strip()]


def assert_plausible_sql(text: str) -> None:
    sql = sql_part(text)
    assert sql.strip() == "" or sql.rstrip().endswith(";"), "last statement not terminated"
    assert sql.count("(") == sql.count(")"), "unbalanced parentheses"
    assert sql.count("[") == sql.count("]"), "unbalanced brackets"
    assert sql.count("'") % 2 == 0, "unbalanced single quotes"
    assert sql.count("`") % 2 == 0, "unbalanced backticks"
    assert sql.count('"') % 2 == 0, "unbalanced double quotes"
    for bad in ("{", "}", "None", "\t"):
        assert bad not in sql, f"leftover {bad!r} in SQL"
    for stmt in statements(text):
        assert re.match(r"^(CREATE|ALTER|LOAD|INSTALL)\b", stmt), f"odd statement start: {stmt[:40]!r}"


def generate(engine: str, storage: str = "s3", **kw) -> str:
    return ddl(engine, table_uri=STORAGE[storage], namespace=NAMESPACE, project=PROJECT, **kw)


# --------------------------------------------------------------------------------------------------
# every engine, as text
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_columns", [False, True], ids=["all", "columns"])
@pytest.mark.parametrize("engine,storage", CASES)
def test_ddl_has_real_paths_and_only_documented_placeholders(engine, storage, with_columns):
    text = generate(engine, storage, columns=COLUMNS if with_columns else None)
    location = f"{STORAGE[storage]}/{NAMESPACE}/{PROJECT}"

    assert text.startswith("-- "), "must start with a comment"
    head = header(text)
    assert "Must exist first" in head and location in head
    # the real location is filled in (Snowflake's volume holds the namespace folder, relative path below)
    if engine == "snowflake":
        base = f"{STORAGE[storage]}/{NAMESPACE}/"
        assert (base if storage == "s3" else "gcs://" + base.removeprefix("gs://")) in sql_part(text)
        assert f"METADATA_FILE_PATH = '{PROJECT}/metadata/latest.metadata.json'" in text
    elif engine == "databricks":
        assert location in sql_part(text)
    else:
        assert metadata_uri(location) in text
    # no placeholders but the documented ones, and each one named in the header comment
    used = placeholders(text)
    assert used <= set(PLACEHOLDERS[engine]), used - set(PLACEHOLDERS[engine])
    for ph in used:
        assert ph in head, f"{ph} used but not named in the header"
    assert "<" not in re.sub(r"<[a-z_]+>", "", text) and ">" not in re.sub(r"<[a-z_]+>", "", text)
    assert_plausible_sql(text)


@pytest.mark.parametrize("engine", ENGINES)
def test_dotted_columns_are_quoted_for_the_engine(engine):
    text = generate(engine, columns=COLUMNS)
    sql = sql_part(text)
    for col in COLUMNS:
        quoted = QUOTES[engine].format(col)
        assert quoted == quote_identifier(engine, col)
        assert quoted in sql, f"{quoted} missing"
        # never bare: every occurrence of the name in the SQL sits inside its quotes
        assert sql.count(col) == sql.count(quoted), f"{col} appears unquoted"
    # the column view / DuckDB view selects exactly the listed columns, in order
    select = re.search(r"SELECT\n(.*?)\nFROM", sql, re.S).group(1)
    assert [c.strip().rstrip(",") for c in select.splitlines()] == [QUOTES[engine].format(c)
                                                                     for c in COLUMNS]


def test_quote_identifier_escapes_quote_characters():
    assert quote_identifier("duckdb", 'a"b.c') == '"a""b.c"'
    assert quote_identifier("snowflake", "eval.x.label") == '"eval.x.label"'
    assert quote_identifier("databricks", "a`b") == "`a``b`"
    assert quote_identifier("bigquery", "a`b") == "`a\\`b`"
    with pytest.raises(ValueError):
        quote_identifier("oracle", "x")


def test_bigquery_external_iceberg_table():
    text = generate("bigquery", "gs")
    meta = f"{STORAGE['gs']}/{NAMESPACE}/{PROJECT}/metadata/latest.metadata.json"
    sql = sql_part(text)
    assert f"CREATE OR REPLACE EXTERNAL TABLE `<bq_project>.<bq_dataset>.{TABLE}`" in sql
    assert "WITH CONNECTION `<bq_connection>`" in sql
    assert "format = 'ICEBERG'" in sql and f"uris = ['{meta}']" in sql
    assert len(statements(text)) == 1


def test_databricks_delta_registers_the_table_root():
    text = generate("databricks", delta=True)
    location = f"{STORAGE['s3']}/{NAMESPACE}/{PROJECT}"
    sql = sql_part(text)
    assert f"CREATE EXTERNAL LOCATION IF NOT EXISTS <external_location>\n  URL '{STORAGE['s3']}'" in sql
    assert "WITH (STORAGE CREDENTIAL <storage_credential>)" in sql
    assert f"USING DELTA\nLOCATION '{location}';" in sql
    assert "metadata.json" not in sql  # Delta's LOCATION is the folder holding _delta_log/
    assert "CLONE" not in sql


def test_databricks_without_delta_clones_the_iceberg_path():
    text = generate("databricks", "gs")
    location = f"{STORAGE['gs']}/{NAMESPACE}/{PROJECT}"
    sql = sql_part(text)
    assert f"CREATE OR REPLACE TABLE <uc_catalog>.<uc_schema>.{TABLE}\nSHALLOW CLONE iceberg.`{location}`;" in sql
    assert "USING DELTA" not in sql
    assert "UniForm" in header(text) and "Re-run" in header(text)


@pytest.mark.parametrize("storage,provider,base", [
    ("s3", "'S3'", f"'{STORAGE['s3']}/{NAMESPACE}/'"),
    ("gs", "'GCS'", f"'gcs://{STORAGE['gs'].removeprefix('gs://')}/{NAMESPACE}/'"),
])
def test_snowflake_volume_catalog_and_iceberg_table(storage, provider, base):
    text = generate("snowflake", storage)
    sql = sql_part(text)
    assert f"STORAGE_PROVIDER = {provider}" in sql and f"STORAGE_BASE_URL = {base}" in sql
    assert ("STORAGE_AWS_ROLE_ARN = '<iam_role_arn>'" in sql) == (storage == "s3")
    assert "CATALOG_SOURCE = OBJECT_STORE" in sql and "TABLE_FORMAT = ICEBERG" in sql
    assert f"CREATE OR REPLACE ICEBERG TABLE <sf_database>.<sf_schema>.{TABLE}" in sql
    assert "EXTERNAL_VOLUME = '<external_volume>'" in sql
    assert "CATALOG = '<catalog_integration>'" in sql
    assert f"REFRESH '{PROJECT}/metadata/latest.metadata.json';" in sql
    kinds = [re.match(r"(CREATE( OR REPLACE)?( IF NOT EXISTS)? \w+ ?\w*|ALTER ICEBERG TABLE)", s).group(0)
             for s in statements(text)]
    assert kinds == ["CREATE EXTERNAL VOLUME", "CREATE CATALOG INTEGRATION",
                     "CREATE OR REPLACE ICEBERG TABLE", "ALTER ICEBERG TABLE"]


def test_athena_registers_through_glue_not_athena_ddl():
    import json

    text = generate("athena")
    location = f"{STORAGE['s3']}/{NAMESPACE}/{PROJECT}"
    head = header(text)
    assert "CREATE EXTERNAL TABLE" not in sql_part(text)
    assert "TBLPROPERTIES" not in sql_part(text)
    assert "aws glue create-table --region <aws_region> --database-name <glue_database>" in head
    table_input = json.loads(re.search(r"--table-input '(.*?)'", head).group(1))
    assert table_input == {
        "Name": TABLE, "TableType": "EXTERNAL_TABLE",
        "Parameters": {"table_type": "ICEBERG", "metadata_location": metadata_uri(location)},
        "StorageDescriptor": {"Location": location}}
    assert statements(text) == []  # registration is a Glue call; SQL only when columns are listed
    with_cols = generate("athena", columns=COLUMNS)
    assert statements(with_cols)[0].startswith(
        f'CREATE OR REPLACE VIEW "<glue_database>"."{TABLE}_columns" AS')
    with pytest.raises(ValueError, match="S3"):
        generate("athena", "gs")


@pytest.mark.parametrize("storage", ["s3", "gs"])
def test_duckdb_remote_has_secret_and_extension_loads(storage):
    text = generate("duckdb", storage)
    sql = sql_part(text)
    paths = duckdb_extension_paths()
    assert f"LOAD '{paths['avro']}';" in sql and f"LOAD '{paths['iceberg']}';" in sql
    assert sql.index(paths["avro"]) < sql.index(paths["iceberg"])
    assert f"TYPE {'S3' if storage == 's3' else 'GCS'}," in sql
    bucket = re.match(r"^\w+://[^/]+", STORAGE[storage]).group(0)
    assert f"SCOPE '{bucket}'" in sql
    if storage == "s3":
        assert "ENDPOINT '<endpoint>'" in sql and "REGION '<region>'" in sql
    assert f"CREATE OR REPLACE VIEW {TABLE} AS\nSELECT * FROM iceberg_scan(" in sql


def test_table_location_accepts_storage_root_or_table_root():
    root = "s3://b/prefix"
    assert table_location(root, "ns", "p") == "s3://b/prefix/ns/p"
    assert table_location(root + "/", "ns", "p") == "s3://b/prefix/ns/p"
    assert table_location("s3://b/prefix/ns/p/", "ns", "p") == "s3://b/prefix/ns/p"
    assert table_location("/data/lake", "ns", "p") == "/data/lake/ns/p"
    assert table_location("file:///data/lake", "ns", "p") == "file:///data/lake/ns/p"
    a = ddl("snowflake", table_uri=root, namespace="ns", project="p")
    b = ddl("snowflake", table_uri="s3://b/prefix/ns/p", namespace="ns", project="p")
    assert a == b


@pytest.mark.parametrize("kwargs,error", [
    ({"engine": "oracle"}, ValueError),
    ({"table_uri": "s3://b/it's"}, ValueError),
    ({"table_uri": "s3://b/x y"}, ValueError),
    ({"table_uri": "azure://b/x"}, ValueError),
    ({"table_uri": "relative/path"}, ValueError),
    ({"table_uri": "s3://"}, ValueError),
    ({"project": "a/b"}, ValueError),
    ({"namespace": ""}, ValueError),
    ({"engine": "bigquery", "table_uri": "/tmp/lake"}, ValueError),
    ({"columns": []}, ValueError),
    ({"columns": ["a", "a"]}, ValueError),
    ({"columns": "span_id"}, TypeError),
    ({"columns": ["eval.<x>.label"]}, ValueError),
])
def test_bad_arguments_are_rejected(kwargs, error):
    args = {"engine": "duckdb", "table_uri": "s3://b/p", "namespace": "ns", "project": "p", **kwargs}
    engine = args.pop("engine")
    with pytest.raises(error):
        ddl(engine, **args)


# --------------------------------------------------------------------------------------------------
# DuckDB extensions from site-packages
# --------------------------------------------------------------------------------------------------
def test_duckdb_extension_paths_match_the_duckdb_version():
    paths = duckdb_extension_paths()
    assert {"avro", "iceberg"} <= set(paths)
    for name, path in paths.items():
        p = Path(path)
        assert p.is_absolute() and p.is_file() and p.name == f"{name}.duckdb_extension"
        assert p.parent.name == f"v{duckdb.__version__}"


def test_duckdb_connect_with_iceberg_loads_both_without_network():
    con = duckdb_connect_with_iceberg()
    try:
        loaded = {r[0] for r in con.execute(
            "SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()}
        assert {"avro", "iceberg"} <= loaded
        assert con.execute("SELECT current_setting('autoinstall_known_extensions')").fetchone()[0] is False
        assert con.execute("SELECT count(*) FROM duckdb_functions() WHERE function_name = 'iceberg_scan'"
                           ).fetchone()[0] > 0
    finally:
        con.close()


def test_duckdb_connect_reports_missing_packages(monkeypatch):
    monkeypatch.setattr(ddl_mod, "duckdb_extension_paths", lambda: {"avro": "/x"})
    with pytest.raises(RuntimeError, match="duckdb-extension-iceberg"):
        duckdb_connect_with_iceberg()


# --------------------------------------------------------------------------------------------------
# DuckDB DDL executed against a real Iceberg table written by pyiceberg
# --------------------------------------------------------------------------------------------------
T0 = dt.datetime(2025, 3, 1, 9, 30, tzinfo=dt.timezone.utc)
SCHEMA = pa.schema([
    ("span_id", pa.string()),
    ("start_time", pa.timestamp("us", tz="UTC")),
    ("eval.hallucination.label", pa.string()),
    ("eval.hallucination.score", pa.float64()),
    ("attributes.llm.model_name", pa.string()),
    ("attributes.llm.token_count.total", pa.int64()),
    ("date", pa.string()),
    ("hour", pa.string()),
])


def batch(ids: range, *, model: str = "gpt-4o") -> pa.Table:
    rows = []
    for i in ids:
        t = T0 + dt.timedelta(minutes=47 * i)
        rows.append({"span_id": f"s{i:03d}", "start_time": t,
                     "eval.hallucination.label": None if i % 4 == 0 else ("factual" if i % 2 else "hallucinated"),
                     "eval.hallucination.score": None if i % 4 == 0 else i / 10,
                     "attributes.llm.model_name": model, "attributes.llm.token_count.total": 10 * i,
                     "date": t.strftime("%Y-%m-%d"), "hour": t.strftime("%H")})
    return pa.Table.from_pylist(rows, SCHEMA)


def publish_latest(table, location: Path) -> None:
    """What the exporter does after each commit: latest.metadata.json + version-hint.text."""
    table.refresh()
    current = table.metadata_location
    meta_dir = location / "metadata"
    shutil.copyfile(current.removeprefix("file://"), meta_dir / "latest.metadata.json")
    (meta_dir / "version-hint.text").write_text(Path(current).name.split("-", 1)[0].lstrip("0") or "0")


@pytest.fixture
def local_export(tmp_path):
    """An exported project on the local disk: <storage>/<namespace>/<project> with 3 snapshots."""
    from pyiceberg.catalog.sql import SqlCatalog

    storage = tmp_path / "storage"
    location = storage / NAMESPACE / PROJECT
    catalog = SqlCatalog("ddl_test", uri=f"sqlite:///{tmp_path / 'catalog.db'}",
                         warehouse=f"file://{tmp_path / 'warehouse'}")
    catalog.create_namespace(NAMESPACE)
    table = catalog.create_table(f"{NAMESPACE}.{PROJECT}", schema=SCHEMA, location=f"file://{location}")
    with table.update_spec() as spec:
        spec.add_identity("date")
        spec.add_identity("hour")
    table.append(batch(range(0, 30)))
    table.append(batch(range(30, 45), model="claude-sonnet"))
    table.delete("span_id IN ('s003', 's031')")  # an update/delete between syncs
    publish_latest(table, location)
    assert any((location / "data").glob("date=*/hour=*/*.parquet")), "Hive-style partition folders"
    return {"storage": storage, "location": location, "table": table}


def scan_sorted(table, columns: list[str] | None = None) -> list[dict]:
    arrow = table.scan().to_arrow()
    if columns:
        arrow = arrow.select(columns)
    return sorted(arrow.to_pylist(), key=lambda r: r["span_id"])


def run_ddl(text: str):
    """A fresh connection that can't auto-install anything; the DDL must LOAD what it needs."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    con.execute(text)
    return con


def view_sorted(con, view: str) -> list[dict]:
    cur = con.execute(f"SELECT * FROM {view} ORDER BY span_id")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


@pytest.mark.parametrize("uri_form", ["file_uri", "plain_path", "table_root"])
def test_duckdb_ddl_executes_and_matches_pyiceberg(local_export, uri_form):
    storage, location, table = local_export["storage"], local_export["location"], local_export["table"]
    table_uri = {"file_uri": f"file://{storage}", "plain_path": str(storage),
                 "table_root": f"file://{location}"}[uri_form]
    text = ddl("duckdb", table_uri=table_uri, namespace=NAMESPACE, project=PROJECT)
    assert placeholders(text) == set()  # local: nothing to fill in
    assert "SECRET" not in sql_part(text)
    con = run_ddl(text)
    try:
        expected = scan_sorted(table)
        assert len(expected) == 43
        assert con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == len(expected)
        got = view_sorted(con, TABLE)
        assert got == expected
        # dotted columns are real columns of the view, selectable with quotes
        rows = con.execute(
            f'SELECT "attributes.llm.model_name", count(*) FROM {TABLE} GROUP BY 1 ORDER BY 1').fetchall()
        assert rows == [("claude-sonnet", 14), ("gpt-4o", 29)]
        labels = con.execute(
            f'SELECT count(*) FROM {TABLE} WHERE "eval.hallucination.label" = \'factual\'').fetchone()[0]
        assert labels == sum(1 for r in expected if r["eval.hallucination.label"] == "factual")
    finally:
        con.close()


def test_duckdb_ddl_with_columns_selects_exactly_those(local_export):
    storage, table = local_export["storage"], local_export["table"]
    cols = ["span_id", "eval.hallucination.label", "attributes.llm.model_name", "hour"]
    text = ddl("duckdb", table_uri=f"file://{storage}", namespace=NAMESPACE, project=PROJECT,
               columns=cols)
    con = run_ddl(text)
    try:
        cur = con.execute(f"SELECT * FROM {TABLE} ORDER BY span_id")
        assert [d[0] for d in cur.description] == cols
        assert [dict(zip(cols, r)) for r in cur.fetchall()] == scan_sorted(table, cols)
    finally:
        con.close()


def test_duckdb_view_follows_later_syncs_and_new_columns(local_export):
    from pyiceberg.types import StringType

    storage, location, table = local_export["storage"], local_export["location"], local_export["table"]
    con = run_ddl(ddl("duckdb", table_uri=f"file://{storage}", namespace=NAMESPACE, project=PROJECT))
    try:
        assert con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == 43
        # the next sync: a new annotation name adds eval.toxicity.label, plus new spans
        with table.update_schema() as update:
            update.add_column(("eval.toxicity.label",), StringType())
        table.refresh()
        new = batch(range(45, 50)).append_column(
            "eval.toxicity.label", pa.array(["toxic", None, "clean", "clean", None], pa.large_string()))
        table.append(new)
        publish_latest(table, location)
        got = view_sorted(con, TABLE)
        assert got == scan_sorted(table)
        assert len(got) == 48
        assert con.execute(
            f'SELECT count(*) FROM {TABLE} WHERE "eval.toxicity.label" = \'clean\'').fetchone()[0] == 2
    finally:
        con.close()


# --------------------------------------------------------------------------------------------------
# DuckDB DDL against S3 (moto on loopback), when the httpfs extension package is installed
# --------------------------------------------------------------------------------------------------
def test_duckdb_ddl_on_s3_with_secret(moto_server, s3_client, s3_bucket, tmp_path):
    if "httpfs" not in duckdb_extension_paths():
        pytest.skip("duckdb-extension-httpfs not installed")
    from pyiceberg.catalog.sql import SqlCatalog

    storage = f"s3://{s3_bucket}/arize-sync"
    location = f"{storage}/{NAMESPACE}/{PROJECT}"
    catalog = SqlCatalog("ddl_s3", uri=f"sqlite:///{tmp_path / 'catalog.db'}", warehouse=storage, **{
        "s3.endpoint": moto_server, "s3.access-key-id": "testing", "s3.secret-access-key": "testing",
        "s3.region": "us-east-1"})
    catalog.create_namespace(NAMESPACE)
    table = catalog.create_table(f"{NAMESPACE}.{PROJECT}", schema=SCHEMA, location=location)
    table.append(batch(range(0, 12)))
    table.delete("span_id = 's005'")
    table.refresh()
    bucket, key = table.metadata_location.removeprefix("s3://").split("/", 1)
    s3_client.copy_object(Bucket=bucket, CopySource={"Bucket": bucket, "Key": key},
                          Key=f"arize-sync/{NAMESPACE}/{PROJECT}/metadata/latest.metadata.json")

    text = ddl("duckdb", table_uri=storage, namespace=NAMESPACE, project=PROJECT)
    host = moto_server.split("://", 1)[1]
    filled = (text.replace("<key_id>", "testing").replace("<secret>", "testing")
              .replace("<region>", "us-east-1")
              # moto on plain http with path-style URLs (real AWS needs neither)
              .replace("ENDPOINT '<endpoint>',", f"ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false,")
              .replace("<endpoint>", host))
    assert placeholders(filled) == set()
    con = run_ddl(filled)
    try:
        assert view_sorted(con, TABLE) == scan_sorted(table)
        assert con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == 11
    finally:
        con.close()


# --------------------------------------------------------------------------------------------------
# The annotations table and the latest view (spans joined to the latest version of each annotation)
# --------------------------------------------------------------------------------------------------
DIALECTS = {"bigquery": "bigquery", "databricks": "databricks", "snowflake": "snowflake", "athena": "athena",
            "duckdb": "duckdb"}
PAIRS = [("hallucination", "eval"), ("document.0.relevance", "eval"), ("it's \"odd\" \\ name", "annotation"),
         ("trace.qa", "eval"), ("qa", "annotation")]


def parsed_statements(engine: str, text: str):
    """Each statement parsed by sqlglot in the engine's dialect (placeholders made plain identifiers)."""
    import sqlglot

    filled = re.sub(r"<([a-z_]+)>", r"\1", sql_part(text))
    return [(stmt, sqlglot.parse_one(stmt, read=DIALECTS[engine])) for stmt in
            (s.strip() for s in filled.split(";\n")) if stmt]


@pytest.mark.parametrize("engine,storage", CASES)
def test_latest_view_and_annotations_table_parse_in_each_dialect(engine, storage):
    """sqlglot parses the view (and every table statement its dialect knows) as a CREATE: a syntax error in
    the generated SQL fails here. Registration statements sqlglot has no grammar for (BigQuery's EXTERNAL
    TABLE, Databricks' EXTERNAL LOCATION, Snowflake's VOLUME/INTEGRATION/REFRESH, DuckDB's LOAD/SECRET)
    come back as an opaque Command and are checked as text above."""
    from sqlglot import exp

    text = generate(engine, storage, annotations=PAIRS)
    assert_plausible_sql(text)
    ann_location = f"{STORAGE[storage]}/{NAMESPACE}/{PROJECT}__annotations"
    assert ann_location in text
    trees = parsed_statements(engine, text)
    views = [tree for stmt, tree in trees if stmt.startswith("CREATE OR REPLACE VIEW")]
    assert views and all(isinstance(v, exp.Create) for v in views)
    latest = [v for v in views if v.this.sql(dialect=DIALECTS[engine]).rstrip("`\"").endswith("_latest")]
    assert len(latest) == 1
    opaque = {type(tree).__name__ for stmt, tree in trees if not isinstance(tree, exp.Create)}
    assert opaque <= {"Command"}


@pytest.mark.parametrize("engine", ENGINES)
def test_latest_view_columns_follow_arizes_span_export_names(engine):
    from sqlglot import exp

    text = generate(engine, annotations=PAIRS)
    view = [tree for stmt, tree in parsed_statements(engine, text)
            if stmt.startswith("CREATE OR REPLACE VIEW") and "_latest" in stmt][0]
    outer = view.expression
    assert isinstance(outer, exp.Select)
    names = [e.alias_or_name for e in outer.expressions]
    if engine == "bigquery":  # no dots in BigQuery column names: eval.<name>.label through STRUCTs
        assert names[0] == "*" and names[1:] == ["eval", "annotation"]
        inner = {f.this.name: [g.this.name for g in f.expression.expressions]
                 for f in outer.expressions[1].this.expressions}  # STRUCT(STRUCT(c0 AS label, ...) AS name, ...)
        assert inner == {n: ["label", "score", "explanation"] for n in ("document_0_relevance", "hallucination",
                                                                         "trace_qa")}
    else:
        assert names[0] == "*"
        assert "eval.hallucination.label" in names and "eval.document_0_relevance.score" in names
        assert "eval.trace_qa.explanation" in names and "annotation.qa.identifier" in names
        assert "annotation.it's \"odd\" \\ name.updated_at" in names
        assert len(names) == 1 + 3 * 3 + 6 * 2


@given(st.lists(st.tuples(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"),
                                  min_size=1, max_size=12),
                          st.sampled_from(["eval", "annotation"])), min_size=1, max_size=4, unique=True))
@settings(max_examples=60, deadline=None)
def test_annotation_names_survive_as_sql_literals_in_every_dialect(pairs):
    """Whatever an annotation is named (quotes, backslashes, dots, unicode), each dialect's parser reads the
    view's string literal back as exactly that name."""
    import sqlglot
    from sqlglot import exp

    from obslake.fabric.ddl import latest_view

    for engine in ENGINES:
        sql = latest_view(engine, "spans", "notes", pairs)
        tree = sqlglot.parse_one(sql, read=DIALECTS[engine])
        literals = {lit.this for eq in tree.find_all(exp.EQ) for lit in [eq.expression]
                    if isinstance(lit, exp.Literal) and eq.this.name == "name"}
        assert literals == {name for name, _ in pairs}, engine


def test_duckdb_latest_view_runs_on_a_real_export(tmp_path):
    """End to end on the local disk: the exporter's two tables, the DuckDB DDL with the latest view
    (executed), the view's answer checked against the rows written."""
    from fabric_helpers import NOW

    from obslake.config import Connector
    from obslake.fabric.export import ProjectExporter
    from obslake.fabric.model import ANNOTATION_SCHEMA, SPAN_SCHEMA, ChangeBatch, Changes
    from obslake.lake.catalog import LakeSettings, load_catalog

    class Source:
        name = "test"

        def __init__(self, batches):
            self.batches = batches

        def list_projects(self):
            return [PROJECT]

        def changes(self, project, cursor, *, overlap, batch_spans=50_000):
            return Changes(iter(self.batches), {"n": (cursor or {}).get("n", 0) + 1}, NOW)

    spans = pa.Table.from_pylist([{"span_id": f"s{i}", "trace_id": "t", "name": "llm",
                                   "start_time": NOW - dt.timedelta(days=i), "end_time": NOW - dt.timedelta(days=i),
                                   "attributes": '{"llm": {"model_name": "m"}}', "changed_at": NOW}
                                  for i in range(4)], SPAN_SCHEMA)

    def notes(rows):
        return pa.Table.from_pylist([dict(zip(("span_id", "name", "label", "score", "annotator_kind", "identifier",
                                               "updated_at"), r)) for r in rows], ANNOTATION_SCHEMA)

    conn = Connector.model_validate({"name": "local", "source": {"type": "lake"}, "projects": [PROJECT],
                                     "storage": f"file://{tmp_path / 'storage'}", "namespace": NAMESPACE,
                                     "ingestion_key_variable": "k"})
    catalog = load_catalog(LakeSettings.from_env({"OBSLAKE_HOME": str(tmp_path / "lake")}))
    exporter = ProjectExporter(conn, PROJECT, catalog)
    t1 = NOW - dt.timedelta(hours=1)
    exporter.sync(Source([ChangeBatch(spans, notes([
        ("s0", "hallucination", "factual", 0.1, "LLM", "", t1),
        ("s1", "hallucination", "factual", 0.2, "CODE", "", t1),
        ("s1", "thumbs", "down", 0.0, "HUMAN", "alice", t1),
        ("s3", "thumbs", "up", 1.0, "HUMAN", "bob", t1)]))]))
    # later: s1's evaluation changes and bob's thumbs on s3 is superseded by carol's; spans unchanged
    exporter.sync(Source([ChangeBatch(spans.slice(1, 3), notes([
        ("s1", "hallucination", "hallucinated", 0.9, "LLM", "", NOW),
        ("s1", "thumbs", "down", 0.0, "HUMAN", "alice", t1),
        ("s3", "thumbs", "up", 1.0, "HUMAN", "bob", t1),
        ("s3", "thumbs", "down", 0.0, "HUMAN", "carol", NOW)]), spans_changed=False)]))
    text = ddl("duckdb", table_uri=conn.storage, namespace=NAMESPACE, project=PROJECT,
               annotations=exporter.annotation_names())
    con = run_ddl(text)
    try:
        got = con.execute(f'SELECT span_id, "eval.hallucination.label", "eval.hallucination.score", '
                          f'"annotation.thumbs.label", "annotation.thumbs.identifier" FROM {TABLE}_latest '
                          "ORDER BY span_id").fetchall()
        assert got == [("s0", "factual", 0.1, None, None), ("s1", "hallucinated", 0.9, "down", "alice"),
                       ("s2", None, None, None, None), ("s3", None, None, "down", "carol")]
        assert con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0] == 4
        assert con.execute(f"SELECT count(*) FROM {TABLE}_annotations").fetchone()[0] == 8  # every version
    finally:
        con.close()

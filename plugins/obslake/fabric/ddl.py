"""Query DDL for Data Fabric exports: make one exported project queryable from a warehouse or engine.

Each exported project is an Iceberg table at ``<storage>/<namespace>/<project>/`` whose
``metadata/latest.metadata.json`` is always a copy of the current metadata file (plus
``metadata/version-hint.text``, Hive-style ``data/date=…/hour=…/`` folders and, optionally, a
``_delta_log/`` describing the same Parquet files as Delta). :func:`ddl` writes the statements that
register such a table in one engine:

==============  ==================================================================================
``bigquery``    ``CREATE OR REPLACE EXTERNAL TABLE … WITH CONNECTION … OPTIONS (format = 'ICEBERG',
                uris = ['…/metadata/latest.metadata.json'])`` (a BigLake Iceberg external table).
``databricks``  Unity Catalog. With ``delta=True``: ``CREATE TABLE … USING DELTA LOCATION '<table
                root>'`` (the folder holding ``_delta_log/``, not the metadata file). Without Delta:
                an incremental ``SHALLOW CLONE iceberg.`<table root>``` into a UC Delta table, the
                route Databricks documents for Iceberg files that no catalog tracks (re-run after
                each sync).
``snowflake``   External volume + object-store catalog integration + ``CREATE OR REPLACE ICEBERG TABLE
                … METADATA_FILE_PATH = '<project>/metadata/latest.metadata.json'`` and the ``ALTER
                ICEBERG TABLE … REFRESH`` to run after each sync.
``athena``      Athena's own ``CREATE TABLE … TBLPROPERTIES ('table_type'='ICEBERG')`` makes a NEW,
                empty Athena-managed table, so the existing table is registered in the Glue Data
                Catalog instead (``aws glue create-table`` with ``table_type=ICEBERG`` and
                ``metadata_location``), given as a SQL comment, plus views over it.
``duckdb``      ``LOAD`` of the iceberg/avro extensions (from the pip packages when installed, else
                ``INSTALL``), an S3/GCS secret, and ``CREATE OR REPLACE VIEW … AS SELECT … FROM
                iceberg_scan('…/metadata/latest.metadata.json')``. Runs as-is on local
                (``file://`` or absolute path) tables.
==============  ==================================================================================

Every output starts with a comment naming what must exist first; the only placeholders left are the
``<angle_bracket>`` names listed in :data:`PLACEHOLDERS` (and in that header comment). Column names
with dots (``eval.<name>.label``, ``attributes.llm.model_name``) are quoted per engine wherever
columns are listed (:func:`quote_identifier`).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re
from pathlib import Path

ENGINES = ("bigquery", "databricks", "snowflake", "athena", "duckdb")
LATEST_METADATA = "metadata/latest.metadata.json"

# The placeholders each engine's DDL may contain, with what the user must put there.
PLACEHOLDERS: dict[str, dict[str, str]] = {
    "bigquery": {
        "<bq_project>": "Google Cloud project that holds the dataset",
        "<bq_dataset>": "BigQuery dataset in the bucket's location (an aws-* location for s3://)",
        "<bq_connection>": "connection id PROJECT.LOCATION.CONNECTION_ID whose service account "
        "(or AWS role, for s3://) can read the bucket",
    },
    "databricks": {
        "<uc_catalog>": "Unity Catalog catalog",
        "<uc_schema>": "schema in that catalog",
        "<storage_credential>": "Unity Catalog storage credential that can read the bucket",
        "<external_location>": "name for the external location over the export prefix",
    },
    "snowflake": {
        "<sf_database>": "database",
        "<sf_schema>": "schema",
        "<external_volume>": "name of the external volume (created below)",
        "<catalog_integration>": "name of the object-store catalog integration (created below)",
        "<iam_role_arn>": "AWS IAM role Snowflake assumes to read the bucket (S3 only)",
    },
    "athena": {
        "<glue_database>": "AWS Glue database the table is registered in",
        "<aws_region>": "region of the bucket, Glue and Athena",
    },
    "duckdb": {
        "<key_id>": "access key id (S3) or HMAC key id (GCS)",
        "<secret>": "secret access key (S3) or HMAC secret (GCS)",
        "<region>": "bucket region (S3)",
        "<endpoint>": "S3 endpoint host, e.g. s3.amazonaws.com or an S3-compatible server",
    },
}

_PLACEHOLDER_RE = re.compile(r"<[a-z_]+>")
_BAD_URI_CHARS = re.compile(r"['\"`\\\s;]")


# --------------------------------------------------------------------------------------------------
# Paths and names
# --------------------------------------------------------------------------------------------------
def table_location(table_uri: str, namespace: str, project: str) -> str:
    """The table root ``<storage>/<namespace>/<project>`` (no trailing slash).

    ``table_uri`` may be the table root itself or the storage root (``s3://bucket/prefix``,
    ``gs://bucket/prefix``, ``file:///dir`` or an absolute local path); ``/<namespace>/<project>`` is
    appended when it does not already end with it.
    """
    for what, value in (("namespace", namespace), ("project", project)):
        if not value or "/" in value or _BAD_URI_CHARS.search(value) or value in (".", ".."):
            raise ValueError(f"invalid {what} {value!r}")
    if not table_uri or _BAD_URI_CHARS.search(table_uri):
        raise ValueError(f"invalid table_uri {table_uri!r} (quotes, backslashes, spaces and ';' are not allowed)")
    scheme = _scheme(table_uri)
    if scheme not in ("s3", "gs", "file", "local"):
        raise ValueError(f"unsupported storage {table_uri!r}: expected s3://, gs://, file:// or an absolute local path")
    if scheme in ("s3", "gs") and not re.match(r"^[a-z0-9]+://[^/]+", table_uri):
        raise ValueError(f"no bucket in {table_uri!r}")
    uri = table_uri.rstrip("/") or "/"
    suffix = f"/{namespace}/{project}"
    return uri if uri.endswith(suffix) else uri.rstrip("/") + suffix


def metadata_uri(location: str) -> str:
    """``<location>/metadata/latest.metadata.json``."""
    return f"{location.rstrip('/')}/{LATEST_METADATA}"


def quote_identifier(engine: str, name: str) -> str:
    """``name`` quoted as a column identifier in ``engine``'s SQL (dots stay part of the name).

    BigQuery and Databricks use backticks; Snowflake, Athena (Trino) and DuckDB double quotes.
    In Snowflake a quoted identifier is case-sensitive, which is what Iceberg column names need.
    """
    _check_engine(engine)
    if not name or "\n" in name or "\x00" in name:
        raise ValueError(f"invalid column name {name!r}")
    if engine == "bigquery":
        return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"
    if engine == "databricks":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def sql_table_name(project: str) -> str:
    """A plain SQL identifier for the project's table: non-alphanumerics become ``_``."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", project)
    return f"t_{name}" if name[:1].isdigit() else name


def placeholders(text: str) -> set[str]:
    """The ``<placeholder>`` names left in a generated DDL text."""
    return set(_PLACEHOLDER_RE.findall(text))


# --------------------------------------------------------------------------------------------------
# DuckDB extensions from the pip packages (duckdb-extension-iceberg, duckdb-extension-avro)
# --------------------------------------------------------------------------------------------------
def duckdb_extension_paths() -> dict[str, str]:
    """``{extension name: absolute path}`` of the ``.duckdb_extension`` files of the installed
    ``duckdb-extension-*`` packages that were built for the installed duckdb version.

    The packages ship ``<pkg>/extensions/v<duckdb version>/<name>.duckdb_extension``; files for other
    duckdb versions are ignored (DuckDB refuses to load them).
    """
    import duckdb

    wanted_dir = f"v{duckdb.__version__}"
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        dist_name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if not dist_name.startswith("duckdb-extension-"):
            continue
        for file in dist.files or ():
            parts = Path(str(file)).parts
            if file.name.endswith(".duckdb_extension") and len(parts) >= 2 and parts[-2] == wanted_dir:
                path = Path(str(dist.locate_file(file))).resolve()
                if path.is_file():
                    found[file.name.removesuffix(".duckdb_extension")] = str(path)
    return dict(sorted(found.items()))


def duckdb_connect_with_iceberg(database: str = ":memory:", **config):
    """A duckdb connection with the avro and iceberg extensions loaded from the pip packages
    (and httpfs too when its package, duckdb-extension-httpfs, is installed).

    Never touches the network: auto-install of extensions is switched off and nothing is
    ``INSTALL``-ed. Raises ``RuntimeError`` when the avro or iceberg package for this duckdb
    version is missing.
    """
    import duckdb

    paths = duckdb_extension_paths()
    missing = [name for name in ("avro", "iceberg") if name not in paths]
    if missing:
        raise RuntimeError(
            f"duckdb extension package(s) for duckdb {duckdb.__version__} not installed: "
            + ", ".join(f"duckdb-extension-{m}=={duckdb.__version__}" for m in missing)
        )
    config.setdefault("autoinstall_known_extensions", False)
    con = duckdb.connect(database, config=config)
    try:
        for name in ("avro", "iceberg", "httpfs"):  # iceberg reads its manifests with avro
            if name in paths:
                con.execute(f"LOAD {_sql_str(paths[name])}")
    except Exception:
        con.close()
        raise
    return con


# --------------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------------
def ddl(
    engine: str,
    *,
    table_uri: str,
    namespace: str,
    project: str,
    delta: bool = False,
    columns: list[str] | None = None,
    annotations: list[tuple[str, str]] | None = None,
) -> str:
    """SQL that makes the exported table of ``project`` queryable in ``engine``.

    Args:
        engine: one of :data:`ENGINES`.
        table_uri: the table root ``<storage>/<namespace>/<project>`` or the storage root
            (see :func:`table_location`); ``file://``/local paths only for ``duckdb``.
        namespace, project: the connector's namespace and the project (the table's folder names).
        delta: the export also writes ``_delta_log/``; only Databricks uses it (``USING DELTA``).
        columns: when given, a view (DuckDB: the view itself) selects exactly these columns, each
            quoted for the engine.
        annotations: when given (``[]`` too), also the project's annotations table and the view
            ``<table>_latest``: every span with the latest version of each annotation, one column per
            ``(name, kind)`` listed here (``kind`` ``eval`` or ``annotation``; see :func:`latest_view`).

    Returns:
        The statements, starting with a comment naming what must exist first; placeholders are
        the ``<…>`` names of :data:`PLACEHOLDERS` [engine].
    """
    _check_engine(engine)
    location = table_location(table_uri, namespace, project)
    cols = _check_columns(columns)
    scheme = _scheme(location)
    if engine != "duckdb" and scheme not in ("s3", "gs"):
        raise ValueError(f"{engine} needs an s3:// or gs:// location, got {location!r}")
    if engine == "athena" and scheme != "s3":
        raise ValueError(f"athena reads only S3, got {location!r}")
    builder = {
        "bigquery": _bigquery,
        "databricks": _databricks,
        "snowflake": _snowflake,
        "athena": _athena,
        "duckdb": _duckdb,
    }[engine]
    text = builder(location=location, namespace=namespace, project=project, delta=delta, cols=cols)
    if annotations is not None:
        text += "\n" + _annotations_part(engine, location, namespace, project, delta, annotations)
    unknown = placeholders(text) - set(PLACEHOLDERS[engine])
    assert not unknown, f"undocumented placeholders {unknown}"  # a bug here, never user input
    return text


def _header(
    engine_title: str, namespace: str, project: str, location: str, needs: list[tuple[str, str]], notes: list[str]
) -> list[str]:
    lines = [
        f"-- {engine_title}: Data Fabric project '{project}' (namespace '{namespace}')",
        f"-- table location: {location}",
        "-- Must exist first (replace the placeholders in angle brackets):",
    ]
    lines += [f"--   {what}: {why}" for what, why in needs]
    lines += [f"-- {line}" if line else "--" for line in notes]
    return lines


def _bigquery(*, location, namespace, project, delta, cols) -> str:
    meta = metadata_uri(location)
    name = sql_table_name(project)
    s3 = location.startswith("s3://")
    needs = [
        (
            "<bq_project>.<bq_dataset>",
            "a dataset in the same location as the bucket"
            + (" (an aws-* BigQuery Omni location for S3)" if s3 else ""),
        ),
        (
            "<bq_connection>",
            "a BigQuery connection (PROJECT.LOCATION.CONNECTION_ID) whose "
            + (
                "AWS IAM role can read the bucket (BigQuery Omni)"
                if s3
                else "service account has roles/storage.objectViewer on the bucket"
            ),
        ),
    ]
    notes = [
        "A read-only BigLake Iceberg external table over latest.metadata.json, which each sync",
        "replaces. Google documents that metadata-file tables must be pointed at new metadata after",
        "table updates: if results or columns (new eval.* annotations) look stale, re-run this",
        "statement after the sync; it is idempotent.",
        "Column names containing dots are written in backticks (`attributes.llm.model_name`).",
    ]
    if delta:
        notes.append("The _delta_log/ is not used: BigQuery reads the Iceberg metadata.")
    out = _header("BigQuery", namespace, project, location, needs, notes)
    out += [
        f"CREATE OR REPLACE EXTERNAL TABLE `<bq_project>.<bq_dataset>.{name}`",
        "WITH CONNECTION `<bq_connection>`",
        "OPTIONS (",
        "  format = 'ICEBERG',",
        f"  uris = [{_sql_str(meta)}]",
        ");",
    ]
    if cols:
        out += [
            "",
            f"CREATE OR REPLACE VIEW `<bq_project>.<bq_dataset>.{name}_columns` AS",
            _select("bigquery", cols, f"`<bq_project>.<bq_dataset>.{name}`") + ";",
        ]
    return "\n".join(out) + "\n"


def _databricks(*, location, namespace, project, delta, cols) -> str:
    name = sql_table_name(project)
    target = f"<uc_catalog>.<uc_schema>.{name}"
    storage_root = location.rsplit("/", 2)[0]
    needs = [
        ("<uc_catalog>.<uc_schema>", "a catalog and schema you can CREATE TABLE in"),
        ("<storage_credential>", "a Unity Catalog storage credential that can read the bucket"),
        (
            "<external_location>",
            f"an external location over {storage_root} using it (created "
            "below; drop that statement if one already covers the path), with READ FILES for you",
        ),
    ]
    if delta:
        notes = [
            "The export writes a _delta_log/ next to the Iceberg metadata, so Unity Catalog registers",
            "it as an external Delta table. LOCATION is the table root (the folder that holds",
            "_delta_log/), never the metadata JSON file. Reads always see the latest sync.",
        ]
    else:
        notes = [
            "Without a _delta_log/ Unity Catalog cannot register Iceberg files by path: UniForm is",
            "the other direction (Delta read as Iceberg), CREATE TABLE ... USING ICEBERG makes a new",
            "UC-managed table, and a foreign catalog needs an Iceberg catalog (Glue, Hive, ...).",
            "Databricks documents incremental CLONE of an Iceberg path into a Delta table (Public",
            "Preview, Databricks Runtime 11.3 LTS+; shallow clone into Unity Catalog needs 13.3+):",
            "SHALLOW CLONE references the export's Parquet files without copying them. Re-run the",
            "statement after each sync to pick up new snapshots. Prefer delta=True if the export",
            "writes _delta_log/. Unverified here: how the clone picks the current metadata file",
            "(version-hint.text) for tables whose metadata files are not named vN.metadata.json.",
        ]
    out = _header("Databricks (Unity Catalog)", namespace, project, location, needs, notes)
    out += [
        "CREATE EXTERNAL LOCATION IF NOT EXISTS <external_location>",
        f"  URL {_sql_str(storage_root)}",
        "  WITH (STORAGE CREDENTIAL <storage_credential>)",
        "  COMMENT 'Arize Data Fabric export';",
        "",
    ]
    if delta:
        out += [f"CREATE TABLE IF NOT EXISTS {target}", "USING DELTA", f"LOCATION {_sql_str(location)};"]
    else:
        out += [f"CREATE OR REPLACE TABLE {target}", f"SHALLOW CLONE iceberg.`{location}`;"]
    if cols:
        out += ["", f"CREATE OR REPLACE VIEW {target}_columns AS", _select("databricks", cols, target) + ";"]
    return "\n".join(out) + "\n"


def _snowflake(*, location, namespace, project, delta, cols) -> str:
    name = sql_table_name(project)
    target = f"<sf_database>.<sf_schema>.{name}"
    base = location.rsplit("/", 1)[0] + "/"  # <storage>/<namespace>/ : the volume's base URL
    relative = f"{project}/{LATEST_METADATA}"
    s3 = location.startswith("s3://")
    if s3:
        storage = [
            "    STORAGE_PROVIDER = 'S3'",
            f"    STORAGE_BASE_URL = {_sql_str(base)}",
            "    STORAGE_AWS_ROLE_ARN = '<iam_role_arn>'",
        ]
    else:
        storage = [
            "    STORAGE_PROVIDER = 'GCS'",
            f"    STORAGE_BASE_URL = {_sql_str('gcs://' + base.removeprefix('gs://'))}",
        ]
    needs = [
        ("<sf_database>.<sf_schema>", "a database and schema you can create tables in"),
        (
            "<external_volume>",
            f"read-only external volume over {base} (created below; needs "
            "CREATE EXTERNAL VOLUME, then grant it access: DESC EXTERNAL VOLUME shows "
            + (
                "the Snowflake IAM user and external id for the trust policy of <iam_role_arn>)"
                if s3
                else "the GCS service account to give storage.objectViewer)"
            ),
        ),
        (
            "<catalog_integration>",
            "object-store catalog integration for Iceberg files (created below; needs CREATE INTEGRATION)",
        ),
    ]
    notes = [
        "METADATA_FILE_PATH is relative to the volume's base URL. Snowflake reads the metadata",
        "file when the table is created or refreshed: run the ALTER ... REFRESH at the end after",
        "each sync. Data Fabric column names are lowercase and may contain dots: always quote",
        'them, e.g. "attributes.llm.model_name" (quoted identifiers are case-sensitive).',
    ]
    if delta:
        notes.append("The _delta_log/ is not used: this reads the Iceberg metadata.")
    out = _header("Snowflake", namespace, project, location, needs, notes)
    out += [
        "CREATE EXTERNAL VOLUME IF NOT EXISTS <external_volume>",
        "  STORAGE_LOCATIONS = ((",
        "    NAME = 'arize_data_fabric'",
        *storage,
        "  ))",
        "  ALLOW_WRITES = FALSE;",
        "",
        "CREATE CATALOG INTEGRATION IF NOT EXISTS <catalog_integration>",
        "  CATALOG_SOURCE = OBJECT_STORE",
        "  TABLE_FORMAT = ICEBERG",
        "  ENABLED = TRUE;",
        "",
        f"CREATE OR REPLACE ICEBERG TABLE {target}",
        "  EXTERNAL_VOLUME = '<external_volume>'",
        "  CATALOG = '<catalog_integration>'",
        f"  METADATA_FILE_PATH = {_sql_str(relative)};",
    ]
    if cols:
        out += ["", f"CREATE OR REPLACE VIEW {target}_columns AS", _select("snowflake", cols, target) + ";"]
    out += ["", "-- After each sync:", f"ALTER ICEBERG TABLE {target} REFRESH {_sql_str(relative)};"]
    return "\n".join(out) + "\n"


def _athena(*, location, namespace, project, delta, cols) -> str:
    name = sql_table_name(project)
    meta = metadata_uri(location)
    table_input = {
        "Name": name,
        "TableType": "EXTERNAL_TABLE",
        "Parameters": {"table_type": "ICEBERG", "metadata_location": meta},
        "StorageDescriptor": {"Location": location},
    }
    needs = [
        ("<glue_database>", "an AWS Glue database (CREATE DATABASE in Athena, or aws glue create-database)"),
        ("<aws_region>", "the region of the bucket, Glue and the Athena workgroup"),
        (
            "permissions",
            "glue:CreateTable on the database; s3:GetObject/ListBucket on the "
            "export for the Athena workgroup's principal; Athena engine version 3",
        ),
    ]
    notes = [
        "Athena's CREATE TABLE ... TBLPROPERTIES ('table_type'='ICEBERG') creates a NEW, empty",
        "Athena-managed Iceberg table (and CREATE EXTERNAL TABLE is rejected for ICEBERG), so it",
        "cannot attach this existing table. Register it in the Glue Data Catalog instead, pointing",
        "metadata_location at latest.metadata.json, which each sync replaces (so no re-registration",
        "is needed); Athena reads the schema from that metadata. Treat the table as read-only: an",
        "Athena write would move metadata_location off latest.metadata.json. Run once:",
        "",
        "  aws glue create-table --region <aws_region> --database-name <glue_database> \\",
        f"    --table-input '{json.dumps(table_input, separators=(',', ':'))}'",
        "",
        "(Alternatively pyiceberg: load_catalog('glue', type='glue').register_table(",
        f"  ('<glue_database>', '{name}'), '{meta}'), which also writes the Glue columns.)",
        "Then query it in Athena, quoting dotted columns with double quotes:",
        f'  SELECT count(*) FROM "<glue_database>"."{name}";',
    ]
    if delta:
        notes.append("The _delta_log/ is not used: Athena reads the Iceberg metadata.")
    out = _header("Amazon Athena (AWS Glue Data Catalog)", namespace, project, location, needs, notes)
    if cols:
        out += [
            "",
            f'CREATE OR REPLACE VIEW "<glue_database>"."{name}_columns" AS',
            _select("athena", cols, f'"<glue_database>"."{name}"') + ";",
        ]
    return "\n".join(out) + "\n"


def _duckdb(*, location, namespace, project, delta, cols) -> str:
    name = sql_table_name(project)
    meta = metadata_uri(location)
    scheme = _scheme(location)
    paths = duckdb_extension_paths()
    have_packages = "avro" in paths and "iceberg" in paths
    needs: list[tuple[str, str]] = []
    if scheme == "s3":
        needs.append(
            (
                "<key_id>, <secret>, <region>, <endpoint>",
                "S3 credentials that can read "
                "the export (endpoint s3.amazonaws.com for AWS); the httpfs extension "
                "(INSTALL needs network once, or the duckdb-extension-httpfs package)",
            )
        )
    elif scheme == "gs":
        needs.append(
            (
                "<key_id>, <secret>",
                "GCS HMAC key of a service account that can read the "
                "export; the httpfs extension (INSTALL needs network once, or the "
                "duckdb-extension-httpfs package)",
            )
        )
    else:
        needs.append(("nothing", "the table is on the local file system"))
    notes = [
        "The view reads latest.metadata.json at every query, so it follows each sync, including new",
        "columns. Dotted column names are quoted with double quotes.",
    ]
    if delta:
        notes.append("The _delta_log/ is not used: iceberg_scan reads the Iceberg metadata.")
    out = _header("DuckDB", namespace, project, location, needs, notes)
    if have_packages:
        out += [
            "-- Extensions from the duckdb-extension-avro/-iceberg packages (no network);",
            "-- elsewhere use: INSTALL iceberg; LOAD iceberg;",
            f"LOAD {_sql_str(paths['avro'])};",
            f"LOAD {_sql_str(paths['iceberg'])};",
        ]
    else:
        out += ["INSTALL iceberg;", "LOAD iceberg;"]
    if scheme in ("s3", "gs"):
        if have_packages and "httpfs" in paths:
            out += [f"LOAD {_sql_str(paths['httpfs'])};"]
        else:
            out += ["INSTALL httpfs;", "LOAD httpfs;"]
        bucket_match = re.match(r"^[a-z0-9]+://[^/]+", location)
        if bucket_match is None:  # table_location already rejects these
            raise ValueError(f"no bucket in {location!r}")
        bucket_scope = bucket_match.group(0)
        if scheme == "s3":
            out += [
                "CREATE OR REPLACE SECRET arize_data_fabric (",
                "  TYPE S3,",
                "  KEY_ID '<key_id>',",
                "  SECRET '<secret>',",
                "  REGION '<region>',",
                "  ENDPOINT '<endpoint>',",
                f"  SCOPE {_sql_str(bucket_scope)}",
                ");",
            ]
        else:
            out += [
                "CREATE OR REPLACE SECRET arize_data_fabric (",
                "  TYPE GCS,",
                "  KEY_ID '<key_id>',",
                "  SECRET '<secret>',",
                f"  SCOPE {_sql_str(bucket_scope)}",
                ");",
            ]
    source = f"iceberg_scan({_sql_str(meta)})"
    out += [
        f"CREATE OR REPLACE VIEW {name} AS",
        (_select("duckdb", cols, source) if cols else f"SELECT * FROM {source}") + ";",
    ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# The annotations table and the latest view
# --------------------------------------------------------------------------------------------------
ANNOTATIONS_SUFFIX = "__annotations"  # the annotations table's folder: <namespace>/<project>__annotations
EVAL_FIELDS = ("label", "score", "explanation")
HUMAN_FIELDS = (*EVAL_FIELDS, "annotator_kind", "identifier", "updated_at")


def column_segment(name: str) -> str:
    """An annotation name as the middle segment of ``eval.<name>.label`` (dots, control characters: '_')."""
    return re.sub(r"[.\x00-\x1f\x7f]", "_", name).strip() or "_"


def _literal(engine: str, value: str) -> str:
    """``value`` as a SQL string literal of ``engine`` (BigQuery, Databricks and Snowflake read backslash
    escapes in string literals; DuckDB and Athena follow the SQL standard: only ``''``)."""
    if engine in ("bigquery", "databricks", "snowflake"):
        escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
        return f"'{escaped}'"
    if "\n" in value or "\r" in value or "\x00" in value:
        raise ValueError(f"annotation name {value!r} has a line break; it cannot be a view column in {engine}")
    return "'" + value.replace("'", "''") + "'"


def latest_view(engine: str, spans: str, annotations_table: str, pairs: list[tuple[str, str]]) -> str:
    """``SELECT`` of every span with the latest version of each annotation.

    The annotations table is a change log (one row per version; ``deleted`` marks a removal). For each
    ``(span_id, name, identifier)`` the latest version counts (by ``updated_at``, then ``_synced_at``),
    unless it is a delete marker; of those, per ``(span_id, name, kind)`` the most recently updated one
    fills ``eval.<name>.label|score|explanation`` (kind ``eval``: annotator LLM or CODE) or
    ``annotation.<name>.label|score|explanation|annotator_kind|identifier|updated_at`` (kind
    ``annotation``: HUMAN), the columns of Arize's span export. BigQuery, whose column names cannot hold
    dots, gets ``eval`` and ``annotation`` STRUCT columns instead: ``eval.<name>.label`` reads the same.
    """
    q = functools.partial(quote_identifier, engine)
    # every column of the tables quoted: Snowflake folds unquoted names to upper case, Iceberg's are lower case
    c = {name: q(name) for name in ("span_id", "name", "identifier", "kind", "updated_at", "_synced_at", "deleted")}
    seen: set[str] = set()
    outputs: list[tuple[str, str, str, str]] = []  # (pivot alias, kind, name segment, field)
    pivot: list[str] = []
    for name, kind in sorted(set(pairs)):
        if kind not in ("eval", "annotation"):
            raise ValueError(f"annotation kind {kind!r} is not eval or annotation")
        segment = column_segment(name)
        if engine == "bigquery":
            segment = re.sub(r"[^0-9A-Za-z_]", "_", segment)
            segment = f"_{segment}" if segment[:1].isdigit() else segment
        base, n = segment, 2
        while f"{kind}.{segment}" in seen:  # two names that read the same as a column
            segment, n = f"{base}_{n}", n + 1
        seen.add(f"{kind}.{segment}")
        for field in EVAL_FIELDS if kind == "eval" else HUMAN_FIELDS:
            alias = f"c{len(outputs)}"
            outputs.append((alias, kind, segment, field))
            pivot.append(
                f"    MAX(CASE WHEN {c['name']} = {_literal(engine, name)} AND {c['kind']} = '{kind}' "
                f"THEN {q(field)} END) AS {alias}"
            )
    lines = [
        "WITH versions AS (",
        "  SELECT *, ROW_NUMBER() OVER (",
        f"    PARTITION BY {c['span_id']}, {c['name']}, {c['identifier']}",
        f"    ORDER BY {c['updated_at']} DESC NULLS LAST, {c['_synced_at']} DESC",
        "  ) AS version_rank",
        f"  FROM {annotations_table}",
        "), current_annotations AS (",
        "  SELECT *, ROW_NUMBER() OVER (",
        f"    PARTITION BY {c['span_id']}, {c['name']}, {c['kind']}",
        f"    ORDER BY {c['updated_at']} DESC NULLS LAST, {c['identifier']} DESC",
        "  ) AS pick",
        "  FROM versions",
        f"  WHERE version_rank = 1 AND NOT {c['deleted']}",
        "), latest AS (",
        "  SELECT",
        f"    {c['span_id']}" + ("," if pivot else ""),
        ",\n".join(pivot),
        "  FROM current_annotations",
        "  WHERE pick = 1",
        f"  GROUP BY {c['span_id']}",
        ")",
    ]
    lines = [line for line in lines if line]
    if engine == "bigquery":
        groups = []
        for group in ("eval", "annotation"):
            members: dict[str, list[str]] = {}
            for alias, kind, segment, field in outputs:
                if kind == group:
                    members.setdefault(segment, []).append(f"latest.{alias} AS {field}")
            if members:
                inner = ",\n".join(f"    STRUCT({', '.join(m)}) AS {q(seg)}" for seg, m in members.items())
                groups.append(f"  STRUCT(\n{inner}\n  ) AS {group}")
        select = ["SELECT", "  spans.*" + ("," if groups else ""), ",\n".join(groups)]
    else:
        cols = [f"  latest.{alias} AS {q(f'{kind}.{segment}.{field}')}" for alias, kind, segment, field in outputs]
        select = ["SELECT", "  spans.*" + ("," if cols else ""), ",\n".join(cols)]
    select = [line for line in select if line]
    join = f"LEFT JOIN latest ON latest.{c['span_id']} = spans.{c['span_id']}"
    return "\n".join([*lines, *select, f"FROM {spans} AS spans", join])


def _annotations_part(
    engine: str, location: str, namespace: str, project: str, delta: bool, pairs: list[tuple[str, str]]
) -> str:
    """The annotations table's registration and the ``<table>_latest`` view, for :func:`ddl`."""
    name = sql_table_name(project)
    ann_location = table_location(location.rsplit("/", 2)[0], namespace, project + ANNOTATIONS_SUFFIX)
    ann_meta = metadata_uri(ann_location)
    relative = f"{project}{ANNOTATIONS_SUFFIX}/{LATEST_METADATA}"
    out = [
        f"-- The annotations table: {ann_location}",
        "-- A change log, one row per version of an evaluation or annotation (updated_at, kind",
        f"-- eval/annotation, a deleted marker). The view {name}_latest joins every span to the latest",
        "-- version of each annotation. Its columns are the annotation names known when this DDL was",
        "-- printed: re-run `obslake fabric ddl` after new evaluation names appear.",
    ]
    if engine == "bigquery":
        spans, ann = f"`<bq_project>.<bq_dataset>.{name}`", f"`<bq_project>.<bq_dataset>.{name}_annotations`"
        view = f"`<bq_project>.<bq_dataset>.{name}_latest`"
        out += [
            f"CREATE OR REPLACE EXTERNAL TABLE {ann}",
            "WITH CONNECTION `<bq_connection>`",
            "OPTIONS (",
            "  format = 'ICEBERG',",
            f"  uris = [{_sql_str(ann_meta)}]",
            ");",
        ]
    elif engine == "databricks":
        target = f"<uc_catalog>.<uc_schema>.{name}"
        spans, ann, view = target, f"{target}_annotations", f"{target}_latest"
        if delta:
            out += [f"CREATE TABLE IF NOT EXISTS {ann}", "USING DELTA", f"LOCATION {_sql_str(ann_location)};"]
        else:
            out += [f"CREATE OR REPLACE TABLE {ann}", f"SHALLOW CLONE iceberg.`{ann_location}`;"]
    elif engine == "snowflake":
        target = f"<sf_database>.<sf_schema>.{name}"
        spans, ann, view = target, f"{target}_annotations", f"{target}_latest"
        out += [
            f"CREATE OR REPLACE ICEBERG TABLE {ann}",
            "  EXTERNAL_VOLUME = '<external_volume>'",
            "  CATALOG = '<catalog_integration>'",
            f"  METADATA_FILE_PATH = {_sql_str(relative)};",
            "-- After each sync, as for the spans table:",
            f"ALTER ICEBERG TABLE {ann} REFRESH {_sql_str(relative)};",
        ]
    elif engine == "athena":
        spans, ann = f'"<glue_database>"."{name}"', f'"<glue_database>"."{name}_annotations"'
        view = f'"<glue_database>"."{name}_latest"'
        table_input = {
            "Name": f"{name}_annotations",
            "TableType": "EXTERNAL_TABLE",
            "Parameters": {"table_type": "ICEBERG", "metadata_location": ann_meta},
            "StorageDescriptor": {"Location": ann_location},
        }
        out += [
            "-- Register it in Glue like the spans table (run once):",
            "--   aws glue create-table --region <aws_region> --database-name <glue_database> \\",
            f"--     --table-input '{json.dumps(table_input, separators=(',', ':'))}'",
        ]
    else:
        spans, ann, view = name, f"{name}_annotations", f"{name}_latest"
        out += [f"CREATE OR REPLACE VIEW {ann} AS", f"SELECT * FROM iceberg_scan({_sql_str(ann_meta)});"]
    out += [f"CREATE OR REPLACE VIEW {view} AS", latest_view(engine, spans, ann, pairs) + ";"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
def _select(engine: str, cols: list[str], source: str) -> str:
    listed = ",\n".join(f"  {quote_identifier(engine, c)}" for c in cols)
    return f"SELECT\n{listed}\nFROM {source}"


def _sql_str(value: str) -> str:
    if "'" in value or "\\" in value or "\n" in value:
        raise ValueError(f"cannot embed {value!r} in a SQL string literal")
    return f"'{value}'"


def _scheme(uri: str) -> str:
    m = re.match(r"^([a-z][a-z0-9+.-]*)://", uri)
    if m:
        return m.group(1)
    return "local" if uri.startswith("/") else ""


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; one of {', '.join(ENGINES)}")


def _check_columns(columns: list[str] | None) -> list[str]:
    if columns is None:
        return []
    if isinstance(columns, str):
        raise TypeError("columns must be a list of names, not a string")
    cols = list(columns)
    if not cols:
        raise ValueError("columns, when given, must not be empty")
    for c in cols:
        if not isinstance(c, str) or not c or "\n" in c or "\x00" in c:
            raise ValueError(f"invalid column name {c!r}")
        if "<" in c or ">" in c:
            raise ValueError(f"column name {c!r} would read as a placeholder")
    if len(set(cols)) != len(cols):
        raise ValueError("duplicate column names")
    return cols

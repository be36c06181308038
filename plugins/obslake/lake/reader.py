"""Read a model with its delayed actuals: predictions LEFT JOIN the latest actual per prediction id.

Predictions and actuals live in two append-only Iceberg tables of the same namespace:
``<model>__<env>`` (predictions job) and ``<model>__<env>__actuals`` (``kind: actuals`` job). Actuals
are joined *on read* by ``prediction_id`` instead of being merged into old prediction files: merging
a batch of actuals for months-old predictions would rewrite every touched partition (copy-on-write
cost proportional to the table, not to the number of actuals). Joining on read makes both arrival
orders work with any delay and no reprocessing: an actual whose prediction has not arrived yet waits
in the actuals table and joins as soon as the prediction lands.

When several actuals exist for one prediction id, the latest wins: the greatest ``_ingested_at``,
then ``_source_file``, then ``_source_row`` (all descending, nulls last). The same rule is available
as SQL for query engines through :func:`view_ddl` (a ``<predictions>__with_actuals`` view).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from obslake.exceptions import SchemaMismatchError
from obslake.schema.mapping import (
    INGESTED_AT,
    LINEAGE_COLUMNS,
    LINEAGE_FIELDS,
    PARTITION_COLUMN,
    SOURCE_FILE,
    SOURCE_ROW,
    TS_TYPE,
)

if TYPE_CHECKING:
    from pyiceberg.catalog import Catalog
    from pyiceberg.expressions import BooleanExpression

ACTUALS_SUFFIX = "__actuals"
VIEW_SUFFIX = "__with_actuals"
KEY_COLUMN = "prediction_id"
#: Columns of an actuals table that are bookkeeping, not actuals (never joined onto predictions).
NON_ACTUAL_COLUMNS = frozenset({KEY_COLUMN, "prediction_timestamp", PARTITION_COLUMN, *LINEAGE_COLUMNS})
#: Tie-break order of "latest wins" (shared by :func:`latest_per_prediction` and :func:`view_ddl`).
LATEST_ORDER = (INGESTED_AT, SOURCE_FILE, SOURCE_ROW)
ACTUAL_INGESTED_AT = "actual_ingested_at"
DEFAULT_ACTUAL_COLUMNS = ("actual_label", "actual_score")
ENGINES = ("duckdb", "trino", "spark", "snowflake", "bigquery")
_ENGINE_ALIASES = {"athena": "trino", "presto": "trino", "databricks": "spark"}

_EMPTY_ACTUALS_SCHEMA = pa.schema(
    [
        pa.field(KEY_COLUMN, pa.string()),
        pa.field("prediction_timestamp", TS_TYPE),
        pa.field(PARTITION_COLUMN, pa.date32()),
        *LINEAGE_FIELDS,
    ]
)


# -- identifiers -----------------------------------------------------------------------------------
def _split(identifier: str | Sequence[str]) -> tuple[str, str]:
    """``"ns.table"`` or ``("ns", "table")`` -> ``("ns", "table")``."""
    parts = tuple(identifier.split(".", 1)) if isinstance(identifier, str) else tuple(identifier)
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"expected a table identifier 'namespace.table' or (namespace, table), got {identifier!r}")
    return parts[0], parts[1]


def actuals_identifier(predictions_identifier: str | Sequence[str]) -> tuple[str, str]:
    """The actuals table of a predictions table: ``(ns, "<table>__actuals")``."""
    namespace, table = _split(predictions_identifier)
    if table.endswith(ACTUALS_SUFFIX):
        raise ValueError(
            f"{namespace}.{table} is an actuals table; pass the predictions table ({table[: -len(ACTUALS_SUFFIX)]})"
        )
    return namespace, table + ACTUALS_SUFFIX


def _load(catalog: Catalog, identifier: tuple[str, str]):
    from pyiceberg.exceptions import NoSuchTableError

    try:
        return catalog.load_table(identifier)
    except NoSuchTableError:
        return None


# -- latest actual per prediction --------------------------------------------------------------------
def latest_per_prediction(actuals: pa.Table) -> pa.Table:
    """Keep one row per ``prediction_id``: the latest by ``_ingested_at``, ``_source_file``, ``_source_row``.

    Args:
        actuals: rows of an actuals table; must hold ``prediction_id`` and the three lineage columns.

    Returns:
        The winning rows, sorted by ``prediction_id``, with the input's schema (any column types,
        nested ones included: rows are selected with ``take``). Rows with a null id are dropped.

    Raises:
        SchemaMismatchError: a required column is missing.

    Note:
        Pure and in memory: the result is at most as large as the input. Ordering is descending with
        nulls last for every tie-break column, the same as the SQL of :func:`view_ddl`.
    """
    missing = [c for c in (KEY_COLUMN, *LATEST_ORDER) if c not in actuals.schema.names]
    if missing:
        raise SchemaMismatchError(f"actuals table lacks column(s) {missing}; is it an obslake actuals table?")
    if actuals[KEY_COLUMN].null_count:  # the importer rejects null ids; such rows could never join
        actuals = actuals.filter(pc.is_valid(actuals[KEY_COLUMN]))
    if actuals.num_rows == 0:
        return actuals
    keys = actuals.select([KEY_COLUMN, *LATEST_ORDER])
    order = pc.sort_indices(
        keys,
        sort_keys=[(KEY_COLUMN, "ascending"), *((c, "descending") for c in LATEST_ORDER)],
    )  # nulls sort at the end (Arrow's default): NULLS LAST, as in view_ddl
    ids = pc.take(keys[KEY_COLUMN], order).combine_chunks()
    previous = pa.concat_arrays([pa.nulls(1, ids.type), ids.slice(0, len(ids) - 1)])
    first = pc.fill_null(pc.not_equal(ids, previous), True)  # the first (latest) row of each id
    return actuals.take(pc.filter(order, first))


def latest_actuals(catalog: Catalog, predictions_identifier: str | Sequence[str]) -> pa.Table:
    """The latest actual of every prediction id in the model's ``__actuals`` table.

    Args:
        catalog: the lake's pyiceberg catalog.
        predictions_identifier: the *predictions* table, ``"ns.model__env"`` or ``(ns, table)``;
            the actuals table is ``<table>__actuals`` in the same namespace.

    Returns:
        One row per prediction id (including ids whose prediction has not arrived yet), every column
        of the actuals table. If the actuals table does not exist yet: an empty table with
        ``prediction_id``, ``prediction_timestamp``, ``date`` and the lineage columns.

    Note:
        Reads the current snapshot of the actuals table into memory (all rows, then deduplicated),
        so memory grows with the actuals table. Catalog and storage errors (pyiceberg, S3/GCS)
        propagate unchanged; nothing is written.
    """
    table = _load(catalog, actuals_identifier(predictions_identifier))
    if table is None:
        return _EMPTY_ACTUALS_SCHEMA.empty_table()
    return latest_per_prediction(table.scan().to_arrow())


# -- the join ------------------------------------------------------------------------------------------
def _actual_columns(actuals: pa.Table) -> list[str]:
    return [n for n in actuals.schema.names if n not in NON_ACTUAL_COLUMNS]


def _fill(prediction: pa.ChunkedArray, actual: pa.Array, column: str) -> pa.Array:
    """COALESCE(actual, prediction) with the prediction column's type."""
    if actual.type != prediction.type:
        try:
            actual = pc.cast(actual, prediction.type, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaMismatchError(
                f"column {column!r} is {actual.type} in the actuals table but {prediction.type} in the predictions "
                f"table; map it to the same type in both jobs: {exc}"
            ) from None
    return pc.if_else(pc.is_valid(actual), actual, prediction.combine_chunks())


def read_model(
    catalog: Catalog,
    predictions_identifier: str | Sequence[str],
    row_filter: str | BooleanExpression | None = None,
    selected_fields: Iterable[str] | None = None,
) -> pa.Table:
    """Predictions LEFT JOIN their latest actual by ``prediction_id``.

    Every actual column of the actuals table (anything but ``prediction_id``,
    ``prediction_timestamp``, ``date`` and the lineage columns) fills the prediction's column of the
    same name where the actual is non-null (``COALESCE(actual, prediction)``); an actual column the
    predictions table lacks is added. ``actual_ingested_at`` is the winning actual's ``_ingested_at``
    (null when the prediction has no actual). Actuals whose prediction has not arrived never create
    rows. Rows keep the order of the predictions scan.

    Args:
        catalog: the lake's pyiceberg catalog.
        predictions_identifier: ``"ns.model__env"`` or ``(ns, table)``.
        row_filter: a pyiceberg filter (expression or string such as ``"date >= '2026-01-01'"``) on the
            *predictions* table; it sees the predictions' own columns, not the joined actuals.
        selected_fields: columns to return (default all). Actual columns and ``actual_ingested_at`` may
            be named even when the predictions table lacks them.

    Returns:
        The joined rows. If only the actuals table exists: an empty table (``prediction_id``,
        ``prediction_timestamp``, the actual columns, ``actual_ingested_at``).

    Raises:
        pyiceberg.exceptions.NoSuchTableError: neither the predictions nor the actuals table exists.
        SchemaMismatchError: an actual column has a type that cannot be cast to the predictions' type.

    Note:
        Loads the filtered, projected predictions and the whole (deduplicated) actuals table into
        memory; narrow the predictions with ``row_filter``/``selected_fields``. The two tables are read
        at their current snapshots one after the other, not in one transaction: an actual committed
        in between may or may not be visible, never half of a file. Catalog and storage errors
        propagate unchanged; nothing is written.
    """
    from pyiceberg.exceptions import NoSuchTableError
    from pyiceberg.expressions import AlwaysTrue

    pred_ident = _split(predictions_identifier)
    wanted = list(dict.fromkeys(selected_fields)) if selected_fields is not None else None
    pred_table = _load(catalog, pred_ident)
    act_table = _load(catalog, actuals_identifier(pred_ident))
    if pred_table is None and act_table is None:
        raise NoSuchTableError(
            f"neither {'.'.join(pred_ident)} nor its actuals table {'.'.join(actuals_identifier(pred_ident))} exists"
        )
    actuals = (
        latest_per_prediction(act_table.scan().to_arrow())
        if act_table is not None
        else _EMPTY_ACTUALS_SCHEMA.empty_table()
    )
    actual_cols = _actual_columns(actuals)
    if wanted is not None:
        actual_cols = [c for c in actual_cols if c in wanted]

    if pred_table is None:
        fields = [actuals.schema.field(KEY_COLUMN).with_type(pa.string()), pa.field("prediction_timestamp", TS_TYPE)]
        fields += [actuals.schema.field(c) for c in actual_cols]
        fields.append(pa.field(ACTUAL_INGESTED_AT, TS_TYPE))
        if wanted is not None:
            fields = [f for f in fields if f.name in wanted]
        return pa.schema(fields).empty_table()

    pred_names = pred_table.schema().column_names
    if wanted is None:
        scan_fields: tuple[str, ...] = ("*",)
    else:
        scan_fields = tuple(dict.fromkeys([KEY_COLUMN, *(c for c in wanted if c in pred_names)]))
    preds = pred_table.scan(
        row_filter=row_filter if row_filter is not None else AlwaysTrue(), selected_fields=scan_fields
    ).to_arrow()

    # join on keys and row numbers only, then `take` the actual columns (any type, nested included)
    left = pa.table(
        {KEY_COLUMN: preds[KEY_COLUMN].cast(pa.string()), "__p": pa.array(range(preds.num_rows), pa.int64())}
    )
    right = pa.table(
        {KEY_COLUMN: actuals[KEY_COLUMN].cast(pa.string()), "__a": pa.array(range(actuals.num_rows), pa.int64())}
    )
    joined = left.join(right, keys=KEY_COLUMN, join_type="left outer", use_threads=True)
    joined = joined.sort_by("__p")
    if joined.num_rows != preds.num_rows:  # impossible unless the dedup is broken
        raise AssertionError("actuals were not unique per prediction id")
    take = joined["__a"].combine_chunks()

    out = preds
    for col in actual_cols:
        values = actuals[col].take(take).combine_chunks()
        if col in out.schema.names:
            i = out.schema.get_field_index(col)
            out = out.set_column(i, out.schema.field(col), _fill(out[col], values, col))
        else:
            out = out.append_column(actuals.schema.field(col), values)
    ingested = actuals[INGESTED_AT].take(take)
    if ACTUAL_INGESTED_AT in out.schema.names:
        out = out.drop_columns([ACTUAL_INGESTED_AT])
    out = out.append_column(pa.field(ACTUAL_INGESTED_AT, ingested.type), ingested)
    if wanted is not None:
        out = out.select([c for c in wanted if c in out.schema.names])
    return out


# -- SQL views --------------------------------------------------------------------------------------------
def _quote(name: str, engine: str) -> str:
    q = "`" if engine in ("spark", "bigquery") else '"'
    if not name or q in name or "\n" in name or "\x00" in name:
        raise ValueError(f"identifier {name!r} cannot be quoted for {engine}")
    return f"{q}{name}{q}"


def view_ddl(
    namespace: str,
    predictions_table: str,
    engine: str,
    actual_columns: list[str] | None = None,
    *,
    prediction_columns: list[str] | None = None,
) -> str:
    """SQL that creates the view ``<namespace>.<predictions_table>__with_actuals``.

    The view has the semantics of :func:`read_model`: predictions LEFT JOIN the latest actual per
    ``prediction_id`` (``ROW_NUMBER() OVER (PARTITION BY prediction_id ORDER BY _ingested_at DESC,
    _source_file DESC, _source_row DESC) = 1``), ``COALESCE(actual, prediction)`` for actual columns
    the predictions table has, actual-only columns added, and ``actual_ingested_at``.

    Args:
        namespace: the Iceberg namespace (database / schema / BigQuery dataset) of both tables.
        predictions_table: the predictions table name, e.g. ``ctr__production``.
        engine: ``duckdb``, ``trino`` (also ``athena``), ``spark`` (also ``databricks``), ``snowflake``
            or ``bigquery``.
        actual_columns: actual columns of the actuals table (default ``actual_label``, ``actual_score``).
        prediction_columns: every column of the predictions table, in order. When given, the select
            list is explicit (works on every engine, and an actual column the predictions table lacks
            is added instead of coalesced). When omitted, ``p.* EXCEPT/EXCLUDE (...)`` is used, which
            assumes the predictions table has every actual column; Trino/Athena has no such syntax and
            needs ``prediction_columns`` (see :func:`view_ddl_for`).

    Returns:
        One ``CREATE OR REPLACE VIEW`` statement (no trailing semicolon).

    Raises:
        ValueError: unknown engine, an identifier that cannot be quoted, an empty column list, or
            Trino without ``prediction_columns``.

    Note:
        Pure string building: nothing is executed. The view reads both tables at query time, so it
        never needs refreshing when actuals or predictions arrive; ``CREATE OR REPLACE`` makes it safe
        to run again after the actuals table gains a column.
    """
    engine = _ENGINE_ALIASES.get(engine.lower(), engine.lower())
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)} (or athena, databricks)")
    actual_columns = list(DEFAULT_ACTUAL_COLUMNS if actual_columns is None else actual_columns)
    if not actual_columns:
        raise ValueError("actual_columns is empty: name at least one actual column (e.g. actual_label)")
    bad = [c for c in actual_columns if c in NON_ACTUAL_COLUMNS]
    if bad:
        raise ValueError(f"{bad} are keys/lineage columns, not actual columns")

    def q(name: str) -> str:
        return _quote(name, engine)

    def table(name: str) -> str:
        return f"{q(namespace)}.{q(name)}"

    key = q(KEY_COLUMN)
    order = ", ".join(f"{q(c)} DESC NULLS LAST" for c in LATEST_ORDER)
    inner_cols = ", ".join([key, *(q(c) for c in actual_columns), q(INGESTED_AT)])
    latest = (
        f"SELECT {inner_cols} FROM (\n"
        f"    SELECT {inner_cols},\n"
        f"           ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY {order}) AS {q('_obslake_rn')}\n"
        f"    FROM {table(predictions_table + ACTUALS_SUFFIX)}\n"
        f"  ) {q('ranked')} WHERE {q('_obslake_rn')} = 1"
    )
    if prediction_columns is not None:
        if KEY_COLUMN not in prediction_columns:
            raise ValueError(f"prediction_columns must include {KEY_COLUMN!r}")
        select = [
            f"COALESCE(a.{q(c)}, p.{q(c)}) AS {q(c)}" if c in actual_columns else f"p.{q(c)}"
            for c in prediction_columns
            if c != ACTUAL_INGESTED_AT
        ]
        select += [f"a.{q(c)}" for c in actual_columns if c not in prediction_columns]
    else:
        if engine == "trino":
            raise ValueError("trino/Athena has no SELECT * EXCEPT; pass prediction_columns (or use view_ddl_for)")
        word = {"duckdb": "EXCLUDE", "snowflake": "EXCLUDE", "spark": "EXCEPT", "bigquery": "EXCEPT"}[engine]
        select = [f"p.* {word} ({', '.join(q(c) for c in actual_columns)})"]
        select += [f"COALESCE(a.{q(c)}, p.{q(c)}) AS {q(c)}" for c in actual_columns]
    select.append(f"a.{q('_ingested_at')} AS {q(ACTUAL_INGESTED_AT)}")
    columns = ",\n       ".join(select)
    return (
        f"CREATE OR REPLACE VIEW {table(predictions_table + VIEW_SUFFIX)} AS\n"
        f"SELECT {columns}\n"
        f"FROM {table(predictions_table)} p\n"
        f"LEFT JOIN (\n  {latest}\n) a ON a.{key} = p.{key}"
    )


def view_ddl_for(catalog: Catalog, predictions_identifier: str | Sequence[str], engine: str) -> str:
    """:func:`view_ddl` with the column lists read from both tables' current Iceberg schemas.

    Raises:
        pyiceberg.exceptions.NoSuchTableError: the predictions or the actuals table does not exist
            (a view needs both; create it once both jobs have imported a file).
        ValueError: as :func:`view_ddl`, or the actuals table has no actual column.

    Note:
        Reads catalog metadata only (no data files). Run it again and re-create the view after the
        actuals table gains a column.
    """
    namespace, name = _split(predictions_identifier)
    preds = catalog.load_table((namespace, name))
    acts = catalog.load_table(actuals_identifier((namespace, name)))
    actual_cols = [c for c in acts.schema().column_names if c not in NON_ACTUAL_COLUMNS]
    if not actual_cols:
        raise ValueError(f"{namespace}.{name}{ACTUALS_SUFFIX} has no actual columns")
    return view_ddl(namespace, name, engine, actual_cols, prediction_columns=preds.schema().column_names)

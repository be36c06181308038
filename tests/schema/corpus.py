"""A corpus of defective input files, each with the error code and location obslake must report.

:func:`defects` builds every :class:`Defect` in memory (small files, deterministic bytes). Each names
the model type and the changes to the base schema mapping of its job, and a ``variant`` of the base
data: :func:`good_table` gives a valid table of the same variant, so a test can upload one good file
next to the bad one and check that only the bad one fails.

Rows are 1-based data rows (as in :class:`~obslake.schema.mapping.Problem`); for CSV the physical
line is ``row + 1`` (header = line 1). ``expected_code=None`` marks a control that must import fine.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import gzip
import io
import math
from typing import Any

import pyarrow as pa

from lake_fixtures import inference_rows, to_bytes

BAD = 3  # 0-based index of the bad row in most files
BAD_ROW = BAD + 1  # its 1-based data row

BASE_SCHEMAS: dict[str, dict[str, Any]] = {
    "score_categorical": {
        "prediction_id": "prediction_id",
        "timestamp": "prediction_ts",
        "prediction_label": "predicted_label",
        "prediction_score": "predicted_score",
        "features": {"prefix": "feature_"},
        "tags": ["region"],
    },
    "regression": {
        "prediction_id": "prediction_id",
        "timestamp": "prediction_ts",
        "prediction_label": "predicted_label",
        "features": {"prefix": "feature_"},
        "tags": ["region"],
    },
    "ranking": {
        "prediction_id": "prediction_id",
        "timestamp": "prediction_ts",
        "prediction_group_id": "group_id",
        "rank": "rank",
        "prediction_score": "predicted_score",
        "features": {"prefix": "feature_"},
        "tags": ["region"],
    },
    "object_detection": {
        "prediction_id": "prediction_id",
        "timestamp": "prediction_ts",
        "prediction_bounding_boxes": {"coordinates": "boxes", "categories": "box_categories",
                                      "scores": "box_scores"},
        "features": {"prefix": "feature_"},
        "tags": ["region"],
    },
}
EMBEDDING = {"embedding_features": {"image": {"vector": "emb"}}}


@dataclasses.dataclass(frozen=True)
class Defect:
    """One defective file and what validation must say about it.

    ``schema_overrides`` update the model type's base mapping (:data:`BASE_SCHEMAS`; a ``None`` value
    removes the key); ``job_overrides`` update the job itself (e.g. ``max_file_bytes``). ``variant``
    names the base data (:func:`good_table`) a good file for the same job is made of.
    ``expected_value`` is the (truncated) value the problem must carry, where it carries one.
    """

    name: str
    key: str
    data: bytes
    model_type: str
    schema_overrides: dict[str, Any]
    expected_code: str | None
    expected_row: int | None
    expected_column: str | None
    expected_value: str | None = None
    job_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    variant: str | None = None

    @property
    def fmt(self) -> str:
        return self.key.rsplit(".", 1)[-1] if not self.key.endswith(".csv.gz") else "csv"

    @property
    def base(self) -> str:
        """The variant of :func:`good_table` that fits this defect's job."""
        return self.variant or self.model_type

    def schema(self) -> dict[str, Any]:
        """The job's ``schema:`` block."""
        out = {**BASE_SCHEMAS[self.model_type], **self.schema_overrides}
        return {k: v for k, v in out.items() if v is not None}

    @property
    def expected_line(self) -> int | None:
        """The CSV line of a located CSV problem (header = line 1)."""
        return self.expected_row + 1 if self.fmt == "csv" and self.expected_row is not None else None


# -- base data -------------------------------------------------------------------------------------
def good_table(variant: str, n: int = 10, *, id_prefix: str = "p") -> pa.Table:
    """A valid table for a job of ``variant`` (a model type, or ``embedding``)."""
    t = inference_rows(n, id_prefix=id_prefix)
    if variant == "score_categorical":
        return t
    if variant == "embedding":
        return t.append_column("emb", pa.array([[0.1 * i, 0.2, 0.3, 0.4] for i in range(n)], pa.list_(pa.float32())))
    if variant == "regression":
        return t.set_column(t.schema.get_field_index("predicted_label"), "predicted_label",
                            pa.array([1.5 * i for i in range(n)]))
    base = t.select(["prediction_id", "prediction_ts", "feature_x", "feature_city", "region"])
    if variant == "ranking":
        return (base.append_column("group_id", pa.array([f"q{i // 5}" for i in range(n)]))
                .append_column("rank", pa.array([i % 5 + 1 for i in range(n)], pa.int64()))
                .append_column("predicted_score", pa.array([1 / (i + 1) for i in range(n)])))
    if variant == "object_detection":
        return (base.append_column("boxes", pa.array([[[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]]] * n,
                                                     pa.list_(pa.list_(pa.float64()))))
                .append_column("box_categories", pa.array([["cat", "dog"]] * n, pa.list_(pa.string())))
                .append_column("box_scores", pa.array([[0.9, 0.8]] * n, pa.list_(pa.float64()))))
    raise ValueError(f"unknown variant {variant!r}")


def _with(table: pa.Table, column: str, values: list, type_: pa.DataType | None = None) -> pa.Table:
    """``table`` with ``column`` replaced (or appended) by ``values``."""
    if type_ is None:
        type_ = table.schema.field(column).type
    arr = pa.array(values, type_)
    idx = table.schema.get_field_index(column)
    return table.set_column(idx, column, arr) if idx >= 0 else table.append_column(column, arr)


def _set(table: pa.Table, column: str, row: int, value: Any, type_: pa.DataType | None = None) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    return _with(table, column, values, type_)


def _csv(table: pa.Table, overrides: dict[tuple[int, str], str] | None = None, *,
         header: list[str] | None = None) -> bytes:
    """``table`` as CSV text written cell by cell (timestamps ISO 8601), with raw cell ``overrides``."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header or table.schema.names)
    for i, row in enumerate(table.to_pylist()):
        cells = []
        for name, v in row.items():
            if (i, name) in (overrides or {}):
                cells.append(overrides[(i, name)])
            elif isinstance(v, dt.datetime):
                cells.append(v.isoformat().replace("+00:00", "Z"))
            elif isinstance(v, list):
                cells.append(str(v))
            else:
                cells.append("" if v is None else str(v))
        w.writerow(cells)
    return out.getvalue().encode("utf-8", "surrogateescape")  # lone surrogates -> raw (invalid) bytes


def _garbage(n: int, seed: int = 7) -> bytes:
    """Deterministic pseudo-random bytes (no format's magic)."""
    x, out = seed, bytearray()
    for _ in range(n):
        x = (1103515245 * x + 12345) & 0x7FFFFFFF
        out.append((x >> 16) & 0xFF)
    return bytes(out)


def _short(value: str, limit: int = 80) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


# -- the corpus -------------------------------------------------------------------------------------
def defects() -> list[Defect]:
    """Every defect of the corpus (names are unique; keys are unique)."""
    sc = "score_categorical"
    t = good_table(sc, id_prefix="bad")
    out: list[Defect] = []

    def add(name: str, ext: str, data: bytes, code: str | None, row: int | None = None, column: str | None = None,
            *, model_type: str = sc, schema: dict | None = None, value: str | None = None,
            job: dict | None = None, variant: str | None = None) -> None:
        out.append(Defect(name, f"models/ctr/bad/{name}.{ext}", data, model_type, schema or {}, code, row, column,
                          value, job or {}, variant))

    # -- unreadable files (file level) --------------------------------------------------------------
    parquet, avro, arrow = to_bytes(t, "parquet"), to_bytes(t, "avro"), to_bytes(t, "arrow")
    stream = to_bytes(t, "arrow_stream")
    add("parquet_garbage", "parquet", _garbage(2048), "FILE_CORRUPT")
    add("parquet_garbage_with_magic", "parquet", b"PAR1" + _garbage(2048) + b"PAR1", "FILE_CORRUPT")
    add("parquet_truncated", "parquet", parquet[: len(parquet) // 2], "FILE_CORRUPT")
    add("avro_truncated", "avro", avro[: len(avro) - 40], "FILE_CORRUPT")
    add("avro_garbage", "avro", _garbage(1024), "FILE_CORRUPT")
    add("arrow_file_truncated", "arrow", arrow[: len(arrow) * 2 // 3], "FILE_CORRUPT")
    add("arrow_stream_cut_mid_message", "arrows", stream[: len(stream) - 64], "FILE_CORRUPT")
    add("csv_gz_truncated", "csv.gz", gzip.compress(_csv(good_table(sc, 400, id_prefix="gz")))[:1500],
        "FILE_CORRUPT")
    for ext in ("parquet", "csv", "avro", "arrow"):
        add(f"empty_{ext}", ext, b"", "FILE_EMPTY")
    add("csv_header_only", "csv", _csv(t.slice(0, 0)), "FILE_EMPTY")
    add("parquet_no_rows", "parquet", to_bytes(t.slice(0, 0), "parquet"), "FILE_EMPTY")
    ragged = _csv(t).decode().splitlines()
    ragged[BAD_ROW] += ",surplus"  # line BAD_ROW + 1
    add("csv_ragged", "csv", ("\n".join(ragged) + "\n").encode(), "CSV_RAGGED", BAD_ROW)
    add("csv_invalid_utf8", "csv", _csv(t, {(BAD, "feature_city"): "S\udce3o Paulo"}), "FILE_ENCODING", BAD_ROW, "feature_city")
    big = _csv(good_table(sc, 1500, id_prefix="big"))
    add("over_max_file_bytes", "csv", big, "FILE_TOO_LARGE", job={"max_file_bytes": len(big) - 1})
    add("format_not_allowed", "arrow", arrow, "FORMAT_NOT_ALLOWED", job={"formats": ["parquet", "csv", "avro"]})

    # -- columns (file level) -----------------------------------------------------------------------
    add("csv_bom_control", "csv", b"\xef\xbb\xbf" + _csv(t), None)
    add("csv_duplicate_column", "csv", _csv(t, header=[*t.schema.names[:-1], "feature_x"]), "DUPLICATE_COLUMN",
        None, "feature_x")
    add("missing_mapped_column", "parquet", to_bytes(t.drop_columns(["predicted_label"]), "parquet"),
        "COLUMN_MISSING", None, "predicted_label")
    struct_score = _with(t, "predicted_score", [{"a": 0.5}] * t.num_rows, pa.struct([("a", pa.float64())]))
    add("struct_score_column", "parquet", to_bytes(struct_score, "parquet"), "TYPE_MISMATCH", None, "predicted_score")
    add("float_prediction_ids", "parquet", to_bytes(_with(t, "prediction_id", [float(i) for i in range(10)],
                                                          pa.float64()), "parquet"), "ID_TYPE", None, "prediction_id")
    nested = t.append_column("feature_tags", pa.array([["a", "b"]] * t.num_rows, pa.list_(pa.string())))
    add("nested_list_feature", "parquet", to_bytes(nested, "parquet"), "FEATURE_NESTED", None, "feature_tags")
    add("reserved_name_tag", "parquet", to_bytes(t.append_column("date", pa.array(["x"] * t.num_rows)), "parquet"),
        "RESERVED_NAME", None, "date", schema={"tags": ["region", "date"]})

    # -- ids ----------------------------------------------------------------------------------------
    add("null_id", "parquet", to_bytes(_set(t, "prediction_id", BAD, None), "parquet"), "ID_MISSING", BAD_ROW,
        "prediction_id")
    add("empty_id", "parquet", to_bytes(_set(t, "prediction_id", BAD, ""), "parquet"), "ID_MISSING", BAD_ROW,
        "prediction_id")
    add("empty_id_csv", "csv", _csv(t, {(BAD, "prediction_id"): ""}), "ID_MISSING", BAD_ROW, "prediction_id")
    long_id = "x" * 600
    add("id_600_chars", "avro", to_bytes(_set(t, "prediction_id", BAD, long_id), "avro"), "ID_TOO_LONG", BAD_ROW,
        "prediction_id", value=_short(long_id))
    add("duplicate_ids", "arrows", to_bytes(_set(t, "prediction_id", 6, "bad-1"), "arrow_stream"), "ID_DUPLICATE",
        7, "prediction_id", value="bad-1")

    # -- timestamps ---------------------------------------------------------------------------------
    ms = [int(v.timestamp() * 1000) for v in t.column("prediction_ts").to_pylist()]
    secs = ms[BAD] // 1000
    ms[BAD] = secs  # seconds among milliseconds: read as ms, it is January 1970
    add("ts_seconds_among_ms", "parquet", to_bytes(_with(t, "prediction_ts", ms, pa.int64()), "parquet"),
        "TS_OUT_OF_RANGE", BAD_ROW, "prediction_ts", value=str(secs))
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    add("ts_year_1970", "parquet", to_bytes(_set(t, "prediction_ts", BAD, epoch), "parquet"), "TS_OUT_OF_RANGE",
        BAD_ROW, "prediction_ts", value=str(epoch))
    add("ts_unparseable_text", "csv", _csv(t, {(BAD, "prediction_ts"): "yesterday noon"}), "TS_PARSE", BAD_ROW,
        "prediction_ts", value="yesterday noon")
    floats = [v.timestamp() for v in t.column("prediction_ts").to_pylist()]
    floats[BAD] = math.nan
    add("ts_nan_epoch", "parquet", to_bytes(_with(t, "prediction_ts", floats, pa.float64()), "parquet"), "TS_INVALID",
        BAD_ROW, "prediction_ts", value="nan")

    # -- scores and labels --------------------------------------------------------------------------
    add("score_nan", "parquet", to_bytes(_set(t, "predicted_score", BAD, math.nan), "parquet"), "SCORE_NOT_FINITE",
        BAD_ROW, "predicted_score", value="nan")
    add("score_inf_csv", "csv", _csv(t, {(BAD, "predicted_score"): "inf"}), "SCORE_NOT_FINITE", BAD_ROW,
        "predicted_score", value="inf")
    add("score_text_csv", "csv", _csv(t, {(BAD, "predicted_score"): "high"}), "SCORE_TYPE", BAD_ROW,
        "predicted_score", value="high")
    add("label_null", "arrow", to_bytes(_set(t, "predicted_label", BAD, None), "arrow"), "LABEL_MISSING", BAD_ROW,
        "predicted_label")
    reg = good_table("regression", id_prefix="bad")
    add("regression_label_text", "csv", _csv(reg, {(BAD, "predicted_label"): "high"}), "LABEL_TYPE", BAD_ROW,
        "predicted_label", model_type="regression", value="high")

    # -- ranking ------------------------------------------------------------------------------------
    rk = good_table("ranking", id_prefix="bad")
    add("rank_zero", "parquet", to_bytes(_set(rk, "rank", BAD, 0), "parquet"), "RANK_RANGE", BAD_ROW, "rank",
        model_type="ranking", value="0.0")
    add("rank_101_csv", "csv", _csv(rk, {(BAD, "rank"): "101"}), "RANK_RANGE", BAD_ROW, "rank",
        model_type="ranking", value="101.0")
    add("rank_fraction", "avro", to_bytes(_with(rk, "rank", [1, 2, 3, 2.5, 5, 1, 2, 3, 4, 5], pa.float64()), "avro"),
        "RANK_RANGE", BAD_ROW, "rank", model_type="ranking", value="2.5")
    add("group_id_null", "parquet", to_bytes(_set(rk, "group_id", BAD, None), "parquet"), "GROUP_ID_MISSING",
        BAD_ROW, "group_id", model_type="ranking")

    # -- embeddings ---------------------------------------------------------------------------------
    em = good_table("embedding", id_prefix="bad")
    add("embedding_length", "parquet", to_bytes(_set(em, "emb", BAD, [0.1, 0.2, 0.3]), "parquet"),
        "EMBEDDING_LENGTH", BAD_ROW, "emb", schema=EMBEDDING, variant="embedding")
    add("embedding_empty", "parquet", to_bytes(_set(em, "emb", BAD, []), "parquet"), "EMBEDDING_EMPTY", BAD_ROW,
        "emb", schema=EMBEDDING, variant="embedding")
    add("embedding_nan", "avro", to_bytes(_set(em, "emb", BAD, [0.1, math.nan, 0.3, 0.4]), "avro"),
        "EMBEDDING_NOT_FINITE", BAD_ROW, "emb", schema=EMBEDDING, variant="embedding")
    add("embedding_not_json_csv", "csv", _csv(em, {(BAD, "emb"): "[0.1, oops]"}), "TYPE_MISMATCH", BAD_ROW, "emb",
        schema=EMBEDDING, variant="embedding", value="[0.1, oops]")

    # -- object detection ---------------------------------------------------------------------------
    od = good_table("object_detection", id_prefix="bad")
    add("bbox_3_coordinates", "parquet", to_bytes(_set(od, "boxes", BAD, [[0.0, 0.0, 10.0], [5.0, 5.0, 20.0, 20.0]]),
                                                  "parquet"), "BBOX_COORDINATES", BAD_ROW, "boxes",
        model_type="object_detection")
    add("bbox_categories_length", "arrow", to_bytes(_set(od, "box_categories", BAD, ["cat"]), "arrow"), "BBOX_LENGTH",
        BAD_ROW, "box_categories", model_type="object_detection")

    # -- features and tags --------------------------------------------------------------------------
    huge = "t" * 20_000
    add("tag_20000_chars", "parquet", to_bytes(_set(t, "region", BAD, huge), "parquet"), "VALUE_TOO_LONG", BAD_ROW,
        "region", value=_short(huge))
    ints = t.append_column("feature_n", pa.array(range(10), pa.int64()))
    add("csv_int_feature_text", "csv", _csv(ints, {(BAD, "feature_n"): "n/a"}), "CAST_FAILED", BAD_ROW, "feature_n",
        schema={"column_types": {"feature_n": "int64"}}, value="n/a")

    names = [d.name for d in out]
    assert len(set(names)) == len(names), "defect names must be unique"
    return out


def by_name() -> dict[str, Defect]:
    return {d.name: d for d in defects()}

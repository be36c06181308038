"""Every model type in every input format, end to end.

For each (model type, format) a realistic small inference file (50 rows, timestamps within the last
days, features, tags and the fields the model type needs) is uploaded to a moto bucket, validated
(dry run: no problems) and imported, and the model's Iceberg table is read back and compared value
for value with what was written.

CSV cannot hold nested values: vectors, boxes and class->score maps are written as JSON cells, as
README "Expected types" documents. The Arrow stream files (``.arrows``) use large_string/large_list,
as polars writes them; files are read in batches of 16 rows, so every file spans several batches.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import math
import uuid
import zlib
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lake_fixtures import Lake
from obslake.config import ImportJob, load_import_job
from obslake.lake.catalog import LakeSettings
from obslake.lake.importer import import_file
from obslake.schema.validate import validate_file
from obslake.storage import open_store
from obslake.storage.s3 import make_s3_client
from obslake_demo.writers import write_table

N = 50
BATCH_ROWS = 16  # several batches per file, as for large files (Arrow batches are sliced)
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
TS = pa.timestamp("us", tz="UTC")
F32 = pa.float32()

# write format -> file extension (arrow_stream is the Arrow IPC stream format, read as `arrow`)
FORMATS = {"parquet": ".parquet", "csv": ".csv", "avro": ".avro", "arrow": ".arrow", "arrow_stream": ".arrows"}
MODEL_TYPES = ("binary_classification", "multi_class", "score_categorical", "regression", "ranking",
               "object_detection", "generative_llm")
CLASSES = ("cat", "dog", "bird", "fish")


# -- data ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    """One inference file: the table to write, the job's schema mapping, and what the lake must hold.

    ``expected`` maps a column of the model table to (kind, one value per written row), kind being
    ``exact``, ``map`` (compared as dicts) or ``vector`` (float32 tolerance).
    """

    table: pa.Table
    schema: dict[str, Any]
    expected: dict[str, tuple[str, list]]
    types: dict[str, str] = dataclasses.field(default_factory=dict)  # Iceberg column types


def _rng(model_type: str, fmt: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{model_type}/{fmt}".encode()))


def _f32(values: np.ndarray) -> list[float]:
    """Python floats that are exactly representable as float32 (what the table stores)."""
    return [float(x) for x in np.asarray(values, dtype=np.float32)]


def _common(rng: np.random.Generator, prefix: str) -> dict[str, pa.Array]:
    """Ids, timestamps (last 3 days, microsecond precision, spanning several dates), features, tags."""
    start = NOW - dt.timedelta(days=3)
    ts = [start + dt.timedelta(minutes=83 * i, microseconds=int(rng.integers(1, 1_000_000))) for i in range(N)]
    income = [round(float(x), 2) for x in rng.normal(52_000, 9_000, N)]
    income[7] = None  # a missing feature value
    return {
        "prediction_id": pa.array([f"{prefix}-{i:04d}-{rng.integers(10**6):06d}" for i in range(N)]),
        "prediction_ts": pa.array(ts, TS),
        "feature_age": pa.array(rng.integers(18, 90, N), pa.int64()),
        "feature_income": pa.array(income, pa.float64()),
        "feature_city": pa.array([("Paris", "Lima", "Oslo", "São Paulo", "Tokyo")[i % 5] for i in range(N)]),
        "feature_is_member": pa.array([bool(i % 3) for i in range(N)]),
        "tag_region": pa.array([("eu-west", "us-east", "ap-south")[i % 3] for i in range(N)]),
        "tag_device": pa.array([("ios", "android", "web", None)[i % 4] for i in range(N)]),
    }


def _common_schema() -> dict[str, Any]:
    return {"prediction_id": "prediction_id", "timestamp": "prediction_ts", "features": {"prefix": "feature_"},
            "tags": {"prefix": "tag_"}}


def _common_expected(cols: dict[str, pa.Array]) -> dict[str, tuple[str, list]]:
    out = {"prediction_id": ("exact", [str(v) for v in cols["prediction_id"].to_pylist()]),
           "prediction_timestamp": ("exact", cols["prediction_ts"].to_pylist()),
           "date": ("exact", [t.date() for t in cols["prediction_ts"].to_pylist()]),
           "_source_row": ("exact", list(range(1, N + 1)))}
    for c in ("feature_age", "feature_income", "feature_city", "feature_is_member", "tag_region", "tag_device"):
        out[c] = ("exact", cols[c].to_pylist())
    return out


def _vectors(rng: np.random.Generator, dim: int) -> pa.Array:
    return pa.array([_f32(rng.normal(0, 1, dim)) for _ in range(N)], pa.list_(F32))


def _classification(model_type: str, fmt: str) -> Case:
    rng = _rng(model_type, fmt)
    cols = _common(rng, "txn")
    score = rng.random(N)
    cols["predicted_score"] = pa.array(score)
    cols["predicted_label"] = pa.array(["fraud" if s > 0.5 else "not_fraud" for s in score])
    cols["actual_label"] = pa.array([("fraud" if rng.random() < 0.3 else "not_fraud") for _ in range(N)])
    if model_type == "score_categorical":
        cols["actual_score"] = pa.array([1.0 if a == "fraud" else 0.0 for a in cols["actual_label"].to_pylist()])
    cols["shap_age"] = pa.array(rng.normal(0, 0.1, N))
    cols["shap_income"] = pa.array(rng.normal(0, 0.2, N))
    cols["image_vector"] = _vectors(rng, 8)
    cols["image_url"] = pa.array([f"s3://images/{i}.png" for i in range(N)])
    cols["merchant_text"] = pa.array([f"Café #{i}, \"downtown\"" for i in range(N)])
    schema = {**_common_schema(), "prediction_label": "predicted_label", "prediction_score": "predicted_score",
              "actual_label": "actual_label", "shap_values": {"prefix": "shap_"},
              "embedding_features": {"image_embedding": {"vector": "image_vector", "link_to_data": "image_url",
                                                         "raw_data": "merchant_text"}}}
    expected = _common_expected(cols)
    for role, col in (("prediction_label", "predicted_label"), ("prediction_score", "predicted_score"),
                      ("actual_label", "actual_label"), ("shap_age", "shap_age"), ("shap_income", "shap_income"),
                      ("embedding__image_embedding__link_to_data", "image_url"),
                      ("embedding__image_embedding__raw_data", "merchant_text")):
        expected[role] = ("exact", cols[col].to_pylist())
    expected["embedding__image_embedding__vector"] = ("vector", cols["image_vector"].to_pylist())
    if model_type == "score_categorical":
        schema["actual_score"] = "actual_score"
        expected["actual_score"] = ("exact", cols["actual_score"].to_pylist())
    types = {"prediction_score": "double", "shap_age": "double", "embedding__image_embedding__vector": "list<float>",
             "embedding__image_embedding__raw_data": "string"}
    return Case(pa.table(cols), schema, expected, types)


def _multi_class(fmt: str) -> Case:
    rng = _rng("multi_class", fmt)
    cols = _common(rng, "img")
    logits = rng.normal(0, 2, (N, len(CLASSES)))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pred_maps = [dict(zip(CLASSES, map(float, row))) for row in probs]
    actual = [CLASSES[int(rng.integers(len(CLASSES)))] for _ in range(N)]
    thresholds = [{c: round(float(rng.uniform(0.2, 0.6)), 3) for c in CLASSES} for _ in range(N)]
    # a map column for the predicted scores (CSV: a JSON object per cell) ...
    cols["pred_scores"] = pa.array([list(m.items()) for m in pred_maps], pa.map_(pa.string(), pa.float64()))
    # ... one column per class for the actual scores, selected by prefix ...
    for c in CLASSES:
        cols[f"actual_score_{c}"] = pa.array([1.0 if a == c else 0.0 for a in actual])
    # ... and list<struct<class_name, score>> for the thresholds
    cols["thresholds"] = pa.array([[{"class_name": c, "score": s} for c, s in t.items()] for t in thresholds],
                                  pa.list_(pa.struct([("class_name", pa.string()), ("score", pa.float64())])))
    cols["predicted_label"] = pa.array([max(m, key=m.get) for m in pred_maps])
    cols["actual_label"] = pa.array(actual)
    schema = {**_common_schema(), "prediction_scores": "pred_scores", "actual_scores": {"prefix": "actual_score_"},
              "threshold_scores": "thresholds", "prediction_label": "predicted_label", "actual_label": "actual_label"}
    expected = _common_expected(cols)
    expected["prediction_scores"] = ("map", pred_maps)
    expected["actual_scores"] = ("map", [{c: 1.0 if a == c else 0.0 for c in CLASSES} for a in actual])
    expected["threshold_scores"] = ("map", thresholds)
    expected["prediction_label"] = ("exact", cols["predicted_label"].to_pylist())
    expected["actual_label"] = ("exact", actual)
    mt = "map<string, double>"
    return Case(pa.table(cols), schema, expected,
                {"prediction_scores": mt, "actual_scores": mt, "threshold_scores": mt})


def _regression(fmt: str) -> Case:
    rng = _rng("regression", fmt)
    cols = _common(rng, "house")
    cols["prediction_id"] = pa.array(rng.choice(10**9, N, replace=False).astype(np.int64))  # integer ids
    truth = rng.normal(350_000, 80_000, N).round(2)
    cols["predicted_price"] = pa.array((truth + rng.normal(0, 20_000, N)).round(2))
    cols["actual_price"] = pa.array(truth)
    cols["shap_age"] = pa.array(rng.normal(0, 900, N))
    schema = {**_common_schema(), "prediction_label": "predicted_price", "actual_label": "actual_price",
              "shap_values": ["shap_age"]}
    expected = _common_expected(cols)
    expected["prediction_label"] = ("exact", cols["predicted_price"].to_pylist())
    expected["actual_label"] = ("exact", cols["actual_price"].to_pylist())
    expected["shap_age"] = ("exact", cols["shap_age"].to_pylist())
    return Case(pa.table(cols), schema, expected,
                {"prediction_id": "string", "prediction_label": "double", "actual_label": "double"})


def _ranking(fmt: str) -> Case:
    rng = _rng("ranking", fmt)
    cols = _common(rng, "search")
    per_group = 5
    groups = [f"query-{g:03d}" for g in range(N // per_group) for _ in range(per_group)]
    ranks = [r for _ in range(N // per_group) for r in rng.permutation(per_group) + 1]
    cols["search_id"] = pa.array(groups)
    cols["position"] = pa.array(ranks, pa.int64())
    cols["ranking_score"] = pa.array([round(1.0 / r + float(rng.random()) / 100, 6) for r in ranks])
    rel = rng.integers(0, 4, N)
    cols["relevance"] = pa.array(rel.astype(float))
    cols["relevance_text"] = pa.array(["relevant" if r >= 2 else "not_relevant" for r in rel])
    schema = {**_common_schema(), "prediction_group_id": "search_id", "rank": "position",
              "prediction_score": "ranking_score", "relevance_score": "relevance", "relevance_label": "relevance_text"}
    expected = _common_expected(cols)
    for role, col in (("prediction_group_id", "search_id"), ("rank", "position"), ("prediction_score", "ranking_score"),
                      ("relevance_score", "relevance"), ("relevance_label", "relevance_text")):
        expected[role] = ("exact", cols[col].to_pylist())
    return Case(pa.table(cols), schema, expected,
                {"rank": "int", "prediction_group_id": "string", "relevance_score": "double"})


def _boxes(rng: np.random.Generator, k: int, dtype: Any) -> list[list[float]]:
    out = []
    for _ in range(k):
        x1, y1 = rng.uniform(0, 500, 2).round(1)
        w, h = rng.uniform(10, 200, 2).round(1)
        out.append([float(v) for v in np.asarray([x1, y1, x1 + w, y1 + h], dtype=dtype)])
    return out


def _object_detection(fmt: str) -> Case:
    rng = _rng("object_detection", fmt)
    cols = _common(rng, "frame")
    labels = ("car", "person", "bicycle", "traffic light")
    n_pred = [int(rng.integers(0, 4)) for _ in range(N)]  # some frames detect nothing
    n_act = [int(rng.integers(0, 4)) for _ in range(N)]
    pred_boxes = [_boxes(rng, k, np.float64) for k in n_pred]
    act_boxes = [_boxes(rng, k, np.float32) for k in n_act]
    cols["pred_coordinates"] = pa.array(pred_boxes, pa.list_(pa.list_(pa.float64())))
    cols["pred_categories"] = pa.array([[labels[int(rng.integers(4))] for _ in range(k)] for k in n_pred])
    cols["pred_scores"] = pa.array([[round(float(rng.uniform(0.3, 1)), 4) for _ in range(k)] for k in n_pred],
                                   pa.list_(pa.float64()))
    cols["gt_coordinates"] = pa.array(act_boxes, pa.list_(pa.list_(F32)))  # float32 coordinates
    cols["gt_categories"] = pa.array([[labels[int(rng.integers(4))] for _ in range(k)] for k in n_act],
                                     pa.list_(pa.string()))
    cols["frame_vector"] = _vectors(rng, 12)
    if fmt != "csv":  # image embeddings from a numpy matrix: fixed_size_list<float, 12>
        cols["frame_vector"] = cols["frame_vector"].cast(pa.list_(F32, 12))
    cols["frame_url"] = pa.array([f"https://cdn.example.com/frames/{i}.jpg" for i in range(N)])
    cols["frame_caption"] = pa.array([f"{k} object(s) at camera {i % 7}" for i, k in enumerate(n_pred)])
    schema = {**_common_schema(),
              "prediction_bounding_boxes": {"coordinates": "pred_coordinates", "categories": "pred_categories",
                                            "scores": "pred_scores"},
              "actual_bounding_boxes": {"coordinates": "gt_coordinates", "categories": "gt_categories"},
              "embedding_features": {"frame_embedding": {"vector": "frame_vector", "link_to_data": "frame_url",
                                                         "raw_data": "frame_caption"}}}
    expected = _common_expected(cols)
    for role, col in (("prediction_bbox_coordinates", "pred_coordinates"),
                      ("prediction_bbox_categories", "pred_categories"), ("prediction_bbox_scores", "pred_scores"),
                      ("actual_bbox_coordinates", "gt_coordinates"), ("actual_bbox_categories", "gt_categories"),
                      ("embedding__frame_embedding__link_to_data", "frame_url"),
                      ("embedding__frame_embedding__raw_data", "frame_caption")):
        expected[role] = ("exact", cols[col].to_pylist())
    expected["embedding__frame_embedding__vector"] = ("vector", cols["frame_vector"].to_pylist())
    return Case(pa.table(cols), schema, expected,
                {"prediction_bbox_coordinates": "list<list<double>>", "actual_bbox_coordinates": "list<list<double>>",
                 "prediction_bbox_categories": "list<string>", "prediction_bbox_scores": "list<double>"})


def _generative_llm(fmt: str) -> Case:
    rng = _rng("generative_llm", fmt)
    cols = _common(rng, "chat")
    topics = ("refund policy", "password reset", "shipping to Perú", "a \"quoted\" product, size 10")
    prompts = [f"Customer asks about {topics[i % 4]}.\nOrder #{1000 + i}: what are my options?" for i in range(N)]
    responses = [f"Thanks for reaching out! Regarding {topics[i % 4]}: step 1, step 2 — done ✅" for i in range(N)]
    cols["prompt"] = pa.array(prompts)
    cols["response"] = pa.array(responses)
    cols["prompt_vector"] = _vectors(rng, 16)
    if fmt == "csv":
        raw = pa.array([p.split("\n")[0] for p in prompts])
    else:  # a token list
        raw = pa.array([p.split() for p in prompts], pa.list_(pa.string()))
    cols["prompt_tokens"] = raw
    cols["response_vector"] = _vectors(rng, 16)
    cols["user_feedback"] = pa.array([("helpful", "not_helpful")[int(rng.integers(2))] for _ in range(N)])
    cols["llm_label"] = pa.array(["helpful"] * N)
    cols["tag_llm"] = pa.array(["gpt-4o-mini"] * N)
    schema = {**_common_schema(), "prompt": "prompt", "response": "response", "prediction_label": "llm_label",
              "actual_label": "user_feedback",
              "embedding_features": {"prompt_embedding": {"vector": "prompt_vector", "raw_data": "prompt_tokens"},
                                     "response_embedding": "response_vector"}}
    expected = _common_expected(cols)
    for role, col in (("prompt", "prompt"), ("response", "response"), ("prediction_label", "llm_label"),
                      ("actual_label", "user_feedback"), ("embedding__prompt_embedding__raw_data", "prompt_tokens"),
                      ("tag_llm", "tag_llm")):
        expected[role] = ("exact", cols[col].to_pylist())
    expected["embedding__prompt_embedding__vector"] = ("vector", cols["prompt_vector"].to_pylist())
    expected["embedding__response_embedding__vector"] = ("vector", cols["response_vector"].to_pylist())
    types = {"embedding__prompt_embedding__vector": "list<float>", "prompt": "string", "response": "string",
             "embedding__prompt_embedding__raw_data": "string" if fmt == "csv" else "list<string>"}
    return Case(pa.table(cols), schema, expected, types)


BUILDERS: dict[str, Callable[[str], Case]] = {
    "binary_classification": lambda fmt: _classification("binary_classification", fmt),
    "score_categorical": lambda fmt: _classification("score_categorical", fmt),
    "multi_class": _multi_class,
    "regression": _regression,
    "ranking": _ranking,
    "object_detection": _object_detection,
    "generative_llm": _generative_llm,
}


def _csv_ready(table: pa.Table) -> pa.Table:
    """Nested columns as JSON cells (lists -> arrays, maps and list<struct<class_name, score>> -> objects)."""
    for i, field in enumerate(table.schema):
        t = field.type
        if not pa.types.is_nested(t):
            continue
        values = table.column(i).to_pylist()
        if pa.types.is_map(t):
            cells = [None if v is None else json.dumps(dict(v)) for v in values]
        elif pa.types.is_list(t) and pa.types.is_struct(t.value_type):
            cells = [None if v is None else json.dumps({d["class_name"]: d["score"] for d in v}) for v in values]
        else:
            cells = [None if v is None else json.dumps(v) for v in values]
        table = table.set_column(i, field.name, pa.array(cells, pa.string()))
    return table


def _encode(table: pa.Table, fmt: str) -> bytes:
    buf = io.BytesIO()
    write_table(_csv_ready(table) if fmt == "csv" else table, fmt, buf)
    return buf.getvalue()


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    """One embedded lake for the module (every case writes its own model table)."""
    home = tmp_path_factory.mktemp("model-types-lake")
    (home / "warehouse").mkdir()
    env = {"OBSLAKE_HOME": str(home), "OBSLAKE_CATALOG_URI": f"sqlite:///{home / 'catalog.db'}",
           "OBSLAKE_WAREHOUSE": f"file://{home / 'warehouse'}"}
    return Lake(LakeSettings.from_env(env), env)


@pytest.fixture(scope="module")
def bucket(moto_server):
    """One moto bucket for the module (every case writes under its own prefix)."""
    client = make_s3_client(endpoint_url=moto_server, region_name="us-east-1", aws_access_key_id="testing",
                            aws_secret_access_key="testing")
    name = f"obslake-model-types-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    store, _ = open_store(f"s3://{name}/", s3_client=client)
    return store


def _job(store, model_type: str, fmt: str, schema: dict[str, Any]) -> ImportJob:
    slug = f"{model_type}_{fmt}"
    return ImportJob.model_validate({
        "name": slug.replace("_", "-"),
        "source": store.uri(f"{model_type}/{fmt}/"),
        "model": {"space": "model_types", "name": slug, "type": model_type, "version": "v3"},
        "ingestion_key_variable": "obslake_test_key",
        "schema": schema,
    })


def _import_and_check(lake: Lake, store, job: ImportJob, case: Case, fmt: str, key: str) -> pa.Table:
    info = store.write(key, _encode(case.table, fmt))
    report = validate_file(job, store, info, batch_rows=BATCH_ROWS)
    assert report.status == "ok" and report.problems == [] and report.rows == N, report.summary()
    result = import_file(job, store, info, catalog=lake.catalog, ledger=lake.ledger, batch_rows=BATCH_ROWS)
    assert result.status == "imported", result.error
    assert result.rows == N
    table = lake.catalog.load_table(job.table_identifier)
    data = table.scan().to_arrow()
    data = data.filter(pc.equal(data["_source_file"], store.uri(key))).sort_by("_source_row")
    assert data.num_rows == N
    iceberg_types = {f.name: str(f.field_type) for f in table.schema().fields}
    assert iceberg_types["prediction_timestamp"] == "timestamptz"
    for col, want in case.types.items():
        assert iceberg_types.get(col) == want, (col, iceberg_types.get(col))
    assert set(data["model_version"].to_pylist()) == {"v3"}
    for col, (kind, want) in case.expected.items():
        assert col in data.schema.names, (col, data.schema.names)
        got = data[col].to_pylist()
        if fmt == "csv" and col.startswith("feature_") and pa.types.is_floating(data.schema.field(col).type):
            # whole numbers in a CSV feature are doubles unless the table already has the column (README)
            want = [float(w) if isinstance(w, int) and not isinstance(w, bool) else w for w in want]
        if kind == "exact":
            bad = [(i + 1, g, w) for i, (g, w) in enumerate(zip(got, want)) if not _same(g, w)]
            assert not bad, f"{col}: (row, got, written) {bad[:3]}"
        elif kind == "map":
            assert [None if g is None else dict(g) for g in got] == want, col
        elif kind == "vector":
            for row, (g, w) in enumerate(zip(got, want), 1):
                if w is None:
                    assert g is None, (col, row, g)
                    continue
                assert g is not None and len(g) == len(w), (col, row, g)
                np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7, err_msg=f"{col} row {row}")
        else:  # pragma: no cover
            raise AssertionError(kind)
    return data


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, float) and isinstance(got, float):
        return got == want or (math.isnan(got) and math.isnan(want))
    if isinstance(want, dt.datetime):  # the same instant, and aware (UTC) exactly when written aware
        return (isinstance(got, dt.datetime) and got.utcoffset() == (None if want.tzinfo is None else dt.timedelta(0))
                and got == want)
    return type(got) is type(want) and got == want


def _large(t: pa.DataType) -> pa.DataType:
    if pa.types.is_string(t):
        return pa.large_string()
    if pa.types.is_list(t):
        return pa.large_list(_large(t.value_type))
    return t


# -- the matrix ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_model_type_round_trips_in_every_format(lake, bucket, model_type, fmt):
    case = BUILDERS[model_type](fmt)
    if fmt == "arrow_stream":  # as polars writes IPC: large_string and large_list
        case.table = case.table.cast(pa.schema([pa.field(f.name, _large(f.type)) for f in case.table.schema]))
    job = _job(bucket, model_type, fmt, case.schema)
    _import_and_check(lake, bucket, job, case, fmt, f"{model_type}/{fmt}/2024/inferences{FORMATS[fmt]}")


def _in_chunks(table: pa.Table, rows: int = 13) -> pa.Table:
    """The table as several record batches / row groups, its string tags dictionary-encoded per chunk
    (as pandas categoricals are written): each chunk has its own dictionary."""
    chunks = []
    for start in range(0, table.num_rows, rows):
        part = table.slice(start, rows)
        chunks.append(pa.table({n: pc.dictionary_encode(part[n]) if n.startswith("tag_") else part[n]
                                for n in part.column_names}))
    return pa.concat_tables(chunks)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_files_of_every_format_feed_one_model_table(lake, bucket, model_type):
    """One job accepting all formats: each file conforms to the table the first one created."""
    job = None
    for fmt, ext in FORMATS.items():
        case = BUILDERS[model_type](fmt)
        if model_type == "generative_llm" and fmt != "csv":  # one type per column: raw data as text everywhere
            text = [" ".join(tokens) for tokens in case.table["prompt_tokens"].to_pylist()]
            case.table = case.table.set_column(case.table.schema.get_field_index("prompt_tokens"), "prompt_tokens",
                                               pa.array(text))
            case.expected["embedding__prompt_embedding__raw_data"] = ("exact", text)
            case.types["embedding__prompt_embedding__raw_data"] = "string"
        if fmt != "csv":
            case.table = _in_chunks(case.table)
        job = job or _job(bucket, model_type, "mixed", case.schema)
        _import_and_check(lake, bucket, job, case, fmt, f"{model_type}/mixed/{fmt}{ext}")
    data = lake.catalog.load_table(job.table_identifier).scan().to_arrow()
    assert data.num_rows == N * len(FORMATS)
    assert pc.count_distinct(data["_source_file"]).as_py() == len(FORMATS)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_nanosecond_timestamps_are_truncated_to_microseconds(lake, bucket, fmt):
    """pandas writes datetime64[ns] (CSV: 9 fractional digits); the lake keeps µs, as Iceberg does."""
    case = BUILDERS["binary_classification"](fmt)
    written = case.expected["prediction_timestamp"][1]
    micros = np.array([(t - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(microseconds=1)
                       for t in written], dtype=np.int64)
    nanos = micros * 1000 + np.arange(1, N + 1) * 7 % 1000  # sub-microsecond digits, never all zero
    t = case.table
    t = t.set_column(t.schema.get_field_index("prediction_ts"), "prediction_ts",
                     pa.array(nanos, pa.timestamp("ns", tz="UTC")))
    case.table = t.append_column("feature_signup_ts", pa.array(nanos - 86_400 * 10**9 * 30, pa.timestamp("ns")))
    case.expected["feature_signup_ts"] = ("exact", [w.replace(tzinfo=None) - dt.timedelta(days=30) for w in written])
    job = _job(bucket, "binary_classification", f"ns-{fmt}", case.schema)
    _import_and_check(lake, bucket, job, case, fmt, f"ns/{fmt}/inferences{FORMATS[fmt]}")


# -- the Arize SDK JSON form of a schema -----------------------------------------------------------
@pytest.mark.parametrize("embedding_form", ["dict", "list"])
def test_arize_json_schema_file_referenced_from_a_job_yaml(lake, bucket, tmp_path, embedding_form):
    """The Arize SDK / file-importer JSON column mapping in include/schemas/, named by `schema:` in a job."""
    embedding = {"frame_embedding": {"vector_column_name": "frame_vector", "data_column_name": "frame_caption",
                                     "link_to_data_column_name": "frame_url"}}
    include = tmp_path / "include"
    (include / "import_jobs").mkdir(parents=True)
    (include / "schemas").mkdir()
    features = ["feature_age", "feature_income", "feature_city", "feature_is_member"]
    (include / "schemas" / "x.json").write_text(json.dumps({
        "prediction_id_column_name": "prediction_id",
        "timestamp_column_name": "prediction_ts",
        "feature_column_names": features,
        "tag_column_names": ["tag_region", "tag_device"],
        "embedding_feature_column_names": embedding if embedding_form == "dict" else [embedding],
        "object_detection_prediction_column_names": {
            "bounding_boxes_coordinates_column_name": "pred_coordinates",
            "categories_column_name": "pred_categories",
            "scores_column_name": "pred_scores"},
        "object_detection_actual_column_names": {
            "bounding_boxes_coordinates_column_name": "gt_coordinates",
            "categories_column_name": "gt_categories"},
    }, indent=2))
    name = f"arize_json_od_{embedding_form}"
    yaml_path = include / "import_jobs" / f"{name}.yaml"
    yaml_path.write_text(
        f"name: {name}\n"
        f"source: {bucket.uri(f'arize-json/{embedding_form}/')}\n"
        f"model: {{space: model_types, name: {name}, type: object_detection, version: v3}}\n"
        "ingestion_key_variable: obslake_test_key\n"
        "schema: schemas/x.json\n")
    job = load_import_job(yaml_path)
    m = job.schema_
    assert m.prediction_id == "prediction_id" and m.timestamp == "prediction_ts"
    assert m.features is not None and m.features.columns == tuple(features)
    assert m.embedding_features["frame_embedding"].vector == "frame_vector"
    assert m.embedding_features["frame_embedding"].link_to_data == "frame_url"
    assert m.embedding_features["frame_embedding"].raw_data == "frame_caption"
    assert m.prediction_bounding_boxes is not None and m.prediction_bounding_boxes.scores == "pred_scores"
    assert m.actual_bounding_boxes is not None and m.actual_bounding_boxes.coordinates == "gt_coordinates"
    case = _object_detection("parquet")
    data = _import_and_check(lake, bucket, job, case, "parquet", f"arize-json/{embedding_form}/frames.parquet")
    assert job.table_identifier == ("model_types", f"{name}__production")
    # only the listed features became columns
    assert not {"frame_vector", "frame_url", "frame_caption", "pred_scores"} & set(data.schema.names)


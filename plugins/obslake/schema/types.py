"""The shared vocabulary of model jobs: enums, column selectors and the schema mapping.

These are plain pydantic models with no knowledge of files, tables or Airflow, so every layer above
(schema mapping and validation, the job configuration, the lake, the fabric) can use them.
"""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from obslake.exceptions import printable

if TYPE_CHECKING:
    import pyarrow as pa


def _q(value: Any) -> str:
    """A user's value quoted for a message: control characters escaped, at most 80 characters."""
    return f"'{printable(value, 80)}'"


class JobStatus(str, enum.Enum):
    """Life-cycle state of an import job (``paused`` = Arize's "inactive")."""

    active = "active"
    paused = "paused"
    deleted = "deleted"


class ModelType(str, enum.Enum):
    """Arize model types; each requires its own fields (README "Model types")."""

    binary_classification = "binary_classification"
    multi_class = "multi_class"
    score_categorical = "score_categorical"
    regression = "regression"
    ranking = "ranking"
    object_detection = "object_detection"
    generative_llm = "generative_llm"


class OnError(str, enum.Enum):
    """What a bad record does to its file (Snowflake's ON_ERROR)."""

    abort_file = "abort_file"
    skip_rows = "skip_rows"


class JobKind(str, enum.Enum):
    """What a job's files hold.

    ``predictions`` (default); ``actuals``: delayed ground truth joined by prediction id; ``spans`` /
    ``annotations``: LLM trace spans or their annotations, for the lake's own trace tables (Data Fabric).
    """

    predictions = "predictions"
    actuals = "actuals"
    spans = "spans"
    annotations = "annotations"

    @property
    def is_trace(self) -> bool:
        """True for the tracing kinds (no model, no model schema)."""
        return self in (JobKind.spans, JobKind.annotations)


class Environment(str, enum.Enum):
    """Model environment, as in Arize."""

    training = "training"
    validation = "validation"
    production = "production"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSelector(_Strict):
    """A set of columns: an explicit list, or every column whose name starts with ``prefix``."""

    columns: tuple[str, ...] = ()
    prefix: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return {"columns": tuple(value)}
        if isinstance(value, str):
            return {"prefix": value}
        return value

    def select(self, names: list[str]) -> list[str]:
        """The columns of ``names`` this selector claims, in file order."""
        if self.prefix is not None:
            return [n for n in names if n.startswith(self.prefix) or n in self.columns]
        return [n for n in names if n in self.columns]

    @property
    def is_empty(self) -> bool:
        """True when the selector claims nothing explicitly."""
        return not self.columns and self.prefix is None


def _rename_keys(value: Any, aliases: dict[str, str]) -> Any:
    """Arize's ``*_column_name`` keys to ours (other values pass through for pydantic to judge)."""
    return {aliases.get(k, k): v for k, v in value.items()} if isinstance(value, dict) else value


class EmbeddingColumns(_Strict):
    """One embedding feature: a vector column, optionally its raw data and a link to the data."""

    vector: str
    raw_data: str | None = None
    link_to_data: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _arize_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"vector": value}
        return _rename_keys(
            value,
            {
                "vector_column_name": "vector",
                "data_column_name": "raw_data",
                "data": "raw_data",
                "link_to_data_column_name": "link_to_data",
            },
        )

    def columns(self) -> list[str]:
        """The input columns this embedding uses."""
        return [c for c in (self.vector, self.raw_data, self.link_to_data) if c]


class BoundingBoxColumns(_Strict):
    """Object detection boxes: per row a list of [x1, y1, x2, y2], their categories and (predictions) scores."""

    coordinates: str
    categories: str
    scores: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _arize_names(cls, value: Any) -> Any:
        return _rename_keys(
            value,
            {
                "bounding_boxes_coordinates_column_name": "coordinates",
                "categories_column_name": "categories",
                "scores_column_name": "scores",
            },
        )

    def columns(self) -> list[str]:
        """The input columns of the boxes."""
        return [c for c in (self.coordinates, self.categories, self.scores) if c]


# Arize SDK / JSON column-mapping names -> our field names.
_ARIZE_ALIASES = {
    "prediction_id_column_name": "prediction_id",
    "timestamp_column_name": "timestamp",
    "prediction_label_column_name": "prediction_label",
    "prediction_score_column_name": "prediction_score",
    "actual_label_column_name": "actual_label",
    "actual_score_column_name": "actual_score",
    "feature_column_names": "features",
    "tag_column_names": "tags",
    "shap_values_column_names": "shap_values",
    "embedding_feature_column_names": "embedding_features",
    "prediction_group_id_column_name": "prediction_group_id",
    "rank_column_name": "rank",
    "relevance_score_column_name": "relevance_score",
    "relevance_labels_column_name": "relevance_label",
    "relevance_label_column_name": "relevance_label",
    "version_column_name": "version",
    "batch_id_column_name": "batch_id",
    "prompt_column_name": "prompt",
    "response_column_name": "response",
    "multi_class_threshold_scores_column_name": "threshold_scores",
    "object_detection_prediction_column_names": "prediction_bounding_boxes",
    "object_detection_actual_column_names": "actual_bounding_boxes",
    "excluded_column_names": "exclude",
}


_TIMESTAMP_TZ = re.compile(r"timestamp\[(s|ms|us|ns),\s*tz=([^\]]+)\]")


def arrow_type(name: str) -> pa.DataType:
    """The Arrow type a ``column_types`` entry names: a pyarrow alias (``string``, ``int64``,
    ``timestamp[us]``, ...) or a time-zoned timestamp, ``timestamp[us, tz=UTC]`` (which has no alias).

    Raises:
        ValueError: no such type.
    """
    import pyarrow as pa  # here, not at module level: keep pyarrow out of DAG parsing

    match = _TIMESTAMP_TZ.fullmatch(name.strip())
    if match:
        tz = match.group(2).strip()
        if not re.fullmatch(r"[+-]\d{2}:\d{2}", tz):
            import zoneinfo

            try:
                zoneinfo.ZoneInfo(tz)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {tz!r}") from None
        return pa.timestamp(match.group(1), tz=tz)
    return pa.type_for_alias(name)


class SchemaMapping(_Strict):
    """Which input column plays which role (Arize's column mapping).

    Accepts our names and Arize's (``prediction_id_column_name``, ``feature_column_names``, …).
    Columns the mapping does not claim become features, unless listed in ``exclude`` (as in Arize).
    ``prediction_scores``/``actual_scores``/``threshold_scores`` (multi-class) name a map column
    (class -> score) or select one score column per class (``{prefix: "score_"}``).
    """

    prediction_id: str = "prediction_id"
    timestamp: str | None = None
    prediction_label: str | None = None
    prediction_score: str | None = None
    actual_label: str | None = None
    actual_score: str | None = None
    features: ColumnSelector | None = None
    tags: ColumnSelector = ColumnSelector()
    shap_values: ColumnSelector = ColumnSelector()
    embedding_features: dict[str, EmbeddingColumns] = {}
    exclude: tuple[str, ...] = ()
    version: str | None = None
    batch_id: str | None = None
    prediction_group_id: str | None = None
    rank: str | None = None
    relevance_score: str | None = None
    relevance_label: str | None = None
    prediction_scores: ColumnSelector | None = None
    actual_scores: ColumnSelector | None = None
    threshold_scores: ColumnSelector | None = None
    prediction_bounding_boxes: BoundingBoxColumns | None = None
    actual_bounding_boxes: BoundingBoxColumns | None = None
    prompt: str | None = None
    response: str | None = None
    column_types: dict[str, str] = {}

    @field_validator("column_types")
    @classmethod
    def _arrow_types(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            return v  # keep pyarrow out of DAG parsing
        for col, name in v.items():
            try:
                arrow_type(name)
            except (ValueError, KeyError):
                raise ValueError(
                    f"column_types[{_q(col)}]: unknown type {_q(name)}; use e.g. string, int64, double, bool, "
                    "timestamp[us, tz=UTC], date32"
                ) from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _arize_form(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        value = dict(value)
        llm_embeddings: dict[str, Any] = {}
        for plural, role in (("prompt_column_names", "prompt"), ("response_column_names", "response")):
            if plural in value:  # Arize LLM form: EmbeddingColumnNames(vector, data) or a text column
                v = value.pop(plural)
                if isinstance(v, dict):
                    llm_embeddings[role] = v  # joins the other embeddings once their form is known (below)
                else:
                    value[role] = v
        shap = value.get("shap_values_column_names")
        if isinstance(shap, dict):  # Arize: {feature: shap column}
            value.pop("shap_values_column_names")
            value["shap_values"] = list(shap.values())
        out = {_ARIZE_ALIASES.get(k, k): v for k, v in value.items()}
        emb_features = out.get("embedding_features")
        if isinstance(emb_features, list):  # Arize JSON: [{"name": {...}}, ...]
            merged: dict[str, Any] = {}
            for item in emb_features:
                if not isinstance(item, dict):
                    raise ValueError("embedding_features entries must be {name: {vector: …, raw_data: …}}")
                merged.update(item)
            out["embedding_features"] = merged
        if llm_embeddings:
            out["embedding_features"] = {**(out.get("embedding_features") or {}), **llm_embeddings}
        for key in ("prediction_scores", "actual_scores", "threshold_scores"):
            if isinstance(out.get(key), str) and not out[key].endswith(("_", "/", ".")):
                out[key] = {"columns": [out[key]]}  # a single map column, not a prefix
        return out

    @model_validator(mode="after")
    def _one_role_per_column(self) -> SchemaMapping:
        seen: dict[str, str] = {}
        for role, column in self.role_columns().items():
            if column in seen:
                raise ValueError(f"column {_q(column)} is mapped to both {seen[column]} and {role}")
            seen[column] = role
        for name, emb in self.embedding_features.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", name):
                raise ValueError(f"embedding feature name {_q(name)}: use letters, digits and '_' (it names columns)")
            for c in emb.columns():
                if c in seen:
                    raise ValueError(f"column {_q(c)} is mapped to both {seen[c]} and embedding {_q(name)}")
                seen[c] = f"embedding {_q(name)}"
        return self

    def role_columns(self) -> dict[str, str]:
        """``{canonical_name: input_column}`` for the scalar roles that are mapped."""
        roles = {
            "prediction_id": self.prediction_id,
            "prediction_timestamp": self.timestamp,
            "prediction_label": self.prediction_label,
            "prediction_score": self.prediction_score,
            "actual_label": self.actual_label,
            "actual_score": self.actual_score,
            "model_version": self.version,
            "batch_id": self.batch_id,
            "prediction_group_id": self.prediction_group_id,
            "rank": self.rank,
            "relevance_score": self.relevance_score,
            "relevance_label": self.relevance_label,
            "prompt": self.prompt,
            "response": self.response,
        }
        for prefix, boxes in (("prediction", self.prediction_bounding_boxes), ("actual", self.actual_bounding_boxes)):
            if boxes is not None:
                roles[f"{prefix}_bbox_coordinates"] = boxes.coordinates
                roles[f"{prefix}_bbox_categories"] = boxes.categories
                if boxes.scores:
                    roles[f"{prefix}_bbox_scores"] = boxes.scores
        return {k: v for k, v in roles.items() if v is not None}

    def fingerprint(self) -> str:
        """A short stable hash: a failed file is validated again when this changes ("Fix Schema")."""
        import hashlib
        import json

        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]

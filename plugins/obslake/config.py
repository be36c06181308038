"""Job configuration: YAML files validated by pydantic, with errors that name the file and the field.

An import job lives in ``include/import_jobs/<name>.yaml``::

    name: ctr_production
    source: s3://example-demo-bucket/click-thru-rate/production/v1/
    conn_id: aws_default
    formats: [parquet, csv]
    model: {space: demo, name: click-thru-rate, environment: production, version: v1}
    ingestion_key_variable: obslake_ctr_ingestion_key
    schema:
      prediction_id: prediction_id
      timestamp: prediction_ts
      prediction_label: predicted_label
      prediction_score: predicted_score
      actual_label: actual_label
      features: {prefix: "feature_"}
      tags: [region, device]
    poll_interval: 10
    status: active
"""

from __future__ import annotations

import enum
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from obslake.exceptions import ConfigError
from obslake.storage.base import parse_uri

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_TAG_NAME = "arize-ingestion-key"
DEFAULT_MAX_FILE_BYTES = 1024**3  # 1 GiB, as Arize's file importer


SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _safe_segment(value: str, what: str) -> str:
    """A name that becomes a path segment: no '/', '..', control characters or leading dots."""
    if not SEGMENT_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {value!r} cannot be a path segment: use letters, digits, '_', '-', '.' (no '/', '..', "
            "spaces or control characters), starting with a letter or digit, at most 128 characters"
        )
    return value


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
        return _rename_keys(value, {"vector_column_name": "vector", "data_column_name": "raw_data",
                                    "data": "raw_data", "link_to_data_column_name": "link_to_data"})

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
        return _rename_keys(value, {"bounding_boxes_coordinates_column_name": "coordinates",
                                    "categories_column_name": "categories", "scores_column_name": "scores"})

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
        import pyarrow as pa

        for col, name in v.items():
            try:
                pa.type_for_alias(name)
            except (ValueError, KeyError):
                raise ValueError(
                    f"column_types[{col!r}]: unknown type {name!r}; use e.g. string, int64, double, bool, "
                    "timestamp[us, tz=UTC], date32"
                ) from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _arize_form(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        value = dict(value)
        for plural, role in (("prompt_column_names", "prompt"), ("response_column_names", "response")):
            if plural in value:  # Arize LLM form: EmbeddingColumnNames(vector, data) or a text column
                v = value.pop(plural)
                if isinstance(v, dict):
                    emb = dict(value.get("embedding_features") or {})
                    emb[role] = v
                    value["embedding_features"] = emb
                else:
                    value[role] = v
        shap = value.get("shap_values_column_names")
        if isinstance(shap, dict):  # Arize: {feature: shap column}
            value.pop("shap_values_column_names")
            value["shap_values"] = list(shap.values())
        out = {_ARIZE_ALIASES.get(k, k): v for k, v in value.items()}
        emb = out.get("embedding_features")
        if isinstance(emb, list):  # Arize JSON: [{"name": {...}}, ...]
            merged: dict[str, Any] = {}
            for item in emb:
                if not isinstance(item, dict):
                    raise ValueError("embedding_features entries must be {name: {vector: …, raw_data: …}}")
                merged.update(item)
            out["embedding_features"] = merged
        for key in ("prediction_scores", "actual_scores", "threshold_scores"):
            if isinstance(out.get(key), str) and not out[key].endswith(("_", "/", ".")):
                out[key] = {"columns": [out[key]]}  # a single map column, not a prefix
        return out

    @model_validator(mode="after")
    def _one_role_per_column(self) -> "SchemaMapping":
        seen: dict[str, str] = {}
        for role, column in self.role_columns().items():
            if column in seen:
                raise ValueError(f"column {column!r} is mapped to both {seen[column]} and {role}")
            seen[column] = role
        for name, emb in self.embedding_features.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", name):
                raise ValueError(f"embedding feature name {name!r}: use letters, digits and '_' (it names columns)")
            for c in emb.columns():
                if c in seen:
                    raise ValueError(f"column {c!r} is mapped to both {seen[c]} and embedding {name!r}")
                seen[c] = f"embedding {name!r}"
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


class ModelRef(_Strict):
    """The model a job feeds: one Iceberg table per (space, name, environment)."""

    space: str = "default"
    name: str
    type: ModelType
    environment: Environment = Environment.production
    version: str | None = None

    @field_validator("space", "name")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", v):
            raise ValueError(
                f"{v!r} must start with a letter or digit and use only letters, digits, '_', '-', '.' (max 128)"
            )
        return v


class ImportJob(_Strict):
    """One import job: a bucket prefix watched for inference files of one model."""

    name: str
    source: str
    conn_id: str | None = None
    formats: tuple[Literal["parquet", "csv", "avro", "arrow"], ...] = ("parquet", "csv", "avro", "arrow")
    model: ModelRef | None = None
    trace_project: str | None = Field(None, description="spans/annotations jobs: the trace project")
    trace_space: str = Field("traces", description="spans/annotations jobs: namespace of the trace tables")
    ingestion_key_variable: str
    tag_name: str = DEFAULT_TAG_NAME
    kind: JobKind = JobKind.predictions
    schema_: SchemaMapping = Field(default_factory=SchemaMapping, alias="schema")
    on_error: OnError = OnError.abort_file
    max_bad_rows: int = Field(1000, ge=0, description="skip_rows: a file with more bad rows is aborted")
    max_bad_fraction: float = Field(0.1, ge=0, le=1, description="skip_rows: ... or a larger fraction of bad rows")
    poll_interval: float = Field(10.0, gt=0, le=3600)
    sensor_timeout: float = Field(3600.0, gt=0, description="seconds a run waits for new files before it ends")
    max_file_bytes: int = Field(DEFAULT_MAX_FILE_BYTES, gt=0)
    max_files_per_run: int = Field(500, gt=0, le=1000, description="the rest waits for the next run")
    schedule: str | None = Field("@continuous", description="Airflow schedule; @continuous keeps one run polling")
    deferrable: bool | None = Field(None, description="None: Airflow's [operators] default_deferrable")
    status: JobStatus = JobStatus.active
    retries: int = Field(2, ge=0, le=20)
    tags: tuple[str, ...] = ()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a valid job name: use 1-63 lowercase letters, digits, '_' or '-', starting "
                "with a letter or digit (it becomes the DAG id obslake_import__<name>)"
            )
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        try:
            parse_uri(v)
        except ConfigError as exc:  # pydantic reports ValueErrors with the field's location
            raise ValueError(str(exc)) from None
        return v if v.endswith("/") else v + "/"

    @field_validator("ingestion_key_variable")
    @classmethod
    def _variable_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]{0,249}", v):
            raise ValueError(
                "ingestion_key_variable is the *name* of an Airflow Variable holding the key "
                "(e.g. obslake_ctr_ingestion_key), never the key itself"
            )
        return v

    @property
    def dag_id(self) -> str:
        """The Airflow DAG id of this job."""
        return f"obslake_import__{self.name}"

    @property
    def table_identifier(self) -> tuple[str, str]:
        """(namespace, table) of the job's Iceberg table."""
        if self.kind.is_trace:
            return (_ident(self.trace_space), _ident(f"{self.trace_project}__{self.kind.value}"))
        base = f"{self.model.name}__{self.model.environment.value}"
        if self.kind == JobKind.actuals:
            base += "__actuals"
        return (_ident(self.model.space), _ident(base))

    @property
    def predictions_table_identifier(self) -> tuple[str, str]:  # noqa: D102 (predictions/actuals jobs only)
        """(namespace, table) of the model's predictions (the same as ``table_identifier`` for predictions)."""
        return (_ident(self.model.space), _ident(f"{self.model.name}__{self.model.environment.value}"))

    @property
    def quarantine_table_identifier(self) -> tuple[str, str]:
        """Where ``on_error: skip_rows`` keeps bad rows with their reasons."""
        ns, name = self.table_identifier
        return (ns, f"{name}__quarantine")

    @model_validator(mode="after")
    def _fields_for_model_type(self) -> "ImportJob":
        if self.kind.is_trace:
            if not self.trace_project:
                raise ValueError(f"a {self.kind.value} job needs `trace_project` (the project its traces belong to)")
            _safe_segment(self.trace_project, "trace_project")
            return self
        if self.model is None:
            raise ValueError("`model` is required (space, name, type, environment)")
        from obslake.schema.model_types import check_mapping

        check_mapping(self.model.type, self.kind, self.schema_)
        return self


def _ident(value: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", value.lower())


def _format_validation_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid import job ({err.error_count()} problem(s))"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see README 'Configuration reference')"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def load_import_job(path: str | Path) -> ImportJob:
    """Load and validate one job YAML file.

    Raises:
        ConfigError: the file cannot be parsed or a field is invalid; the message names the file and
            every bad field.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of job fields at the top level, got {type(data).__name__}")
    if isinstance(data.get("schema"), str):  # a path to a JSON/YAML schema file, relative to include/
        schema_path = (path.parent.parent / data["schema"]).resolve()
        try:
            data["schema"] = yaml.safe_load(schema_path.read_text(encoding="utf-8"))  # JSON is YAML
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: schema: cannot read schema file {schema_path}: {exc}") from exc
    try:
        job = ImportJob.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc)) from None
    if path.stem != job.name:
        raise ConfigError(f"{path}: name {job.name!r} must equal the file name; rename the file to {job.name}.yaml")
    return job


def load_import_jobs(directory: str | Path) -> tuple[list[ImportJob], list[ConfigError]]:
    """Load every ``*.yaml``/``*.yml`` job under ``directory``.

    One bad file never hides the others: the valid jobs are returned together with the errors.
    """
    directory = Path(directory)
    jobs: list[ImportJob] = []
    errors: list[ConfigError] = []
    if not directory.is_dir():
        return jobs, errors
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        try:
            jobs.append(load_import_job(path))
        except ConfigError as exc:
            exc.path = path  # type: ignore[attr-defined]
            errors.append(exc)
    return jobs, errors


def default_include_dir() -> Path:
    """``$OBSLAKE_INCLUDE_DIR``, else this project's ``include/`` (editable install), else ``./include``."""
    import os

    env = os.environ.get("OBSLAKE_INCLUDE_DIR")
    if env:
        return Path(env)
    project = Path(__file__).resolve().parents[2] / "include"
    return project if project.is_dir() else Path.cwd() / "include"


# -- Data Fabric connectors ------------------------------------------------------------------------
class TraceSourceConfig(_Strict):
    """Where a connector reads traces: ``lake`` (tables filled by tracing import jobs) or ``phoenix``."""

    type: Literal["lake", "phoenix"]
    uri: str | None = Field(None, description="phoenix: SQLAlchemy URI of its database (or use conn_id)")
    conn_id: str | None = Field(None, description="phoenix: Airflow connection holding the database URI")
    space: str = Field("traces", description="lake: the namespace of the trace tables")

    @model_validator(mode="after")
    def _where(self) -> "TraceSourceConfig":
        if self.type == "phoenix" and not (self.uri or self.conn_id):
            raise ValueError("a phoenix source needs `uri` (e.g. sqlite:////data/phoenix.db) or `conn_id`")
        return self


class Connector(_Strict):
    """One Data Fabric connector: trace projects exported hourly to the customer's bucket."""

    name: str
    source: TraceSourceConfig
    projects: tuple[str, ...] = Field(min_length=1)
    storage: str
    conn_id: str | None = None
    namespace: str
    schedule: str = "@hourly"
    formats: tuple[Literal["iceberg", "delta"], ...] = ("iceberg",)
    status: JobStatus = JobStatus.active
    ingestion_key_variable: str
    tag_name: str = DEFAULT_TAG_NAME
    overlap_seconds: int = Field(600, ge=0, description="re-read window before the cursor (late/coarse timestamps)")
    retries: int = Field(2, ge=0, le=20)
    catchup: bool = False
    tags: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid connector name: 1-63 lowercase letters, digits, '_' or '-'")
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        return _safe_segment(v, "namespace")

    @field_validator("projects")
    @classmethod
    def _projects(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            _safe_segment(p, "project")
        if len(set(v)) != len(v):
            raise ValueError("projects are listed twice")
        return v

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        try:
            parsed = parse_uri(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if parsed.scheme not in ("s3", "gs", "file"):
            raise ValueError("storage must be s3://bucket/prefix, gs://bucket/prefix or file:///path")
        for seg in [s for s in parsed.prefix.split("/") if s]:
            _safe_segment(seg, "storage prefix segment")
        return v.rstrip("/")

    @field_validator("ingestion_key_variable")
    @classmethod
    def _variable_name(cls, v: str) -> str:
        return ImportJob._variable_name(v)

    @property
    def dag_id(self) -> str:
        """The Airflow DAG id of this connector."""
        return f"obslake_fabric__{self.name}"

    @property
    def root(self) -> str:
        """``<storage>/<namespace>`` — every project's table lives below it."""
        return f"{self.storage}/{self.namespace}"

    def project_location(self, project: str) -> str:
        """``<storage>/<namespace>/<project>`` — the project's Iceberg (and Delta) table."""
        return f"{self.root}/{project}"

    def _path_key(self) -> tuple[str, str, str]:
        parsed = parse_uri(self.root)
        return (parsed.scheme, parsed.bucket, parsed.prefix.strip("/") + "/")


def load_connector(path: str | Path) -> Connector:
    """Load and validate one connector YAML (errors name the file and every bad field)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of connector fields at the top level")
    try:
        conn = Connector.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc).replace("invalid import job", "invalid connector")) from None
    if path.stem != conn.name:
        raise ConfigError(f"{path}: name {conn.name!r} must equal the file name; rename the file to {conn.name}.yaml")
    return conn


def load_connectors(directory: str | Path) -> tuple[list[Connector], list[ConfigError]]:
    """Load every connector YAML; reject connectors whose output paths overlap (both are reported).

    Two connectors overlap when they write to the same bucket and one's ``<prefix>/<namespace>/`` is
    a prefix of the other's: their projects' files could collide.
    """
    directory = Path(directory)
    loaded: list[tuple[Path, Connector]] = []
    errors: list[ConfigError] = []
    if directory.is_dir():
        for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
            try:
                loaded.append((path, load_connector(path)))
            except ConfigError as exc:
                exc.path = path  # type: ignore[attr-defined]
                errors.append(exc)
    bad: set[str] = set()
    for i, (pa_, a) in enumerate(loaded):
        for pb, b in loaded[i + 1:]:
            ka, kb = a._path_key(), b._path_key()
            if ka[:2] == kb[:2] and (ka[2].startswith(kb[2]) or kb[2].startswith(ka[2])):
                for path, c, other in ((pa_, a, b), (pb, b, a)):
                    err = ConfigError(
                        f"{path}: connector {c.name!r} writes to {c.root}/, which overlaps connector {other.name!r} "
                        f"({other.root}/); give each connector its own namespace or prefix")
                    err.path = path  # type: ignore[attr-defined]
                    errors.append(err)
                bad |= {a.name, b.name}
    return [c for _, c in loaded if c.name not in bad], errors


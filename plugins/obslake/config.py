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


class JobStatus(str, enum.Enum):
    """Life-cycle state of an import job (``paused`` = Arize's "inactive")."""

    active = "active"
    paused = "paused"
    deleted = "deleted"


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


class SchemaMapping(_Strict):
    """Which input column plays which role (Arize's column mapping).

    Columns the mapping does not claim become features, unless listed in ``exclude`` (as in Arize).
    """

    prediction_id: str = "prediction_id"
    timestamp: str | None = None
    prediction_label: str | None = None
    prediction_score: str | None = None
    actual_label: str | None = None
    actual_score: str | None = None
    features: ColumnSelector | None = None
    tags: ColumnSelector = ColumnSelector()
    exclude: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_role_per_column(self) -> "SchemaMapping":
        roles = {
            "prediction_id": self.prediction_id,
            "timestamp": self.timestamp,
            "prediction_label": self.prediction_label,
            "prediction_score": self.prediction_score,
            "actual_label": self.actual_label,
            "actual_score": self.actual_score,
        }
        seen: dict[str, str] = {}
        for role, column in roles.items():
            if column is None:
                continue
            if column in seen:
                raise ValueError(f"column {column!r} is mapped to both {seen[column]} and {role}")
            seen[column] = role
        if not any([self.prediction_label, self.prediction_score, self.actual_label, self.actual_score]):
            raise ValueError(
                "map at least one of prediction_label, prediction_score, actual_label, actual_score "
                "(e.g. `prediction_label: predicted_class`)"
            )
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
        }
        return {k: v for k, v in roles.items() if v is not None}


class ModelRef(_Strict):
    """The model a job feeds: one Iceberg table per (space, name, environment)."""

    space: str = "default"
    name: str
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
    model: ModelRef
    ingestion_key_variable: str
    tag_name: str = DEFAULT_TAG_NAME
    schema_: SchemaMapping = Field(alias="schema")
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
        """(namespace, table) of the model's Iceberg table."""
        return (_ident(self.model.space), _ident(f"{self.model.name}__{self.model.environment.value}"))


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

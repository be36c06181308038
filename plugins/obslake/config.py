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

Every YAML file is read within limits (:data:`MAX_YAML_BYTES`, :data:`MAX_YAML_DEPTH`,
:data:`MAX_YAML_NODES`): DAG parsing must stay fast and bounded whatever a file holds, and one bad
file only ever produces a :class:`~obslake.exceptions.ConfigError` for that file. Error messages quote
at most a short excerpt of the file (:data:`EXCERPT_CHARS`), control characters escaped.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from obslake.exceptions import ConfigError, printable
from obslake.schema.model_types import check_mapping
from obslake.schema.types import (  # noqa: F401 (re-exported: the job vocabulary, importable from here too)
    BoundingBoxColumns,
    ColumnSelector,
    EmbeddingColumns,
    Environment,
    JobKind,
    JobStatus,
    ModelType,
    OnError,
    SchemaMapping,
    _q,
    _Strict,
)
from obslake.storage.base import check_storage_uri, parse_uri

WINDOW_FIELDS = ("date", "date_nodash", "year", "month", "day", "hour")
"""The placeholders of an import job's ``window_prefix`` (of the start of a run's data interval, UTC)."""
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
DEFAULT_TAG_NAME = "arize-ingestion-key"
DEFAULT_MAX_FILE_BYTES = 1024**3  # 1 GiB, as Arize's file importer
DEFAULT_BATCH_FILES = 50
DEFAULT_BATCH_BYTES = 128 * 1024**2
DEFAULT_LARGE_FILE_BYTES = 32 * 1024**2


SEGMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

MAX_YAML_BYTES = 1024**2
"""Largest job/connector/schema YAML (1 MiB), checked before parsing. Real configs are a few KiB (a
schema listing thousands of columns stays far below); it bounds parse time and memory during DAG
parsing, whose Airflow timeout is 30 s for the whole DAG file."""

MAX_YAML_DEPTH = 32
"""Deepest nesting of mappings/lists (the top-level mapping is level 1; a job needs 4 or 5). Checked
on the parser's event stream, before any recursive step, and again on the loaded data (aliases)."""

MAX_YAML_NODES = 50_000
"""Most values (scalars, lists, mappings) in one YAML file, aliases expanded. Above about 50,000 values
parsing alone takes the better part of a second even with libyaml (pure-Python PyYAML: several
seconds), and no job needs that many: a schema of 10,000 listed columns is ~10,000 values."""

EXCERPT_CHARS = 200
"""Longest excerpt of a user's file (or value) an error message quotes, after escaping."""

MAX_PROBLEMS = 20
"""Most field problems one validation error lists (the rest are counted)."""

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when installed: ~30x faster
_LINE_BREAK_RE = re.compile("\r\n|[\r\n\x85\u2028\u2029]")  # what PyYAML counts as a line break


def _where(path: Path) -> str:
    return printable(str(path), 300)


def _excerpt(text: str, line: int, column: int) -> str:
    """At most :data:`EXCERPT_CHARS` of ``text`` around (0-based) ``line``/``column``, escaped."""
    lines = _LINE_BREAK_RE.split(text, maxsplit=line + 1)
    if line >= len(lines):
        return ""
    row = lines[line]
    start = max(0, column - 60)
    shown = printable(row[start : start + 120], EXCERPT_CHARS - 6)
    if start + 120 < len(row) and not shown.endswith("..."):
        shown += "..."
    return ("..." if start else "") + shown


def _yaml_syntax_error(where: str, text: str, exc: yaml.YAMLError) -> ConfigError:
    position: tuple[int, int] | None  # (line, column), 0-based; None when YAML gives no mark
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow (a control character)
        before = _LINE_BREAK_RE.split(text[: exc.position])
        position = (len(before) - 1, len(before[-1]))
        char = chr(exc.character) if isinstance(exc.character, int) else exc.character
        problem = f"'{printable(char)}': {exc.reason}"
    else:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        position = (mark.line, mark.column) if mark is not None else None
        problem = " ".join(p for p in (getattr(exc, "context", None), getattr(exc, "problem", None)) if p)
        problem = problem or str(exc).split("\n")[0]
    problem = printable(problem, EXCERPT_CHARS)
    if position is None:
        return ConfigError(f"{where}: cannot read YAML: {problem}; fix the YAML syntax")
    line, column = position
    excerpt = _excerpt(text, line, column)
    return ConfigError(
        f"{where}: cannot read YAML at line {line + 1}, column {column + 1}: {problem}"
        + (f"\n  near: {excerpt}" if excerpt else "")
        + "\n  fix the YAML syntax there"
    )


class _YAMLLimit(Exception):
    def __init__(self, message: str, mark=None):
        super().__init__(message)
        self.mark = mark


def _scan_limits(text: str) -> None:
    """Check depth and size on the event stream (iterative: nothing recurses before this passes)."""
    depth = nodes = 0
    for event in yaml.parse(text, Loader=_YAML_LOADER):
        if isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.CollectionStartEvent)):
            nodes += 1
            if nodes > MAX_YAML_NODES:
                raise _YAMLLimit(f"holds more than {MAX_YAML_NODES} values", event.start_mark)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise _YAMLLimit(f"is nested more than {MAX_YAML_DEPTH} levels deep", event.start_mark)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_loaded(data: Any) -> None:
    """The same limits on the loaded data, where aliases are expanded (and may even form cycles)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    visited = 0
    while stack:
        value, depth = stack.pop()
        visited += 1
        if visited > MAX_YAML_NODES:
            raise _YAMLLimit(f"holds more than {MAX_YAML_NODES} values once its aliases (*name) are expanded")
        if isinstance(value, dict):
            children = [*value.keys(), *value.values()]
        elif isinstance(value, (list, tuple, set)):
            children = list(value)
        else:
            continue
        if depth > MAX_YAML_DEPTH:
            raise _YAMLLimit(
                f"is nested more than {MAX_YAML_DEPTH} levels deep once its aliases (*name) are "
                "expanded (or an alias refers to itself)"
            )
        stack.extend((c, depth + 1) for c in children)


def read_yaml(path: str | Path, what: str = "YAML") -> Any:
    """Read one YAML (or JSON) file within the limits; any failure is a :class:`ConfigError` naming it.

    Limits: :data:`MAX_YAML_BYTES` (checked before parsing), :data:`MAX_YAML_DEPTH` and
    :data:`MAX_YAML_NODES` (checked while parsing, iteratively, and on the loaded data). Syntax errors
    quote the line and column and an excerpt of at most :data:`EXCERPT_CHARS` characters, escaped.
    Never raises anything but :class:`ConfigError` (a ``RecursionError`` or ``MemoryError`` deep in
    the parser included).
    """
    path = Path(path)
    where = _where(path)
    limit = f"{MAX_YAML_BYTES // 1024**2} MiB"
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{where}: not a regular file; a {what} must be a plain file")
        if st.st_size > MAX_YAML_BYTES:
            raise ConfigError(
                f"{where}: the file is {st.st_size:,} bytes, larger than the {limit} limit for a "
                f"{what}; a config is a few KiB: remove what is not configuration"
            )
        with open(path, "rb") as fh:
            raw = fh.read(MAX_YAML_BYTES + 1)
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the file ({printable(exc.strerror or exc, 200)})") from None
    if len(raw) > MAX_YAML_BYTES:  # grew since the stat
        raise ConfigError(f"{where}: the file is larger than the {limit} limit for a {what}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{where}: cannot read YAML: not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        ) from None
    try:
        _scan_limits(text)
        data = yaml.load(text, Loader=_YAML_LOADER)
        _check_loaded(data)
    except _YAMLLimit as exc:
        at = f" (at line {exc.mark.line + 1}, column {exc.mark.column + 1})" if exc.mark is not None else ""
        raise ConfigError(
            f"{where}: the {what} {exc}{at}; the limits are {MAX_YAML_DEPTH} levels of nesting "
            f"and {MAX_YAML_NODES} values: flatten it"
        ) from None
    except yaml.YAMLError as exc:
        if "maximum nesting depth" in str(exc):  # libyaml's own limit (1000), hit while it scans ahead
            raise ConfigError(
                f"{where}: the {what} is nested more than {MAX_YAML_DEPTH} levels deep; the limits "
                f"are {MAX_YAML_DEPTH} levels of nesting and {MAX_YAML_NODES} values: flatten it"
            ) from None
        raise _yaml_syntax_error(where, text, exc) from None
    except RecursionError:
        raise ConfigError(
            f"{where}: the {what} is nested too deeply to parse; at most {MAX_YAML_DEPTH} levels are allowed"
        ) from None
    except Exception as exc:  # noqa: BLE001 - MemoryError, a bug in a YAML constructor...: this file only
        raise ConfigError(
            f"{where}: cannot read YAML ({type(exc).__name__}: {printable(exc, EXCERPT_CHARS)})"
        ) from None
    return data


def _safe_segment(value: str, what: str) -> str:
    """A name that becomes a path segment: no '/', '..', control characters or leading dots."""
    if not SEGMENT_RE.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{what} {_q(value)} cannot be a path segment: use letters, digits, '_', '-', '.' (no '/', '..', "
            "spaces or control characters), starting with a letter or digit, at most 128 characters"
        )
    return value


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
                f"{_q(v)} must start with a letter or digit and use only letters, digits, '_', '-', '.' (max 128)"
            )
        return v


class BatchSettings(_Strict):
    """How the import task groups small files: each group is imported in one Iceberg commit.

    A file larger than ``large_file_bytes`` gets its own task and is streamed; the smaller ones go in
    groups of at most ``max_files`` files and ``max_bytes`` bytes (in discovery order). ``max_files: 1``
    turns batching off (one task and one commit per file). The defaults come from ``bench/p8_history.py``
    and ``bench/p6_scale_out.py`` (README "Performance").
    """

    max_files: int = Field(
        default=DEFAULT_BATCH_FILES, ge=1, le=1000, description="files per import task (1: no batching)"
    )
    max_bytes: int = Field(default=DEFAULT_BATCH_BYTES, gt=0, description="bytes (as listed) per import task")
    large_file_bytes: int = Field(
        default=DEFAULT_LARGE_FILE_BYTES, gt=0, description="a larger file is imported alone, streamed"
    )


class Notifications(_Strict):
    """Event-driven discovery: the bucket's event notifications tell the job which keys were written.

    S3 sends them to an SQS queue (directly, through SNS, or through EventBridge) and GCS to a Pub/Sub topic
    (``gcloud storage buckets notifications create``); the job reads the queue (``sqs_queue_url``) or the
    topic's pull subscription (``pubsub_subscription``) with long polling, so a new file is found within
    about a second instead of at the next listing. A
    notification is a hint: each notified key is read as it is now and checked against the ledger, so a
    duplicated, late or out-of-order notification never imports twice; and the whole source is still
    listed every ``full_listing_interval`` seconds, so a lost notification delays a file, never drops it.
    """

    sqs_queue_url: str | None = Field(
        None, min_length=1, description="s3:// sources: the SQS queue that receives the bucket's notifications"
    )
    pubsub_subscription: str | None = Field(
        None,
        min_length=1,
        description="gs:// sources: the pull subscription (projects/<project>/subscriptions/<name>) of the topic "
        "that receives the bucket's notifications",
    )
    conn_id: str | None = Field(
        None, description="the AWS or GCP connection that reads the queue or subscription (default: the job's)"
    )
    full_listing_interval: float = Field(
        600.0, gt=0, description="seconds between full listings of the source (the safety net)"
    )
    wait_seconds: int = Field(5, ge=0, le=20, description="long-poll wait per receive (SQS) or pull (Pub/Sub)")

    @field_validator("sqs_queue_url")
    @classmethod
    def _queue_url(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", v):
            raise ValueError(
                f"sqs_queue_url {_q(v)} is not a queue URL (https://sqs.<region>.amazonaws.com/<account>/<queue>)"
            )
        return v

    @field_validator("pubsub_subscription")
    @classmethod
    def _subscription(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(
            r"projects/[a-z][a-z0-9.:-]{0,99}/subscriptions/[A-Za-z][\w.~+%-]{2,254}", v
        ):
            raise ValueError(
                f"pubsub_subscription {_q(v)} is not a subscription name (projects/<project>/subscriptions/<name>)"
            )
        return v

    @model_validator(mode="after")
    def _one_channel(self) -> Notifications:
        if (self.sqs_queue_url is None) == (self.pubsub_subscription is None):
            raise ValueError("`notifications` needs exactly one of sqs_queue_url (S3) and pubsub_subscription (GCS)")
        return self

    @property
    def channel(self) -> str:
        """The queue URL or subscription name the notifications are read from."""
        return self.sqs_queue_url or self.pubsub_subscription or ""


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
    batch: BatchSettings = BatchSettings()
    max_files_per_run: int = Field(500, gt=0, le=1000, description="the rest waits for the next run")
    schedule: str | None = Field("@continuous", description="Airflow schedule; @continuous keeps one run polling")
    window_prefix: str | None = Field(
        None,
        description="a folder per time window under source, e.g. 'dt={date}/' or '{year}/{month}/{day}/{hour}/': "
        "each run lists only the folder of its data interval (a cron schedule, default @daily), so "
        "`airflow backfill create` imports past windows",
    )
    notifications: Notifications | None = Field(
        None,
        description="event-driven discovery from the bucket's notifications (S3 -> SQS, GCS -> Pub/Sub); see README",
    )
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
                f"{_q(v)} is not a valid job name: use 1-63 lowercase letters, digits, '_' or '-', starting "
                "with a letter or digit (it becomes the DAG id obslake_import__<name>)"
            )
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        try:
            check_storage_uri(v)  # valid bucket name; file:///abs/path/, not '/' itself
        except ConfigError as exc:  # pydantic reports ValueErrors with the field's location
            raise ValueError(str(exc)) from None
        return v if v.endswith("/") else v + "/"

    @field_validator("window_prefix")
    @classmethod
    def _window_prefix(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import string

        try:
            parts = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(v) if f is not None]
        except ValueError as exc:  # an unmatched '{' or '}'
            raise ValueError(f"window_prefix {_q(v)}: {exc}") from None
        fields = {f for f, _, _ in parts}
        unknown = fields - set(WINDOW_FIELDS) | {
            f"{f}{'!' + c if c else ''}{':' + sp if sp else ''}" for f, sp, c in parts if sp or c
        }
        if unknown or not fields:
            raise ValueError(
                f"window_prefix {_q(v)}: use one or more of {', '.join('{' + f + '}' for f in WINDOW_FIELDS)} "
                f"(the start of each run's data interval){'; unknown: ' + ', '.join(sorted(unknown)) if unknown else ''}"
            )
        if v.startswith("/") or ".." in v.split("/") or any(c in v for c in "?#\\"):
            raise ValueError(f"window_prefix {_q(v)} must be a relative folder below source (no '/', '..', '?', '#')")
        return v if v.endswith("/") else v + "/"

    def window_folder(self, start: dt.datetime) -> str:
        """The folder below ``source`` of the window starting at ``start`` (``""`` without ``window_prefix``)."""
        if not self.window_prefix:
            return ""
        values = {
            "date": start.strftime("%Y-%m-%d"),
            "date_nodash": start.strftime("%Y%m%d"),
            "year": start.strftime("%Y"),
            "month": start.strftime("%m"),
            "day": start.strftime("%d"),
            "hour": start.strftime("%H"),
        }
        return self.window_prefix.format(**values)

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
        model = _job_model(self)
        base = f"{model.name}__{model.environment.value}"
        if self.kind == JobKind.actuals:
            base += "__actuals"
        return (_ident(model.space), _ident(base))

    @property
    def predictions_table_identifier(self) -> tuple[str, str]:
        """(namespace, table) of the model's predictions (the same as ``table_identifier`` for predictions)."""
        model = _job_model(self)
        return (_ident(model.space), _ident(f"{model.name}__{model.environment.value}"))

    @property
    def quarantine_table_identifier(self) -> tuple[str, str]:
        """Where ``on_error: skip_rows`` keeps bad rows with their reasons."""
        ns, name = self.table_identifier
        return (ns, f"{name}__quarantine")

    @model_validator(mode="after")
    def _notifications_source(self) -> ImportJob:
        if self.notifications is not None:
            if self.notifications.sqs_queue_url is not None and not self.source.startswith("s3://"):
                raise ValueError(
                    "`notifications.sqs_queue_url` (S3 event notifications through SQS) needs an s3:// source; "
                    "a gs:// source uses `pubsub_subscription`"
                )
            if self.notifications.pubsub_subscription is not None and not self.source.startswith("gs://"):
                raise ValueError(
                    "`notifications.pubsub_subscription` (GCS notifications through Pub/Sub) needs a gs:// source; "
                    "an s3:// source uses `sqs_queue_url`"
                )
            if self.window_prefix:
                raise ValueError(
                    "`notifications` and `window_prefix` do not go together: a windowed run lists its folder"
                )
        return self

    @model_validator(mode="after")
    def _fields_for_model_type(self) -> ImportJob:
        if self.kind.is_trace:
            if not self.trace_project:
                raise ValueError(f"a {self.kind.value} job needs `trace_project` (the project its traces belong to)")
            _safe_segment(self.trace_project, "trace_project")
            return self
        if self.model is None:
            raise ValueError("`model` is required (space, name, type, environment)")
        check_mapping(self.model.type, self.kind, self.schema_)
        return self


def _job_model(job: ImportJob) -> ModelRef:
    """The model of a predictions/actuals job (the validator requires it; trace jobs have none)."""
    if job.model is None:
        raise ConfigError(f"job {_q(job.name)}: a {job.kind.value} job has no `model` (space, name, type, environment)")
    return job.model


def _ident(value: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", value.lower())


def _format_validation_error(path: Path, err: ValidationError, what: str = "import job") -> str:
    errors = err.errors()
    lines = [f"{_where(path)}: invalid {what} ({err.error_count()} problem(s))"]
    for e in errors[:MAX_PROBLEMS]:
        loc = printable(".".join(str(p) for p in e["loc"]), 100) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see README 'Configuration reference')"
        elif e["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"  - {loc}: {printable(msg, 2 * EXCERPT_CHARS + 200)}")
    if len(errors) > MAX_PROBLEMS:
        lines.append(f"  - ... and {len(errors) - MAX_PROBLEMS} more")
    return "\n".join(lines)


SCHEMA_SUFFIXES = (".json", ".yaml", ".yml")


def _schema_file(path: Path, value: str, include_dir: Path) -> Any:
    """Load ``schema: <path>``: a JSON/YAML file inside ``include_dir`` (links may not lead out of it)."""
    where = _where(path)
    fix = "use a path relative to include/ (e.g. schema: schemas/ctr.json) that stays inside it"
    if printable(value) != value or not value.strip():
        raise ConfigError(f"{where}: schema: {_q(value)} is not a usable path; {fix}")
    if value.startswith(("/", "\\", "~")) or re.match(r"[A-Za-z]:", value) or os.path.isabs(value):
        raise ConfigError(f"{where}: schema: {_q(value)} is an absolute path; {fix}")
    if not value.lower().endswith(SCHEMA_SUFFIXES):
        raise ConfigError(f"{where}: schema: {_q(value)} must be a .json, .yaml or .yml file; {fix}")
    try:
        root = include_dir.resolve()
        target = (include_dir / value).resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (older Pythons)
        raise ConfigError(f"{where}: schema: cannot resolve {_q(value)} ({printable(exc, 200)}); {fix}") from None
    if target != root and root not in target.parents:
        raise ConfigError(
            f"{where}: schema: {_q(value)} resolves outside {_where(root)} (through '..' or a symbolic link); {fix}"
        )
    try:
        data = read_yaml(target, "schema file")
    except ConfigError as exc:
        raise ConfigError(f"{where}: schema: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: schema: {_q(value)} must hold a mapping of roles to columns (a JSON object), "
            f"not {type(data).__name__}"
        )
    return data


def load_import_job(path: str | Path, *, include_dir: str | Path | None = None) -> ImportJob:
    """Load and validate one job YAML file.

    Args:
        path: The job's YAML.
        include_dir: Where ``schema: <path>`` files are looked up (and must stay); default: the
            parent of the YAML's directory (``include/`` for ``include/import_jobs/<job>.yaml``).

    Raises:
        ConfigError: the file cannot be parsed or a field is invalid; the message names the file and
            every bad field. Nothing else, whatever the file holds.
    """
    path = Path(path)
    try:
        return _load_import_job(path, Path(include_dir) if include_dir is not None else path.parent.parent)
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(
            f"{_where(path)}: the job is nested too deeply to validate; at most {MAX_YAML_DEPTH} levels are allowed"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a bug in a validator must not take other jobs' DAGs down
        raise ConfigError(
            f"{_where(path)}: cannot validate the job ({type(exc).__name__}: "
            f"{printable(exc, EXCERPT_CHARS)}); report this file"
        ) from None


def _load_import_job(path: Path, include_dir: Path) -> ImportJob:
    data = read_yaml(path, "job YAML")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{_where(path)}: expected a mapping of job fields at the top level, got {type(data).__name__}"
        )
    if isinstance(data.get("schema"), str):  # a path to a JSON/YAML schema file, relative to include/
        data["schema"] = _schema_file(path, data["schema"], include_dir)
    try:
        job = ImportJob.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(path, exc)) from None
    if path.stem != job.name:
        raise ConfigError(
            f"{_where(path)}: name {_q(job.name)} must equal the file name; rename the file to {job.name}.yaml"
        )
    return job


def _model_identity(job: ImportJob) -> tuple[str, ...]:
    """What makes two jobs feed the same table legitimately: the same model (or trace project), exactly."""
    if job.kind.is_trace:
        return ("traces", job.trace_space, job.trace_project or "")
    model = _job_model(job)
    return ("model", model.space, model.name, model.environment.value)


def _describe_owner(job: ImportJob) -> str:
    if job.kind.is_trace:
        return f"trace project {_q(job.trace_project)} (trace_space {_q(job.trace_space)})"
    model = _job_model(job)
    return f"model {_q(model.space + '/' + model.name)} ({model.environment.value})"


def table_collisions(loaded: list[tuple[Path, ImportJob]]) -> dict[Path, ConfigError]:
    """Jobs of *different* models (or trace projects) whose tables normalise to the same Iceberg table.

    Table names are lowercased with every character other than ``a-z0-9_`` turned into ``_``, so
    ``Team/Click.Thru_Rate`` and ``team/click-thru-rate`` would share ``team.click_thru_rate__production``
    silently. Jobs of the same model (two prefixes, or a predictions job and its actuals job) are fine.
    Every job involved gets an error naming the other file.
    """
    owners: dict[tuple[str, str], list[tuple[Path, ImportJob]]] = {}
    for path, job in loaded:
        tables = [job.table_identifier]
        if job.kind == JobKind.actuals:
            tables.append(job.predictions_table_identifier)  # joined against: it must be this model's
        tables.append(job.quarantine_table_identifier)
        for table in dict.fromkeys(tables):
            owners.setdefault(table, []).append((path, job))
    out: dict[Path, ConfigError] = {}
    for table, users in owners.items():
        if len({_model_identity(j) for _, j in users}) < 2:
            continue
        for path, job in users:
            if path in out:
                continue
            others = [(p, j) for p, j in users if _model_identity(j) != _model_identity(job)]
            p2, j2 = others[0]
            err = ConfigError(
                f"{_where(path)}: job {_q(job.name)} writes {_describe_owner(job)} to the Iceberg table "
                f"{'.'.join(table)}, and so does job {_q(j2.name)} ({_where(p2)}) for the different "
                f"{_describe_owner(j2)}: names are lowercased and every character other than a-z, 0-9 and "
                "'_' becomes '_'. Give one of them a model name/space (or trace project) that differs after "
                "that normalisation, or the exact same spelling if they really are one model"
            )
            err.path = path  # type: ignore[attr-defined]
            out[path] = err
    return out


def _duplicate_names(loaded: list[tuple[Path, Any]], what: str) -> dict[Path, ConfigError]:
    """Two files defining the same job/connector name (``x.yaml`` and ``x.yml``): both are refused."""
    by_name: dict[str, list[Path]] = {}
    for path, item in loaded:
        by_name.setdefault(item.name, []).append(path)
    out: dict[Path, ConfigError] = {}
    for name, paths in by_name.items():
        if len(paths) > 1:
            for path in paths:
                others = ", ".join(_where(p) for p in paths if p != path)
                err = ConfigError(f"{_where(path)}: {what} {_q(name)} is also defined in {others}; keep one file")
                err.path = path  # type: ignore[attr-defined]
                out[path] = err
    return out


def _yaml_files(directory: Path) -> list[Path]:
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])


def load_import_jobs(directory: str | Path) -> tuple[list[ImportJob], list[ConfigError]]:
    """Load every ``*.yaml``/``*.yml`` job under ``directory``.

    One bad file never hides the others: the valid jobs are returned together with the errors (one
    per bad file, with ``.path`` set). Jobs of different models whose tables would be the same
    Iceberg table (:func:`table_collisions`), and two files defining one job name, are errors too.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return [], []
    loaded, errors = _load_each(directory, lambda path: load_import_job(path, include_dir=directory.parent))
    refused = _duplicate_names(loaded, "job")
    refused.update({p: e for p, e in table_collisions(loaded).items() if p not in refused})
    errors.extend(refused.values())
    return [job for path, job in loaded if path not in refused], errors


def _load_each(directory: Path, load) -> tuple[list[tuple[Path, Any]], list[ConfigError]]:
    """``load`` every YAML file of ``directory``; a file that fails, whatever it raises, is one error."""
    loaded: list[tuple[Path, Any]] = []
    errors: list[ConfigError] = []
    for path in _yaml_files(directory):
        try:
            loaded.append((path, load(path)))
        except Exception as exc:  # noqa: BLE001 - the loaders raise ConfigError only; belt and braces
            err = (
                exc
                if isinstance(exc, ConfigError)
                else ConfigError(f"{_where(path)}: cannot load ({type(exc).__name__}: {printable(exc, EXCERPT_CHARS)})")
            )
            err.path = path  # type: ignore[attr-defined]
            errors.append(err)
    return loaded, errors


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
    def _where(self) -> TraceSourceConfig:
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
            raise ValueError(f"{_q(v)} is not a valid connector name: 1-63 lowercase letters, digits, '_' or '-'")
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
            parsed = check_storage_uri(v)  # valid bucket name; file:///abs/path, not '/' itself
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
    """Load and validate one connector YAML (errors name the file and every bad field).

    Raises:
        ConfigError: whatever is wrong with the file (nothing else).
    """
    path = Path(path)
    try:
        data = read_yaml(path, "connector YAML")
        if not isinstance(data, dict):
            raise ConfigError(f"{_where(path)}: expected a mapping of connector fields at the top level")
        try:
            conn = Connector.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(path, exc, "connector")) from None
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError(
            f"{_where(path)}: the connector is nested too deeply to validate; at most "
            f"{MAX_YAML_DEPTH} levels are allowed"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a bug in a validator must not take other connectors' DAGs down
        raise ConfigError(
            f"{_where(path)}: cannot validate the connector ({type(exc).__name__}: "
            f"{printable(exc, EXCERPT_CHARS)}); report this file"
        ) from None
    if path.stem != conn.name:
        raise ConfigError(
            f"{_where(path)}: name {_q(conn.name)} must equal the file name; rename the file to {conn.name}.yaml"
        )
    return conn


def load_connectors(directory: str | Path) -> tuple[list[Connector], list[ConfigError]]:
    """Load every connector YAML; reject connectors whose output paths overlap (both are reported).

    Two connectors overlap when they write to the same bucket and one's ``<prefix>/<namespace>/`` is
    a prefix of the other's: their projects' files could collide.
    """
    directory = Path(directory)
    loaded, errors = _load_each(directory, load_connector) if directory.is_dir() else ([], [])
    duplicates = _duplicate_names(loaded, "connector")
    errors.extend(duplicates.values())
    loaded = [(p, c) for p, c in loaded if p not in duplicates]
    bad: set[str] = set()
    for i, (pa_, a) in enumerate(loaded):
        for pb, b in loaded[i + 1 :]:
            ka, kb = a._path_key(), b._path_key()
            if ka[:2] == kb[:2] and (ka[2].startswith(kb[2]) or kb[2].startswith(ka[2])):
                for path, c, other in ((pa_, a, b), (pb, b, a)):
                    err = ConfigError(
                        f"{path}: connector {c.name!r} writes to {c.root}/, which overlaps connector {other.name!r} "
                        f"({other.root}/); give each connector its own namespace or prefix"
                    )
                    err.path = path  # type: ignore[attr-defined]
                    errors.append(err)
                bad |= {a.name, b.name}
    return [c for _, c in loaded if c.name not in bad], errors

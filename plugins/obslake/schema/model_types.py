"""Model types: which schema fields each requires, and what each field's values must be.

The README's "Model types" and "Expected types" tables are generated from :data:`REQUIREMENTS` and
:data:`FIELD_KINDS` (``obslake schema-doc``), so documentation and validation cannot drift apart.
"""

from __future__ import annotations

import dataclasses

from obslake.schema.types import JobKind, ModelType, SchemaMapping


@dataclasses.dataclass(frozen=True)
class Requirement:
    """Fields a model type needs: every group in ``all_of`` must have at least one field mapped."""

    all_of: tuple[tuple[str, ...], ...]
    optional: tuple[str, ...]
    actuals: tuple[tuple[str, ...], ...]  # what an actuals-only job must map
    label_kind: str = "category"  # how prediction_label / actual_label are typed


REQUIREMENTS: dict[ModelType, Requirement] = {
    ModelType.binary_classification: Requirement(
        all_of=(("prediction_label", "prediction_score"),),
        optional=("actual_label", "actual_score", "features", "tags", "shap_values", "embedding_features"),
        actuals=(("actual_label", "actual_score"),),
    ),
    ModelType.score_categorical: Requirement(
        all_of=(("prediction_label",), ("prediction_score",)),
        optional=("actual_label", "actual_score", "features", "tags", "shap_values", "embedding_features"),
        actuals=(("actual_label", "actual_score"),),
    ),
    ModelType.multi_class: Requirement(
        all_of=(("prediction_scores",),),
        optional=("prediction_label", "actual_scores", "actual_label", "threshold_scores", "features", "tags"),
        actuals=(("actual_scores", "actual_label"),),
    ),
    ModelType.regression: Requirement(
        all_of=(("prediction_label", "prediction_score"),),
        optional=("actual_label", "actual_score", "features", "tags", "shap_values", "embedding_features"),
        actuals=(("actual_label", "actual_score"),),
        label_kind="number",
    ),
    ModelType.ranking: Requirement(
        all_of=(("prediction_group_id",), ("rank",)),
        optional=("prediction_score", "prediction_label", "relevance_score", "relevance_label", "features", "tags"),
        actuals=(("relevance_score", "relevance_label"),),
    ),
    ModelType.object_detection: Requirement(
        all_of=(("prediction_bounding_boxes",),),
        optional=("actual_bounding_boxes", "embedding_features", "features", "tags"),
        actuals=(("actual_bounding_boxes",),),
    ),
    ModelType.generative_llm: Requirement(
        all_of=(("prompt", "response", "embedding_features"),),
        optional=("prediction_label", "prediction_score", "actual_label", "actual_score", "features", "tags"),
        actuals=(("actual_label", "actual_score"),),
    ),
}


@dataclasses.dataclass(frozen=True)
class FieldKind:
    """How one schema field is typed: what the table holds, what inputs are accepted, cast, rejected."""

    table_type: str
    accepted: str
    cast: str
    rejected: str


FIELD_KINDS: dict[str, FieldKind] = {
    "prediction_id": FieldKind(
        "string",
        "string, large_string, dictionary<string>",
        "integers → string; CSV: as text",
        "null, empty, > 512 characters (record errors); floats, nested types (file error)",
    ),
    "timestamp": FieldKind(
        "timestamptz (µs, UTC)",
        "timestamp (any unit; naive = UTC), date",
        "integers/floats as epoch s, ms, µs or ns (unit from magnitude); strings in RFC 3339 / ISO 8601",
        "unparseable text, NaN/inf, values outside [now − 5 years, now + 1 year]; null → ingest time",
    ),
    "label (category)": FieldKind(
        "string", "string, bool, integer", "bool/integers → string; CSV: as text", "floats, nested types (file error)"
    ),
    "label (number)": FieldKind(
        "double", "integer, float", "CSV/string digits → double", "non-numeric text, NaN/inf (record errors)"
    ),
    "score": FieldKind(
        "double", "integer, float, decimal", "CSV/string digits → double", "non-numeric text, NaN/inf (record errors)"
    ),
    "prediction_group_id": FieldKind("string", "string, integer", "integers → string", "null/empty (record error)"),
    "rank": FieldKind(
        "int",
        "integer; float with an integral value",
        "CSV digits → int",
        "outside 1..100, non-integral (record errors)",
    ),
    "relevance_label / version / batch_id / prompt / response": FieldKind(
        "string", "string, integer, bool", "→ string", "nested types (file error)"
    ),
    "scores (multi-class)": FieldKind(
        "map<string, double>",
        "map<string, number>; list<struct<class_name, score>>; one numeric column per class (prefix)",
        'CSV: per-class columns or a JSON object {"class": score}',
        "NaN/inf, non-numeric (record errors)",
    ),
    "embedding vector": FieldKind(
        "list<float>",
        "list / large_list / fixed_size_list of numbers",
        'CSV: a JSON array "[0.1, 0.2]"',
        "empty vectors, vectors whose length differs from the file's first vector, NaN/inf (record errors)",
    ),
    "embedding raw_data / link_to_data": FieldKind(
        "string (raw_data: also list<string> for token lists)", "string, list<string>", "→ string", "nested types"
    ),
    "bounding boxes": FieldKind(
        "coordinates list<list<double>>, categories list<string>, scores list<double>",
        "list<list<number>> with 4 numbers per box; list<string>; list<number>",
        "CSV: JSON arrays",
        "a box without 4 coordinates, lists of different lengths in one row (record errors)",
    ),
    "features / tags / shap_values": FieldKind(
        "the input's type (CSV: inferred from the first block, or `schema.column_types`)",
        "any scalar: string, bool, integer, float, decimal, date, timestamp",
        "unsigned → signed, float16 → float, ns → µs, dictionary → values",
        "nested types (list, struct, map) in a feature/tag: file error FEATURE_NESTED; shap values must be numeric",
    ),
}


def _mapped(mapping: SchemaMapping, field: str) -> bool:
    value = getattr(mapping, field)
    if field == "features":
        return value is not None and not value.is_empty
    if field in ("tags", "shap_values"):
        return not value.is_empty
    if field == "embedding_features":
        return bool(value)
    return value is not None


def check_mapping(model_type: ModelType, kind: JobKind, mapping: SchemaMapping) -> None:
    """Raise ValueError (reported by pydantic under the job's field) if required fields are missing."""
    req = REQUIREMENTS[model_type]
    groups = req.actuals if kind == JobKind.actuals else req.all_of
    for group in groups:
        if not any(_mapped(mapping, f) for f in group):
            want = " or ".join(f"schema.{f}" for f in group)
            what = "an actuals job" if kind == JobKind.actuals else f"a {model_type.value} model"
            raise ValueError(f"{what} needs {want} (see README 'Model types')")


def label_kind(model_type: ModelType) -> str:
    """``category`` (labels are strings) or ``number`` (regression)."""
    return REQUIREMENTS[model_type].label_kind


def markdown_tables() -> str:
    """The README tables, generated from the rules above."""
    lines = ["| model type | requires | optional | an actuals job maps |", "|---|---|---|---|"]
    for mt, req in REQUIREMENTS.items():
        requires = " and ".join("(" + " or ".join(g) + ")" if len(g) > 1 else g[0] for g in req.all_of)
        actuals = " and ".join(" or ".join(g) for g in req.actuals)
        lines.append(f"| `{mt.value}` | {requires} | {', '.join(req.optional)} | {actuals} |")
    lines += ["", "| field | table type | accepted | cast | rejected |", "|---|---|---|---|---|"]
    for name, fk in FIELD_KINDS.items():
        lines.append(f"| {name} | {fk.table_type} | {fk.accepted} | {fk.cast} | {fk.rejected} |")
    return "\n".join(lines)

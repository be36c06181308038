"""The job vocabulary (schema/types.py): column selectors, Arize's column-mapping names, role conflicts, fingerprints."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest
from pydantic import ValidationError

from obslake.schema.types import (
    BoundingBoxColumns,
    ColumnSelector,
    EmbeddingColumns,
    JobKind,
    SchemaMapping,
    arrow_type,
)

NAMES = ["id", "feature_b", "ts", "feature_a", "region", "f_extra", "score"]


def test_column_selector_forms_and_file_order():
    listed = ColumnSelector.model_validate(["region", "ts", "missing"])
    assert (listed.columns, listed.prefix) == (("region", "ts", "missing"), None)
    assert listed.select(NAMES) == ["ts", "region"]  # file order, absent names ignored

    prefixed = ColumnSelector.model_validate("feature_")
    assert prefixed.prefix == "feature_" and prefixed.select(NAMES) == ["feature_b", "feature_a"]

    both = ColumnSelector.model_validate({"prefix": "feature_", "columns": ["f_extra"]})
    assert both.select(NAMES) == ["feature_b", "feature_a", "f_extra"]

    assert ColumnSelector().is_empty and ColumnSelector.model_validate([]).is_empty
    assert not listed.is_empty and not prefixed.is_empty
    assert not ColumnSelector.model_validate("").is_empty  # an empty prefix claims every column
    assert ColumnSelector.model_validate("").select(NAMES) == NAMES


def test_embedding_and_box_columns_accept_arize_names():
    assert EmbeddingColumns.model_validate("vec") == EmbeddingColumns(vector="vec")
    arize = EmbeddingColumns.model_validate(
        {"vector_column_name": "v", "data_column_name": "txt", "link_to_data_column_name": "url"}
    )
    assert arize == EmbeddingColumns(vector="v", raw_data="txt", link_to_data="url")
    assert arize.columns() == ["v", "txt", "url"]
    assert EmbeddingColumns.model_validate({"vector": "v", "data": "img"}).columns() == ["v", "img"]
    with pytest.raises(ValidationError, match="extra"):
        EmbeddingColumns.model_validate({"vector": "v", "pixels": "p"})

    boxes = BoundingBoxColumns.model_validate(
        {"bounding_boxes_coordinates_column_name": "coords", "categories_column_name": "cats"}
    )
    assert (boxes.coordinates, boxes.categories, boxes.scores) == ("coords", "cats", None)
    assert boxes.columns() == ["coords", "cats"]


def test_arize_column_mapping_names_map_to_ours():
    arize = SchemaMapping.model_validate(
        {
            "prediction_id_column_name": "pid",
            "timestamp_column_name": "ts",
            "prediction_label_column_name": "pred",
            "prediction_score_column_name": "pscore",
            "actual_label_column_name": "act",
            "feature_column_names": ["f1", "f2"],
            "tag_column_names": ["region"],
            "version_column_name": "v",
            "excluded_column_names": ["junk"],
            "relevance_labels_column_name": "rel",
        }
    )
    ours = SchemaMapping(
        prediction_id="pid",
        timestamp="ts",
        prediction_label="pred",
        prediction_score="pscore",
        actual_label="act",
        features=ColumnSelector(columns=("f1", "f2")),
        tags=ColumnSelector(columns=("region",)),
        version="v",
        exclude=("junk",),
        relevance_label="rel",
    )
    assert arize == ours
    assert arize.fingerprint() == ours.fingerprint()  # the same mapping whichever names wrote it
    assert arize.role_columns() == {
        "prediction_id": "pid",
        "prediction_timestamp": "ts",
        "prediction_label": "pred",
        "prediction_score": "pscore",
        "actual_label": "act",
        "model_version": "v",
        "relevance_label": "rel",
    }


def test_arize_shap_and_llm_forms():
    m = SchemaMapping.model_validate(
        {
            "shap_values_column_names": {"f1": "shap_f1", "f2": "shap_f2"},
            "prompt_column_names": {"vector_column_name": "prompt_vec", "data_column_name": "prompt_text"},
            "response_column_names": "response_text",
        }
    )
    assert m.shap_values.columns == ("shap_f1", "shap_f2")
    assert m.response == "response_text" and m.prompt is None  # a text column, or an embedding
    assert m.embedding_features == {"prompt": EmbeddingColumns(vector="prompt_vec", raw_data="prompt_text")}
    assert m.role_columns()["response"] == "response_text"


def test_arize_json_embedding_list_form_is_merged():
    m = SchemaMapping.model_validate(
        {
            "embedding_feature_column_names": [
                {"image": {"vector": "img_vec", "link_to_data": "img_url"}},
                {"doc": "doc_vec"},
            ],
        }
    )
    assert m.embedding_features == {
        "image": EmbeddingColumns(vector="img_vec", link_to_data="img_url"),
        "doc": EmbeddingColumns(vector="doc_vec"),
    }
    with pytest.raises(ValidationError, match=r"embedding_features entries must be \{name"):
        SchemaMapping.model_validate({"embedding_features": ["vec"]})


@pytest.mark.parametrize(
    "embeddings",
    [
        {"embedding_feature_column_names": {"image": {"vector_column_name": "img_vec"}}},
        {"embedding_feature_column_names": [{"image": {"vector_column_name": "img_vec"}}]},
        {"embedding_features": [{"image": {"vector_column_name": "img_vec"}}]},
    ],
    ids=["arize-dict", "arize-list", "ours-list"],
)
def test_an_llm_prompt_embedding_keeps_the_other_embedding_features(embeddings):
    m = SchemaMapping.model_validate({**embeddings, "prompt_column_names": {"vector_column_name": "prompt_vec"}})
    assert m.embedding_features == {
        "image": EmbeddingColumns(vector="img_vec"),
        "prompt": EmbeddingColumns(vector="prompt_vec"),
    }


def test_multi_class_scores_name_a_map_column_or_a_prefix():
    m = SchemaMapping.model_validate(
        {"prediction_scores": "scores", "actual_scores": "actual_", "threshold_scores": ["t_a", "t_b"]}
    )
    assert (m.prediction_scores.columns, m.prediction_scores.prefix) == (("scores",), None)
    assert (m.actual_scores.columns, m.actual_scores.prefix) == ((), "actual_")
    assert m.threshold_scores.columns == ("t_a", "t_b")
    for prefix in ("score/", "score."):
        assert SchemaMapping.model_validate({"prediction_scores": prefix}).prediction_scores.prefix == prefix


def test_column_types_must_be_arrow_type_names():
    ok = SchemaMapping.model_validate(
        {"column_types": {"feature_x": "double", "ts": "timestamp[us]", "d": "date32", "s": "string", "n": "int64"}}
    )
    assert ok.column_types == {"feature_x": "double", "ts": "timestamp[us]", "d": "date32", "s": "string", "n": "int64"}
    with pytest.raises(ValidationError) as err:
        SchemaMapping.model_validate({"column_types": {"feature_x": "decimal-ish"}})
    assert "column_types['feature_x']: unknown type 'decimal-ish'" in str(err.value)


def test_the_timestamp_spelling_the_column_types_message_recommends_is_accepted():
    m = SchemaMapping.model_validate({"column_types": {"ts": "timestamp[us, tz=UTC]"}})
    assert m.column_types == {"ts": "timestamp[us, tz=UTC]"}
    assert arrow_type("timestamp[ms, tz=Asia/Kolkata]") == pa.timestamp("ms", tz="Asia/Kolkata")
    assert arrow_type("timestamp[us, tz=+05:30]") == pa.timestamp("us", tz="+05:30")
    with pytest.raises(ValidationError, match="unknown type"):
        SchemaMapping.model_validate({"column_types": {"ts": "timestamp[us, tz=Mars/Olympus]"}})


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"prediction_id": "id", "timestamp": "id"},
            "column 'id' is mapped to both prediction_id and prediction_timestamp",
        ),
        (
            {"prediction_label": "y", "actual_label": "y"},
            "column 'y' is mapped to both prediction_label and actual_label",
        ),
        (
            {"embedding_features": {"img": {"vector": "prediction_id"}}},
            "column 'prediction_id' is mapped to both prediction_id and embedding 'img'",
        ),
        (
            {"embedding_features": {"a": "v", "b": {"vector": "w", "raw_data": "v"}}},
            "column 'v' is mapped to both embedding 'a' and embedding 'b'",
        ),
        (
            {
                "prediction_bounding_boxes": {"coordinates": "c", "categories": "k"},
                "actual_bounding_boxes": {"coordinates": "c", "categories": "k2"},
            },
            "column 'c' is mapped to both prediction_bbox_coordinates and actual_bbox_coordinates",
        ),
        ({"embedding_features": {"1bad": "v"}}, "embedding feature name '1bad': use letters, digits and '_'"),
        ({"embedding_features": {"x" * 65: "v"}}, "embedding feature name"),
    ],
)
def test_each_column_has_one_role(data, expected):
    with pytest.raises(ValidationError) as err:
        SchemaMapping.model_validate(data)
    assert expected in str(err.value)


def test_user_values_in_messages_are_escaped_and_bounded():
    column = "evil\n[INFO] forged line" + "z" * 200
    with pytest.raises(ValidationError) as err:
        SchemaMapping.model_validate({"prediction_id": column, "timestamp": column})
    message = str(err.value)
    assert "\n[INFO] forged" not in message and "evil\\n[INFO] forged" in message
    quoted = re.search(r"column '([^']*)' is mapped", message).group(1)
    assert len(quoted) == 80 and quoted.endswith("...")


def test_role_columns_lists_only_mapped_roles_including_boxes():
    m = SchemaMapping.model_validate(
        {
            "prediction_id": "pid",
            "rank": "r",
            "prediction_group_id": "g",
            "object_detection_prediction_column_names": {
                "bounding_boxes_coordinates_column_name": "pc",
                "categories_column_name": "pk",
                "scores_column_name": "ps",
            },
            "object_detection_actual_column_names": {"coordinates": "ac", "categories": "ak"},
        }
    )
    assert m.role_columns() == {
        "prediction_id": "pid",
        "rank": "r",
        "prediction_group_id": "g",
        "prediction_bbox_coordinates": "pc",
        "prediction_bbox_categories": "pk",
        "prediction_bbox_scores": "ps",
        "actual_bbox_coordinates": "ac",
        "actual_bbox_categories": "ak",
    }
    assert SchemaMapping().role_columns() == {"prediction_id": "prediction_id"}


def test_fingerprint_is_short_stable_and_changes_with_the_mapping():
    base = {"prediction_id": "pid", "features": {"prefix": "f_"}, "tags": ["region"]}
    fp = SchemaMapping.model_validate(base).fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert SchemaMapping.model_validate(dict(reversed(list(base.items())))).fingerprint() == fp
    for change in (
        {"tags": ["region", "country"]},
        {"features": {"prefix": "g_"}},
        {"exclude": ["x"]},
        {"column_types": {"f_x": "double"}},
        {"timestamp": "ts"},
    ):
        assert SchemaMapping.model_validate({**base, **change}).fingerprint() != fp, change


def test_mappings_are_frozen_and_strict():
    m = SchemaMapping()
    with pytest.raises(ValidationError):
        m.prediction_id = "other"
    with pytest.raises(ValidationError, match="extra"):
        SchemaMapping.model_validate({"prediction_idd": "pid"})  # a typo is not silently ignored
    with pytest.raises(ValidationError):
        ColumnSelector.model_validate(42)


def test_trace_kinds():
    assert {k for k in JobKind if k.is_trace} == {JobKind.spans, JobKind.annotations}

"""chartdoc: helm-docs style comments -> README rows and schema descriptions."""

from __future__ import annotations

import json
from pathlib import Path

from finetune_operator import chartdoc

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / chartdoc.CHART

VALUES = """\
# header comment, not a key's
# -- The name.
name: ""

image:
  # -- Repository of the
  # image, continued.
  repository: x
  tag: dev
# an ordinary comment

# -- Resources.
resources:
  limits:
    memory: 1Gi
"""


def test_comments_attach_to_the_key_below() -> None:
    assert chartdoc.value_comments(VALUES) == {
        "name": "The name.",
        "image.repository": "Repository of the image, continued.",
        "resources": "Resources.",
    }


def test_schema_gets_descriptions_and_undocumented_are_listed() -> None:
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "image": {
                "type": "object",
                "properties": {"repository": {"type": "string"}, "tag": {"type": "string"}},
            },
            "resources": {"type": "object"},
            "untyped": {"description": "d"},
        },
    }
    described = chartdoc.describe_schema(schema, chartdoc.value_comments(VALUES))
    assert described["properties"]["image"]["properties"]["repository"]["description"] == (
        "Repository of the image, continued."
    )
    assert "description" not in schema["properties"]["name"]  # the input is not modified
    assert chartdoc.undocumented(described) == ["image.tag (no description)", "untyped (no type)"]


def test_readme_rows_carry_type_default_and_description() -> None:
    chart = "name: c\ndescription: A chart\nversion: 1.0.0\nappVersion: '1.0'\n"
    schema = {"properties": {"resources": {"type": "object"}}}
    readme = chartdoc.render_readme(chart, VALUES, schema)
    assert '| `resources` | object | `{"limits":{"memory":"1Gi"}}` | Resources. |' in readme
    assert '| `name` | str | `""` | The name. |' in readme


def test_every_chart_value_has_a_type_and_a_description() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert chartdoc.undocumented(schema) == []

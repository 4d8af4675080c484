"""The one Prometheus text module: escaping, numbers and families, read back by
prometheus_client's parser (the reference the output must satisfy)."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from studioctl import promtext


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("back\\slash", "back\\\\slash"),
        ('say "hi"', 'say \\"hi\\"'),
        ("two\nlines", "two\\nlines"),
        ('\\"\n', '\\\\\\"\\n'),  # each escaped once, the backslash first
        ("tab\tand ünïcode", "tab\tand ünïcode"),  # nothing else is escaped
    ],
)
def test_escape(raw: str, escaped: str) -> None:
    assert promtext.escape(raw) == escaped


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3.0"),
        (3.0, "3.0"),
        (0.25, "0.25"),
        (-1.5, "-1.5"),
        (0.0, "0.0"),
        (-0.0, "0.0"),
        (1e16, "1e+16"),
        (123456789012345.0, "123456789012345.0"),
        (1e-9, "1e-09"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_number(value: float, text: str) -> None:
    assert promtext.number(value) == text


def test_family_lines_and_labels() -> None:
    out: list[str] = []
    promtext.family(out, "x_total", "counter", "Things.", [({}, 2.0)])
    promtext.family(out, "y", "gauge", "Nothing yet.", [])
    promtext.family(out, "z", "gauge", "Z.", [({"a": "1", "b": 'q"'}, math.inf)])
    assert out == [
        "# HELP x_total Things.",
        "# TYPE x_total counter",
        "x_total 2.0",
        "# HELP y Nothing yet.",
        "# TYPE y gauge",
        "# HELP z Z.",
        "# TYPE z gauge",
        'z{a="1",b="q\\""} +Inf',
    ]
    assert promtext.labels({}) == ""


def test_hostile_label_values_parse_back_unchanged() -> None:
    values = ["a\\b", 'say "x"', "line\nbreak", "\\n is not a newline", "}{,=", "ü" * 3]
    out: list[str] = []
    promtext.family(
        out,
        "studioctl_test",
        "gauge",
        "Label round trip.",
        [({"v": v, "i": str(n)}, n + 0.5) for n, v in enumerate(values)],
    )
    promtext.family(out, "studioctl_odd", "gauge", "Odd numbers.", [({"k": "nan"}, math.nan)])
    (fam, odd) = text_string_to_metric_families("\n".join(out) + "\n")
    assert [(s.labels["v"], s.value) for s in fam.samples] == [
        (v, n + 0.5) for n, v in enumerate(values)
    ]
    assert math.isnan(odd.samples[0].value)

"""The Prometheus text exposition format (0.0.4), written by hand: the one home of its rules.

The gateway's families, the route table's and telemetry's all go through these helpers, so a
label value is escaped and a number spelled the same way everywhere. Standard library only:
``/metrics`` is rendered in the daemon's event loop and ``prometheus_client`` is not a runtime
dependency (the tests parse the output with its parser).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

#: One sample: its labels (in the order written) and its value.
Sample = tuple[Mapping[str, str], float]


def escape(value: str) -> str:
    """A label value as the text format requires: backslash, double quote and newline are
    escaped (``\\\\``, ``\\"``, ``\\n``); everything else is written as it is."""
    # Most values need nothing: checking first avoids three string copies per label.
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def number(value: float) -> str:
    """A sample value: ``NaN``, ``+Inf``, ``-Inf``, else Python's shortest round-trip spelling
    of the float (``3.0``, ``0.25``, ``1e+16``); minus zero is written ``0.0``."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    if value == 0:
        return "0.0"
    return repr(float(value))


def labels(pairs: Mapping[str, str]) -> str:
    """``{a="x",b="y"}`` (escaped), or the empty string without labels."""
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs.items()) + "}"


def header(out: list[str], name: str, kind: str, help_text: str) -> None:
    """Append a family's ``# HELP`` and ``# TYPE`` lines."""
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")


def family(out: list[str], name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
    """Append a whole family: its header, then one line per sample (none: header only)."""
    header(out, name, kind, help_text)
    for pairs, value in samples:
        out.append(f"{name}{labels(pairs)} {number(value)}")

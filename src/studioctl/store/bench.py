"""Saved benchmark runs (tables ``bench_runs`` and ``bench_metrics``, migration m008).

``save_run`` keeps one run: the whole versioned document as JSON, the columns ``bench
history`` filters and shows (recipe, its hash, engine and version, GPUs and driver, target,
workload), and one row per flat metric with its spread over repeated runs. Everything is
checked before anything is written, and written in one transaction together with the
recipe's peak figures (``recipe_stats``, through the same upsert as telemetry's): a bad or
partial document leaves the database as it was.

A document is any JSON object with ``"schema"`` (a string) and ``"metrics"`` (flat names →
number or null); ``kind`` (default ``serving``), ``target``, ``workload``, ``environment``,
``repeat`` and ``passed`` are read when present (``docs/bench.md``), so lifecycle benchmarks
save through the same function.
"""

from __future__ import annotations

import builtins
import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studioctl.errors import NotFoundError, StoreError, UsageError
from studioctl.store.db import Database, Row, now
from studioctl.store.stats import StatsDelta, StatsRepo

#: The serving benchmark's document version: only its runs feed the recipe's peaks.
SERVING_SCHEMA = "studioctl.bench/1"
MAX_DOCUMENT_BYTES = 4 << 20
MAX_METRICS = 500
_MAX_TEXT = 500
_ID_BYTES = 4  # 8 hex digits: short to type, checked unique on insert


@dataclass(frozen=True)
class MetricValue:
    """One metric of a run: its value and, over repeated runs, min, max and std."""

    value: float | None
    min: float | None = None
    max: float | None = None
    std: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {"value": self.value, "min": self.min, "max": self.max, "std": self.std}


@dataclass(frozen=True)
class BenchRun:
    """One saved run; ``document`` is read only by ``BenchRepo.get``."""

    id: str
    created_at: float
    kind: str
    schema: str
    recipe_id: str | None
    recipe_hash: str | None
    engine: str | None
    engine_version: str | None
    gpu_names: list[str] | None
    gpu_driver: str | None
    target_kind: str | None
    target_url: str | None
    model: str | None
    workload: dict[str, Any]
    repeat: int
    passed: bool | None
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    document: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in _COLUMNS if k != "document"}
        out["metrics"] = {k: v.to_dict() for k, v in self.metrics.items()}
        return out


_COLUMNS = (
    "id",
    "created_at",
    "kind",
    "schema",
    "recipe_id",
    "recipe_hash",
    "engine",
    "engine_version",
    "gpu_names",
    "gpu_driver",
    "target_kind",
    "target_url",
    "model",
    "workload",
    "repeat",
    "passed",
    "document",
)
_INSERT = (
    f"INSERT INTO bench_runs ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _COLUMNS)})"
)
_INSERT_METRIC = (
    "INSERT INTO bench_metrics (run_id, name, value, min, max, std) "
    "VALUES (:run_id, :name, :value, :min, :max, :std)"
)


def save_run(db: Database, document: Mapping[str, Any], *, ts: float | None = None) -> str:
    """Keep one benchmark run; return its id. The stored document carries ``run_id``.

    Raises ``StoreError`` naming the first problem of a document that cannot be kept (not an
    object, no ``schema``, a metric that is not a finite number, too big); nothing is
    written then.
    """
    row, metrics = _checked(document, now(ts))
    with db.transaction():
        row["id"] = _new_id(db)
        stored = {**document, "run_id": row["id"]}
        row["document"] = _json(stored, "the document")
        db.execute(_INSERT, row)
        db.executemany(
            _INSERT_METRIC, [{"run_id": row["id"], "name": k, **v} for k, v in metrics.items()]
        )
        delta = _peaks(document, row)
        if delta is not None:
            StatsRepo(db).add([delta], ts=row["created_at"])
    return str(row["id"])


class BenchRepo:
    """``bench_runs``: save, read one (by id or a unique prefix), list."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def save(self, document: Mapping[str, Any], *, ts: float | None = None) -> str:
        return save_run(self.db, document, ts=ts)

    def get(self, run_id: str) -> BenchRun:
        """The run ``run_id`` (or the one run whose id starts with it), with its document."""
        text = run_id.strip()[:64]
        if not text:
            raise UsageError("a run id is empty")
        pattern = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self.db.query(
            "SELECT * FROM bench_runs WHERE id = ? OR id LIKE ? ESCAPE '\\' LIMIT 3",
            (text, pattern),
        )
        exact = [r for r in rows if r["id"] == text]
        if exact:
            rows = exact
        if not rows:
            raise NotFoundError(f"no saved run {text!r}", hint="see `studioctl bench history`")
        if len(rows) > 1:
            raise UsageError(f"run id {text!r} is ambiguous: give more of it")
        return self._run(rows[0], with_document=True)

    def list(self, recipe_id: str | None = None, *, limit: int = 20) -> builtins.list[BenchRun]:
        """Newest first; only ``recipe_id``'s runs when given."""
        where: str = ""
        params: list[Any] = [max(1, int(limit))]
        if recipe_id is not None:
            where, params = "WHERE recipe_id = ? ", [recipe_id, max(1, int(limit))]
        rows = self.db.query(
            f"SELECT * FROM bench_runs {where}ORDER BY created_at DESC, id LIMIT ?", params
        )
        return [self._run(r, with_document=False) for r in rows]

    def _run(self, row: Row, *, with_document: bool) -> BenchRun:
        metrics = {
            m["name"]: MetricValue(m["value"], m["min"], m["max"], m["std"])
            for m in self.db.query(
                "SELECT * FROM bench_metrics WHERE run_id = ? ORDER BY name", (row["id"],)
            )
        }
        names = row["gpu_names"]
        return BenchRun(
            id=row["id"],
            created_at=row["created_at"],
            kind=row["kind"],
            schema=row["schema"],
            recipe_id=row["recipe_id"],
            recipe_hash=row["recipe_hash"],
            engine=row["engine"],
            engine_version=row["engine_version"],
            gpu_names=None if names is None else json.loads(names),
            gpu_driver=row["gpu_driver"],
            target_kind=row["target_kind"],
            target_url=row["target_url"],
            model=row["model"],
            workload=json.loads(row["workload"]),
            repeat=row["repeat"],
            passed=None if row["passed"] is None else bool(row["passed"]),
            metrics=metrics,
            document=json.loads(row["document"]) if with_document else None,
        )


def open_existing(path: Path | None = None) -> Database | None:
    """The migrated database at ``path`` (``paths.database_file()``), or None when the file
    does not exist yet: readers (history, compare) create nothing."""
    from studioctl import paths
    from studioctl.store import configured_store, open_database

    if path is None and configured_store().backend == "postgres":
        return open_database()  # the shared database: it exists
    path = path or paths.database_file()
    return open_database(path) if path.exists() else None


# ------------------------------------------------------------------------------- checks


def _bad(what: str) -> StoreError:
    return StoreError(f"benchmark run not saved: {what}")


def _text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"{what} is not a string")
    if len(value) > _MAX_TEXT:
        raise _bad(f"{what} is longer than {_MAX_TEXT} characters")
    return value


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"{what} is not a number")
    if not math.isfinite(value):
        raise _bad(f"{what} is not a finite number")
    return float(value)


def _object(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _bad(f"{key} is not an object")
    return value


def _json(value: Any, what: str) -> str:
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise _bad(f"{what} is not JSON: {exc}") from None
    if len(text) > MAX_DOCUMENT_BYTES:
        raise _bad(f"{what} is larger than {MAX_DOCUMENT_BYTES} bytes")
    return text


def _metrics(doc: Mapping[str, Any]) -> dict[str, dict[str, float | None]]:
    """The metric rows: a serving run's ``metrics`` with ``repeat.spread``; a lifecycle
    run's ``lifecycle.metrics`` with ``lifecycle.spread``."""
    if doc.get("kind") == "lifecycle":
        where = _object(doc, "lifecycle")
        raw, spread = where.get("metrics"), where.get("spread") or {}
    else:
        raw, spread = doc.get("metrics"), _object(doc, "repeat").get("spread") or {}
    if not isinstance(raw, Mapping):
        raise _bad("metrics is missing or not an object")
    if len(raw) > MAX_METRICS:
        raise _bad(f"more than {MAX_METRICS} metrics")
    if not isinstance(spread, Mapping):
        raise _bad("repeat.spread is not an object")
    out: dict[str, dict[str, float | None]] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise _bad(f"metric name {str(name)[:64]!r} is not a short string")
        s = spread.get(name) or {}
        if not isinstance(s, Mapping):
            raise _bad(f"repeat.spread.{name} is not an object")
        out[name] = {
            "value": _number(value, f"metrics.{name}"),
            **{k: _number(s.get(k), f"repeat.spread.{name}.{k}") for k in ("min", "max", "std")},
        }
    return out


def _checked(
    document: Mapping[str, Any], created: float
) -> tuple[dict[str, Any], dict[str, dict[str, float | None]]]:
    """The run's row (without id and document) and its metric rows, or StoreError."""
    if not isinstance(document, Mapping):
        raise _bad("the document is not an object")
    schema = _text(document.get("schema"), "schema")
    if not schema:
        raise _bad("the document has no schema")
    target, env = _object(document, "target"), _object(document, "environment")
    workload, repeat = _object(document, "workload"), _object(document, "repeat")
    gpus = env.get("gpu_names")
    if gpus is not None and (
        not isinstance(gpus, list) or not all(isinstance(g, str) for g in gpus)
    ):
        raise _bad("environment.gpu_names is not a list of strings")
    count = repeat.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise _bad("repeat.count is not a positive integer")
    passed = document.get("passed")
    if passed is not None and not isinstance(passed, bool):
        raise _bad("passed is not true, false or null")
    row: dict[str, Any] = {
        "created_at": _number(document.get("started_at"), "started_at") or created,
        "kind": _text(document.get("kind"), "kind") or "serving",
        "schema": schema,
        "gpu_names": None if gpus is None else _json([g[:_MAX_TEXT] for g in gpus], "gpus"),
        "workload": _json(dict(workload), "workload"),
        "repeat": count,
        "passed": None if passed is None else int(passed),
    }
    for col, src, key in (
        ("recipe_id", env, "recipe_id"),
        ("recipe_hash", env, "recipe_hash"),
        ("engine", env, "engine"),
        ("engine_version", env, "engine_version"),
        ("gpu_driver", env, "gpu_driver"),
        ("target_kind", target, "kind"),
        ("target_url", target, "url"),
        ("model", target, "model"),
    ):
        row[col] = _text(src.get(key), f"{'environment' if src is env else 'target'}.{key}")
    return row, _metrics(document)


def _new_id(db: Database) -> str:
    while True:
        run_id = secrets.token_hex(_ID_BYTES)
        if db.query_one("SELECT 1 FROM bench_runs WHERE id = ?", (run_id,)) is None:
            return run_id


def _peaks(document: Mapping[str, Any], row: Mapping[str, Any]) -> StatsDelta | None:
    """A serving run of a recipe offers its figures to the recipe's peaks: output tokens/s
    as generation, prompt tokens/s as prefill, the mean time to first token (telemetry's
    figure is a mean too) as the best TTFT. The better of stored and offered is kept by
    ``recipe_stats``' own upsert."""
    if document.get("schema") != SERVING_SCHEMA or row["kind"] != "serving":
        return None
    if not row["recipe_id"]:
        return None
    m = document["metrics"]
    duration = _number(document.get("duration_s"), "duration_s")
    instance = _text(_object(document, "target").get("instance_id"), "target.instance_id")
    at = row["created_at"]
    delta = StatsDelta(row["recipe_id"])
    delta.offer("generation_tps", m.get("output_tps"), at, instance)
    prompt = _number(m.get("prompt_tokens"), "metrics.prompt_tokens")
    if duration and prompt is not None:
        # Over --repeat K runs prompt_tokens is the total and duration_s the sum of the
        # runs' durations: the same rate.
        delta.offer("prefill_tps", prompt / duration, at, instance)
    delta.offer("ttft_best_s", m.get("ttft_mean"), at, instance)
    return None if delta.is_empty() else delta

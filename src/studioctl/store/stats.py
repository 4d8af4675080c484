"""Lifetime totals and peak figures per recipe (table ``recipe_stats``, migration m004).

The daemon's telemetry adds what it measured since its last flush (:class:`StatsDelta`: token,
request, energy and uptime increments, and the best value of each peak in that time) with one
upsert per recipe; totals add up, peaks keep the better of the stored and the new value. So
the figures survive daemon restarts and nothing is lost but the last few seconds of a crash.

Peaks: prompt (prefill) and generation tokens/s, the lowest time to first token, the most
requests running at once, the highest KV cache use (0–1) and the highest power (W) attributed
to the recipe's instances. Each keeps when it was seen and on which instance.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from studioctl.store.db import Database, Row, now

#: Peak name → which way is better. The names are the table's column prefixes.
PEAKS: dict[str, Literal["max", "min"]] = {
    "prefill_tps": "max",
    "generation_tps": "max",
    "ttft_best_s": "min",
    "concurrent": "max",
    "kv_cache": "max",
    "power_w": "max",
}

TOTALS = ("prompt_tokens", "generation_tokens", "requests", "energy_j", "uptime_s")

# A joule is 1/3.6e6 kWh.
_J_PER_KWH = 3.6e6


@dataclass(frozen=True)
class Peak:
    value: float
    at: float  # wall clock, seconds
    instance_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "at": self.at, "instance": self.instance_id}


def better(kind: Literal["max", "min"], old: Peak | None, new: Peak | None) -> Peak | None:
    """The better of two peaks (``old`` on a tie: the first time a value was reached)."""
    if new is None:
        return old
    if old is None:
        return new
    if kind == "max":
        return new if new.value > old.value else old
    return new if new.value < old.value else old


@dataclass
class StatsDelta:
    """What one recipe did since the last flush: increments and the best peaks seen."""

    recipe_id: str
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    requests: float = 0.0
    energy_j: float = 0.0
    uptime_s: float = 0.0
    peaks: dict[str, Peak] = field(default_factory=dict)

    def offer(self, name: str, value: float | None, at: float, instance_id: str | None) -> None:
        """Keep ``value`` as peak ``name`` when it beats the one held.

        None and values ≤ 0 are ignored: an idle engine's 0 tokens/s is no peak, and a
        recipe that never served shows none.
        """
        if value is None or not value > 0:
            return
        kind = PEAKS[name]  # KeyError: a peak the table does not have
        best = better(kind, self.peaks.get(name), Peak(float(value), at, instance_id))
        assert best is not None
        self.peaks[name] = best

    def merge(self, other: StatsDelta) -> None:
        """Add ``other`` (same recipe) into this one."""
        for name in TOTALS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name, peak in other.peaks.items():
            best = better(PEAKS[name], self.peaks.get(name), peak)
            assert best is not None
            self.peaks[name] = best

    def is_empty(self) -> bool:
        return not self.peaks and not any(getattr(self, name) for name in TOTALS)


@dataclass(frozen=True)
class RecipeStats:
    """One recipe's lifetime figures."""

    recipe_id: str
    prompt_tokens: float
    generation_tokens: float
    requests: float
    energy_j: float
    uptime_s: float
    first_seen: float
    updated_at: float
    peaks: Mapping[str, Peak]

    @property
    def energy_kwh(self) -> float:
        return self.energy_j / _J_PER_KWH

    @property
    def kwh_per_mtok_prompt(self) -> float | None:
        """All the recipe's energy over its prompt tokens, per million (None: no tokens)."""
        return _per_million(self.energy_j, self.prompt_tokens)

    @property
    def kwh_per_mtok_completion(self) -> float | None:
        """All the recipe's energy over its generated tokens, per million."""
        return _per_million(self.energy_j, self.generation_tokens)

    def plus(self, delta: StatsDelta | None, ts: float) -> RecipeStats:
        """These figures with ``delta`` (not yet flushed) added: what a reader should see."""
        if delta is None or delta.recipe_id != self.recipe_id:
            return self
        peaks = dict(self.peaks)
        for name, peak in delta.peaks.items():
            best = better(PEAKS[name], peaks.get(name), peak)
            assert best is not None
            peaks[name] = best
        return RecipeStats(
            recipe_id=self.recipe_id,
            prompt_tokens=self.prompt_tokens + delta.prompt_tokens,
            generation_tokens=self.generation_tokens + delta.generation_tokens,
            requests=self.requests + delta.requests,
            energy_j=self.energy_j + delta.energy_j,
            uptime_s=self.uptime_s + delta.uptime_s,
            first_seen=self.first_seen,
            updated_at=max(self.updated_at, ts),
            peaks=peaks,
        )

    @classmethod
    def empty(cls, recipe_id: str, ts: float) -> RecipeStats:
        return cls(recipe_id, 0.0, 0.0, 0.0, 0.0, 0.0, ts, ts, {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe_id,
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "requests": self.requests,
            "energy_j": self.energy_j,
            "energy_kwh": self.energy_kwh,
            "uptime_s": self.uptime_s,
            "kwh_per_mtok_prompt": self.kwh_per_mtok_prompt,
            "kwh_per_mtok_completion": self.kwh_per_mtok_completion,
            "first_seen": self.first_seen,
            "updated_at": self.updated_at,
            "peaks": {
                name: (p.to_dict() if (p := self.peaks.get(name)) else None) for name in PEAKS
            },
        }


def _per_million(energy_j: float, tokens: float) -> float | None:
    if tokens <= 0:
        return None
    return energy_j / _J_PER_KWH / tokens * 1e6


def _peak_sql(name: str, kind: Literal["max", "min"]) -> str:
    """SET clauses keeping the better of the stored peak and the new one (and its at/instance).

    In an upsert's SET every column reference is the stored row's value, before any of the
    assignments: the three columns are judged by the same comparison.
    """
    op = ">" if kind == "max" else "<"
    # The stored row is named by its table: PostgreSQL finds a bare name ambiguous.
    old = f"recipe_stats.{name}"
    wins = f"excluded.{name} IS NOT NULL AND ({old} IS NULL OR excluded.{name} {op} {old})"
    return ", ".join(
        f"{col} = CASE WHEN {wins} THEN excluded.{col} ELSE recipe_stats.{col} END"
        for col in (name, f"{name}_at", f"{name}_instance")
    )


_COLUMNS = (
    "recipe_id",
    *TOTALS,
    "first_seen",
    "updated_at",
    *(c for p in PEAKS for c in (p, f"{p}_at", f"{p}_instance")),
)

_UPSERT = (
    f"INSERT INTO recipe_stats ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _COLUMNS)}) "
    "ON CONFLICT (recipe_id) DO UPDATE SET "
    + ", ".join(f"{t} = recipe_stats.{t} + excluded.{t}" for t in TOTALS)
    + ", updated_at = GREATEST(recipe_stats.updated_at, excluded.updated_at), "
    + ", ".join(_peak_sql(p, k) for p, k in PEAKS.items())
)


class StatsRepo:
    """``recipe_stats``: add deltas (upsert), read one recipe or all."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, deltas: Iterable[StatsDelta], *, ts: float | None = None) -> int:
        """Add every non-empty delta in one transaction; returns how many rows were written."""
        at = now(ts)
        rows = [_params(d, at) for d in deltas if not d.is_empty()]
        if rows:
            with self.db.transaction():
                self.db.executemany(_UPSERT, rows)
        return len(rows)

    def get(self, recipe_id: str) -> RecipeStats | None:
        row = self.db.query_one("SELECT * FROM recipe_stats WHERE recipe_id = ?", (recipe_id,))
        return _stats(row) if row is not None else None

    def list(self) -> builtins.list[RecipeStats]:
        return [_stats(r) for r in self.db.query("SELECT * FROM recipe_stats ORDER BY recipe_id")]


def read_recipe_stats(recipe: str | None = None, *, path: Path | None = None) -> list[RecipeStats]:
    """The stored figures of every recipe (or of ``recipe`` only), for readers without a
    daemon: opens the database (``paths.database_file()`` by default), reads, closes.

    ``[]`` when the database file does not exist yet (nothing ran) or the recipe has no
    figures. Figures a running daemon has not flushed yet are not included.
    """
    from studioctl import paths
    from studioctl.store import open_database

    path = path or paths.database_file()
    if not path.exists():
        return []
    db = open_database(path)
    try:
        repo = StatsRepo(db)
        if recipe is None:
            return repo.list()
        one = repo.get(recipe)
        return [one] if one is not None else []
    finally:
        db.close()


def _params(d: StatsDelta, at: float) -> dict[str, Any]:
    unknown = set(d.peaks) - set(PEAKS)
    if unknown:
        raise ValueError(f"unknown peak(s) {sorted(unknown)} for recipe {d.recipe_id!r}")
    out: dict[str, Any] = {"recipe_id": d.recipe_id, "first_seen": at, "updated_at": at}
    for t in TOTALS:
        out[t] = float(getattr(d, t))
    for name in PEAKS:
        p = d.peaks.get(name)
        out[name] = p.value if p else None
        out[f"{name}_at"] = p.at if p else None
        out[f"{name}_instance"] = p.instance_id if p else None
    return out


def _stats(row: Row) -> RecipeStats:
    peaks: dict[str, Peak] = {}
    for name in PEAKS:
        if row[name] is not None:
            peaks[name] = Peak(row[name], row[f"{name}_at"], row[f"{name}_instance"])
    return RecipeStats(
        recipe_id=row["recipe_id"],
        prompt_tokens=row["prompt_tokens"],
        generation_tokens=row["generation_tokens"],
        requests=row["requests"],
        energy_j=row["energy_j"],
        uptime_s=row["uptime_s"],
        first_seen=row["first_seen"],
        updated_at=row["updated_at"],
        peaks=peaks,
    )

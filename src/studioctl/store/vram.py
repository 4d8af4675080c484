"""The GPU memory of each recipe's last run (table ``recipe_vram``, migration m006).

Telemetry measures every instance's memory (its process tree's NVML per-process figures)
each second; the most one instance held once ready is its run's peak. One row per recipe
keeps the peak of its latest run and the recipe's hash then: placement reads it back as the
recipe's learned memory need, only while the recipe is unchanged (a new hash — another
``gpu_memory_utilization``, ``max_model_len``, model — makes the figure stale).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from studioctl.store.db import Database, Row


@dataclass(frozen=True)
class VramPeak:
    """The most memory one run (instance) of a recipe held."""

    recipe_id: str
    recipe_hash: str
    instance_id: str
    vram_bytes: int
    at: float  # wall clock, seconds


# The same instance: keep the larger figure; another instance: a newer run, which replaces it.
_UPSERT = (
    "INSERT INTO recipe_vram (recipe_id, recipe_hash, instance_id, vram_bytes, at) "
    "VALUES (:recipe_id, :recipe_hash, :instance_id, :vram_bytes, :at) "
    "ON CONFLICT (recipe_id) DO UPDATE SET "
    "vram_bytes = CASE WHEN recipe_vram.instance_id = excluded.instance_id "
    "THEN GREATEST(recipe_vram.vram_bytes, excluded.vram_bytes) ELSE excluded.vram_bytes END, "
    "at = excluded.at, recipe_hash = excluded.recipe_hash, instance_id = excluded.instance_id"
)


class VramRepo:
    """``recipe_vram``: record run peaks, read a recipe's last one."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, peaks: Iterable[VramPeak]) -> int:
        """Record peaks (one transaction); figures ≤ 0 are no peak. Returns rows written."""
        rows = [
            {
                "recipe_id": p.recipe_id,
                "recipe_hash": p.recipe_hash,
                "instance_id": p.instance_id,
                "vram_bytes": int(p.vram_bytes),
                "at": p.at,
            }
            for p in peaks
            if p.vram_bytes > 0
        ]
        if rows:
            with self.db.transaction():
                self.db.executemany(_UPSERT, rows)
        return len(rows)

    def last_run(self, recipe_id: str, recipe_hash: str | None = None) -> VramPeak | None:
        """The peak of the recipe's last run; None when there is none, or when
        ``recipe_hash`` is given and the run was of another version of the recipe."""
        row = self.db.query_one("SELECT * FROM recipe_vram WHERE recipe_id = ?", (recipe_id,))
        if row is None:
            return None
        peak = _peak(row)
        if recipe_hash is not None and peak.recipe_hash != recipe_hash:
            return None
        return peak


def read_last_run_vram(
    recipe_id: str, recipe_hash: str | None = None, *, path: Path | None = None
) -> VramPeak | None:
    """``VramRepo.last_run`` for readers without a daemon (``launch --dry-run``): opens the
    database (``paths.database_file()`` by default), reads, closes; None when there is no
    database yet. Figures a running daemon has not flushed yet are not included."""
    from studioctl import paths
    from studioctl.store import open_database

    path = path or paths.database_file()
    if not path.exists():
        return None
    db = open_database(path)
    try:
        return VramRepo(db).last_run(recipe_id, recipe_hash)
    finally:
        db.close()


def _peak(row: Row) -> VramPeak:
    return VramPeak(
        recipe_id=row["recipe_id"],
        recipe_hash=row["recipe_hash"],
        instance_id=row["instance_id"],
        vram_bytes=int(row["vram_bytes"]),
        at=float(row["at"]),
    )

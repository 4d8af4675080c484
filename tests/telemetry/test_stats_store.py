"""recipe_stats (migration m004) on real SQLite files: totals add, peaks keep the better value."""

from __future__ import annotations

from pathlib import Path

import pytest

from studioctl.store import open_database
from studioctl.store.migrations import applied, migrate
from studioctl.store.sqlite import SqliteDatabase as Database
from studioctl.store.stats import PEAKS, Peak, RecipeStats, StatsDelta, StatsRepo


def delta(recipe: str = "llama", **totals: float) -> StatsDelta:
    return StatsDelta(recipe, **totals)


def test_migration_creates_the_table_on_an_older_database(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    with Database(path) as db:
        migrate(db, target="m003_usage")
        assert "m004_recipe_stats" not in applied(db)
    with Database(path) as db:
        assert "m004_recipe_stats" in migrate(db)
        cols = {r["name"] for r in db.query("PRAGMA table_info(recipe_stats)")}
    for name in PEAKS:
        assert {name, f"{name}_at", f"{name}_instance"} <= cols
    assert {"prompt_tokens", "generation_tokens", "requests", "energy_j", "uptime_s"} <= cols


def test_totals_add_and_peaks_keep_the_better_value(tmp_path: Path) -> None:
    db = open_database(tmp_path / "s.db")
    repo = StatsRepo(db)
    d1 = delta(prompt_tokens=100, generation_tokens=50, requests=2, energy_j=3600, uptime_s=10)
    d1.offer("prefill_tps", 500.0, 1.0, "llama-1")
    d1.offer("ttft_best_s", 0.30, 1.0, "llama-1")
    d1.offer("concurrent", 4, 1.0, "llama-1")
    assert repo.add([d1], ts=1.0) == 1
    d2 = delta(prompt_tokens=10, generation_tokens=5, requests=1, energy_j=1800, uptime_s=5)
    d2.offer("prefill_tps", 300.0, 2.0, "llama-2")  # lower: the old peak stays
    d2.offer("ttft_best_s", 0.10, 2.0, "llama-2")  # lower TTFT is better: replaces
    d2.offer("kv_cache", 0.75, 2.0, "llama-2")  # first of its kind
    repo.add([d2], ts=2.0)
    s = repo.get("llama")
    assert s is not None
    assert (s.prompt_tokens, s.generation_tokens, s.requests) == (110, 55, 3)
    assert (s.energy_j, s.uptime_s) == (5400, 15)
    assert (s.first_seen, s.updated_at) == (1.0, 2.0)
    assert s.peaks["prefill_tps"] == Peak(500.0, 1.0, "llama-1")
    assert s.peaks["ttft_best_s"] == Peak(0.10, 2.0, "llama-2")
    assert s.peaks["concurrent"] == Peak(4.0, 1.0, "llama-1")
    assert s.peaks["kv_cache"] == Peak(0.75, 2.0, "llama-2")
    assert "power_w" not in s.peaks
    # 5400 J = 0.0015 kWh over 110 prompt tokens → 13.6 kWh per million.
    assert s.energy_kwh == pytest.approx(0.0015)
    assert s.kwh_per_mtok_prompt == pytest.approx(0.0015 / 110 * 1e6)
    assert s.kwh_per_mtok_completion == pytest.approx(0.0015 / 55 * 1e6)
    db.close()


def test_figures_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with open_database(path) as db:
        d = delta("a", generation_tokens=7)
        d.offer("power_w", 250.0, 5.0, "a-1")
        StatsRepo(db).add([d, delta("b", requests=1)])
    with open_database(path) as db:
        rows = StatsRepo(db).list()
    assert [r.recipe_id for r in rows] == ["a", "b"]
    assert rows[0].generation_tokens == 7 and rows[0].peaks["power_w"].value == 250.0


def test_empty_deltas_write_nothing_and_non_positive_peaks_are_ignored(tmp_path: Path) -> None:
    with open_database(tmp_path / "s.db") as db:
        repo = StatsRepo(db)
        d = delta("idle")
        d.offer("generation_tps", 0.0, 1.0, "idle-1")  # an idle engine: no peak
        d.offer("ttft_best_s", None, 1.0, "idle-1")
        assert d.is_empty()
        assert repo.add([d]) == 0
        assert repo.get("idle") is None


def test_unknown_peak_is_refused() -> None:
    with pytest.raises(KeyError):
        delta().offer("watts_per_token", 1.0, 1.0, None)


def test_merge_and_plus_combine_pending_figures() -> None:
    a = delta("r", prompt_tokens=5)
    a.offer("generation_tps", 10.0, 1.0, "r-1")
    b = delta("r", prompt_tokens=3, energy_j=7)
    b.offer("generation_tps", 20.0, 2.0, "r-1")
    b.offer("ttft_best_s", 0.5, 2.0, "r-1")
    a.merge(b)
    assert a.prompt_tokens == 8 and a.energy_j == 7
    assert a.peaks["generation_tps"].value == 20.0
    stored = RecipeStats.empty("r", 0.5)
    seen = stored.plus(a, 3.0)
    assert seen.prompt_tokens == 8 and seen.updated_at == 3.0
    assert seen.peaks["ttft_best_s"] == Peak(0.5, 2.0, "r-1")
    assert seen.to_dict()["peaks"]["kv_cache"] is None
    assert stored.plus(delta("other", prompt_tokens=1), 4.0) is stored

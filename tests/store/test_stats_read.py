"""read_recipe_stats: the stored recipe figures for a reader without a daemon."""

from __future__ import annotations

from pathlib import Path

from studioctl import paths
from studioctl.store import open_database
from studioctl.store.stats import Peak, StatsDelta, StatsRepo, read_recipe_stats


def test_no_database_file_reads_nothing_and_creates_nothing(studioctl_home: Path) -> None:
    assert read_recipe_stats() == []
    assert read_recipe_stats("tiny") == []
    assert not paths.database_file().exists()


def test_reads_every_recipe_or_one(studioctl_home: Path) -> None:
    db = open_database()
    try:
        StatsRepo(db).add(
            [
                StatsDelta("tiny", prompt_tokens=10.0, requests=2.0),
                StatsDelta("big", generation_tokens=5.0, peaks={"concurrent": Peak(3.0, 7.0)}),
            ],
            ts=100.0,
        )
    finally:
        db.close()
    every = read_recipe_stats()
    assert [s.recipe_id for s in every] == ["big", "tiny"]
    (tiny,) = read_recipe_stats("tiny")
    assert tiny.prompt_tokens == 10.0 and tiny.requests == 2.0 and tiny.first_seen == 100.0
    (big,) = read_recipe_stats("big", path=paths.database_file())
    assert big.peaks["concurrent"].value == 3.0
    assert read_recipe_stats("nope") == []


def test_an_explicit_path(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.db"
    db = open_database(other)
    try:
        StatsRepo(db).add([StatsDelta("solo", uptime_s=4.0)], ts=1.0)
    finally:
        db.close()
    assert [s.recipe_id for s in read_recipe_stats(path=other)] == ["solo"]
    assert read_recipe_stats() == []  # the default database was not touched

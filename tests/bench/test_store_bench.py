"""Saved benchmark runs on real SQLite files: migration m008 on an old database, save and
read back, a bad document writing nothing, one transaction per run, and the recipe's peaks
fed through ``recipe_stats``' own upsert."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from studioctl.errors import NotFoundError, StoreError, UsageError
from studioctl.store import InstanceRepo
from studioctl.store import migrations as mig
from studioctl.store.bench import BenchRepo, save_run
from studioctl.store.sqlite import SqliteDatabase as Database
from studioctl.store.stats import StatsDelta, StatsRepo


def document(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": "studioctl.bench/1",
        "started_at": 1_700_000_000.0,
        "duration_s": 2.0,
        "run_id": None,
        "target": {"kind": "recipe", "url": "http://127.0.0.1:1", "model": "tiny", "name": "tiny"}
        | {"instance_id": "tiny-1"},
        "workload": {"concurrency": 2, "prompt_tokens": 16, "output_tokens": 4, "stream": True},
        "metrics": {
            "requests_ok": 10,
            "prompt_tokens": 160,
            "output_tokens": 40,
            "output_tps": 20.0,
            "ttft_mean": 0.05,
            "ttft_p95": 0.08,
            "tpot_mean": None,
        },
        "environment": {
            "recipe_id": "tiny",
            "recipe_hash": "abc123",
            "engine": "vllm",
            "engine_version": "0.11.0",
            "gpu_names": ["NVIDIA A100-SXM4-80GB"],
            "gpu_driver": "550.54.15",
        },
        "repeat": None,
        "passed": True,
    }
    doc.update(changes)
    return doc


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    with Database(tmp_path / "studioctl.db") as database:
        mig.migrate(database)
        yield database


def count(db: Database, table: str) -> int:
    row = db.query_one(f"SELECT COUNT(*) AS n FROM {table}")
    assert row is not None
    return int(row["n"])


def test_an_old_database_gets_the_tables_and_its_rows_survive(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with Database(path) as db:
        mig.migrate(db, target="m007_usage_queue_ms")
        db.execute(
            "INSERT INTO instances (id, recipe_id, backend, model, served_name, host, port,"
            " state, created_at, updated_at) VALUES"
            " ('tiny-1', 'tiny', 'vllm', '/m', 'tiny', '127.0.0.1', 18000, 'stopped', 1.0, 1.0)"
        )
        StatsRepo(db).add([StatsDelta("tiny", requests=3.0)], ts=5.0)
        names = {r["name"] for r in db.query("SELECT name FROM sqlite_master")}
        assert "bench_runs" not in names
    with Database(path) as db:  # the next studioctl opens it
        assert mig.migrate(db)[0] == "m008_bench_runs"  # then any later ones
        inst = InstanceRepo(db).get("tiny-1")
        assert inst is not None and inst.port == 18000
        stats = StatsRepo(db).get("tiny")
        assert stats is not None and stats.requests == 3.0
        run_id = save_run(db, document())
        assert BenchRepo(db).get(run_id).recipe_id == "tiny"
        row = db.query_one("PRAGMA user_version")
        assert row is not None and row["user_version"] == len(mig.MIGRATIONS)


def test_saved_and_read_back(db: Database) -> None:
    doc = document()
    original = copy.deepcopy(doc)
    run_id = save_run(db, doc)
    assert doc == original  # the caller's document is not changed
    assert len(run_id) == 8 and int(run_id, 16) >= 0
    run = BenchRepo(db).get(run_id)
    assert run.document == {**original, "run_id": run_id}
    assert (run.kind, run.schema, run.recipe_id, run.recipe_hash) == (
        "serving",
        "studioctl.bench/1",
        "tiny",
        "abc123",
    )
    assert (run.engine, run.engine_version, run.gpu_driver) == ("vllm", "0.11.0", "550.54.15")
    assert run.gpu_names == ["NVIDIA A100-SXM4-80GB"]
    assert (run.target_kind, run.target_url, run.model) == ("recipe", "http://127.0.0.1:1", "tiny")
    assert run.workload == original["workload"] and run.repeat == 1 and run.passed is True
    assert run.created_at == 1_700_000_000.0
    assert run.metrics["output_tps"].to_dict() == {
        "value": 20.0,
        "min": None,
        "max": None,
        "std": None,
    }
    assert run.metrics["tpot_mean"].value is None and run.metrics["requests_ok"].value == 10
    assert BenchRepo(db).get(run_id[:5]).id == run_id  # a unique prefix will do


def test_the_spread_of_repeated_runs_is_stored(db: Database) -> None:
    spread = {"output_tps": {"min": 18.0, "max": 22.0, "std": 1.5, "relative": 0.2}}
    run_id = save_run(db, document(repeat={"count": 3, "runs": [], "spread": spread}))
    run = BenchRepo(db).get(run_id)
    assert run.repeat == 3
    assert run.metrics["output_tps"].to_dict() == {
        "value": 20.0,
        "min": 18.0,
        "max": 22.0,
        "std": 1.5,
    }
    assert run.metrics["ttft_p95"].min is None


def test_history_lists_newest_first_and_by_recipe(db: Database) -> None:
    a = save_run(db, document(started_at=10.0))
    b = save_run(db, document(started_at=30.0, environment={"recipe_id": "other"}))
    c = save_run(db, document(started_at=20.0))
    repo = BenchRepo(db)
    assert [r.id for r in repo.list()] == [b, c, a]
    assert [r.id for r in repo.list("tiny")] == [c, a]
    assert [r.id for r in repo.list("tiny", limit=1)] == [c]
    assert repo.list("nothing") == [] and repo.list()[0].document is None


def test_unknown_and_ambiguous_ids(db: Database) -> None:
    repo = BenchRepo(db)
    with pytest.raises(NotFoundError):
        repo.get("ffffffffff")
    ids = [save_run(db, document()) for _ in range(40)]
    first = {i[0] for i in ids}
    shared = next(ch for ch in first if sum(i.startswith(ch) for i in ids) > 1)
    with pytest.raises(UsageError, match="ambiguous"):
        repo.get(shared)
    with pytest.raises(NotFoundError):
        repo.get("%")  # LIKE's wildcards are taken literally


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"schema": None}, "no schema"),
        ({"metrics": None}, "metrics is missing"),
        ({"metrics": {"output_tps": math.nan}}, "metrics.output_tps is not a finite number"),
        ({"metrics": {"output_tps": "fast"}}, "metrics.output_tps is not a number"),
        ({"metrics": {"x" * 65: 1.0}}, "is not a short string"),
        ({"environment": {"gpu_names": "A100"}}, "gpu_names is not a list"),
        ({"environment": {"recipe_id": "r" * 501}}, "longer than 500"),
        ({"repeat": {"count": 0}}, "repeat.count"),
        ({"repeat": {"count": 2, "spread": {"output_tps": {"min": math.inf}}}}, "finite"),
        ({"passed": "yes"}, "passed"),
        ({"workload": {"when": object()}}, "workload is not JSON"),
        ({"metrics": {f"m{i}": 1.0 for i in range(501)}}, "more than 500 metrics"),
    ],
)
def test_a_bad_document_writes_nothing(db: Database, changes: dict[str, Any], needle: str) -> None:
    save_run(db, document())
    with pytest.raises(StoreError, match="benchmark run not saved") as err:
        save_run(db, document(**changes))
    assert needle in str(err.value)
    assert (count(db, "bench_runs"), count(db, "bench_metrics")) == (1, 7)


def test_one_transaction_per_run(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    # The last step (the peaks) fails: the run and its metrics are rolled back with it.
    def broken(self: StatsRepo, *args: Any, **kwargs: Any) -> int:
        db.execute("INSERT INTO recipe_stats (recipe_id, first_seen, updated_at) VALUES ('x',0,0)")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(StatsRepo, "add", broken)
    with pytest.raises(RuntimeError):
        save_run(db, document())
    assert (count(db, "bench_runs"), count(db, "bench_metrics"), count(db, "recipe_stats")) == (
        0,
        0,
        0,
    )


def test_a_recipe_run_feeds_the_recipe_peaks_through_the_same_upsert(db: Database) -> None:
    stats = StatsRepo(db)
    # Telemetry saw a better generation rate and a worse TTFT before the run.
    before = StatsDelta("tiny")
    before.offer("generation_tps", 50.0, 1.0, "tiny-0")
    before.offer("ttft_best_s", 0.5, 1.0, "tiny-0")
    stats.add([before], ts=1.0)
    save_run(db, document())
    got = stats.get("tiny")
    assert got is not None
    assert got.peaks["generation_tps"].value == 50.0  # kept: better than the run's 20
    assert got.peaks["ttft_best_s"].value == 0.05  # the run's mean TTFT is better
    assert got.peaks["ttft_best_s"].instance_id == "tiny-1"
    assert got.peaks["ttft_best_s"].at == 1_700_000_000.0
    assert got.peaks["prefill_tps"].value == 80.0  # 160 prompt tokens in 2 s
    assert got.requests == 0 and got.prompt_tokens == 0  # totals are telemetry's alone


def test_runs_without_a_recipe_or_of_another_kind_feed_no_peaks(db: Database) -> None:
    save_run(db, document(environment={"recipe_id": None}))
    save_run(db, document(schema="studioctl.bench-lifecycle/1", kind="cold-start"))
    assert StatsRepo(db).list() == []
    kinds = {r.kind for r in BenchRepo(db).list()}
    assert kinds == {"serving", "cold-start"}

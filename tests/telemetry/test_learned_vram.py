"""Learned memory: telemetry keeps each ready instance's VRAM peak (NVML fake, real child
pids), flushes it to ``recipe_vram`` on real SQLite, and placement reads it back as the
recipe's need while the recipe is unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fakes import fake_pynvml
from fakes.fake_pynvml import GIB
from studioctl.gpu import Nvml
from studioctl.lifecycle.memory import learned_gb, memory_need_gb
from studioctl.recipes import Recipe
from studioctl.states import State
from studioctl.store import open_database
from studioctl.store.migrations import applied, migrate
from studioctl.store.sqlite import SqliteDatabase as Database
from studioctl.store.vram import VramPeak, VramRepo, read_last_run_vram
from studioctl.telemetry import GpuReader, Telemetry

from .conftest import Clock, FakeInstance, FakeRecipe, FakeSup


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_migration_adds_the_table_to_an_older_database(tmp_path: Path) -> None:
    with Database(tmp_path / "a.db") as db:
        migrate(db, target="m005_instance_api_key")
        assert "m006_recipe_vram" not in applied(db)
        assert "m006_recipe_vram" in migrate(db)
        cols = [r["name"] for r in db.query("PRAGMA table_info(recipe_vram)")]
        assert cols == ["recipe_id", "recipe_hash", "instance_id", "vram_bytes", "at"]


def test_a_run_keeps_its_peak_and_a_new_run_replaces_it(tmp_path: Path) -> None:
    with Database(tmp_path / "a.db") as db:
        migrate(db)
        repo = VramRepo(db)
        assert repo.last_run("a") is None
        repo.record([VramPeak("a", "h1", "a-1", 10 * GIB, 1.0)])
        repo.record([VramPeak("a", "h1", "a-1", 8 * GIB, 2.0)])  # lower: the run's peak stays
        peak = repo.last_run("a", "h1")
        assert peak is not None and peak.vram_bytes == 10 * GIB and peak.at == 2.0
        repo.record([VramPeak("a", "h2", "a-2", 6 * GIB, 3.0)])  # a newer run, smaller
        assert repo.last_run("a", "h1") is None  # another version of the recipe ran since
        again = repo.last_run("a", "h2")
        assert again is not None and (again.instance_id, again.vram_bytes) == ("a-2", 6 * GIB)
        assert repo.record([VramPeak("b", "h", "b-1", 0, 1.0)]) == 0  # no figure, no row
    assert read_last_run_vram("a", path=tmp_path / "a.db") == again
    assert read_last_run_vram("a", path=tmp_path / "missing.db") is None


def test_sampler_flushes_ready_peaks_only(
    children: list[int], clock: Clock, tmp_path: Path
) -> None:
    p0, p1, _ = children
    fake = fake_pynvml.two_gpus(procs0=[(p0, 30 * GIB)], procs1=[(p1, 5 * GIB)])
    sup = FakeSup()
    ready = sup.add(FakeInstance("a-1", FakeRecipe("a"), tree={p0: 0.0}))
    loading = sup.add(FakeInstance("b-1", FakeRecipe("b"), tree={p1: 0.0}, state=State.STARTING))
    db = open_database(tmp_path / "s.db")
    try:
        tel = Telemetry(sup, gpus=GpuReader(Nvml(module=fake, clock=clock)), db=db, clock=clock)
        asyncio.run(tel.sample_gpus())
        fake.gpus[0].processes = [(p0, 40 * GIB)]
        clock.advance(1)
        asyncio.run(tel.sample_gpus())
        fake.gpus[0].processes = [(p0, 35 * GIB)]  # less again: the peak stays
        clock.advance(1)
        asyncio.run(tel.sample_gpus())
        tel.flush()
        repo = VramRepo(db)
        peak = repo.last_run("a", "hash-of-a")
        assert peak is not None and peak.vram_bytes == 40 * GIB and peak.instance_id == "a-1"
        assert repo.last_run("b") is None  # still loading: its figure is not its need
        assert ready.vram_bytes == 35 * GIB and loading.vram_bytes == 5 * GIB
    finally:
        db.close()


def test_placement_reads_the_learned_need(tmp_path: Path) -> None:
    r = Recipe.model_validate({"id": "a", "backend": "vllm", "model": "org/none"})
    with Database(tmp_path / "a.db") as db:
        migrate(db)
        repo = VramRepo(db)
        assert learned_gb(repo, r) is None
        repo.record([VramPeak("a", r.content_hash(), "a-1", 12 * GIB, 1.0)])
        assert learned_gb(repo, r) == pytest.approx(12.0)
        need = memory_need_gb(r, learned_gb=learned_gb(repo, r), gpu_total_gb=80.0)
        assert (need.source, need.gb) == ("learned", pytest.approx(12.0))
        changed = r.model_copy(update={"max_model_len": 1024})
        assert learned_gb(repo, changed) is None  # another recipe now: estimate again

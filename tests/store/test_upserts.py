"""The upserts with a rule of their own (recipe totals and peaks, the learned VRAM of a
recipe's last run) on both backends: PostgreSQL needs the stored row named by its table in
``DO UPDATE`` and has no two-argument MAX (``GREATEST``, rewritten for SQLite)."""

from __future__ import annotations

from studioctl.store import Database
from studioctl.store.stats import Peak, StatsDelta, StatsRepo
from studioctl.store.vram import VramPeak, VramRepo

GIB = 1 << 30


def test_totals_add_and_peaks_keep_the_better_value(db: Database) -> None:
    repo = StatsRepo(db)
    d1 = StatsDelta("llama", prompt_tokens=100, generation_tokens=50, requests=2)
    d1.offer("prefill_tps", 500.0, 1.0, "llama-1")
    d1.offer("ttft_best_s", 0.30, 1.0, "llama-1")
    assert repo.add([d1], ts=1.0) == 1
    d2 = StatsDelta("llama", prompt_tokens=10, generation_tokens=5, requests=1)
    d2.offer("prefill_tps", 300.0, 2.0, "llama-2")  # lower: the old peak stays
    d2.offer("ttft_best_s", 0.10, 2.0, "llama-2")  # lower TTFT is better: replaces
    repo.add([d2], ts=2.0)
    repo.add([StatsDelta("llama", requests=1)], ts=1.5)  # an older report: updated_at stays
    s = repo.get("llama")
    assert s is not None
    assert (s.prompt_tokens, s.generation_tokens, s.requests) == (110, 55, 4)
    assert (s.first_seen, s.updated_at) == (1.0, 2.0)
    assert s.peaks["prefill_tps"] == Peak(500.0, 1.0, "llama-1")
    assert s.peaks["ttft_best_s"] == Peak(0.10, 2.0, "llama-2")


def test_a_run_keeps_its_peak_and_a_new_run_replaces_it(db: Database) -> None:
    repo = VramRepo(db)
    repo.record([VramPeak("a", "h1", "a-1", 10 * GIB, 1.0)])  # above 2**31: a BIGINT
    repo.record([VramPeak("a", "h1", "a-1", 8 * GIB, 2.0)])  # lower: the run's peak stays
    peak = repo.last_run("a", "h1")
    assert peak is not None and peak.vram_bytes == 10 * GIB and peak.at == 2.0
    repo.record([VramPeak("a", "h2", "a-2", 6 * GIB, 3.0)])  # a newer run, smaller
    again = repo.last_run("a", "h2")
    assert again is not None and (again.instance_id, again.vram_bytes) == ("a-2", 6 * GIB)

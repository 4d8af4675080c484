"""Saved benchmark runs on both backends: the repository tests of tests/bench/test_store_bench.py
that take a ``db`` are imported here, so pytest runs them again with this folder's ``db``
fixture (a SQLite file and a PostgreSQL database)."""

from __future__ import annotations

from bench.test_store_bench import (
    test_a_bad_document_writes_nothing,
    test_a_recipe_run_feeds_the_recipe_peaks_through_the_same_upsert,
    test_history_lists_newest_first_and_by_recipe,
    test_one_transaction_per_run,
    test_runs_without_a_recipe_or_of_another_kind_feed_no_peaks,
    test_saved_and_read_back,
    test_the_spread_of_repeated_runs_is_stored,
    test_unknown_and_ambiguous_ids,
)

__all__ = [
    "test_a_bad_document_writes_nothing",
    "test_a_recipe_run_feeds_the_recipe_peaks_through_the_same_upsert",
    "test_history_lists_newest_first_and_by_recipe",
    "test_one_transaction_per_run",
    "test_runs_without_a_recipe_or_of_another_kind_feed_no_peaks",
    "test_saved_and_read_back",
    "test_the_spread_of_repeated_runs_is_stored",
    "test_unknown_and_ambiguous_ids",
]

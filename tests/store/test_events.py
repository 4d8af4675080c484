"""EventRepo: append, since (stream cursors), tail with filters, prune."""

from __future__ import annotations

from studioctl.store import EventRepo, Store


def test_append_and_read_back(store: Store) -> None:
    ev = store.events
    first = ev.append(
        "state",
        "tiny-cpu-1: starting -> ready",
        instance_id="tiny-cpu-1",
        recipe_id="tiny-cpu",
        data={"from": "starting", "to": "ready"},
        ts=5.0,
    )
    second = ev.append("crash", "boom", ts=6.0)
    assert second > first
    a, b = ev.since(0)
    assert (a.id, a.ts, a.kind, a.instance_id, a.recipe_id) == (
        first,
        5.0,
        "state",
        "tiny-cpu-1",
        "tiny-cpu",
    )
    assert a.data == {"from": "starting", "to": "ready"}
    assert b.data == {} and b.instance_id is None
    assert a.to_dict()["message"] == "tiny-cpu-1: starting -> ready"


def test_since_pages_in_order(store: Store) -> None:
    ev = store.events
    ids = [ev.append("k", f"m{i}", ts=float(i)) for i in range(10)]
    assert [e.id for e in ev.since(0, limit=4)] == ids[:4]
    assert [e.id for e in ev.since(ids[3], limit=4)] == ids[4:8]
    assert [e.id for e in ev.since(ids[7])] == ids[8:]
    assert ev.since(ids[-1]) == []


def test_tail_filters(store: Store) -> None:
    ev = store.events
    for i in range(6):
        ev.append(
            "state" if i % 2 else "launch.stage",
            f"m{i}",
            instance_id="a-1" if i < 3 else "b-1",
            ts=float(i),
        )
    assert [e.message for e in ev.tail(3)] == ["m3", "m4", "m5"]  # oldest first
    assert [e.message for e in ev.tail(10, kinds=["state"])] == ["m1", "m3", "m5"]
    assert [e.message for e in ev.tail(10, instance_id="a-1")] == ["m0", "m1", "m2"]
    assert [e.message for e in ev.tail(1, kinds={"state"}, instance_id="a-1")] == ["m1"]
    assert ev.tail(5, kinds=[]) == []


def test_prune_keeps_ids_growing(store: Store) -> None:
    ev: EventRepo = store.events
    old = [ev.append("k", "old", ts=1.0) for _ in range(3)]
    keep = ev.append("k", "new", ts=100.0)
    assert ev.prune(50.0) == 3
    assert [e.id for e in ev.since(0)] == [keep]
    # A stream that had seen the pruned ids still gets only newer ones, none reused.
    newer = ev.append("k", "newer", ts=101.0)
    assert newer > keep > max(old)
    assert [e.message for e in ev.since(old[-1])] == ["new", "newer"]

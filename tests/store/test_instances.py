"""InstanceRepo (records, transitions with history, ids) and LaunchRepo (ETA)."""

from __future__ import annotations

import threading
from dataclasses import FrozenInstanceError, replace

import pytest

from studioctl.errors import ConflictError, NotFoundError, TransitionError
from studioctl.states import State
from studioctl.store import Database, InstanceRepo, InstanceRow, LaunchRepo, Store


def make(iid: str = "tiny-cpu-1", **kw: object) -> InstanceRow:
    base = InstanceRow(
        id=iid,
        recipe_id="tiny-cpu",
        backend="vllm",
        model="/models/tiny",
        served_name="tiny",
        host="127.0.0.1",
        port=18000,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_insert_and_get_round_trip(store: Store) -> None:
    repo = store.instances
    inst = make(
        pid=1234,
        create_time=1700000000.25,
        pgid=1234,
        recipe_hash="abc",
        recipe_json='{"id": "tiny-cpu"}',
        log_path="/tmp/x.log",
        gpus=[0, 1],
        crash_times=[1.5, 2.5],
        process_tree=[{"pid": 1234, "create_time": 1.0}, {"pid": 1240, "create_time": 2.0}],
        started_at=5.0,
    )
    stored = repo.insert(inst, ts=10.0)
    assert stored == replace(inst, created_at=10.0, updated_at=10.0)
    assert repo.get("tiny-cpu-1") == stored
    assert stored.state is State.STARTING
    assert stored.gpus == [0, 1]
    assert stored.process_tree[1]["pid"] == 1240
    assert stored.to_dict()["state"] == "starting"
    with pytest.raises(FrozenInstanceError):
        stored.port = 1  # type: ignore[misc]
    assert repo.get("nope") is None
    with pytest.raises(NotFoundError, match="no instance nope"):
        repo.require("nope")


def test_insert_twice_conflicts(store: Store) -> None:
    store.instances.insert(make())
    with pytest.raises(ConflictError, match="tiny-cpu-1 already exists"):
        store.instances.insert(make())


def test_insert_records_the_first_state(store: Store) -> None:
    store.instances.insert(make(state=State.LOADING, state_reason="adopted"), ts=3.0)
    [first] = store.instances.history("tiny-cpu-1")
    assert (first.from_state, first.to_state, first.reason, first.ts) == (
        None,
        State.LOADING,
        "adopted",
        3.0,
    )


def test_update(store: Store) -> None:
    repo = store.instances
    repo.insert(make(), ts=1.0)
    out = repo.update("tiny-cpu-1", pid=99, gpus=[3], desired="stopped", restarts=2, ts=7.0)
    assert (out.pid, out.gpus, out.desired, out.restarts, out.updated_at) == (
        99,
        [3],
        "stopped",
        2,
        7.0,
    )
    assert out.created_at == 1.0
    with pytest.raises(TypeError, match="record_transition"):
        repo.update("tiny-cpu-1", state=State.READY)
    with pytest.raises(TypeError, match="cannot set colour"):
        repo.update("tiny-cpu-1", colour="red")
    with pytest.raises(ValueError, match="desired must be 'running' or 'stopped'"):
        repo.update("tiny-cpu-1", desired="maybe")
    with pytest.raises(ValueError, match="gpus must be a list of ints"):
        repo.update("tiny-cpu-1", gpus=["0"])
    with pytest.raises(ValueError, match="process_tree"):
        repo.update("tiny-cpu-1", process_tree=[{"pid": 1}])
    with pytest.raises(NotFoundError):
        repo.update("ghost-1", pid=1)
    assert repo.require("tiny-cpu-1").pid == 99  # the refused updates changed nothing


def test_list(store: Store) -> None:
    repo = store.instances
    repo.insert(make("a-1", recipe_id="a"), ts=1.0)
    repo.insert(make("b-1", recipe_id="b"), ts=2.0)
    repo.insert(make("a-2", recipe_id="a", state=State.STOPPED), ts=3.0)
    repo.insert(make("c-1", recipe_id="c", state=State.FAILED), ts=4.0)
    assert [i.id for i in repo.list()] == ["a-1", "b-1", "c-1"]  # failed stays listed
    assert [i.id for i in repo.list(include_stopped=True)] == ["a-1", "b-1", "a-2", "c-1"]
    assert [i.id for i in repo.list(True, recipe_id="a")] == ["a-1", "a-2"]
    assert [i.id for i in repo.list(states={State.FAILED, State.STARTING})] == [
        "a-1",
        "b-1",
        "c-1",
    ]


def test_record_transition_writes_state_fields_and_history(store: Store) -> None:
    repo = store.instances
    repo.insert(make(), ts=1.0)
    repo.record_transition("tiny-cpu-1", "starting", "loading", "loading weights", 2.0)
    out = repo.record_transition(
        "tiny-cpu-1", State.LOADING, State.READY, "health 200", 3.0, ready_at=3.0
    )
    assert (out.state, out.state_reason, out.ready_at, out.updated_at) == (
        State.READY,
        "health 200",
        3.0,
        3.0,
    )
    hist = repo.history("tiny-cpu-1")
    assert [(h.from_state, h.to_state, h.ts) for h in hist] == [
        (None, State.STARTING, 1.0),
        (State.STARTING, State.LOADING, 2.0),
        (State.LOADING, State.READY, 3.0),
    ]


def test_record_transition_refuses_what_the_state_machine_refuses(store: Store) -> None:
    repo = store.instances
    repo.insert(make())
    with pytest.raises(TransitionError, match="cannot go from starting to draining"):
        repo.record_transition("tiny-cpu-1", State.STARTING, State.DRAINING, "")
    assert repo.require("tiny-cpu-1").state is State.STARTING
    assert len(repo.history("tiny-cpu-1")) == 1


def test_record_transition_refuses_a_stale_from_state(store: Store) -> None:
    repo = store.instances
    repo.insert(make())
    repo.record_transition("tiny-cpu-1", State.STARTING, State.READY, "up")
    with pytest.raises(ConflictError, match="is ready, not starting") as info:
        repo.record_transition("tiny-cpu-1", State.STARTING, State.FAILED, "late", pid=5)
    assert info.value.code == "state_changed"
    cur = repo.require("tiny-cpu-1")
    assert cur.state is State.READY and cur.pid is None  # nothing of it was written
    with pytest.raises(NotFoundError):
        repo.record_transition("ghost-1", State.STARTING, State.READY, "")


def test_delete_cascades_history_but_ids_are_not_reused(store: Store) -> None:
    repo = store.instances
    assert repo.next_id("tiny-cpu") == "tiny-cpu-1"
    repo.insert(make("tiny-cpu-1"))
    assert repo.delete("tiny-cpu-1") is True
    assert repo.delete("tiny-cpu-1") is False
    assert repo.history("tiny-cpu-1") == []
    assert repo.next_id("tiny-cpu") == "tiny-cpu-2"


def test_next_id(store: Store) -> None:
    repo = store.instances
    assert [repo.next_id("a") for _ in range(3)] == ["a-1", "a-2", "a-3"]
    assert repo.next_id("b") == "b-1"
    # An instance stored under an explicit id (adoption) is skipped over.
    repo.insert(make("c-1", recipe_id="c"))
    repo.insert(make("c-2", recipe_id="c"))
    assert repo.next_id("c") == "c-3"


def test_next_id_from_two_threads_never_collides(db: Database) -> None:
    got: list[str] = []
    lock = threading.Lock()

    def take() -> None:
        repo = InstanceRepo(db)
        for _ in range(20):
            iid = repo.next_id("r")
            with lock:
                got.append(iid)
        db.close_thread()

    threads = [threading.Thread(target=take) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got, key=lambda s: int(s.split("-")[1])) == [f"r-{i}" for i in range(1, 61)]


# -- LaunchRepo ---------------------------------------------------------------------------


def test_typical_is_the_median_of_recent_successes(db: Database) -> None:
    repo = LaunchRepo(db)
    assert repo.typical("tiny") is None
    repo.record("tiny", "tiny-1", 100.0, "ready", 50.0, {"loading": 5.0, "ready": 50.0})
    repo.record("tiny", "tiny-2", 200.0, "ready", 40.0, {"loading": 3.0, "ready": 40.0})
    repo.record("tiny", "tiny-3", 300.0, "ready", 60.0, {"loading": 4.0, "ready": 60.0})
    repo.record("tiny", "tiny-4", 400.0, "failed", 2.0, {"loading": 1.0})  # not counted
    repo.record("other", "other-1", 500.0, "ready", 9.0, {"ready": 9.0})  # other recipe
    assert repo.typical("tiny") == {"loading": 4.0, "ready": 50.0, "total": 50.0}
    # Only the last n successful launches count.
    assert repo.typical("tiny", n=2) == {"loading": 3.5, "ready": 50.0, "total": 50.0}
    assert list(repo.typical("tiny") or {}) == ["loading", "ready", "total"]  # by time
    assert [launch.instance_id for launch in repo.recent("tiny")] == [
        "tiny-4",
        "tiny-3",
        "tiny-2",
        "tiny-1",
    ]


def test_typical_with_a_stage_some_launches_lack(db: Database) -> None:
    repo = LaunchRepo(db)
    repo.record("r", "r-1", 1.0, "ready", 10.0, {"weights": 2.0, "ready": 10.0})
    repo.record("r", "r-2", 2.0, "ready", 12.0, {"ready": 12.0})
    assert repo.typical("r") == {"weights": 2.0, "ready": 11.0, "total": 11.0}


def test_launch_outcome_is_checked(db: Database) -> None:
    with pytest.raises(ValueError, match="launch outcome 'success'"):
        LaunchRepo(db).record("r", "r-1", 1.0, "success", 1.0, {})

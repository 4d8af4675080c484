"""Instances (one running recipe each), their state history, and launch timings.

The supervisor owns the logic; this module only stores what it observed, so that the
daemon can adopt or clean up its engines after a restart. A state changes only through
``record_transition``, which checks the transition and writes the history in the same
transaction as the new state.
"""

from __future__ import annotations

import builtins
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, TypedDict, get_args

from studioctl import states as sm
from studioctl.errors import ConflictError, NotFoundError
from studioctl.states import State
from studioctl.store.db import Database, Row, dumps, loads, now

Desired = Literal["running", "stopped"]


class ProcRef(TypedDict):
    """One process of an engine's tree: pid + create time identify it across pid reuse."""

    pid: int
    create_time: float


@dataclass(frozen=True)
class InstanceRow:
    """An instance as stored: what the supervisor observed, enough to adopt it after a
    restart (the supervisor's live view is ``lifecycle.runtime.Instance``)."""

    id: str
    recipe_id: str
    backend: str
    model: str
    served_name: str
    host: str
    port: int
    pid: int | None = None
    create_time: float | None = None  # psutil.Process.create_time() of pid
    pgid: int | None = None
    recipe_hash: str = ""
    recipe_json: str = "{}"  # the recipe as launched, for adoption and `ps`
    log_path: str = ""
    gpus: list[int] = field(default_factory=list)
    state: State = State.STARTING
    state_reason: str = ""
    restarts: int = 0
    crash_times: list[float] = field(default_factory=list)
    desired: Desired = "running"
    process_tree: list[ProcRef] = field(default_factory=list)
    created_at: float = 0.0  # 0: set by insert()
    updated_at: float = 0.0
    started_at: float | None = None
    ready_at: float | None = None
    stopped_at: float | None = None
    next_restart_at: float | None = None
    # The engine's own API key (the engine requires it; the gateway, probes and scrapes
    # send it). A secret: left out of to_dict() and repr.
    api_key: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["api_key"]
        return out


@dataclass(frozen=True)
class Transition:
    instance_id: str
    from_state: State | None  # None: the state the instance was created in
    to_state: State
    reason: str
    ts: float


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(InstanceRow))
# Fields update() may set. `state` changes only through record_transition(), with history.
UPDATABLE = frozenset(COLUMNS) - {"id", "created_at", "state"}
_JSON_COLUMNS = ("gpus", "crash_times", "process_tree")


def _encode(name: str, value: Any) -> Any:
    """A field's value as stored, validated: bad values fail here, not at read time."""
    if name == "gpus":
        if not all(isinstance(g, int) and not isinstance(g, bool) for g in value):
            raise ValueError(f"instance gpus must be a list of ints, got {value!r}")
        return dumps([int(g) for g in value])
    if name == "crash_times":
        return dumps([float(t) for t in value])
    if name == "process_tree":
        try:
            return dumps(
                [{"pid": int(p["pid"]), "create_time": float(p["create_time"])} for p in value]
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(
                f"instance process_tree must be a list of {{pid, create_time}}, got {value!r}"
            ) from exc
    if name == "desired" and value not in get_args(Desired):
        raise ValueError(f"instance desired must be 'running' or 'stopped', got {value!r}")
    if name == "state":
        return str(sm.parse(value))
    return value


def _from_row(row: Row) -> InstanceRow:
    values: dict[str, Any] = {name: row[name] for name in COLUMNS}
    for name in _JSON_COLUMNS:
        values[name] = loads(values[name])
    values["state"] = State(values["state"])
    return InstanceRow(**values)


class InstanceRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def insert(self, inst: InstanceRow, *, ts: float | None = None) -> InstanceRow:
        """Store a new instance (its first state goes into the history too)."""
        t = now(ts)
        values = {name: _encode(name, getattr(inst, name)) for name in COLUMNS}
        values["created_at"] = inst.created_at or t
        values["updated_at"] = inst.updated_at or t
        values["owner"] = self.db.owner or ""
        cols = ", ".join([*COLUMNS, "owner"])
        marks = ", ".join(f":{c}" for c in [*COLUMNS, "owner"])
        with self.db.transaction():
            if self.db.query_one("SELECT 1 FROM instances WHERE id = ?", (inst.id,)):
                raise ConflictError(f"instance {inst.id} already exists")
            self.db.execute(f"INSERT INTO instances ({cols}) VALUES ({marks})", values)
            self._history(inst.id, None, inst.state, inst.state_reason or "created", t)
        return self.require(inst.id)

    def update(self, instance_id: str, *, ts: float | None = None, **changes: Any) -> InstanceRow:
        """Set some fields (not ``state``: use record_transition); return the new record."""
        with self.db.transaction():
            self._set(instance_id, changes, now(ts))
        return self.require(instance_id)

    def _set(self, instance_id: str, changes: dict[str, Any], t: float) -> None:
        bad = set(changes) - UPDATABLE
        if bad:
            hint = " (change state with record_transition)" if "state" in bad else ""
            raise TypeError(f"InstanceRepo: cannot set {', '.join(sorted(bad))}{hint}")
        values = {name: _encode(name, v) for name, v in changes.items()}
        values.setdefault("updated_at", t)
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        cur = self.db.execute(
            f"UPDATE instances SET {assignments} WHERE id = :_id", {**values, "_id": instance_id}
        )
        if cur.rowcount == 0:
            raise NotFoundError(f"no instance {instance_id}")

    def _mine(self) -> tuple[str, list[Any]]:
        """The clause that keeps this daemon's rows (none when the database is ours alone)."""
        owner = self.db.owner
        return ("", []) if owner is None else (" AND owner = ?", [owner])

    def get(self, instance_id: str) -> InstanceRow | None:
        mine, more = self._mine()
        row = self.db.query_one(f"SELECT * FROM instances WHERE id = ?{mine}", (instance_id, *more))
        return _from_row(row) if row else None

    def require(self, instance_id: str) -> InstanceRow:
        inst = self.get(instance_id)
        if inst is None:
            raise NotFoundError(f"no instance {instance_id}", hint="see `studioctl ps --all`")
        return inst

    def list(
        self,
        include_stopped: bool = False,
        *,
        recipe_id: str | None = None,
        states: set[State] | frozenset[State] | None = None,
    ) -> list[InstanceRow]:
        """Instances, oldest first; ``stopped`` ones only with ``include_stopped``."""
        where, params = [], []
        if self.db.owner is not None:
            where.append("owner = ?")
            params.append(self.db.owner)
        if not include_stopped:
            where.append("state != ?")
            params.append(str(State.STOPPED))
        if recipe_id is not None:
            where.append("recipe_id = ?")
            params.append(recipe_id)
        if states is not None:
            where.append(f"state IN ({', '.join('?' for _ in states)})")
            params.extend(str(s) for s in states)
        sql = "SELECT * FROM instances"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [_from_row(r) for r in self.db.query(sql + " ORDER BY created_at, id", params)]

    def delete(self, instance_id: str) -> bool:
        """Forget an instance and its history (the id is still never handed out again)."""
        mine, more = self._mine()
        sql = f"DELETE FROM instances WHERE id = ?{mine}"
        return self.db.execute(sql, (instance_id, *more)).rowcount > 0

    def record_transition(
        self,
        instance_id: str,
        from_state: State | str,
        to_state: State | str,
        reason: str = "",
        ts: float | None = None,
        **changes: Any,
    ) -> InstanceRow:
        """Move an instance from ``from_state`` to ``to_state``, atomically.

        Refuses a transition the state machine does not allow (TransitionError), and a
        stale one: when the stored state is no longer ``from_state`` (someone else moved
        it), ConflictError. ``changes`` are other fields set in the same transaction
        (e.g. ``ready_at=ts``, ``pid=…``).
        """
        frm = sm.parse(from_state)
        to = sm.check(frm, to_state, instance_id=instance_id)
        t = now(ts)
        with self.db.transaction():
            row = self.db.query_one("SELECT state FROM instances WHERE id = ?", (instance_id,))
            if row is None:
                raise NotFoundError(f"no instance {instance_id}")
            if row["state"] != frm:
                raise ConflictError(
                    f"instance {instance_id} is {row['state']}, not {frm}: cannot move it to {to}",
                    code="state_changed",
                    details={"state": row["state"], "expected": str(frm), "to": str(to)},
                )
            self._set(instance_id, changes, t)
            self.db.execute(
                "UPDATE instances SET state = ?, state_reason = ? WHERE id = ?",
                (str(to), reason, instance_id),
            )
            self._history(instance_id, frm, to, reason, t)
        return self.require(instance_id)

    def _history(
        self, instance_id: str, frm: State | None, to: State, reason: str, ts: float
    ) -> None:
        self.db.execute(
            "INSERT INTO instance_transitions (instance_id, from_state, to_state, reason, ts)"
            " VALUES (?, ?, ?, ?, ?)",
            (instance_id, None if frm is None else str(frm), str(to), reason, ts),
        )

    def history(self, instance_id: str) -> builtins.list[Transition]:
        rows = self.db.query(
            "SELECT instance_id, from_state, to_state, reason, ts FROM instance_transitions"
            " WHERE instance_id = ? ORDER BY seq",
            (instance_id,),
        )
        return [
            Transition(
                instance_id=r["instance_id"],
                from_state=State(r["from_state"]) if r["from_state"] else None,
                to_state=State(r["to_state"]),
                reason=r["reason"],
                ts=r["ts"],
            )
            for r in rows
        ]

    def next_id(self, recipe_id: str) -> str:
        """A new instance id for ``recipe_id``: "<recipe>-1", "<recipe>-2", … never reused.

        The number is reserved when handed out, so two launches racing get different ids.
        """
        with self.db.transaction():
            row = self.db.query_one(
                "INSERT INTO instance_ids (recipe_id, last) VALUES (?, 1)"
                " ON CONFLICT (recipe_id) DO UPDATE SET last = instance_ids.last + 1"
                " RETURNING last",
                (recipe_id,),
            )
            assert row is not None
            n = int(row["last"])
            # An instance inserted with an explicit id (adoption, import) may hold it.
            while self.db.query_one("SELECT 1 FROM instances WHERE id = ?", (f"{recipe_id}-{n}",)):
                n += 1
            self.db.execute("UPDATE instance_ids SET last = ? WHERE recipe_id = ?", (n, recipe_id))
        return f"{recipe_id}-{n}"


# -- launch timings ----------------------------------------------------------------------

#: Launch outcomes; only LAUNCH_READY launches feed the ETA.
LAUNCH_READY = "ready"
LAUNCH_OUTCOMES = frozenset({LAUNCH_READY, "failed", "timeout", "cancelled"})


@dataclass(frozen=True)
class Launch:
    id: int
    recipe_id: str
    instance_id: str
    started_at: float
    outcome: str
    total_s: float
    stages: dict[str, float]  # stage -> seconds from start at which it was reached


class LaunchRepo:
    """How long each launch took to reach each stage: the ETA of the next launch."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self,
        recipe_id: str,
        instance_id: str,
        started_at: float,
        outcome: str,
        total_s: float,
        stages: dict[str, float],
    ) -> int:
        if outcome not in LAUNCH_OUTCOMES:
            raise ValueError(
                f"launch outcome {outcome!r}: expected one of {', '.join(sorted(LAUNCH_OUTCOMES))}"
            )
        row = self.db.query_one(
            "INSERT INTO launches (recipe_id, instance_id, started_at, outcome, total_s, stages)"
            " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (
                recipe_id,
                instance_id,
                started_at,
                outcome,
                float(total_s),
                dumps({k: float(v) for k, v in stages.items()}),
            ),
        )
        assert row is not None
        return int(row["id"])

    def recent(self, recipe_id: str, n: int = 20, *, outcome: str | None = None) -> list[Launch]:
        """The last ``n`` launches of a recipe, newest first."""
        sql = "SELECT * FROM launches WHERE recipe_id = ?"
        params: list[Any] = [recipe_id]
        if outcome is not None:
            sql += " AND outcome = ?"
            params.append(outcome)
        rows = self.db.query(sql + " ORDER BY started_at DESC, id DESC LIMIT ?", [*params, n])
        return [
            Launch(
                id=r["id"],
                recipe_id=r["recipe_id"],
                instance_id=r["instance_id"],
                started_at=r["started_at"],
                outcome=r["outcome"],
                total_s=r["total_s"],
                stages=loads(r["stages"]),
            )
            for r in rows
        ]

    def typical(self, recipe_id: str, n: int = 5) -> dict[str, float] | None:
        """Median seconds-from-start of each stage over the last ``n`` successful launches,
        in the order the stages are reached, plus ``"total"``; None when there is none.

        A stage missing from some launches (an engine version that does not log it) is
        the median of the launches that have it.
        """
        import statistics

        launches = self.recent(recipe_id, n, outcome=LAUNCH_READY)
        if not launches:
            return None
        seen: dict[str, list[float]] = {}
        for launch in launches:
            for stage, at in launch.stages.items():
                seen.setdefault(stage, []).append(at)
        medians = {stage: statistics.median(v) for stage, v in seen.items()}
        out = dict(sorted(medians.items(), key=lambda kv: kv[1]))
        out["total"] = statistics.median(launch.total_s for launch in launches)
        return out

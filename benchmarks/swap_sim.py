"""A discrete-event simulation of on-demand serving: the scheduler against FIFO swapping.

    PYTHONPATH=src python benchmarks/swap_sim.py [--requests 400] [--seed 7] [--load-s 4]
                                                 [--service-s 1] [--max-wait-s 40]
                                                 [--gap-s 0.5] [--slots N]
                                                 [--clients N] [--think-s 1]

Replays a mixed trace (the pattern A B A A C A B C …, arrivals jittered) on a host whose
memory holds one model at a time. An engine takes ``load_s`` to become ready, serves every
request it is sent in parallel in ``service_s`` (engines batch), and is gone ``stop_s``
after its last request. Every policy goes through the same loop: after every event the
planner is called with the state and the clock, and its actions are carried out. Prints
swaps (evictions), loads, drains, p50/p95/max queue wait (arrival to dispatch), p95 latency
(arrival to answer) and unserved requests side by side, for the scheduler (``plan``), strict
FIFO (``fifo_plan``: arrival order, a swap whenever the next request names another model,
as llama-swap serves) and collating FIFO (``batched_fifo_plan``: every ready model's
requests go at once, the oldest other model loads right away). ``--slots`` bounds how many
requests an engine serves at once (the rest wait in its own backlog, as a GPU-bound
engine's do).

``--clients N``: closed-loop clients instead of the open trace, as agents call models: each
client sends its next request ``--think-s`` after the answer to its previous one, following
the pattern from its own offset (client c starts at its c-th letter, ``gap_s`` after client
c-1), ``--requests / N`` requests each.

The tests (tests/scheduler/test_trace.py) import ``simulate`` and the traces from here.
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from studioctl.scheduler import (
    Action,
    Dispatch,
    Evict,
    Load,
    Loadable,
    Policy,
    Queued,
    Resident,
    ResidentState,
    SchedulerState,
    Wait,
    batched_fifo_plan,
    fifo_plan,
    plan,
)

Planner = Callable[[SchedulerState, float], list[Action]]
PATTERN = "ABAACABC"
#: The rows of the table: each policy's name and planner.
PLANNERS: tuple[tuple[str, Planner], ...] = (
    ("scheduler", plan),
    ("fifo", fifo_plan),
    ("fifo-batched", batched_fifo_plan),
)


@dataclass(frozen=True)
class SimConfig:
    load_s: float = 4.0
    service_s: float = 1.0
    stop_s: float = 0.5
    capacity_gb: float = 10.0
    model_gb: float = 8.0  # two never fit together
    known_load: bool = True  # the catalog tells the scheduler how long a load takes
    slots: int | None = None  # requests an engine serves at once (None: all it is sent)
    policy: Policy = field(default_factory=lambda: Policy(max_wait_s=20.0, min_resident_s=5.0))


@dataclass(frozen=True)
class ClosedLoop:
    """Clients that wait for an answer: client c sends ``scripts[c]`` in order, the first
    at ``starts[c]``, each next one ``think_s`` after the answer to the previous one."""

    scripts: tuple[tuple[str, ...], ...]
    starts: tuple[float, ...]
    think_s: float = 1.0


@dataclass
class Instance:
    instance_id: str
    recipe_id: str
    state: ResidentState = "starting"
    inflight: int = 0  # sent to it and not finished: running or in its own backlog
    running: int = 0
    backlog: list[tuple[float, str]] = field(default_factory=list)  # beyond its slots
    ready_at: float | None = None
    last_used: float | None = None


@dataclass
class Result:
    swaps: int = 0  # evictions to make room for another model
    loads: int = 0
    drains: int = 0  # evictions of an instance with requests in flight (none aborted)
    waits: list[float] = field(default_factory=list)  # arrival -> dispatch, per request
    waits_by_model: dict[str, list[float]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # arrival -> answered
    unserved: int = 0  # never answered (closed loop: never sent either, counted too)

    def quantile(self, q: float, of: str = "waits") -> float:
        values = sorted(getattr(self, of))
        return values[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def recorded_trace(repeats: int = 40, gap_s: float = 0.5) -> list[tuple[float, str]]:
    """The pattern A B A A C A B C …, one request every ``gap_s``."""
    models = (PATTERN * repeats)[: len(PATTERN) * repeats]
    return [(i * gap_s, m) for i, m in enumerate(models)]


def mixed_trace(n: int, seed: int, mean_gap_s: float = 0.5) -> list[tuple[float, str]]:
    """The pattern with random gaps and one model in ten swapped for a random one."""
    rng = random.Random(seed)
    t, out = 0.0, []
    for i in range(n):
        t += rng.expovariate(1 / mean_gap_s)
        m = PATTERN[i % len(PATTERN)]
        out.append((t, rng.choice("ABC") if rng.random() < 0.1 else m))
    return out


def closed_loop(
    clients: int, requests: int, gap_s: float = 0.5, think_s: float = 1.0
) -> ClosedLoop:
    """``clients`` agents, ``requests // clients`` requests each, client c following the
    pattern from its c-th letter and starting ``c * gap_s``."""
    per = max(1, requests // clients)
    scripts = tuple(
        tuple(PATTERN[(c + k) % len(PATTERN)] for k in range(per)) for c in range(clients)
    )
    return ClosedLoop(scripts, tuple(c * gap_s for c in range(clients)), think_s)


class Sim:
    def __init__(
        self,
        trace: Sequence[tuple[float, str]],
        planner: Planner,
        cfg: SimConfig,
        clients: ClosedLoop | None = None,
    ):
        self.cfg, self.planner, self.result = cfg, planner, Result()
        self.clients = clients
        self.events: list[tuple[float, int, str, str, float, str]] = []
        self.seq = 0
        self.waiting: dict[str, Queued] = {}
        self.instances: dict[str, Instance] = {}
        models = {m for _, m in trace}
        for i, (t, m) in enumerate(trace):
            self.push(t, "arrive", f"r{i}:{m}")
        self.total = len(trace)
        if clients is not None:
            for c, (script, start) in enumerate(zip(clients.scripts, clients.starts, strict=True)):
                models.update(script)
                self.total += len(script)
                if script:
                    self.push(start, "arrive", f"c{c}.0:{script[0]}")
        self.catalog = {
            m: Loadable(m, cfg.model_gb, load_s=cfg.load_s if cfg.known_load else 0.0)
            for m in sorted(models)
        }

    def push(self, t: float, kind: str, what: str, arrived: float = 0.0, rid: str = "") -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, what, arrived, rid))

    def state(self) -> SchedulerState:
        residents = tuple(
            Resident(
                i.instance_id,
                i.recipe_id,
                i.state,
                (),
                self.cfg.model_gb,
                i.inflight,
                i.last_used,
                i.ready_at,
            )
            for i in self.instances.values()
        )
        return SchedulerState(
            tuple(self.waiting.values()),
            residents,
            self.catalog,
            {0: self.cfg.capacity_gb},
            self.cfg.policy,
        )

    def run(self) -> Result:
        while self.events:
            now = self.events[0][0]
            while self.events and self.events[0][0] <= now:
                _, _, kind, what, arrived, rid = heapq.heappop(self.events)
                self.on_event(now, kind, what, arrived, rid)
            self.settle(now)
        self.result.unserved = self.total - len(self.result.latencies)
        return self.result

    def on_event(self, now: float, kind: str, what: str, arrived: float, rid: str) -> None:
        if kind == "arrive":
            request_id, model = what.split(":")
            self.waiting[request_id] = Queued(request_id, model, "t", now)
        elif kind == "ready":
            inst = self.instances[what]
            inst.state, inst.ready_at = "ready", now
        elif kind == "done":
            inst = self.instances[what]
            inst.inflight -= 1
            inst.running -= 1
            inst.last_used = now
            self.result.latencies.append(now - arrived)
            self.answered(now, rid)
            if inst.backlog:
                self.start(now, inst, *inst.backlog.pop(0))
            if inst.state == "draining" and inst.inflight == 0:
                self.stop(now, inst)
        elif kind == "gone":
            del self.instances[what]

    def answered(self, now: float, rid: str) -> None:
        """A closed-loop client sends its next request ``think_s`` after an answer."""
        if self.clients is None or not rid.startswith("c"):
            return
        client, _, k = rid[1:].partition(".")
        script = self.clients.scripts[int(client)]
        nxt = int(k) + 1
        if nxt < len(script):
            self.push(now + self.clients.think_s, "arrive", f"c{client}.{nxt}:{script[nxt]}")

    def start(self, now: float, inst: Instance, arrived: float, rid: str) -> None:
        inst.running += 1
        self.push(now + self.cfg.service_s, "done", inst.instance_id, arrived, rid)

    def stop(self, now: float, inst: Instance) -> None:
        inst.state = "stopping"
        self.push(now + self.cfg.stop_s, "gone", inst.instance_id)

    def settle(self, now: float) -> None:
        """Plan and act until the plan asks for nothing new (a level-triggered caller)."""
        for _ in range(100):
            acted = False
            for action in self.planner(self.state(), now):
                acted |= self.apply(now, action)
            if not acted:
                return
        raise RuntimeError("the planner did not settle")

    def apply(self, now: float, action: Action) -> bool:
        if isinstance(action, Load):
            self.result.loads += 1
            inst_id = f"i{self.result.loads}"
            self.instances[inst_id] = Instance(inst_id, action.recipe_id)
            self.push(now + self.cfg.load_s, "ready", inst_id)
        elif isinstance(action, Evict):
            inst = self.instances[action.instance_id]
            assert inst.state == "ready", f"evicted a {inst.state} instance"
            self.result.swaps += 1
            if inst.inflight:
                self.result.drains += 1
                inst.state = "draining"
            else:
                self.stop(now, inst)
        elif isinstance(action, Dispatch):
            (inst,) = [
                i
                for i in self.instances.values()
                if i.recipe_id == action.model and i.state == "ready"
            ]
            for request_id in action.request_ids:
                arrived = self.waiting.pop(request_id).enqueued_at
                self.result.waits.append(now - arrived)
                self.result.waits_by_model.setdefault(action.model, []).append(now - arrived)
                inst.inflight += 1
                if self.cfg.slots is None or inst.running < self.cfg.slots:
                    self.start(now, inst, arrived, request_id)
                else:
                    inst.backlog.append((arrived, request_id))
        elif isinstance(action, Wait):
            if action.until is not None and action.until > now:
                self.push(action.until, "tick", "")
            return False
        return True


def simulate(
    trace: Sequence[tuple[float, str]],
    planner: Planner,
    cfg: SimConfig,
    clients: ClosedLoop | None = None,
) -> Result:
    return Sim(trace, planner, cfg, clients).run()


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--load-s", type=float, default=4.0)
    ap.add_argument("--service-s", type=float, default=1.0)
    ap.add_argument("--max-wait-s", type=float, default=40.0)
    ap.add_argument("--gap-s", type=float, default=0.5, help="mean time between requests")
    ap.add_argument("--slots", type=int, default=None, help="requests an engine serves at once")
    ap.add_argument("--clients", type=int, default=0, help="closed-loop clients (0: open trace)")
    ap.add_argument("--think-s", type=float, default=1.0, help="a client's pause after an answer")
    args = ap.parse_args(argv)
    if args.clients < 0 or args.requests < 1:
        ap.error("--clients must be ≥ 0 and --requests ≥ 1")
    policy = Policy(max_wait_s=args.max_wait_s, min_resident_s=5.0)
    cfg = SimConfig(load_s=args.load_s, service_s=args.service_s, slots=args.slots, policy=policy)
    trace: list[tuple[float, str]] = []
    clients = None
    if args.clients:
        clients = closed_loop(args.clients, args.requests, args.gap_s, args.think_s)
        load = (
            f"{args.clients} clients x {len(clients.scripts[0])} requests, think {args.think_s:g}s"
        )
    else:
        trace = mixed_trace(args.requests, args.seed, args.gap_s)
        load = f"{len(trace)} requests over {trace[-1][0]:.0f}s"
    print(
        f"{load}, load {cfg.load_s:g}s, service {cfg.service_s:g}s x {cfg.slots or 'any'} "
        f"at once, max_wait {policy.max_wait_s:g}s, one model fits"
    )
    print(
        f"{'policy':<14}{'swaps':>7}{'loads':>7}{'drains':>8}{'p50 wait':>10}"
        f"{'p95 wait':>10}{'max wait':>10}{'p95 lat':>10}{'unserved':>10}"
    )
    for name, planner in PLANNERS:
        r = simulate(trace, planner, cfg, clients)
        print(
            f"{name:<14}{r.swaps:>7}{r.loads:>7}{r.drains:>8}{r.quantile(0.5):>9.1f}s"
            f"{r.quantile(0.95):>9.1f}s{max(r.waits, default=0.0):>9.1f}s"
            f"{r.quantile(0.95, 'latencies'):>9.1f}s{r.unserved:>10}"
        )


if __name__ == "__main__":
    main()

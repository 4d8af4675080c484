"""Which model runs where and when: a pure function from the queue, the resident instances,
the catalog, the capacities and the clock to actions (load, evict, dispatch, wait).

No I/O, no asyncio, no clock reads: the orchestrator gathers the state, calls ``plan`` and
carries out the actions. ``fifo_plan`` (strict first in, first out, as a per-request
swapping proxy serves) and ``batched_fifo_plan`` (FIFO that collates every ready model's
requests) are the naive baselines it is measured against (``benchmarks/swap_sim.py``;
``scheduler.policy: fifo`` runs the daemon on ``fifo_plan``).
"""

from studioctl.scheduler.fifo import batched_fifo_plan, fifo_plan
from studioctl.scheduler.model import (
    Action,
    Dispatch,
    Evict,
    Group,
    Load,
    Loadable,
    Policy,
    Queued,
    Resident,
    ResidentState,
    SchedulerState,
    Wait,
)
from studioctl.scheduler.policy import plan

__all__ = [
    "Action",
    "Dispatch",
    "Evict",
    "Group",
    "Load",
    "Loadable",
    "Policy",
    "Queued",
    "Resident",
    "ResidentState",
    "SchedulerState",
    "Wait",
    "batched_fifo_plan",
    "fifo_plan",
    "plan",
]

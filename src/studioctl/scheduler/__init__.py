"""Which model runs where and when: a pure function from the queue, the resident instances,
the catalog, the capacities and the clock to actions (load, evict, dispatch, wait).

No I/O, no asyncio, no clock reads: the orchestrator gathers the state, calls ``plan`` and
carries out the actions. ``fifo_plan`` is the naive baseline it is measured against
(``benchmarks/swap_sim.py``).
"""

from studioctl.scheduler.fifo import fifo_plan
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
    "fifo_plan",
    "plan",
]

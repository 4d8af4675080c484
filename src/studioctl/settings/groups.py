"""Groups of recipes (the ``scheduler.groups`` setting), after llama-swap's groups.

A group names recipes (``members``, or a recipe's own ``group`` key) and how they share the
GPUs with each other and with everything else:

- ``swap`` (default true): at most one member runs at a time; loading one evicts the others;
- ``exclusive`` (default true): loading a member evicts every model outside the group
  (other groups' members and models in no group), except members of ``persistent`` groups;
- ``persistent`` (default false): other groups never evict its members (swapping inside the
  group still applies).

A recipe is in at most one group. Recipes in no group are placed by memory alone (llama-swap,
which cannot measure memory, puts them in one exclusive default group instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The keys a group may have, in display order.
GROUP_KEYS = ("members", "swap", "exclusive", "persistent")


@dataclass(frozen=True)
class Group:
    """One group: its name, member recipe ids and rules (see the module docstring)."""

    name: str
    members: tuple[str, ...] = ()
    swap: bool = True
    exclusive: bool = True
    persistent: bool = False

    def to_dict(self) -> dict[str, Any]:
        """As written in ``studioctl.yaml`` (without the name, which is its key)."""
        return {
            "members": list(self.members),
            "swap": self.swap,
            "exclusive": self.exclusive,
            "persistent": self.persistent,
        }

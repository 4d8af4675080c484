"""Placement: the port an engine gets, which GPUs it uses, and which resident instances it
would share them with.

Pure functions (the OS is asked through the ``holder`` callable), used alike by ``launch``
(refuse unless ``--force``), ``switch`` (evict first when the two share a GPU) and
``launch --dry-run`` (the same port, and what would be in the way).

A recipe without ``gpus`` runs with the daemon's own view of the devices: it sees, and
will allocate memory on, every visible GPU. So on a host with ``visible`` GPUs an empty
list means ``0 .. visible-1``; on a host without GPUs (``visible == 0``) it means none,
and such an instance conflicts with nobody (there is no GPU memory to run out of).

The bind address is settled here too: a recipe's own ``host``, else ``engines.host``.
``GroupRules`` applies the ``scheduler.groups`` setting: which running models loading one
evicts by rule. Memory (need, capacity, shares per GPU) is ``lifecycle.memory``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from studioctl.errors import ConflictError

if TYPE_CHECKING:
    from studioctl.recipes import Recipe
    from studioctl.settings import Group


@dataclass(frozen=True)
class Resident:
    """An instance that holds (or is about to hold) GPUs."""

    instance_id: str
    recipe_id: str
    gpus: tuple[int, ...]  # as the recipe or --gpus named them; () = every visible GPU


@dataclass(frozen=True)
class Conflict:
    """A resident instance in the way of a new engine, and the GPUs both would use."""

    instance_id: str
    recipe_id: str
    gpus: tuple[int, ...]
    all_gpus: bool  # the resident named no GPUs: it holds every visible one

    def message(self) -> str:
        which = ",".join(map(str, self.gpus))
        why = " (its recipe names no gpus: it uses every visible GPU)" if self.all_gpus else ""
        return f"GPU {which} is held by {self.instance_id} (recipe {self.recipe_id}){why}"


def gpu_set(gpus: Sequence[int], visible: int) -> frozenset[int]:
    """The GPUs an engine uses: its own list, or every visible GPU when the list is empty."""
    return frozenset(gpus) if gpus else frozenset(range(max(0, visible)))


def conflicts(residents: Iterable[Resident], gpus: Sequence[int], visible: int) -> list[Conflict]:
    """The residents that share a GPU with an engine on ``gpus``, in the given order."""
    mine = gpu_set(gpus, visible)
    out: list[Conflict] = []
    for r in residents:
        shared = mine & gpu_set(r.gpus, visible)
        if shared:
            out.append(Conflict(r.instance_id, r.recipe_id, tuple(sorted(shared)), not r.gpus))
    return out


def bind_host(recipe: Recipe, default: str) -> str:
    """The address an engine listens on: the recipe's own ``host`` when it names one, else
    the ``engines.host`` setting (``default``)."""
    return recipe.host if "host" in recipe.model_fields_set else default


def placed(recipe: Recipe, default_host: str) -> Recipe:
    """The recipe as it will run: its bind address settled (stored with the instance, so a
    restart or an adoption uses the same address)."""
    host = bind_host(recipe, default_host)
    return recipe if host == recipe.host else recipe.model_copy(update={"host": host})


def pick_port(
    host: str,
    *,
    asked: int | None,
    recipe_port: int | None,
    port_range: tuple[int, int],
    used: Collection[int],
    holder: Callable[[str, int], str | None],
) -> int:
    """The engine's port: ``--port``, else the recipe's ``port``, else the first port of
    ``port_range`` (inclusive) that no active instance has (``used``: an engine still
    starting may not listen yet) and nothing listens on (``holder(host, port)`` names who
    does). ConflictError ``no_free_port`` when the range is full."""
    if asked is not None:
        return asked
    if recipe_port is not None:
        return recipe_port
    low, high = port_range
    for p in range(low, high + 1):
        if p not in used and holder(host, p) is None:
            return p
    raise ConflictError(
        f"no free port in the engine range {low}-{high}",
        code="no_free_port",
        hint="widen engines.port_min/port_max in studioctl.yaml",
    )


def refuse_shared_gpus(recipe_id: str, found: Sequence[Conflict]) -> None:
    """ConflictError (exit 5) naming the first instance in the way and the GPU(s)."""
    if not found:
        return
    c = found[0]
    raise ConflictError(
        c.message(),
        code="gpus_busy",
        hint=f"evict it first, use `studioctl switch {c.instance_id} {recipe_id}`, "
        "or pass --force to run both",
        details={
            "conflicts": [
                {"instance": x.instance_id, "recipe": x.recipe_id, "gpus": list(x.gpus)}
                for x in found
            ]
        },
    )


class GroupRules:
    """The ``scheduler.groups`` setting applied to recipes (llama-swap's group rules).

    A recipe's group is its ``group`` key, else the group listing it under ``members``
    (``recipes.check_group`` refuses a recipe where the two disagree). Pinned recipes are
    the caller's business: a rule here may ask for one to leave, and the caller then does
    not place the new model (a pinned model is never evicted for another).
    """

    def __init__(self, groups: Sequence[Group], own: Mapping[str, str | None]) -> None:
        """``groups``: the setting; ``own``: recipe id → its ``group`` key (None: unset)."""
        self._groups = {g.name: g for g in groups}
        self._listed = {m: g.name for g in groups for m in g.members}
        self._own = dict(own)

    def group_of(self, recipe_id: str) -> Group | None:
        name = self._own.get(recipe_id) or self._listed.get(recipe_id)
        return self._groups.get(name) if name else None

    def must_leave(self, target: str, running: Iterable[str]) -> list[str]:
        """The running recipes that loading ``target`` evicts, in the given order:

        - members of its own group when the group swaps;
        - everything outside its group when the group is exclusive, except members of
          persistent groups.

        A recipe in no group evicts nothing by rule (memory decides)."""
        mine = self.group_of(target)
        if mine is None:
            return []
        out: list[str] = []
        for rid in running:
            if rid == target or rid in out:
                continue
            theirs = self.group_of(rid)
            if theirs is not None and theirs.name == mine.name:
                if mine.swap:
                    out.append(rid)
            elif mine.exclusive and not (theirs is not None and theirs.persistent):
                out.append(rid)
        return out

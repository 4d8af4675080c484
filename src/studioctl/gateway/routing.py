"""Which engine instance serves a model name: the gateway's route table.

The daemon tells the table about instances (:meth:`RouteTable.instances_changed`, with every
instance whenever one changes state) and recipes (:meth:`RouteTable.recipes_changed`, every
recipe's served names, so that a known-but-stopped model answers 503 with a hint instead of
404); :meth:`RouteTable.update` sets both at once. The proxy calls
:meth:`RouteTable.resolve` once per request; it is a dictionary lookup.

    resolve(model)
      served by a ready instance                 → that Upstream (the least busy if several)
      served by a starting/loading/draining one  → 503 model_loading, Retry-After
      named by a recipe, nothing running         → 503 model_not_running, hint "studioctl launch R"
      anything else                              → 404 model_not_found

The table also counts requests in flight per instance (``begin``/``end``); eviction drains on
:meth:`RouteTable.inflight` reaching 0.

``GET /v1/models`` (:meth:`RouteTable.models`) lists what a request may name: every served
name and alias of a running instance, and of a recipe loaded on demand (``recipes_changed``'s
``on_demand``), each with ``studioctl.state`` one of ``ready``, ``loading``, ``starting``,
``draining`` or ``available`` (not running: the first request loads it). A recipe that is not
loaded on demand and not running is left out (a request for it is refused
``model_not_running``). The list is built on every change of the table, never per request:
clients poll it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from studioctl.errors import GatewayError
from studioctl.promtext import escape
from studioctl.states import PENDING, ROUTABLE, State

if TYPE_CHECKING:
    from studioctl.lifecycle.runtime import Instance

# Plain strings (Upstream.state is one), compared on every request.
(READY,) = (s.value for s in ROUTABLE)
STOPPED = State.STOPPED.value
PENDING_STATES = frozenset(s.value for s in PENDING)
# Pending states that end in ready (draining ends in stopped): requests may wait for them.
LOADING_STATES = frozenset((State.STARTING.value, State.LOADING.value))
# Seconds a client is told to wait for an instance that is loading or draining.
LOADING_RETRY_AFTER_S = 5.0
# /v1/models' state of a recipe loaded on demand that is not running.
AVAILABLE = "available"


@dataclass(frozen=True, slots=True)
class Upstream:
    """One engine instance as the gateway sees it."""

    instance_id: str
    recipe_id: str
    host: str
    port: int
    state: str
    model_names: tuple[str, ...]  # served names and aliases
    # The names the engine itself answers to (its --served-model-name). Empty: all of
    # model_names. A request naming another alias is sent with engine_names[0] instead.
    engine_names: tuple[str, ...] = ()
    # The engine's own API key (generated per instance): every call the gateway makes to it
    # (proxied requests, /tokenize) sends ``Authorization: Bearer <api_key>``. None: no key.
    api_key: str | None = field(default=None, repr=False)
    base_url: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        object.__setattr__(self, "base_url", f"http://{host}:{self.port}")


class RouteTable:
    """Model name → upstream instance, rebuilt wholesale by :meth:`update`.

    Reads never lock: :meth:`update` builds new dictionaries and swaps them in, so a request
    sees either the old table or the new one, never half of each.
    """

    def __init__(self) -> None:
        self._ready: dict[str, tuple[Upstream, ...]] = {}
        self._pending: dict[str, Upstream] = {}
        self._known: dict[str, str] = {}
        self._upstreams: tuple[Upstream, ...] = ()
        self._inflight: dict[str, int] = {}
        self._last_used: dict[str, float] = {}
        self._created = int(time.time())
        # What instances_changed() and recipes_changed() were last told.
        self._instance_names: dict[str, str] = {}
        self._recipe_names: dict[str, str] = {}
        self._on_demand: frozenset[str] = frozenset()  # recipe ids a request loads
        self._models: list[dict[str, Any]] = []  # /v1/models' data, built by update()
        self._listeners: list[Callable[[], None]] = []
        # For model_loading's Retry-After: each recipe's last load (start → ready, seconds)
        # and when each loading instance started (wall clock, as the instances say).
        self._load_s: dict[str, float] = {}
        self._loading_since: dict[str, float] = {}

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change of the table (the waiting rooms wake on it:
        a request queued for a loading model is sent the moment it is ready, no polling)."""
        self._listeners.append(listener)

    # -- updates (daemon side) ----------------------------------------------------------

    def instances_changed(self, instances: Sequence[Instance]) -> None:
        """Rebuild the table from every instance (stopped ones included, in the
        supervisor's order). Stopped ones serve nothing but keep their names known (a recipe
        launched after start-up then answers 503 model_not_running once evicted)."""
        ups = [
            Upstream(
                instance_id=i.id,
                recipe_id=i.recipe.id,
                host=i.host if i.host not in ("0.0.0.0", "::", "") else "127.0.0.1",
                port=i.port,
                state=str(i.state),
                model_names=tuple(i.recipe.model_names),
                engine_names=(i.recipe.served_name,),  # aliases are rewritten to it
                api_key=i.api_key,  # the engine's own key: sent on every call to it
            )
            for i in instances
            if str(i.state) != STOPPED
        ]
        self._instance_names = {n: i.recipe.id for i in instances for n in i.recipe.model_names}
        for i in instances:
            if i.ready_at is not None and i.started_at is not None and i.ready_at >= i.started_at:
                self._load_s[i.recipe.id] = i.ready_at - i.started_at
        self._loading_since = {
            i.id: i.started_at
            for i in instances
            if i.started_at is not None and str(i.state) in LOADING_STATES
        }
        self.update(ups, {**self._instance_names, **self._recipe_names})

    def recipes_changed(self, names: Mapping[str, str], on_demand: Collection[str] = ()) -> None:
        """Every recipe's served names and aliases → recipe id (the recipes on disk), and the
        ids of those a request loads on demand (listed by ``/v1/models`` while not running)."""
        self._recipe_names = dict(names)
        self._on_demand = frozenset(on_demand)
        self.update(self._upstreams, {**self._instance_names, **self._recipe_names})

    def update(self, upstreams: Iterable[Upstream], known: Mapping[str, str]) -> None:
        """Replace the table. ``known`` maps every recipe's model names to the recipe id."""
        ready: dict[str, list[Upstream]] = {}
        pending: dict[str, Upstream] = {}
        ups = tuple(upstreams)
        for up in ups:
            for name in up.model_names:
                if up.state == READY:
                    ready.setdefault(name, []).append(up)
                elif up.state in PENDING_STATES:
                    # A loading one wins over a draining one (a swap: requests wait for it).
                    seen = pending.get(name)
                    if seen is None or (
                        seen.state not in LOADING_STATES and up.state in LOADING_STATES
                    ):
                        pending[name] = up
        self._ready = {name: tuple(lst) for name, lst in ready.items()}
        self._pending = pending
        self._known = dict(known)
        self._upstreams = ups
        self._created = int(time.time())
        self._models = self._listing()
        for listener in self._listeners:
            listener()

    # -- the hot path -------------------------------------------------------------------

    def resolve(self, model: str) -> Upstream:
        """The instance to send a request for ``model`` to, or the GatewayError to answer."""
        candidates = self._ready.get(model)
        if candidates is not None:
            if len(candidates) == 1:
                return candidates[0]
            inflight = self._inflight
            return min(candidates, key=lambda u: inflight.get(u.instance_id, 0))
        pending = self._pending.get(model)
        if pending is not None:
            return _raise_loading(model, pending, self.load_left(model))
        recipe = self._known.get(model)
        if recipe is not None:
            raise GatewayError(
                503,
                "model_not_running",
                f"model {model!r} (recipe {recipe!r}) is not running",
                hint=f"studioctl launch {recipe}",
            )
        raise GatewayError(
            404,
            "model_not_found",
            f"the model {model!r} does not exist",
            param="model",
        )

    def load_left(self, model: str) -> float | None:
        """Seconds until ``model``'s loading instance should be ready: its recipe's last
        load time less how long this one has been loading. None when either is unknown or
        the load is overdue."""
        up = self._pending.get(model)
        if up is None:
            return None
        expected = self._load_s.get(up.recipe_id)
        since = self._loading_since.get(up.instance_id)
        if expected is None or since is None:
            return None
        left = expected - (time.time() - since)
        return left if left > 0 else None

    def loading(self, model: str) -> bool:
        """Whether ``model`` has no ready instance but one starting or loading."""
        up = self._pending.get(model)
        return up is not None and up.state in LOADING_STATES and model not in self._ready

    def knows(self, model: str) -> bool:
        """Whether ``model`` names an instance or a recipe (else it is an invented name)."""
        return model in self._ready or model in self._pending or model in self._known

    def recipe_of(self, model: str) -> str | None:
        """The recipe id a model name belongs to (a recipe on disk, or a running instance's)."""
        return self._known.get(model)

    def begin(self, instance_id: str) -> None:
        self._inflight[instance_id] = self._inflight.get(instance_id, 0) + 1

    def end(self, instance_id: str) -> None:
        self._last_used[instance_id] = time.time()
        n = self._inflight.get(instance_id, 0) - 1
        if n > 0:
            self._inflight[instance_id] = n
        else:
            self._inflight.pop(instance_id, None)

    def last_used(self, instance_id: str) -> float | None:
        """When the last request to the instance ended (wall clock), or None: idle unload."""
        return self._last_used.get(instance_id)

    def inflight(self, instance_id: str | None = None) -> int:
        """Requests in flight to one instance, or to all of them."""
        if instance_id is None:
            return sum(self._inflight.values())
        return self._inflight.get(instance_id, 0)

    # -- listings -----------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """``/v1/models`` data, as built at the last change (the caller must not change it)."""
        return self._models

    def _listing(self) -> list[dict[str, Any]]:
        """Ready names first, then the starting, loading or draining ones, then the names of
        recipes loaded on demand that are not running (``available``); the OpenAI fields
        (id, object, created, owned_by) plus ``studioctl``: state, recipe, instance."""
        out: list[dict[str, Any]] = []
        seen: set[str] = set()
        for name, ups in self._ready.items():
            up = ups[0]
            out.append(self._entry(name, up.recipe_id, READY, up.instance_id))
            seen.add(name)
        for name, up in self._pending.items():
            if name not in seen:
                out.append(self._entry(name, up.recipe_id, up.state, up.instance_id))
                seen.add(name)
        for name, recipe in self._known.items():
            if name not in seen and recipe in self._on_demand:
                out.append(self._entry(name, recipe, AVAILABLE, None))
                seen.add(name)
        return out

    def upstreams(self) -> tuple[Upstream, ...]:
        return self._upstreams

    def metrics_lines(self) -> str:
        """Prometheus lines for instance states and in-flight counts (for /metrics)."""
        lines = [
            "# HELP studioctl_instance_up 1 for each instance known to the gateway, by state.",
            "# TYPE studioctl_instance_up gauge",
        ]
        for up in self._upstreams:
            lines.append(
                f'studioctl_instance_up{{instance="{escape(up.instance_id)}",'
                f'recipe="{escape(up.recipe_id)}",state="{escape(up.state)}"}} 1'
            )
        lines.append("# HELP studioctl_instance_inflight Gateway requests in flight per instance.")
        lines.append("# TYPE studioctl_instance_inflight gauge")
        for up in self._upstreams:
            lines.append(
                f'studioctl_instance_inflight{{instance="{escape(up.instance_id)}"}} '
                f"{self._inflight.get(up.instance_id, 0)}"
            )
        return "\n".join(lines) + "\n"

    def _entry(self, name: str, recipe: str, state: str, instance: str | None) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": self._created,
            "owned_by": "studioctl",
            "studioctl": {"state": state, "recipe": recipe, "instance": instance},
        }


def loading_retry_after(left_s: float | None) -> float:
    """model_loading's Retry-After: the load's expected time left (``load_left``), at least
    1 s; LOADING_RETRY_AFTER_S when it is not known."""
    return LOADING_RETRY_AFTER_S if left_s is None else max(1.0, left_s)


def _raise_loading(model: str, up: Upstream, left_s: float | None) -> Upstream:
    raise GatewayError(
        503,
        "model_loading",
        f"model {model!r} is {up.state} (instance {up.instance_id}); retry shortly",
        retry_after=loading_retry_after(left_s),
    )

"""The lifecycle's seams: the engine HTTP client against a real local server, the hooks the
supervisor calls (a real supervisor driving a stand-in engine in-process), the one port picker
(used alike by `launch` and `launch --dry-run`), and the store below lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiohttp import web

from daemon_helpers import alive, running_daemon
from helpers import free_port_block
from standin.helpers import write_standin_recipe
from studioctl.errors import EXIT_CONFLICT, ConflictError
from studioctl.lifecycle import placement, readiness
from studioctl.lifecycle.engine_http import EngineHttp, EngineHttpError
from studioctl.lifecycle.events import EventBus
from studioctl.lifecycle.hooks import NullHooks
from studioctl.lifecycle.runtime import Instance
from studioctl.lifecycle.supervisor import Supervisor
from studioctl.settings import load_settings
from studioctl.store import open_database

# --------------------------------------------------------------------------- EngineHttp


@contextlib.asynccontextmanager
async def engine_server(big: int = 0) -> AsyncIterator[tuple[str, list[str | None]]]:
    """A real HTTP server on 127.0.0.1: /ok 200, /warm 503, /slow (2 s), /big (``big``
    bytes). Yields its base URL and the Authorization headers it saw."""
    seen: list[str | None] = []

    async def ok(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.Response(text="fine")

    async def warm(request: web.Request) -> web.Response:
        return web.Response(status=503, text="warming up")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2.0)
        return web.Response(text="late")

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * big)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/warm", warm)
    app.router.add_get("/slow", slow)
    app.router.add_get("/big", large)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()
        sock.close()


def test_engine_http_answers_sends_the_key_and_fails_as_engine_http_error() -> None:
    async def main() -> None:
        http = EngineHttp(max_body_bytes=1000)
        async with engine_server(big=5000) as (base, seen):
            a = await http.get(base + "/ok", api_key="sce-k", timeout_s=5)
            assert (a.status, a.body, a.text()) == (200, b"fine", "fine")
            b = await http.get(base + "/ok", timeout_s=5)
            assert seen == ["Bearer sce-k", None]
            assert (await http.get(base + "/warm", timeout_s=5)).status == 503
            t0 = time.monotonic()
            with pytest.raises(EngineHttpError, match="/slow"):
                await http.get(base + "/slow", timeout_s=0.3)
            assert time.monotonic() - t0 < 1.5
            with pytest.raises(EngineHttpError, match="above 1000 bytes"):
                await http.get(base + "/big", timeout_s=5)
            # readiness probes speak through it: every path 200, or not ready.
            assert await readiness.probe(http, base, ["/ok"], api_key="k2")
            assert not await readiness.probe(http, base, ["/ok", "/warm"])
            assert not await readiness.probe(http, base, ["/slow"], timeout=0.2)
            assert b.status == 200
        with pytest.raises(EngineHttpError):  # nobody listens there any more
            await http.get(base + "/ok", timeout_s=2)
        assert isinstance(EngineHttpError("x"), OSError)
        session = http.session
        await http.close()
        assert session.closed and http.session is None
        with pytest.raises(EngineHttpError, match="closed"):
            await http.get(base + "/ok", timeout_s=1)

    asyncio.run(main())


def test_engine_http_can_be_built_before_the_loop_runs() -> None:
    http = EngineHttp()  # the daemon builds it first; the session comes with the first call

    async def main() -> int:
        async with engine_server() as (base, _):
            answer = await http.get(base + "/ok", timeout_s=5)
        await http.close()
        return answer.status

    assert asyncio.run(main()) == 200


# --------------------------------------------------------------------------- hooks


class RecordingHooks(NullHooks):
    """Records each instance list it is told; reports one request in flight to every
    instance until ``busy_until``."""

    def __init__(self) -> None:
        self.lists: list[list[tuple[str, str]]] = []
        self.busy_until = 0.0
        self.vram_asked: list[tuple[str, int | None]] = []

    def instances_changed(self, instances: Sequence[Instance]) -> None:
        self.lists.append([(i.id, str(i.state)) for i in instances])

    def inflight(self, instance_id: str) -> int:
        return 1 if time.monotonic() < self.busy_until else 0

    async def vram_released(self, inst: Instance, held: int | None) -> dict[str, Any] | None:
        self.vram_asked.append((inst.id, held))
        return {"vram_released": True, "vram_wait_s": 0.0}


def test_the_supervisor_tells_its_hooks_every_instance_and_drains_on_their_count() -> None:
    write_standin_recipe("hooked")
    write_standin_recipe("other")

    async def main() -> tuple[RecordingHooks, dict[str, Any], set[tuple[int, float]]]:
        hooks = RecordingHooks()
        db = open_database()
        http = EngineHttp()
        sup = Supervisor(
            settings=load_settings(), db=db, bus=EventBus(None), hooks=hooks, engine_http=http
        )
        seen: set[tuple[int, float]] = set()
        try:
            await sup.start()
            first = await sup.launch("hooked")
            seen.update(first.tree.items())
            await sup.evict(first.id, force=True, grace=5.0)
            second = await sup.launch("other")
            seen.update(second.tree.items())
            hooks.busy_until = time.monotonic() + 0.8  # a gateway request still running
            report = await sup.evict(second.id, drain_timeout=10.0, grace=5.0)
            return hooks, report.to_dict(), seen
        finally:
            await sup.close(stop_engines=True)
            await http.close()  # given to the supervisor: the caller closes it
            db.close()

    hooks, report, seen = asyncio.run(main())
    assert not [p for p in seen if alive(*p)]
    # Every change is announced with ALL instances, stopped ones included.
    assert hooks.lists[-1] == [("hooked-1", "stopped"), ("other-1", "stopped")]
    assert ("hooked-1", "ready") in [x for lst in hooks.lists for x in lst]
    assert any(lst == [("hooked-1", "stopped"), ("other-1", "starting")] for lst in hooks.lists)
    # The drain waited for the gateway's request, then the VRAM hook was asked.
    assert report["drained"] is True and report["drain_s"] >= 0.7
    assert report["state"] == "stopped" and report["vram_released"] is True
    assert [iid for iid, _ in hooks.vram_asked] == ["hooked-1", "other-1"]


# --------------------------------------------------------------------------- port picker


def test_pick_port_order_and_refusal() -> None:
    taken = {20001}

    def holder(host: str, port: int) -> str | None:
        assert host == "127.0.0.1"
        return "pid 7 (x)" if port in taken else None

    def pick(asked: int | None = None, recipe_port: int | None = None, used: set[int] = set()):  # noqa: B006
        return placement.pick_port(
            "127.0.0.1",
            asked=asked,
            recipe_port=recipe_port,
            port_range=(20000, 20003),
            used=used,
            holder=holder,
        )

    assert pick(asked=9, recipe_port=8) == 9  # --port first (checked for conflicts later)
    assert pick(recipe_port=8) == 8
    assert pick() == 20000
    assert pick(used={20000}) == 20002  # 20001 is listened on
    with pytest.raises(ConflictError, match="no free port in the engine range 20000-20003") as e:
        pick(used={20000, 20002, 20003})
    assert e.value.code == "no_free_port"


def test_dry_run_and_launch_pick_the_same_port() -> None:
    base = free_port_block(3)
    env = {
        "STUDIOCTL_ENGINES_PORT_MIN": str(base),
        "STUDIOCTL_ENGINES_PORT_MAX": str(base + 2),
    }
    with running_daemon(env) as d, socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base))  # someone else listens on the first port
        squatter.listen(1)
        for rid in ("pa", "pb", "pc"):
            d.recipe(rid, env={"STANDIN_STARTUP_S": "0.1"})
        # The first free port, skipping the one in use.
        assert d.cli_json("launch", "pa", "--dry-run", "--json")["port"] == base + 1
        assert d.launch("pa")["port"] == base + 1
        # The daemon's instance holds the next one: both say the last.
        assert d.cli_json("launch", "pb", "--dry-run", "--json")["port"] == base + 2
        assert d.launch("pb")["port"] == base + 2
        # The range is full: both refuse alike.
        dry = d.cli("launch", "pc", "--dry-run", "--json")
        real = d.cli("launch", "pc")
        for r in (dry, real):
            assert r.returncode == EXIT_CONFLICT, r.stderr
            assert f"no free port in the engine range {base}-{base + 2}" in r.stderr


# --------------------------------------------------------------------------- layering


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("studioctl.store.instances", "studioctl.lifecycle"),
        ("studioctl.lifecycle.adoption", "studioctl.lifecycle.supervisor"),
        ("studioctl.lifecycle.monitor", "studioctl.lifecycle.operations"),
        ("studioctl.lifecycle.registry", "studioctl.lifecycle.monitor"),
    ],
)
def test_a_lower_module_imports_nothing_above_it(module: str, forbidden: str) -> None:
    code = (
        f"import sys, {module}; "
        f"print([m for m in sys.modules "
        f"if m == {forbidden!r} or m.startswith({forbidden!r} + '.')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout

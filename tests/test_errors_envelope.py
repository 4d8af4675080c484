"""Every StudioError crosses the control API's error envelope as itself: the daemon renders
``to_dict()``, the client rebuilds the exception from the envelope's code
(``errors.from_envelope``), so the CLI exits with the same code whichever side raised it.
One table: a new exception class without a row here fails ``test_the_table_is_complete``."""

from __future__ import annotations

import json

import pytest

from studioctl import errors as E
from studioctl.client import envelope_error

# One instance of every exception class, built as the code that raises it does.
CASES: list[E.StudioError] = [
    E.StudioError("something broke"),
    E.UsageError("port must be an integer", details={"param": "port"}),
    E.ValidationError("bad value", file="/x/f.yaml", line=3, key="port"),
    E.ConfigError("unknown key", file="/x/studioctl.yaml", line=2, key="gateway.prot"),
    E.RecipeError("must be a valid integer", file="/r/tiny.yaml", line=4, key="port"),
    E.MetricsParseError("not a sample", file="/metrics", line=7),
    E.NotFoundError("no instance 'x'"),
    E.DaemonUnreachable("the daemon is not running", hint="studioctl daemon start"),
    E.ConflictError("port 8000 is taken", code="port_taken", details={"port": 8000}),
    E.TransitionError("stopped", "draining", allowed=["starting"], instance_id="tiny-1"),
    E.OperationTimeout("not ready within 30s"),
    E.EngineFailed("the engine exited with code 3", log_tail=["Traceback", "OOM"]),
    E.ThresholdCrossed(
        "1 threshold crossed: ttft_p95>500ms: ttft_p95 = 731.000ms",
        details={"crossed": ["ttft_p95>500ms"]},
    ),
    E.StoreError("cannot open /x/studioctl.db"),
    E.SchemaTooNew("schema 9 is newer than this studioctl's 4"),
    E.StoreUnavailable("PostgreSQL at postgresql://u:***@db:5432/s is unreachable"),
    E.GatewayError(413, "body_too_large", "the request body is larger than 1048576 bytes"),
    E.GatewayBusy(429, "limit_concurrent", "the gateway is at its limit", retry_after=1.0),
]
# Classes only the server tells apart: on the wire they are their parent.
SERVER_ONLY: set[type[E.StudioError]] = {E.GatewayBusy}


def _all_classes() -> set[type[E.StudioError]]:
    out: set[type[E.StudioError]] = set()
    todo: list[type[E.StudioError]] = [E.StudioError]
    while todo:
        cls = todo.pop()
        out.add(cls)
        todo.extend(cls.__subclasses__())
    return out


def test_the_table_is_complete() -> None:
    assert {type(e) for e in CASES} == _all_classes()


@pytest.mark.parametrize(
    "exc", [c for c in CASES if type(c) not in SERVER_ONLY], ids=lambda e: type(e).__name__
)
def test_every_error_round_trips_through_the_envelope(exc: E.StudioError) -> None:
    # Through JSON, as the daemon sends it and the client reads it.
    wire = json.loads(json.dumps({"error": exc.to_dict()}))
    back = envelope_error(exc.http_status, wire)
    assert type(back) is type(exc)
    assert back.exit_code == exc.exit_code
    assert back.http_status == exc.http_status
    assert back.to_dict() == exc.to_dict()
    assert (back.message, back.code, back.hint) == (exc.message, exc.code, exc.hint)


def test_the_code_decides_not_the_status() -> None:
    # A recipe error is a 400, as a usage error is; its code makes it exit 1, not 2.
    wire = {"error": E.RecipeError("bad", file="/r/a.yaml").to_dict()}
    assert envelope_error(400, wire).exit_code == E.EXIT_ERROR
    wire = {"error": E.UsageError("bad").to_dict()}
    assert envelope_error(400, wire).exit_code == E.EXIT_USAGE


def test_an_error_with_a_code_of_its_own_keeps_its_class_by_type() -> None:
    exc = E.ConflictError("a daemon is already running", code="daemon_running")
    back = envelope_error(409, {"error": exc.to_dict()})
    assert type(back) is E.ConflictError and back.code == "daemon_running"
    assert back.exit_code == E.EXIT_CONFLICT


def test_an_answer_that_is_not_an_envelope_falls_back_to_its_status() -> None:
    back = envelope_error(404, "<html>not found</html>")
    assert type(back) is E.NotFoundError and "not found" in back.message


def test_a_server_only_error_reads_back_as_its_parent_does() -> None:
    busy = E.GatewayBusy(429, "limit_concurrent", "at the limit", retry_after=1.0)
    plain = E.GatewayError(429, "limit_concurrent", "at the limit", retry_after=1.0)
    assert busy.to_dict() == plain.to_dict()
    back = envelope_error(429, json.loads(json.dumps({"error": busy.to_dict()})))
    again = envelope_error(429, json.loads(json.dumps({"error": plain.to_dict()})))
    assert type(back) is type(again) and back.to_dict() == again.to_dict()

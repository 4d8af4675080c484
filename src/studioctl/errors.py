"""The exception tree. Every error studioctl raises on purpose is a ``StudioError``.

    StudioError                 exit 1   HTTP 500  internal_error
    ├── UsageError              exit 2   HTTP 400  invalid_request_error
    ├── ValidationError         exit 1   HTTP 400  invalid_request_error  (file, line, key)
    │   ├── ConfigError                                                   settings files
    │   ├── RecipeError                                                   recipe files
    │   └── MetricsParseError                                             an engine's /metrics
    ├── NotFoundError           exit 3   HTTP 404  not_found_error
    ├── DaemonUnreachable       exit 4   HTTP 503  daemon_unreachable
    ├── ConflictError           exit 5   HTTP 409  conflict               (busy, port taken)
    │   └── TransitionError                                               a state change refused
    ├── OperationTimeout        exit 6   HTTP 504  timeout
    ├── EngineFailed            exit 7   HTTP 502  engine_failed          (carries the log tail)
    ├── ThresholdCrossed        exit 8   HTTP 422  threshold_crossed      (bench --fail-if)
    ├── StoreError              exit 1   HTTP 500  internal_error         the database
    │   └── SchemaTooNew
    └── GatewayError            HTTP per code       (the OpenAI envelope's limit and routing codes)

The CLI catches only ``StudioError`` and prints ``error: <message>`` with the class's exit
code; HTTP handlers render the OpenAI error envelope from ``http_status``/``error_type``/
``code``, and the client rebuilds the class from the envelope's code (``from_envelope``).
Every exception class studioctl defines lives here. Lower-level errors (OSError, yaml,
httpx) are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# Exit codes: stable, documented in the README, relied on by CI scripts.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_DAEMON_UNREACHABLE = 4
EXIT_CONFLICT = 5
EXIT_TIMEOUT = 6
EXIT_ENGINE_FAILED = 7
EXIT_THRESHOLD = 8


class StudioError(Exception):
    exit_code = EXIT_ERROR
    http_status = 500
    error_type = "internal_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        hint: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.hint = hint
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI-style error envelope body (without the outer ``{"error": …}``)."""
        out: dict[str, Any] = {
            "message": self.message,
            "type": self.error_type,
            "param": self.details.get("param"),
            "code": self.code,
        }
        if self.hint:
            out["hint"] = self.hint
        extra = {k: v for k, v in self.details.items() if k != "param"}
        if extra:
            out["details"] = extra
        return out


class UsageError(StudioError):
    exit_code = EXIT_USAGE
    http_status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class ValidationError(StudioError):
    """Bad input in a file: names the file, the line and the key."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "invalid"

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ""
        if file:
            where = file + (f":{line}" if line else "")
        prefix = ": ".join(p for p in (where, key) if p)
        super().__init__(
            f"{prefix}: {message}" if prefix else message,
            hint=hint,
            details={"file": file, "line": line, "param": key},
        )
        self.file = file
        self.line = line
        self.key = key
        self.reason = message


class ConfigError(ValidationError):
    code = "invalid_config"


class RecipeError(ValidationError):
    code = "invalid_recipe"


class NotFoundError(StudioError):
    exit_code = EXIT_NOT_FOUND
    http_status = 404
    error_type = "not_found_error"
    code = "not_found"


class DaemonUnreachable(StudioError):
    exit_code = EXIT_DAEMON_UNREACHABLE
    http_status = 503
    error_type = "daemon_unreachable"
    code = "daemon_unreachable"


class ConflictError(StudioError):
    exit_code = EXIT_CONFLICT
    http_status = 409
    error_type = "conflict"
    code = "conflict"


class OperationTimeout(StudioError):
    exit_code = EXIT_TIMEOUT
    http_status = 504
    error_type = "timeout"
    code = "timeout"


class EngineFailed(StudioError):
    exit_code = EXIT_ENGINE_FAILED
    http_status = 502
    error_type = "engine_failed"
    code = "engine_failed"

    def __init__(self, message: str, *, log_tail: list[str] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.log_tail = log_tail or []
        self.details.setdefault("log_tail", self.log_tail)


class ThresholdCrossed(StudioError):
    """A benchmark ran and measured a figure past a ``--fail-if`` threshold (its message
    names each threshold crossed with the measured value). ``details["crossed"]``: the
    expressions."""

    exit_code = EXIT_THRESHOLD
    http_status = 422
    error_type = "threshold_crossed"
    code = "threshold_crossed"


class StoreError(StudioError):
    """The database cannot be opened or used (names the file)."""

    code = "store_error"


class SchemaTooNew(StoreError):
    """The database was migrated by a newer studioctl than this one."""

    code = "schema_too_new"


class StoreUnavailable(StoreError):
    """The shared database (PostgreSQL) cannot be reached right now: a retryable 503."""

    code = "store_unavailable"
    http_status = 503


class TransitionError(ConflictError):
    """A state change the lifecycle does not allow (exit code 5 / HTTP 409: the instance
    is in a state that conflicts with what was asked). ``allowed``: where ``frm`` may go."""

    code = "invalid_transition"

    def __init__(
        self,
        frm: str,
        to: str,
        *,
        allowed: Iterable[str] = (),
        instance_id: str | None = None,
    ) -> None:
        who = f"instance {instance_id}: " if instance_id else ""
        choices = ", ".join(sorted(str(a) for a in allowed)) or "nothing"
        super().__init__(
            f"{who}cannot go from {frm} to {to} (from {frm} only: {choices})",
            details={"from": str(frm), "to": str(to), "instance_id": instance_id},
        )
        self.frm = frm
        self.to = to


class MetricsParseError(ValidationError):
    """A /metrics body that is not valid Prometheus text (names the line)."""

    code = "invalid_metrics"


#: Retry-After (seconds) of the gateway's 429 and 503 answers raised without one of their
#: own: the codes whose wait cannot be computed. Those that can be (limit_rpm, limit_tpm,
#: model_loading, ...) pass ``retry_after``; any other 429/503 gets FALLBACK_RETRY_AFTER_S,
#: so every 429 and 503 carries a Retry-After (the README promises it).
RETRY_AFTER_S: dict[str, float] = {
    # A recipe that is not loaded on demand waits for someone to run `studioctl launch`.
    "model_not_running": 30.0,
    # An admin token is configured only with a daemon restart.
    "admin_unavailable": 60.0,
    "auth_unavailable": 1.0,
    # The shared limits' Redis did not answer: it is retried with backoff from 0.1 s.
    "limits_unavailable": 1.0,
    # The store reconnects by itself with a backoff capped at a few seconds.
    "store_unavailable": 2.0,
}
FALLBACK_RETRY_AFTER_S = 5.0


def retry_after_for(status: int, code: str | None) -> float | None:
    """The default Retry-After of an answer: None unless it is a 429 or a 503."""
    if status != 429 and status != 503:
        return None
    return RETRY_AFTER_S.get(code or "", FALLBACK_RETRY_AFTER_S)


class GatewayError(StudioError):
    """An error the gateway answers with: status, OpenAI type and code, and Retry-After
    (always on a 429 or 503: ``retry_after_for`` when not given)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        error_type: str | None = None,
        retry_after: float | None = None,
        param: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, code=code, hint=hint, details={"param": param})
        self.http_status = status
        self.error_type = error_type or _type_for_status(status)
        self.retry_after = retry_after if retry_after is not None else retry_after_for(status, code)


class GatewayBusy(GatewayError):
    """429 ``limit_concurrent`` for the gateway's own limit (every global slot taken): the
    refusal ``gateway.queue_when_busy`` turns into a wait. Server-side only: on the wire it is
    a GatewayError, which is what a client rebuilds."""


def _type_for_status(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


# ----------------------------------------------------------------- the client side
#
# The daemon's error envelope names the error's ``code`` and ``type``; the client rebuilds
# the same exception class from them, so an error exits with the same code whether the CLI
# raised it or the daemon did (a RecipeError is exit 1 either way, though its status is the
# 400 of a usage error). The status is the last resort, for answers that are not ours.


def _subclasses(cls: type[StudioError]) -> list[type[StudioError]]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


#: Each class's own code → the class (GatewayError's codes are per instance: not here).
_ALL: list[type[StudioError]] = [StudioError, *_subclasses(StudioError)]
BY_CODE: dict[str, type[StudioError]] = {c.code: c for c in _ALL if c.code is not None}
#: An envelope ``type`` → the class that answers with it, for errors raised with a code
#: of their own (``ConflictError(code="port_taken")``).
BY_TYPE: dict[str, type[StudioError]] = {
    "invalid_request_error": UsageError,
    "not_found_error": NotFoundError,
    "daemon_unreachable": DaemonUnreachable,
    "conflict": ConflictError,
    "timeout": OperationTimeout,
    "engine_failed": EngineFailed,
    "internal_error": StudioError,
}
#: The status of an answer that is not an envelope of ours.
BY_STATUS: dict[int, type[StudioError]] = {
    400: UsageError,
    404: NotFoundError,
    409: ConflictError,
    502: EngineFailed,
    504: OperationTimeout,
}


def from_envelope(status: int, body: Mapping[str, object]) -> StudioError:
    """Rebuild a StudioError from a control API error answer (the client side)."""
    inner = body.get("error", body)
    err: Mapping[str, object] = inner if isinstance(inner, Mapping) else {}
    message = str(err.get("message") or f"HTTP {status}")
    raw_details = err.get("details")
    details = dict(raw_details) if isinstance(raw_details, Mapping) else {}
    if err.get("param") is not None:
        details["param"] = err["param"]
    hint = err.get("hint")
    hint = hint if isinstance(hint, str) else None
    code = err.get("code")
    code = code if isinstance(code, str) else None
    kind = err.get("type")
    kind = kind if isinstance(kind, str) else None
    cls = BY_CODE.get(code or "")
    if cls is None and kind in BY_TYPE:
        cls = BY_TYPE[kind]
        if cls.http_status != status and code:
            # Its type but not its status: a GatewayError (``body_too_large``, 413).
            return GatewayError(
                status, code, message, error_type=kind, hint=hint, param=details.get("param")
            )
    exc = _rebuild(cls or BY_STATUS.get(status, StudioError), message, hint=hint, details=details)
    if code:
        exc.code = code
    return exc


def _rebuild(
    cls: type[StudioError], message: str, *, hint: str | None, details: dict[str, Any]
) -> StudioError:
    """An instance of ``cls`` with the envelope's message, hint and details, whatever its
    constructor takes (a file error's message already names its file, line and key)."""
    if issubclass(cls, EngineFailed):
        tail = details.get("log_tail")
        log_tail = tail if isinstance(tail, list) else None
        return cls(message, log_tail=log_tail, hint=hint, details=details)
    if not issubclass(cls, ValidationError | TransitionError):
        return cls(message, hint=hint, details=details)
    exc = StudioError.__new__(cls)
    StudioError.__init__(exc, message, hint=hint, details=details)
    if isinstance(exc, ValidationError):
        exc.file, exc.line = details.get("file"), details.get("line")
        exc.key, exc.reason = details.get("param"), message
    elif isinstance(exc, TransitionError):
        exc.frm, exc.to = str(details.get("from")), str(details.get("to"))
    return exc

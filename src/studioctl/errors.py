"""The exception tree. Every error studioctl raises on purpose is a ``StudioError``.

    StudioError                 exit 1   HTTP 500  internal_error
    ├── UsageError              exit 2   HTTP 400  invalid_request_error
    ├── ValidationError         exit 1   HTTP 400  invalid_request_error  (file, line, key)
    │   ├── ConfigError                                                   settings files
    │   └── RecipeError                                                   recipe files
    ├── NotFoundError           exit 3   HTTP 404  not_found_error
    ├── DaemonUnreachable       exit 4   HTTP 503  daemon_unreachable
    ├── ConflictError           exit 5   HTTP 409  conflict               (busy, port taken)
    ├── OperationTimeout        exit 6   HTTP 504  timeout
    ├── EngineFailed            exit 7   HTTP 502  engine_failed          (carries the log tail)
    └── GatewayError            HTTP per code       (the OpenAI envelope's limit and routing codes)

The CLI catches only ``StudioError`` and prints ``error: <message>`` with the class's exit
code; HTTP handlers render the OpenAI error envelope from ``http_status``/``error_type``/
``code``. Lower-level errors (OSError, yaml, httpx) are translated at the boundary with
``raise ... from exc``.
"""

from __future__ import annotations

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


class GatewayError(StudioError):
    """An error the gateway answers with: status, OpenAI type and code, optional Retry-After."""

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
        self.retry_after = retry_after


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


# HTTP status → exception class, for the client translating the daemon's answers back.
_BY_STATUS: dict[int, type[StudioError]] = {
    400: UsageError,
    404: NotFoundError,
    409: ConflictError,
    502: EngineFailed,
    504: OperationTimeout,
}


def from_envelope(status: int, body: dict[str, Any]) -> StudioError:
    """Rebuild a StudioError from a control API error answer (the client side)."""
    err = body.get("error", body) if isinstance(body, dict) else {}
    message = str(err.get("message") or f"HTTP {status}")
    details = dict(err.get("details") or {})
    hint = err.get("hint")
    code = err.get("code")
    if err.get("type") == "engine_failed" or code == "engine_failed":
        return EngineFailed(message, log_tail=details.get("log_tail"), hint=hint, details=details)
    cls = _BY_STATUS.get(status, StudioError)
    exc = cls(message, hint=hint, details=details)
    if code:
        exc.code = code
    return exc

"""What every control route shares: the API version header, JSON answers, the error
envelope, reading a JSON body, NDJSON lines. Public so the route modules of this package
(and the daemon's extra routes) answer alike."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel, JsonValue
from starlette.responses import JSONResponse

from studioctl import API_VERSION
from studioctl.api import params as P
from studioctl.api.models import parse
from studioctl.errors import StudioError, UsageError

if TYPE_CHECKING:
    from starlette.requests import Request

API_HEADER = "X-Studioctl-Api"
M = TypeVar("M", bound=BaseModel)


def api_headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {API_HEADER: str(API_VERSION), **(extra or {})}


def json_response(
    data: Mapping[str, object] | list[object],
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers=api_headers(headers))


def error_response(exc: StudioError) -> JSONResponse:
    """The error envelope ``{"error": {message, type, param, code, ...}}``: the client maps
    ``code`` back to the exception class (``errors.from_envelope``), whatever the status."""
    headers = {}
    retry = getattr(exc, "retry_after", None)
    if retry is not None:
        headers["Retry-After"] = str(max(1, int(-(-retry // 1))))
    return json_response({"error": exc.to_dict()}, status=exc.http_status, headers=headers)


async def json_body(request: Request) -> dict[str, JsonValue]:
    """The request's JSON object (bounded by ``params.MAX_BODY_BYTES``); ``{}`` when empty."""
    raw = await P.read_body(request)
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UsageError(f"request body is not valid JSON: {exc.msg} at char {exc.pos}") from exc
    except (ValueError, RecursionError) as exc:  # not UTF-8; nested deeper than we parse
        raise UsageError(f"request body is not valid JSON: {type(exc).__name__}") from exc
    if not isinstance(data, dict):
        raise UsageError("request body must be a JSON object")
    return data


async def read_request(request: Request, model: type[M]) -> M:
    """The request's body as ``model`` (``api.models``): a wrong field is a 400 naming it."""
    return parse(model, await json_body(request))


def ndjson(obj: Mapping[str, object]) -> bytes:
    return (json.dumps(obj, default=str) + "\n").encode()

"""The request body's own checks: JSON (with a nesting bound), the model name, ``n``.

Each check either returns the value or raises the ``GatewayError`` to answer (400). They run
once per request on the proxy's hot path, so each is O(1) for an ordinary body; the one
that is not (the nesting bound) runs only for bodies that could be that deep.

Nesting
    The JSON reader accepts 1,024 levels of nesting but the writer (orjson) refuses to write
    more than ``MAX_JSON_DEPTH`` (254): a deeper body could be read and then not re-written
    (for the engine, for ``/tokenize``). Such a body is refused with 400 ``invalid_json``.
    The check costs nothing for most bodies: a body deeper than 254 levels holds more than
    254 ``[`` or ``{`` bytes, which two C-speed ``bytes.count`` calls rule out; only bodies
    with that many brackets are re-written once to find out (C speed as well: ~25 µs for a
    40 kB chat, a tenth of what walking the parsed object in Python would cost).

Client text
    ``model`` is bounded to ``MAX_MODEL_CHARS`` before it is stored, logged or labelled;
    values quoted back in error messages are clipped (:func:`clip`).
"""

from __future__ import annotations

from typing import Any

from studioctl.errors import GatewayError
from studioctl.gateway.sse import json_dumps, json_loads

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_MODEL_CHARS",
    "MAX_N",
    "check_n",
    "clip",
    "model_error",
    "parse_body",
    "peek_model",
    "quote",
]

# orjson writes at most 254 levels of nesting (and reads 1,024).
MAX_JSON_DEPTH = 254
# Longer than any model name or alias in use (Hugging Face ids are at most 96 characters).
MAX_MODEL_CHARS = 256
# Choices per request: each may produce max_tokens, so n multiplies the TPM reservation.
MAX_N = 128
# Characters of a client's value quoted back in an error message.
_QUOTE_CHARS = 64


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or 400 ``invalid_json``."""
    if not raw:
        raise GatewayError(400, "invalid_json", "the request body is empty; expected JSON")
    try:
        body = json_loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: the stdlib reader
        raise GatewayError(
            400, "invalid_json", f"the request body is not valid JSON: {clip(str(exc), 200)}"
        ) from None
    if not isinstance(body, dict):
        raise GatewayError(
            400,
            "invalid_json",
            f"the request body must be a JSON object, got {type(body).__name__}",
        )
    # A body deeper than MAX_JSON_DEPTH needs more opening brackets than that.
    if len(raw) > 2 * MAX_JSON_DEPTH and raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        try:
            json_dumps(body)
        except (TypeError, ValueError, RecursionError):
            raise GatewayError(
                400,
                "invalid_json",
                f"the request body is nested more than {MAX_JSON_DEPTH} levels deep",
            ) from None
    return body


def peek_model(body: dict[str, Any]) -> str | None:
    """The ``model`` the body names if it is a valid name (else None: see model_error)."""
    model = body.get("model")
    if type(model) is str and 0 < len(model) <= MAX_MODEL_CHARS:
        return model
    return None


def model_error(body: dict[str, Any]) -> GatewayError:
    """The 400 for a body whose ``model`` peek_model did not accept."""
    model = body.get("model")
    if isinstance(model, str) and len(model) > MAX_MODEL_CHARS:
        return GatewayError(
            400,
            "invalid_request",
            f"'model' is {len(model)} characters long; model names have at most "
            f"{MAX_MODEL_CHARS} (see GET /v1/models)",
            param="model",
        )
    return GatewayError(
        400,
        "invalid_request",
        "missing 'model': name the model to use (see GET /v1/models)",
        param="model",
    )


def check_n(body: dict[str, Any]) -> int:
    """The number of choices asked for (1 if absent), or 400 when not 1…MAX_N."""
    n = body.get("n")
    if n is None:
        return 1
    if type(n) is not int or not 1 <= n <= MAX_N:
        raise GatewayError(
            400,
            "invalid_request",
            f"'n' must be an integer from 1 to {MAX_N}, got {quote(n)}",
            param="n",
        )
    return n


def clip(text: str, limit: int = _QUOTE_CHARS) -> str:
    """``text`` cut to ``limit`` characters (marked with …) for messages and logs."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(value: Any) -> str:
    """A client's value for an error message: short, whatever its size (never a full repr
    of a large list or object)."""
    if value is None or isinstance(value, bool | int | float):
        return clip(repr(value))
    if isinstance(value, str):
        return clip(repr(value[:_QUOTE_CHARS]))
    return f"a JSON {'array' if isinstance(value, list) else 'object'}"

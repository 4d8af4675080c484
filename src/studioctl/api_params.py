"""The control/admin API's parameters, typed and bounded.

Every query parameter and body field a route reads goes through one of these: a wrong type,
a value out of bounds, NaN or infinity is a 400 ``invalid_request_error`` whose ``param``
names it — never an OverflowError (a 500) deep inside, a NaN sleep or a year-long wait.
Bounds are generous for real use and small enough for integer and float arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from studioctl.errors import GatewayError, UsageError

MAX_BODY_BYTES = 1024 * 1024  # the largest request body (tenant overrides, recipes)
MAX_TEXT = 256  # ids and names: recipe, instance, tenant, model
MAX_PATH = 4096  # a recipe given as a file path (PATH_MAX)
MAX_SECONDS = 7 * 86400.0  # timeouts, drains, graces
MAX_PID = 4_194_304  # PID_MAX_LIMIT on 64-bit Linux
MAX_GPUS = 64
MAX_GPU_INDEX = 1023
MAX_SQL_INT = 2**63 - 1

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def bad(param: str, message: str) -> UsageError:
    return UsageError(f"{param} {message}", details={"param": param})


def shown(value: Any, limit: int = 40) -> str:
    """``value`` for an error message, cut short: the client chose its length."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


# ----------------------------------------------------------------------------- body


async def read_body(request: Any) -> bytes:
    """The request body, refused (413 ``body_too_large``) past ``MAX_BODY_BYTES``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large() -> GatewayError:
    return GatewayError(
        413, "body_too_large", f"the request body is larger than {MAX_BODY_BYTES} bytes"
    )


def b_bool(data: Mapping[str, Any], name: str, default: bool = False) -> bool:
    v = data.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(name, f"must be true or false, got {shown(v)}")
    return v


def b_int(
    data: Mapping[str, Any], name: str, lo: int, hi: int, default: int | None = None
) -> int | None:
    v = data.get(name)
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise bad(name, f"must be an integer from {lo} to {hi}, got {shown(v)}")
    return v


def b_seconds(
    data: Mapping[str, Any], name: str, default: float | None, hi: float = MAX_SECONDS
) -> float | None:
    v = data.get(name)
    if v is None:
        return default
    if (
        not isinstance(v, int | float)
        or isinstance(v, bool)
        or not math.isfinite(v)
        or not 0 <= v <= hi
    ):
        raise bad(name, f"must be a number of seconds from 0 to {hi:g}, got {shown(v)}")
    return float(v)


def b_text(
    data: Mapping[str, Any], name: str, *, required: bool = False, max_len: int = MAX_TEXT
) -> str | None:
    v = data.get(name)
    if v is None and not required:
        return None
    if v is None:
        raise bad(name, "is required")
    if not isinstance(v, str) or not v:
        raise bad(name, f"must be a non-empty string, got {shown(v)}")
    if len(v) > max_len or "\0" in v:
        raise bad(name, f"must be at most {max_len} characters without NUL, got {shown(v)}")
    return v


def b_required_text(data: Mapping[str, Any], name: str, *, max_len: int = MAX_TEXT) -> str:
    v = b_text(data, name, required=True, max_len=max_len)
    if v is None:  # unreachable: required
        raise bad(name, "is required")
    return v


def gpus(v: Any, name: str = "gpus") -> list[int] | None:
    """GPU indices: a list of integers or ``"0,1"``; None when absent."""
    if v is None:
        return None
    if isinstance(v, str):
        parts = [x.strip() for x in v.split(",") if x.strip()]
        if not all(p.isdigit() and len(p) <= 4 for p in parts):
            raise bad(name, f"must be a list of GPU indices, got {shown(v)}")
        v = [int(p) for p in parts]
    if (
        not isinstance(v, list)
        or len(v) > MAX_GPUS
        or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_GPU_INDEX for i in v
        )
    ):
        raise bad(
            name,
            f"must be a list of at most {MAX_GPUS} GPU indices from 0 to {MAX_GPU_INDEX}, "
            f"got {shown(v)}",
        )
    return list(v)


# ----------------------------------------------------------------------------- query


def q_bool(qp: Mapping[str, str], name: str, default: bool = False) -> bool:
    v = qp.get(name)
    if v is None:
        return default
    low = v.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise bad(name, f"must be 1/true/yes/on or 0/false/no/off, got {shown(v)}")


def q_int(qp: Mapping[str, str], name: str, lo: int, hi: int, default: int) -> int:
    v = qp.get(name)
    if v is None:
        return default
    s = v.strip()
    digits = s[1:] if s.startswith("-") else s
    if not digits.isascii() or not digits.isdigit() or len(digits) > 19 or not lo <= int(s) <= hi:
        raise bad(name, f"must be an integer from {lo} to {hi}, got {shown(v)}")
    return int(s)


def q_opt_int(qp: Mapping[str, str], name: str, lo: int, hi: int) -> int | None:
    return q_int(qp, name, lo, hi, 0) if name in qp else None


def q_float(qp: Mapping[str, str], name: str, lo: float, hi: float) -> float | None:
    v = qp.get(name)
    if v is None:
        return None
    try:
        f = float(v) if len(v) <= 64 else math.nan
    except ValueError:
        f = math.nan
    if not math.isfinite(f) or not lo <= f <= hi:
        raise bad(name, f"must be a number from {lo:g} to {hi:g}, got {shown(v)}")
    return f


def q_text(qp: Mapping[str, str], name: str, max_len: int = MAX_TEXT) -> str | None:
    v = qp.get(name)
    if v is None or v == "":
        return None
    if len(v) > max_len or "\0" in v:
        raise bad(name, f"must be at most {max_len} characters without NUL, got {shown(v)}")
    return v

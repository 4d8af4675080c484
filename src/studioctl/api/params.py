"""The control/admin API's parameters, typed and bounded.

Every query parameter a route reads, and every body field (through the request models of
``studioctl.api.models``), goes through one of these: a wrong type,
a value out of bounds, NaN or infinity is a 400 ``invalid_request_error`` whose ``param``
names it — never an OverflowError (a 500) deep inside, a NaN sleep or a year-long wait.
Bounds are generous for real use and small enough for integer and float arithmetic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from studioctl.errors import GatewayError, UsageError

if TYPE_CHECKING:
    from starlette.requests import Request

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


def shown(value: object, limit: int = 40) -> str:
    """``value`` for an error message, cut short: the client chose its length."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


# ----------------------------------------------------------------------------- body


async def read_body(request: Request) -> bytes:
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


# A body field's value: each check returns it typed or raises ValueError with what is wrong
# (the request models in ``models`` put the field's name in front: "port must be ...").


def as_bool(v: object) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"must be true or false, got {shown(v)}")
    return v


def as_int(v: object, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"must be an integer from {lo} to {hi}, got {shown(v)}")
    return v


def as_seconds(v: object, hi: float = MAX_SECONDS) -> float:
    if (
        not isinstance(v, int | float)
        or isinstance(v, bool)
        or not math.isfinite(v)
        or not 0 <= v <= hi
    ):
        raise ValueError(f"must be a number of seconds from 0 to {hi:g}, got {shown(v)}")
    return float(v)


def as_text(v: object, max_len: int = MAX_TEXT) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"must be a non-empty string, got {shown(v)}")
    if len(v) > max_len or "\0" in v:
        raise ValueError(f"must be at most {max_len} characters without NUL, got {shown(v)}")
    return v


def as_gpus(v: object) -> list[int]:
    """GPU indices: a list of integers or ``"0,1"``."""
    if isinstance(v, str):
        parts = [x.strip() for x in v.split(",") if x.strip()]
        if not all(p.isdigit() and len(p) <= 4 for p in parts):
            raise ValueError(f"must be a list of GPU indices, got {shown(v)}")
        v = [int(p) for p in parts]
    if (
        not isinstance(v, list)
        or len(v) > MAX_GPUS
        or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_GPU_INDEX for i in v
        )
    ):
        raise ValueError(
            f"must be a list of at most {MAX_GPUS} GPU indices from 0 to {MAX_GPU_INDEX}, "
            f"got {shown(v)}"
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


# ----------------------------------------------------------------------------- windows

WINDOWS = {"1h": 3600.0, "24h": 86400.0, "7d": 7 * 86400.0, "30d": 30 * 86400.0}
_WINDOW = re.compile(r"([0-9]{1,9})([mhd])")
MAX_WINDOW_S = 3660 * 86400  # ten years and then some: older than any usage row


def parse_window(value: str) -> float:
    """``1h``, ``24h``, ``7d``, ``30d`` (or any ``N[mhd]`` up to ten years) → seconds.
    The daemon checks ``GET /usage?window=``; the CLI checks ``--window`` before asking."""
    if value in WINDOWS:
        return WINDOWS[value]
    m = _WINDOW.fullmatch(value)
    seconds = int(m.group(1)) * {"m": 60, "h": 3600, "d": 86400}[m.group(2)] if m else 0
    if not 0 < seconds <= MAX_WINDOW_S:
        raise UsageError(
            f"window must be one of {', '.join(WINDOWS)} (or N followed by m, h or d, "
            f"at most 3660d), got {shown(value)}",
            details={"param": "window"},
        )
    return float(seconds)


# ----------------------------------------------------------------------------- request log

_STATUS = re.compile(r"([1-5])(xx|[0-9]{2})")


def parse_status(value: str) -> tuple[int, int]:
    """A status filter of the request log: ``429``, or a class ``4xx`` → (low, high)."""
    m = _STATUS.fullmatch(value.strip().lower())
    if m is None:
        raise bad(
            "status", f"must be a status such as 429 or a class such as 4xx, got {shown(value)}"
        )
    if m.group(2) == "xx":
        lo = int(m.group(1)) * 100
        return lo, lo + 99
    code = int(m.group(0))
    return code, code


def parse_since(value: str) -> float:
    """``--since 1h``: how far back, in seconds (``N`` followed by m, h or d)."""
    try:
        return parse_window(value.strip())
    except UsageError:
        raise bad(
            "since", f"must be N followed by m, h or d (such as 15m, 1h, 7d), got {shown(value)}"
        ) from None

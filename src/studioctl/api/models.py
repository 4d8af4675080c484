"""The control API's request bodies, one pydantic model per route that takes a body.

The daemon validates every body through these (``parse``), and the client builds its
requests from them (``body``), so both sides agree on names, types and bounds. Each field's
check is one of ``params``' (``as_int``, ``as_seconds``, ...): a wrong value is a 400
``invalid_request_error`` whose ``param`` names the field and whose message starts with it,
exactly as before the models. Unknown keys are ignored and ``null`` means "not given", as
the routes always did.

Answers are not modelled here but in ``studioctl.api.types`` (TypedDicts): ``studioctl
status`` and ``ps`` read them without importing pydantic (tests/test_cli_imports.py).
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    model_validator,
)

from studioctl.api.params import (
    MAX_PATH,
    MAX_PID,
    as_bool,
    as_gpus,
    as_int,
    as_seconds,
    as_text,
    bad,
)
from studioctl.errors import UsageError

MAX_GRACE_S = 365 * 86400.0  # how long rotated keys may stay valid

Flag = Annotated[bool, BeforeValidator(as_bool)]
Port = Annotated[int, BeforeValidator(lambda v: as_int(v, 1, 65535))]
Pid = Annotated[int, BeforeValidator(lambda v: as_int(v, 1, MAX_PID))]
Seconds = Annotated[float, BeforeValidator(as_seconds)]
Name = Annotated[str, BeforeValidator(as_text)]  # ids and names
Target = Annotated[str, BeforeValidator(lambda v: as_text(v, MAX_PATH))]  # an id or a path
Gpus = Annotated[list[int], BeforeValidator(as_gpus)]


def _sent_file(v: object) -> object:
    if isinstance(v, SentFile):  # built by the client
        return v
    if not isinstance(v, dict) or not all(isinstance(v.get(k), str) for k in ("path", "text")):
        raise ValueError("must be {'path': ..., 'text': ...} (strings)")
    return v


def _overrides(v: object) -> object:
    if not v:  # "", 0, [], {}: no overrides, as the route always read them
        return {}
    if not isinstance(v, dict):
        raise ValueError("must be an object of limit fields")
    return v


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: object) -> object:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class SentFile(BaseModel):
    """A recipe file the client read and sends (``studioctl launch ./my.yaml``); the daemon
    validates it as if it were in a recipe folder (``control.recipes.sent_recipe``)."""

    model_config = ConfigDict(frozen=True)

    path: str
    text: str


SentFileField = Annotated[SentFile, BeforeValidator(_sent_file)]


class LaunchRequest(_Body):
    recipe: Target | None = None  # an id, or an absolute path (control socket only)
    recipe_file: SentFileField | None = None
    port: Port | None = None
    gpus: Gpus | None = None
    force: Flag = False
    wait: Flag = True
    timeout: Seconds | None = None
    lock_wait: Flag = False
    stream: Flag = False


class EvictRequest(_Body):
    drain_timeout: Seconds = 30.0
    grace: Seconds = 15.0
    force: Flag = False
    lock_wait: Flag = False
    stream: Flag = False


class UnloadRequest(_Body):
    model: Name  # a served name, an alias or a recipe id
    drain_timeout: Seconds = 30.0
    grace: Seconds = 15.0
    lock_wait: Flag = True  # behind a launch or evict of the same recipe in progress


class PreloadRequest(_Body):
    model: Name  # a served name, an alias or a recipe id
    timeout: Seconds | None = None  # None: the recipe's readiness timeout and some slack
    wait: Flag = True


class SwitchRequest(_Body):
    from_: Name = Field(alias="from")
    to: Target | None = None
    to_file: SentFileField | None = None
    port: Port | None = None
    gpus: Gpus | None = None
    drain_timeout: Seconds = 30.0
    grace: Seconds = 15.0
    timeout: Seconds | None = None
    lock_wait: Flag = False
    stream: Flag = False


class AdoptRequest(_Body):
    pid: Pid
    recipe: Target
    port: Port | None = None


class ShutdownRequest(_Body):
    stop_engines: Flag = False


class TenantCreate(_Body):
    name: Name
    profile: Name | None = None
    # Limit fields and model names are checked by the tenant service (its own messages).
    overrides: Annotated[dict[str, JsonValue], BeforeValidator(_overrides)] | None = None
    allowed_models: JsonValue = None


class TenantPatch(_Body):
    profile: Name | None = None
    overrides: Annotated[dict[str, JsonValue], BeforeValidator(_overrides)] | None = None
    enabled: Flag | None = None
    allowed_models: JsonValue = None


class RotateKey(_Body):
    grace_s: Annotated[float, BeforeValidator(lambda v: as_seconds(v, MAX_GRACE_S))] = 86400.0


class RevokeKey(_Body):
    tenant: Name | None = None


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], data: dict[str, JsonValue]) -> M:
    """``data`` (a JSON object) as ``model``; the first wrong field is a UsageError naming it."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _usage_error(model, exc) from None


def _usage_error(model: type[BaseModel], exc: ValidationError) -> UsageError:
    err = exc.errors(include_url=False)[0]
    loc = err["loc"][0] if err["loc"] else "body"
    field = model.model_fields.get(str(loc))
    param = (field.alias if field is not None and field.alias else None) or str(loc)
    if err["type"] == "missing":
        return bad(param, "is required")
    cause = (err.get("ctx") or {}).get("error")
    return bad(param, str(cause) if isinstance(cause, ValueError) else err["msg"])


def body(request: BaseModel) -> dict[str, JsonValue]:
    """``request`` as the JSON object the daemon reads (the client side)."""
    out: dict[str, JsonValue] = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out

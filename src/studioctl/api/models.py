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
    AliasChoices,
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
    shown,
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


#: The tenant gateway's admin field names (POST/PATCH /admin/tenants) → ours; both are
#: accepted. ``max_concurrent``, ``max_context_tokens`` and ``max_output_tokens`` are
#: spelled alike in both.
TENANT_ALIASES: dict[str, str] = {"tenant_name": "name", "rpm_limit": "rpm", "tpm_limit": "tpm"}
#: The integer limits a tenant body may give at its top level (beside ``overrides``).
TENANT_LIMITS: tuple[str, ...] = (
    "max_concurrent",
    "rpm",
    "tpm",
    "max_context_tokens",
    "max_output_tokens",
)


def _one_value(data: object) -> object:
    """A field given in two spellings (``rpm_limit`` and ``rpm``, or at the top level and in
    ``overrides``) must say the same: else a 400 naming both."""
    if not isinstance(data, dict):
        return data
    given = {k: v for k, v in data.items() if v is not None}
    for theirs, ours in TENANT_ALIASES.items():
        if theirs in given and ours in given and given[theirs] != given[ours]:
            raise _twice(theirs, given[theirs], ours, given[ours])
    inner = given.get("overrides")
    if isinstance(inner, dict):
        spelled = {o: t for t, o in TENANT_ALIASES.items()}  # ours → theirs
        for ours in TENANT_LIMITS:
            for top in (ours, spelled.get(ours, ours)):
                if top in given and inner.get(ours) is not None and inner[ours] != given[top]:
                    raise _twice(top, given[top], f"overrides.{ours}", inner[ours])
    return data


def _twice(a: str, a_value: object, b: str, b_value: object) -> UsageError:
    return UsageError(
        f"{a} ({shown(a_value)}) and {b} ({shown(b_value)}) name the same field with "
        "different values: give one",
        details={"param": a},
    )


class _TenantBody(_Body):
    """The limit fields a tenant body may give at its top level, in either spelling."""

    max_concurrent: JsonValue = None
    rpm: JsonValue = Field(default=None, validation_alias=AliasChoices("rpm", "rpm_limit"))
    tpm: JsonValue = Field(default=None, validation_alias=AliasChoices("tpm", "tpm_limit"))
    max_context_tokens: JsonValue = None
    max_output_tokens: JsonValue = None
    # Limit fields and model names are checked by the tenant service (its own messages).
    overrides: Annotated[dict[str, JsonValue], BeforeValidator(_overrides)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _same_value(cls, data: object) -> object:
        return _one_value(data)

    def limit_overrides(self) -> dict[str, JsonValue]:
        """``overrides`` with the top-level limit fields in (they agree: ``_one_value``)."""
        out = dict(self.overrides or {})
        for name in TENANT_LIMITS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


class TenantCreate(_TenantBody):
    name: Name = Field(validation_alias=AliasChoices("name", "tenant_name"))
    profile: Name | None = None  # None: the ``default`` profile (tenants.default_* settings)
    allowed_models: JsonValue = None


class TenantPatch(_TenantBody):
    name: Name | None = Field(default=None, validation_alias=AliasChoices("name", "tenant_name"))
    profile: Name | None = None
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

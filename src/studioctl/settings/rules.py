"""The rules of each setting — its type, bounds and small value rules — as pydantic types.

``settings.schema`` names these types in its field annotations; they are resolved, and this
module (with pydantic) imported, only when a value has to be checked: a file with keys, a
``STUDIOCTL_*`` variable, a flag. Loading the defaults (``studioctl ps`` deciding whether to
start the daemon, with no settings file) never pays for pydantic.

Validation is strict: ``port: '8000'`` in the file is a type error. Text — environment
variables, flags given as strings, ``${VAR}`` in the file — is parsed here first: numbers,
``true/false/1/0/yes/no/on/off``, lists split on their separator. pydantic's errors become
the messages users see.
"""

from __future__ import annotations

import contextlib
import json
import os
import string
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import annotated_types
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from studioctl.settings.groups import GROUP_KEYS, Group
from studioctl.settings.webhook_checks import check_auth, check_headers
from studioctl.suggest import did_you_mean

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be blank")
    return value


def _none_if_empty(value: str | None) -> str | None:
    return value or None  # an empty admin token means "none", never "matches empty"


# RFC 9110's token characters: what a header name may be made of.
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
# Headers with a meaning of their own: a key sent in them would be read twice, or never.
_RESERVED_HEADERS = frozenset({"authorization", "x-admin-token", "content-length", "host"})


def _header_name(value: str) -> str:
    """An HTTP header name (any case), or "" for none."""
    value = value.strip()
    if not value:
        return ""
    if len(value) > 64 or not set(value) <= _TOKEN_CHARS:
        raise PydanticCustomError(
            "header_name", "must be an HTTP header name (letters, digits, '-'), or empty"
        )
    if value.lower() in _RESERVED_HEADERS:
        raise PydanticCustomError(
            "header_name", "{name} is a header of its own; pick another (or empty)", {"name": value}
        )
    return value


def _as_tuple(value: Any) -> Any:
    # YAML and flags give lists; the settings hold tuples (frozen, hashable).
    return tuple(value) if isinstance(value, list) else value


def _recipe_dir(value: Any, info: ValidationInfo) -> Any:
    """A recipe folder: ``~`` expanded, relative to the settings file's folder (the
    validation context's ``base``) or, from the environment and flags, the current one."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        return value  # Path's own check refuses it
    _not_blank(value)
    p = Path(value).expanduser()
    if not p.is_absolute():
        base = (info.context or {}).get("base")
        p = (base if base is not None else Path.cwd()) / p
    return Path(os.path.normpath(p))


class RuleError(ValueError):
    """A bad value; ``subpath``: where inside the value (``("big", "members", 0)``)."""

    def __init__(self, message: str, subpath: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.subpath = subpath


def _bad(message: str, *subpath: str | int) -> NoReturn:
    raise PydanticCustomError("setting", "{message}", {"message": message, "subpath": subpath})


def _groups(value: Any) -> tuple[Group, ...]:
    """``{name: {members: [...], swap, exclusive, persistent}}`` → groups, each checked."""
    if isinstance(value, tuple) and all(isinstance(g, Group) for g in value):
        return value  # the default, or groups already checked
    if not isinstance(value, dict):
        _bad(f"must be a mapping of group names to their rules, got {kind_of(value)}")
    out: list[Group] = []
    owner: dict[str, str] = {}
    for name, body in value.items():
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            _bad(f"invalid group name {name!r}: not empty, no spaces", str(name))
        out.append(_group(name, body, owner))
    return tuple(out)


def _group(name: str, body: Any, owner: dict[str, str]) -> Group:
    if not isinstance(body, dict):
        _bad(
            f"must be a mapping with members (and swap, exclusive, persistent), "
            f"got {kind_of(body)}",
            name,
        )
    for key in body:
        if key not in GROUP_KEYS:
            _bad(f"unknown key{did_you_mean(str(key), GROUP_KEYS)}", name, str(key))
    members = body.get("members")
    if members is None:
        _bad("members is required: the ids of the recipes in the group", name)
    if not isinstance(members, list):
        _bad(f"must be a list of recipe ids, got {kind_of(members)}", name, "members")
    for i, member in enumerate(members):
        if not isinstance(member, str) or not member or any(c.isspace() for c in member):
            _bad(f"item {i} must be a recipe id, got {kind_of(member)}", name, "members", i)
        if member in owner:
            _bad(
                f"recipe {member!r} is already in group {owner[member]!r} "
                "(a recipe is in at most one group)",
                name,
                "members",
                i,
            )
        owner[member] = name
    flags: dict[str, bool] = {}
    for key in ("swap", "exclusive", "persistent"):
        if key in body:
            if not isinstance(body[key], bool):
                _bad(f"must be true or false, got {kind_of(body[key])}", name, key)
            flags[key] = body[key]
    return Group(name, tuple(members), **flags)


#: "fair": the scheduler; "fifo": strict first in, first out (a comparison baseline).
def _mapping_rule(check: Any) -> Any:
    """A check of ``settings.webhook`` as a validator (its ValueError → the setting's)."""

    def validate(value: Any) -> Any:
        try:
            return check(value)
        except ValueError as exc:
            _bad(str(exc), *getattr(exc, "subpath", ()))

    return validate


def _mailbox_backend(value: Any) -> Any:
    if value not in ("sqlite", "postgres"):
        _bad(f"must be sqlite or postgres, got {kind_of(value)}")
    return value


PolicyName = Literal["fair", "fifo"]
SCHEDULER_POLICIES: tuple[str, ...] = typing.get_args(PolicyName)


def _one_of(allowed: tuple[str, ...]) -> typing.Callable[[Any], Any]:
    """A validator of a name among ``allowed`` (exact spelling, a string)."""
    shown = ", ".join(repr(a) for a in allowed)

    def validate(value: Any) -> Any:
        if value not in allowed or not isinstance(value, str):
            _bad(f"must be one of {shown}, got {_shown(value)}")
        return value

    return validate


#: Where tenant limits live (``limits.backend``).
LimitsBackendKind = Literal["memory", "redis"]
LIMITS_BACKENDS: tuple[str, ...] = typing.get_args(LimitsBackendKind)
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_NAMESPACE_CHARS = frozenset(string.ascii_letters + string.digits + "_-.")


#: Where tenants, keys, usage and instances live.
StoreBackendName = Literal["sqlite", "postgres"]
STORE_BACKENDS: tuple[str, ...] = typing.get_args(StoreBackendName)


def _redis_url(value: str | None) -> str | None:
    """``redis://[user:password@]host[:port][/db]`` (``rediss://`` TLS, ``unix://`` a
    socket); empty means none. Checked here so a typo fails at load, not at the first request."""
    if not value:
        return None
    value = value.strip()
    if not value.startswith(_REDIS_SCHEMES) or len(value) > 1024:
        raise PydanticCustomError(
            "redis_url", "must be a URL such as redis://host:6379/0 (redis://, rediss://, unix://)"
        )
    from urllib.parse import urlsplit  # an error path and a redis deployment only

    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise PydanticCustomError("redis_url", "invalid URL: {why}", {"why": str(exc)}) from None
    if parts.scheme != "unix":
        if not parts.hostname:
            raise PydanticCustomError("redis_url", "needs a host: redis://host:6379/0")
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise PydanticCustomError(
                "redis_url", "the path is the database number (redis://host:6379/0), got '{db}'",
                {"db": db},
            )  # fmt: skip
    del port  # parsed only to be checked
    return value


def _namespace(value: str) -> str:
    if not value or len(value) > 64 or not set(value) <= _NAMESPACE_CHARS:
        raise PydanticCustomError("namespace", "must be 1 to 64 letters, digits, '_', '-' or '.'")
    return value


def _store_url(value: Any) -> Any:
    """A PostgreSQL URL (``postgresql://user:pass@host:port/db``), or none."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        _bad(f"must be a postgresql:// URL, got {_shown(value)}")
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 — raises on a bad port
    except ValueError as exc:
        _bad(f"is not a valid URL ({exc})")
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        _bad("must look like postgresql://user:password@host:5432/database")
    return value.strip()


# The types schema.py annotates its fields with.
Host = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: Seconds where 0 means "not at all" (no drain).
SecondsOrZero = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveInt = Annotated[int, Field(gt=0)]
HeaderBytes = Annotated[int, Field(ge=1024)]
AtLeastOne = Annotated[int, Field(ge=1)]
AtLeastZero = Annotated[int, Field(ge=0)]
QueueDepth = Annotated[int, Field(ge=0, le=10000)]
#: GiB; None: unlimited.
CapacityGb = Annotated[float, Field(gt=0, allow_inf_nan=False)] | None
#: Written as a mapping (in the environment: as JSON); held as a tuple of ``Group``.
Groups = Annotated[tuple[Group, ...], PlainValidator(_groups)]
Token = Annotated[str | None, AfterValidator(_none_if_empty)]
#: A header name; "" turns the header off.
HeaderName = Annotated[str, AfterValidator(_header_name)]
WebhookHeaders = Annotated[
    tuple[tuple[str, str], ...], PlainValidator(_mapping_rule(check_headers))
]
WebhookAuthRule = Annotated[Any, PlainValidator(_mapping_rule(check_auth))] | None
MailboxBackend = Annotated[Literal["sqlite", "postgres"], PlainValidator(_mailbox_backend)]
SchedulerPolicy = Annotated[PolicyName, PlainValidator(_one_of(SCHEDULER_POLICIES))]
LimitsBackendName = Annotated[LimitsBackendKind, PlainValidator(_one_of(LIMITS_BACKENDS))]
RedisUrl = Annotated[str | None, AfterValidator(_redis_url)]
#: A slot lease: long enough to renew (every third of it), short enough to recover.
LeaseSeconds = Annotated[float, Field(ge=0.5, le=3600, allow_inf_nan=False)]
Namespace = Annotated[str, AfterValidator(_namespace)]
StoreBackend = Annotated[StoreBackendName, PlainValidator(_one_of(STORE_BACKENDS))]
StoreUrl = Annotated[str | None, PlainValidator(_store_url)]
Origins = Annotated[
    tuple[Annotated[str, AfterValidator(_not_blank)], ...], BeforeValidator(_as_tuple)
]
RecipeDirs = Annotated[
    tuple[Annotated[Path, BeforeValidator(_recipe_dir)], ...], BeforeValidator(_as_tuple)
]


class Rule:
    """How one setting is checked: its annotated type (``Annotated[int, Field(ge=1)]``, …)
    and, for a list, the separator of its text form."""

    def __init__(self, hint: Any, *, separator: str | None = None, json_text: bool = False) -> None:
        self.hint = hint
        self.separator = separator
        self.json_text = json_text  # a mapping: its text form (the environment) is JSON
        inner = _optional_of(hint)
        annotated = typing.get_origin(inner) is Annotated
        #: The plain type (``int``, ``float``, ``bool``, …), which picks how text is parsed.
        self.type: Any = typing.get_args(inner)[0] if annotated else inner
        self._rules = typing.get_args(inner)[1:] if annotated else ()
        self._adapter: TypeAdapter[Any] = TypeAdapter(hint, config=ConfigDict(strict=True))

    def validated(self, value: Any, *, text: bool, base: Path | None) -> Any:
        """``value`` checked and typed; ``text``: parse a string form first. Relative paths
        start from ``base`` (the settings file's folder), or the current directory when
        ``base`` is None. A bad value raises ``ValueError`` with the message users see (the
        caller adds where the value came from)."""
        given = self._from_text(value) if text and isinstance(value, str) else value
        try:
            return self._adapter.validate_python(given, context={"base": base})
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            subpath = tuple((err.get("ctx") or {}).get("subpath", ()))
            raise RuleError(self._message(err, value), subpath) from None

    def bounds(self) -> tuple[float | None, float | None, bool]:
        """``(minimum, maximum, minimum is exclusive)`` from the constraints."""
        lo: float | None = None
        hi: float | None = None
        exclusive = False
        # Field(ge=1) carries its constraints in .metadata; a bare constraint is its own.
        for rule in (m for r in self._rules for m in getattr(r, "metadata", [r])):
            if isinstance(rule, annotated_types.Gt):
                lo, exclusive = float(rule.gt), True  # type: ignore[arg-type]
            elif isinstance(rule, annotated_types.Ge):
                lo = float(rule.ge)  # type: ignore[arg-type]
            elif isinstance(rule, annotated_types.Le):
                hi = float(rule.le)  # type: ignore[arg-type]
        return lo, hi, exclusive

    def range_text(self) -> str:
        """`` between 1 and 65535``, `` greater than 0``, `` of at least 1024`` or ``""``."""
        lo, hi, exclusive = self.bounds()
        if hi is not None:
            return f" between {_num(lo)} and {_num(hi)}"
        if lo is not None:
            return f" greater than {_num(lo)}" if exclusive else f" of at least {_num(lo)}"
        return ""

    def _from_text(self, text: str) -> Any:
        """What a text value stands for; text that does not parse is passed on unchanged,
        for validation to refuse with the key's own message."""
        if self.separator is not None:
            return [part.strip() for part in text.split(self.separator) if part.strip()]
        if self.json_text:
            try:
                return json.loads(text)
            except ValueError:
                example = '{"big": {"members": ["a"]}}'
                raise RuleError(f"must be JSON (a mapping), e.g. {example}") from None
        if self.type is bool:
            lowered = text.strip().lower()
            if lowered in _TRUE or lowered in _FALSE:
                return lowered in _TRUE
        elif self.type is int:
            with contextlib.suppress(ValueError):
                return int(text.strip())
        elif self.type is float:
            with contextlib.suppress(ValueError):
                return float(text.strip())
        return text

    def _message(self, err: ErrorDetails, given: Any) -> str:
        """pydantic's error in studioctl's words; ``given``: the value as written (before
        its text was parsed)."""
        kind, loc = err["type"], err["loc"]
        if loc and isinstance(loc[0], int):  # an item of a list
            item = err["input"]
            got = "an empty string" if isinstance(item, str) else kind_of(item)
            return f"item {loc[0]} must be a non-empty string, got {got}"
        text = self.range_text()
        if kind.startswith("int_"):
            return f"must be an integer{text}, got {_shown(given)}"
        if kind.startswith("float_") or kind == "finite_number":
            return f"must be a number{text}, got {_shown(given)}"
        if kind.startswith("bool_"):
            return f"must be true or false, got {_shown(given)}"
        if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            value = float(err["input"]) if self.type is float else err["input"]
            return f"must be{text}, got {value}"
        if kind == "string_too_short":
            return "must not be empty"
        if kind == "string_type":
            return f"must be a string, got {kind_of(given)}"
        if kind in ("tuple_type", "list_type"):
            return f"must be a list, got {kind_of(given)}"
        return str(err["msg"])


def _optional_of(hint: Any) -> Any:
    """``X | None`` → ``X`` (the type whose text form is parsed); any other hint as is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def kind_of(value: Any) -> str:
    """A value as error messages describe it: ``a number (3)``, ``a list``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _shown(value: Any) -> str:
    return kind_of(value) if not isinstance(value, str) else repr(value)


def _num(value: float | None) -> str:
    return f"{value:g}" if value is not None else ""

"""Reading the settings: flag > env ``STUDIOCTL_*`` > ``studioctl.yaml`` > default.

Every value is validated where it is read, by the pydantic rule its field's annotation names
(``settings.schema`` → ``settings.rules``), so an error names its own source: the file, line
and key; the environment variable; or the flag. Text (environment variables, flags given as
strings, ``${VAR}`` in the file) is parsed first: numbers, ``true/false/1/0/yes/no/on/off``,
lists split on ``os.pathsep`` (``recipes.dirs``) or commas (``gateway.cors_origins``).
"""

from __future__ import annotations

import functools
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studioctl import paths
from studioctl.errors import ConfigError, UsageError
from studioctl.settings.schema import SECTIONS, Settings, all_keys, section_keys
from studioctl.suggest import did_you_mean

if TYPE_CHECKING:
    from studioctl.settings.rules import Rule
    from studioctl.yamlfile import YamlDoc

ENV_PREFIX = "STUDIOCTL_"
#: Short aliases: environment variable → dotted key. The long form wins when both are set.
ENV_ALIASES: dict[str, str] = {"STUDIOCTL_ADMIN_TOKEN": "daemon.admin_token"}
#: ``STUDIOCTL_*`` variables that are not settings (they pick folders and files).
NOT_SETTINGS = frozenset({"STUDIOCTL_HOME", "STUDIOCTL_CONFIG"})

#: How the list settings are written as text: paths the way PATH is, origins with commas.
_SEPARATORS = {"recipes.dirs": os.pathsep, "gateway.cors_origins": ","}
#: Mapping settings: written as JSON in the environment and in flags given as text.
_JSON_TEXT = frozenset({"scheduler.groups", "webhook.headers", "webhook.auth"})


def env_var(dotted: str) -> str:
    """``"gateway.port"`` → ``"STUDIOCTL_GATEWAY_PORT"``."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


def settings_path(env: Mapping[str, str] | None = None) -> Path:
    """``$STUDIOCTL_CONFIG`` (also set by ``--config``) or ``<config dir>/studioctl.yaml``."""
    environ = os.environ if env is None else env
    explicit = environ.get("STUDIOCTL_CONFIG")
    if explicit:
        return Path(explicit).expanduser().absolute()
    return paths.settings_file()


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    file: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """The effective settings: ``overrides`` (CLI flags) > ``env`` > the file > defaults.

    ``overrides`` maps dotted keys (``"gateway.port"``) to values; ``None`` values are
    ignored (an option that was not given). ``env`` defaults to ``os.environ`` and is also
    the environment for ``${VAR}`` interpolation. ``file`` defaults to ``settings_path()``;
    the default file may be missing (defaults apply), a file named explicitly (argument,
    ``--config``, ``STUDIOCTL_CONFIG``) must exist.
    """
    environ = os.environ if env is None else env
    required = file is not None or bool(environ.get("STUDIOCTL_CONFIG"))
    path = file if file is not None else settings_path(environ)
    return _load(path, required=required, env=environ, interp_env=environ, overrides=overrides)


def validate_settings_file(path: Path) -> Settings:
    """Load one settings file on its own (no ``STUDIOCTL_*`` overrides); it must exist.

    ``${VAR}`` interpolation still uses the process environment.
    """
    return _load(path, required=True, env={}, interp_env=os.environ, overrides=None)


class _Layer:
    """The values read so far: dotted key → value, source label, error location.

    Sources are read from lowest to highest precedence; a later one overwrites.
    """

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.where: dict[str, dict[str, Any]] = {}

    def set(self, key: str, value: Any, source: str, where: dict[str, Any]) -> None:
        self.values[key] = value
        self.sources[key] = source
        self.where[key] = where


def _load(
    path: Path,
    *,
    required: bool,
    env: Mapping[str, str],
    interp_env: Mapping[str, str],
    overrides: Mapping[str, Any] | None,
) -> Settings:
    path = path.expanduser().absolute()
    merged = _Layer()
    used_file: Path | None = None
    if path.is_file() or required:
        _read_file(path, interp_env, merged)
        used_file = path
    _read_env(env, merged)
    _read_overrides(overrides or {}, merged)

    sections: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for section, model in SECTIONS.items():
        values: dict[str, Any] = {}
        for key in section_keys(section):
            dotted = f"{section}.{key}"
            if dotted in merged.values:
                values[key] = merged.values[dotted]
            sources[dotted] = merged.sources.get(dotted, "default")
        sections[section] = model(**values)  # each value was checked where it was read
    settings = Settings(**sections, sources=sources, file=used_file)
    _check_cross(settings, merged)
    return settings


# --- the three sources ----------------------------------------------------------------------


def _read_file(path: Path, interp_env: Mapping[str, str], layer: _Layer) -> None:
    from studioctl.yamlfile import load_file  # imported lazily: yaml is not needed for --help

    if not path.exists():
        raise ConfigError(
            "settings file not found",
            file=str(path),
            hint="check the path given on the command line, with --config or in STUDIOCTL_CONFIG",
        )
    doc = load_file(path, error=ConfigError)
    data = doc.data
    if data is None:
        return  # an empty file: all defaults
    if not isinstance(data, dict):
        raise ConfigError(
            f"the settings file must be a mapping of sections, got {_kind(data)}",
            file=doc.path,
            line=doc.line(),
        )
    for section, body in data.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section{did_you_mean(section, SECTIONS)}",
                file=doc.path,
                line=doc.line(section),
                key=section,
                hint="sections: " + ", ".join(SECTIONS),
            )
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(
                f"must be a mapping of keys, got {_kind(body)}",
                file=doc.path,
                line=doc.line(section),
                key=section,
            )
        for key, raw in body.items():
            _read_file_key(doc, section, key, raw, interp_env, layer)


def _read_file_key(
    doc: YamlDoc,
    section: str,
    key: str,
    raw: Any,
    interp_env: Mapping[str, str],
    layer: _Layer,
) -> None:
    dotted = f"{section}.{key}"
    line = doc.line(section, key)
    where: dict[str, Any] = {"file": doc.path, "line": line, "key": dotted}
    keys = section_keys(section)
    if key not in keys:
        elsewhere = [k for k in all_keys() if k.split(".")[1] == key]
        suggestion = f" (did you mean {elsewhere[0]!r}?)" if elsewhere else did_you_mean(key, keys)
        raise ConfigError(
            f"unknown key{suggestion}",
            file=doc.path,
            line=line,
            key=dotted,
            hint=f"keys in {section}: " + ", ".join(keys),
        )
    value = _interpolate_tree(raw, doc, (section, key), interp_env)
    # A string such as "${PORT:-8000}" stands for a typed value: parse its text like an
    # environment variable. A plain quoted "8000" for an integer stays a type error.
    text = isinstance(raw, str) and "${" in raw
    parsed = _validated(dotted, value, text=text, base=Path(doc.path).parent, where=where, doc=doc)
    layer.set(dotted, parsed, f"file:{doc.path}:{line}", where)


def _interpolate_tree(
    value: Any, doc: YamlDoc, keypath: tuple[str | int, ...], env: Mapping[str, str]
) -> Any:
    from studioctl.yamlfile import dotted, interpolate

    if isinstance(value, list):
        return [_interpolate_tree(item, doc, (*keypath, i), env) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {k: _interpolate_tree(v, doc, (*keypath, k), env) for k, v in value.items()}
    return interpolate(
        value,
        env=env,
        where=dotted(keypath),
        file=doc.path,
        line=doc.line(*keypath),
        error=ConfigError,
    )


def _read_env(env: Mapping[str, str], layer: _Layer) -> None:
    known = {env_var(k): k for k in all_keys()}
    # Typos in variables that look like settings are errors, not silently ignored.
    for name in sorted(env):
        if name in known or name in NOT_SETTINGS or name in ENV_ALIASES:
            continue
        section = next((s for s in SECTIONS if name.startswith(env_var(s) + "_")), None)
        if section is not None:
            raise ConfigError(
                f"unknown setting variable{did_you_mean(name, known)}",
                key=name,
                hint=f"{section} variables: "
                + ", ".join(env_var(f"{section}.{k}") for k in section_keys(section)),
            )
    # Aliases first so that the long form, read after, wins.
    for name, dotted in [*ENV_ALIASES.items(), *((v, k) for v, k in known.items())]:
        text = env.get(name)
        if not text:
            continue  # unset or empty: not given
        where = {"key": name, "setting": dotted}
        parsed = _validated(dotted, text, text=True, base=None, where=where)
        layer.set(dotted, parsed, f"env:{name}", where)


def _read_overrides(overrides: Mapping[str, Any], layer: _Layer) -> None:
    keys = all_keys()
    for dotted, value in overrides.items():
        if value is None:
            continue
        if dotted not in keys:
            raise UsageError(f"unknown setting {dotted!r}{did_you_mean(dotted, keys)}")
        where = {"flag": dotted}
        parsed = _validated(dotted, value, text=isinstance(value, str), base=None, where=where)
        layer.set(dotted, parsed, "flag", where)


# --- one value -------------------------------------------------------------------------------


def _validated(
    dotted: str,
    value: Any,
    *,
    text: bool,
    base: Path | None,
    where: dict[str, Any],
    doc: YamlDoc | None = None,
) -> Any:
    """``value`` for key ``dotted``, checked by its rule (``settings.rules``) and typed.
    A problem inside a mapping value is pinned to its own line and key when ``doc`` (the
    file) is given."""
    try:
        return _rule(dotted).validated(value, text=text, base=base)
    except ValueError as exc:
        subpath = tuple(getattr(exc, "subpath", ()))
        if doc is not None and subpath:
            from studioctl.yamlfile import dotted as dotted_path

            where = {
                **where,
                "line": doc.line(*dotted.split("."), *subpath),
                "key": dotted_path((*dotted.split("."), *subpath)),
            }
        raise _error(str(exc), where) from None


@functools.cache
def _rule(dotted: str) -> Rule:
    # Imported here, when a value is first checked: the rules are pydantic types.
    import studioctl.settings.rules as rules

    section, key = dotted.split(".")
    hints = typing.get_type_hints(SECTIONS[section], localns=vars(rules), include_extras=True)
    return rules.Rule(hints[key], separator=_SEPARATORS.get(dotted), json_text=dotted in _JSON_TEXT)


def _check_cross(settings: Settings, layer: _Layer) -> None:
    limits = settings.limits
    if limits.backend == "redis" and limits.redis_url is None:
        key = "limits.backend"
        raise _error(
            "limits.backend is redis but limits.redis_url is not set "
            "(e.g. redis://127.0.0.1:6379/0)",
            layer.where.get(key, {"key": key}),
        )
    if settings.store.backend == "postgres" and not settings.store.url:
        where = layer.where.get("store.backend", {"key": "store.backend"})
        raise _error(
            "store.backend is postgres but store.url is not set "
            "(postgresql://user:password@host:5432/database)",
            where,
        )
    lo, hi = settings.engines.port_min, settings.engines.port_max
    if lo > hi:
        # Blame whichever end was set explicitly (port_max if both were).
        blamed = "engines.port_max" if "engines.port_max" in layer.where else "engines.port_min"
        where = layer.where.get(blamed, {"key": blamed})
        raise _error(f"engines.port_min ({lo}) must not exceed engines.port_max ({hi})", where)


def _error(message: str, where: dict[str, Any]) -> ConfigError | UsageError:
    if "flag" in where:
        return UsageError(f"setting {where['flag']}: {message}")
    if "setting" in where:  # an environment variable
        return ConfigError(f"{message} (sets {where['setting']})", key=where["key"])
    return ConfigError(message, file=where.get("file"), line=where.get("line"), key=where["key"])


def _kind(value: Any) -> str:
    from studioctl.settings.rules import kind_of  # an error path: pydantic's cost is fine

    return kind_of(value)

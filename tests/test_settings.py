"""Settings: precedence, sources, interpolation, and one test per kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from studioctl import paths
from studioctl.errors import ConfigError, UsageError
from studioctl.settings import (
    GatewaySettings,
    Settings,
    all_keys,
    env_var,
    load_settings,
    settings_path,
    validate_settings_file,
)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("STUDIOCTL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STUDIOCTL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def default_file(text: str) -> Path:
    return write(paths.settings_file(), text)


# --- defaults, sources, precedence ----------------------------------------------------------


def test_defaults_without_a_file() -> None:
    s = load_settings(env={})
    assert s.file is None
    assert s.gateway.host == "127.0.0.1" and s.gateway.port == 8000
    assert (s.engines.port_min, s.engines.port_max) == (18000, 18999)
    assert s.daemon.autostart is True and s.daemon.admin_token is None
    assert s.logs.retention_days == 14
    assert set(s.sources) == set(all_keys())
    assert set(s.sources.values()) == {"default"}
    assert s == Settings()


def test_server_bounds_have_public_facing_defaults_and_follow_env_and_file() -> None:
    g = load_settings(env={}).gateway
    assert (g.header_timeout_s, g.body_timeout_s, g.send_timeout_s) == (10.0, 30.0, 60.0)
    assert (g.keepalive_timeout_s, g.max_header_bytes, g.max_connections) == (15.0, 65536, 4096)
    assert g.drain_timeout_s == 30.0
    f = default_file("gateway:\n  max_connections: 50\n  header_timeout_s: 2.5\n")
    env = {"STUDIOCTL_GATEWAY_MAX_CONNECTIONS": "60", "STUDIOCTL_GATEWAY_DRAIN_TIMEOUT_S": "0"}
    s = load_settings(env=env)
    assert s.gateway.max_connections == 60
    assert s.sources["gateway.max_connections"] == "env:STUDIOCTL_GATEWAY_MAX_CONNECTIONS"
    assert s.gateway.header_timeout_s == 2.5
    assert s.sources["gateway.header_timeout_s"] == f"file:{f}:3"
    assert s.gateway.drain_timeout_s == 0.0  # 0: no drain, in-flight requests end at once
    with pytest.raises(ConfigError, match="STUDIOCTL_GATEWAY_MAX_HEADER_BYTES"):
        load_settings(env={"STUDIOCTL_GATEWAY_MAX_HEADER_BYTES": "lots"})


def test_file_values_carry_file_and_line() -> None:
    f = default_file("# comment\ngateway:\n  host: 0.0.0.0\n  port: 9000\nlogs:\n  backups: 0\n")
    s = load_settings(env={})
    assert s.file == f
    assert s.gateway.host == "0.0.0.0" and s.gateway.port == 9000
    assert s.logs.backups == 0
    assert s.sources["gateway.port"] == f"file:{f}:4"
    assert s.sources["logs.backups"] == f"file:{f}:6"
    assert s.sources["gateway.max_concurrent"] == "default"


def test_precedence_flag_over_env_over_file_over_default() -> None:
    default_file("gateway:\n  port: 9001\n  host: 10.0.0.1\nengines:\n  port_min: 20000\n")
    env = {"STUDIOCTL_GATEWAY_PORT": "9002", "STUDIOCTL_ENGINES_PORT_MIN": "18500"}
    s = load_settings({"gateway.port": 9003, "engines.port_max": None}, env=env)
    assert s.gateway.port == 9003 and s.sources["gateway.port"] == "flag"
    assert s.engines.port_min == 18500
    assert s.sources["engines.port_min"] == "env:STUDIOCTL_ENGINES_PORT_MIN"
    assert s.gateway.host == "10.0.0.1" and s.sources["gateway.host"].startswith("file:")
    # None means "flag not given": the default stays.
    assert s.engines.port_max == 18999 and s.sources["engines.port_max"] == "default"


def test_env_values_are_parsed_by_type() -> None:
    env = {
        "STUDIOCTL_DAEMON_AUTOSTART": "off",
        "STUDIOCTL_GATEWAY_UPSTREAM_TIMEOUT_S": "2.5",
        "STUDIOCTL_GATEWAY_CORS_ORIGINS": "http://a.test, http://b.test",
        "STUDIOCTL_GATEWAY_CLAMP_OUTPUT": "YES",
        "STUDIOCTL_LOGS_MAX_BYTES": "",  # empty counts as unset
    }
    s = load_settings(env=env)
    assert s.daemon.autostart is False
    assert s.gateway.upstream_timeout_s == 2.5
    assert s.gateway.cors_origins == ("http://a.test", "http://b.test")
    assert s.gateway.clamp_output is True
    assert s.sources["logs.max_bytes"] == "default"


def test_env_names_follow_section_and_key() -> None:
    assert env_var("gateway.port") == "STUDIOCTL_GATEWAY_PORT"
    assert env_var("engines.port_min") == "STUDIOCTL_ENGINES_PORT_MIN"
    assert env_var("recipes.dirs") == "STUDIOCTL_RECIPES_DIRS"


def test_admin_token_alias_and_long_form_wins() -> None:
    s = load_settings(env={"STUDIOCTL_ADMIN_TOKEN": "short"})
    assert s.daemon.admin_token == "short"
    assert s.sources["daemon.admin_token"] == "env:STUDIOCTL_ADMIN_TOKEN"
    s = load_settings(
        env={"STUDIOCTL_ADMIN_TOKEN": "short", "STUDIOCTL_DAEMON_ADMIN_TOKEN": "long"}
    )
    assert s.daemon.admin_token == "long"
    assert s.sources["daemon.admin_token"] == "env:STUDIOCTL_DAEMON_ADMIN_TOKEN"


def test_not_settings_variables_are_ignored(tmp_path: Path) -> None:
    s = load_settings(env={"STUDIOCTL_HOME": str(tmp_path), "STUDIOCTL_SOMETHING_ELSE": "x"})
    assert set(s.sources.values()) == {"default"}


def test_to_dict_redacts_the_admin_token() -> None:
    s = load_settings(env={"STUDIOCTL_ADMIN_TOKEN": "s3cret"})
    assert s.to_dict()["daemon"]["admin_token"] == "***"
    assert s.to_dict(redact=False)["daemon"]["admin_token"] == "s3cret"
    assert "s3cret" not in repr(s.to_dict())
    assert load_settings(env={}).to_dict()["daemon"]["admin_token"] is None


def test_get_dotted_and_unknown_key() -> None:
    s = load_settings({"gateway.port": 8123}, env={})
    assert s.get("gateway.port") == 8123
    assert isinstance(s.get("gateway"), GatewaySettings)
    with pytest.raises(KeyError, match=r"gateway\.port"):
        s.get("gateway.prot")


def test_empty_file_gives_defaults() -> None:
    f = default_file("# nothing set yet\n")
    s = load_settings(env={})
    assert s.file == f and set(s.sources.values()) == {"default"}


# --- interpolation ---------------------------------------------------------------------------


def test_interpolation_with_and_without_default() -> None:
    default_file(
        "gateway:\n"
        "  host: ${BIND_HOST}\n"
        "  port: ${BIND_PORT:-9100}\n"
        "  metrics_public: ${PUBLIC:-false}\n"
        "daemon:\n"
        "  admin_token: tok-${TOKEN_SUFFIX}\n"
    )
    s = load_settings(env={"BIND_HOST": "0.0.0.0", "TOKEN_SUFFIX": "abc"})
    assert s.gateway.host == "0.0.0.0"
    assert s.gateway.port == 9100 and isinstance(s.gateway.port, int)
    assert s.gateway.metrics_public is False
    assert s.daemon.admin_token == "tok-abc"


def test_interpolation_in_list_items(tmp_path: Path) -> None:
    default_file("recipes:\n  dirs:\n    - ${EXTRA}/one\n    - /abs/two\n")
    s = load_settings(env={"EXTRA": str(tmp_path)})
    assert s.recipes.dirs == (tmp_path / "one", Path("/abs/two"))


def test_empty_interpolated_admin_token_means_none() -> None:
    default_file("daemon:\n  admin_token: ${ADMIN_TOKEN:-}\n")
    assert load_settings(env={}).daemon.admin_token is None


def test_unset_variable_without_default_names_key_and_line() -> None:
    f = default_file("gateway:\n  port: 8000\ndaemon:\n  admin_token: ${NOPE_TOKEN}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(env={})
    e = err.value
    assert (e.file, e.line, e.key) == (str(f), 4, "daemon.admin_token")
    assert "NOPE_TOKEN" in e.message


def test_unset_variable_in_list_item_names_index() -> None:
    default_file("recipes:\n  dirs:\n    - /ok\n    - ${MISSING_DIR}\n")
    with pytest.raises(ConfigError) as err:
        load_settings(env={})
    assert err.value.line == 4 and err.value.key == "recipes.dirs[1]"


# --- recipe folders --------------------------------------------------------------------------


def test_recipe_dirs_relative_to_file_and_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    f = write(tmp_path / "etc" / "studioctl.yaml", "recipes:\n  dirs: [team, ~/mine, ../up]\n")
    s = load_settings(file=f, env={})
    assert s.recipes.dirs == (
        tmp_path / "etc" / "team",
        tmp_path / "user" / "mine",
        tmp_path / "up",
    )
    assert s.recipes.search_path() == (paths.user_recipes_dir(), *s.recipes.dirs)


def test_recipe_dirs_from_env_use_pathsep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    value = os.pathsep.join(["/a", "rel", ""])
    s = load_settings(env={"STUDIOCTL_RECIPES_DIRS": value})
    assert s.recipes.dirs == (Path("/a"), tmp_path / "rel")
    assert s.sources["recipes.dirs"] == "env:STUDIOCTL_RECIPES_DIRS"


def test_search_path_has_no_duplicates() -> None:
    s = load_settings({"recipes.dirs": [str(paths.user_recipes_dir()), "/x"]}, env={})
    assert s.recipes.search_path() == (paths.user_recipes_dir(), Path("/x"))


# --- which file ----------------------------------------------------------------------------


def test_settings_path_default_and_studioctl_config(tmp_path: Path) -> None:
    assert settings_path() == paths.settings_file()
    assert paths.settings_file().is_relative_to(tmp_path)
    other = tmp_path / "other.yaml"
    assert settings_path({"STUDIOCTL_CONFIG": str(other)}) == other


def test_studioctl_config_is_read(tmp_path: Path) -> None:
    f = write(tmp_path / "alt.yaml", "gateway:\n  port: 8777\n")
    s = load_settings(env={"STUDIOCTL_CONFIG": str(f)})
    assert s.file == f and s.gateway.port == 8777


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as err:
        load_settings(env={"STUDIOCTL_CONFIG": str(missing)})
    assert err.value.file == str(missing)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(file=missing, env={})
    with pytest.raises(ConfigError, match="not found"):
        validate_settings_file(missing)


def test_validate_file_ignores_studioctl_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = write(tmp_path / "s.yaml", "gateway:\n  port: 8100\n")
    monkeypatch.setenv("STUDIOCTL_GATEWAY_PORT", "not-a-port")
    s = validate_settings_file(f)
    assert s.gateway.port == 8100 and s.sources["gateway.port"] == f"file:{f}:2"


# --- bad input: each names file, line and key ------------------------------------------------

BAD_FILES = [
    # (yaml text, line, key, words in the message)
    ("gatway:\n  port: 1\n", 1, "gatway", ["unknown section", "did you mean 'gateway'"]),
    ("gateway:\n  host: x\n  prot: 1\n", 3, "gateway.prot", ["unknown key", "'port'"]),
    ("gateway:\n  port_min: 1\n", 2, "gateway.port_min", ["'engines.port_min'"]),
    ("gateway:\n  port: '8000'\n", 2, "gateway.port", ["must be an integer", "'8000'"]),
    ("gateway:\n  port: true\n", 2, "gateway.port", ["must be an integer", "boolean"]),
    ("gateway:\n  port: 0\n", 2, "gateway.port", ["between 1 and 65535", "got 0"]),
    ("gateway:\n\n  port: 70000\n", 3, "gateway.port", ["between 1 and 65535"]),
    ("gateway:\n  port: ${P:-http}\n", 2, "gateway.port", ["must be an integer", "'http'"]),
    ("gateway:\n  max_body_bytes: 0\n", 2, "gateway.max_body_bytes", ["greater than 0"]),
    ("gateway:\n  upstream_timeout_s: -1\n", 2, "gateway.upstream_timeout_s", ["greater"]),
    ("gateway:\n  upstream_timeout_s: .nan\n", 2, "gateway.upstream_timeout_s", ["number"]),
    ("gateway:\n  clamp_output: maybe\n", 2, "gateway.clamp_output", ["true or false"]),
    ("gateway:\n  host: ''\n", 2, "gateway.host", ["must not be empty"]),
    ("gateway:\n  host: 12\n", 2, "gateway.host", ["must be a string"]),
    ("gateway:\n  cors_origins: http://x\n", 2, "gateway.cors_origins", ["must be a list"]),
    ("recipes:\n  dirs: [a, 3]\n", 2, "recipes.dirs", ["item 1", "non-empty string"]),
    ("engines:\n  port_min: 19000\n  port_max: 18000\n", 3, "engines.port_max", ["exceed"]),
    ("logs:\n  backups: -1\n", 2, "logs.backups", ["at least 0"]),
    ("logs:\n  retention_days: 0\n", 2, "logs.retention_days", ["greater than 0"]),
    ("daemon:\n  admin_token: 1234\n", 2, "daemon.admin_token", ["must be a string"]),
    ("gateway:\n  header_timeout_s: 0\n", 2, "gateway.header_timeout_s", ["greater than 0"]),
    ("gateway:\n  body_timeout_s: -5\n", 2, "gateway.body_timeout_s", ["greater than 0"]),
    ("gateway:\n  max_header_bytes: 100\n", 2, "gateway.max_header_bytes", ["at least 1024"]),
    ("gateway:\n  max_connections: 0\n", 2, "gateway.max_connections", ["at least 1"]),
    ("gateway:\n  drain_timeout_s: -1\n", 2, "gateway.drain_timeout_s", ["at least 0"]),
    ("daemon: [1]\n", 1, "daemon", ["must be a mapping"]),
    ("gateway:\n  port: 1\n  port: 2\n", 3, "gateway.port", ["duplicate key"]),
]


@pytest.mark.parametrize(("text", "line", "key", "words"), BAD_FILES)
def test_bad_file_names_file_line_key(
    tmp_path: Path, text: str, line: int, key: str, words: list[str]
) -> None:
    f = write(tmp_path / "studioctl.yaml", text)
    with pytest.raises(ConfigError) as err:
        validate_settings_file(f)
    e = err.value
    assert (e.file, e.line, e.key) == (str(f), line, key), e.message
    assert e.message.startswith(f"{f}:{line}: {key}: ")
    for word in words:
        assert word in e.message


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    f = write(tmp_path / "studioctl.yaml", "gateway:\n  port: [1,\n")
    with pytest.raises(ConfigError, match="invalid YAML") as err:
        validate_settings_file(f)
    assert err.value.file == str(f) and err.value.line is not None


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    f = write(tmp_path / "studioctl.yaml", "- gateway\n")
    with pytest.raises(ConfigError, match="mapping of sections") as err:
        validate_settings_file(f)
    assert err.value.line == 1


def test_port_range_blames_the_env_variable() -> None:
    with pytest.raises(ConfigError, match="exceed") as err:
        load_settings(env={"STUDIOCTL_ENGINES_PORT_MAX": "17000"})
    assert err.value.key == "STUDIOCTL_ENGINES_PORT_MAX"


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("STUDIOCTL_GATEWAY_PORT", "eighty", ["must be an integer", "gateway.port"]),
        ("STUDIOCTL_GATEWAY_PORT", "99999", ["between 1 and 65535"]),
        ("STUDIOCTL_DAEMON_AUTOSTART", "sometimes", ["true or false", "daemon.autostart"]),
        ("STUDIOCTL_GATEWAY_UPSTREAM_TIMEOUT_S", "inf", ["must be a number"]),
        ("STUDIOCTL_GATEWAY_PROT", "1", ["unknown setting variable", "STUDIOCTL_GATEWAY_PORT"]),
    ],
)
def test_bad_env_names_the_variable(name: str, value: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env={name: value})
    assert err.value.key == name
    assert err.value.message.startswith(f"{name}: ")
    for word in words:
        assert word in err.value.message


def test_bad_overrides_are_usage_errors() -> None:
    with pytest.raises(UsageError, match=r"did you mean 'gateway\.port'"):
        load_settings({"gateway.prot": 1}, env={})
    with pytest.raises(UsageError, match=r"gateway\.port.*between 1 and 65535"):
        load_settings({"gateway.port": 0}, env={})
    # Strings from flags are parsed like environment values.
    assert load_settings({"gateway.port": "8200"}, env={}).gateway.port == 8200


# --- what loading costs ----------------------------------------------------------------------


def _modules_after(code: str, env: dict[str, str]) -> list[str]:
    script = (
        "import json, sys\n"
        + code
        + "\nprint(json.dumps(sorted(m for m in ('pydantic', 'yaml') if m in sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, **env},
    )
    found: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return found


def test_defaults_load_without_pydantic_and_values_are_checked_by_it(home: Path) -> None:
    """`studioctl ps` with no daemon reads daemon.autostart: with nothing set, loading the
    settings imports neither pydantic nor yaml; a value to check brings the rules in."""
    load = "from studioctl.settings import load_settings; s = load_settings()"
    assert _modules_after(load, {"STUDIOCTL_HOME": str(home)}) == []
    env = {"STUDIOCTL_HOME": str(home), "STUDIOCTL_GATEWAY_PORT": "9000"}
    assert _modules_after(load + "; assert s.gateway.port == 9000", env) == ["pydantic"]

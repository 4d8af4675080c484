"""``limits.*`` settings: defaults, clear errors, the password never shown, and
``studioctl config validate`` PINGing Redis when the backend is redis."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from redis_server import RedisServer
from studioctl.errors import ConfigError
from studioctl.settings import load_settings, validate_settings_file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "studioctl.yaml"
    path.write_text(text)
    return path


def test_defaults_keep_limits_in_memory() -> None:
    limits = load_settings(env={}).limits
    assert (limits.backend, limits.redis_url, limits.fail_open) == ("memory", None, False)
    assert (limits.lease_s, limits.namespace) == (30.0, "default")


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("limits:\n  backend: redis\n", "limits.backend", "limits.redis_url is not set"),
        ("limits:\n  backend: memcached\n", "limits.backend", "'memory', 'redis'"),
        ("limits:\n  redis_url: http://h:6379\n", "limits.redis_url", "redis://host:6379/0"),
        ("limits:\n  redis_url: redis://h:6379/x\n", "limits.redis_url", "database number"),
        ("limits:\n  redis_url: redis://:6379/0\n", "limits.redis_url", "needs a host"),
        ("limits:\n  lease_s: 0.1\n", "limits.lease_s", "between 0.5 and 3600"),
        ("limits:\n  namespace: a b\n", "limits.namespace", "letters, digits"),
        ("limits:\n  fail_open: maybe\n", "limits.fail_open", "true or false"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, text: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_settings_file(write(tmp_path, text))
    assert info.value.key == key and info.value.line == 2
    assert words in info.value.message


def test_env_expansion_and_the_password_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "limits:\n  backend: redis\n  redis_url: redis://:${PW}@10.0.0.5:6379/2\n"
    monkeypatch.setenv("PW", "s3cret")
    settings = validate_settings_file(write(tmp_path, text))
    assert settings.limits.redis_url == "redis://:s3cret@10.0.0.5:6379/2"
    shown = settings.to_dict()["limits"]["redis_url"]
    assert shown == "redis://:***@10.0.0.5:6379/2"
    assert settings.to_dict(redact=False)["limits"]["redis_url"].count("s3cret") == 1


def closed_port() -> int:
    """A port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "studioctl", "config", "validate", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_validate_pings_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    good = write(tmp_path, f"limits:\n  backend: redis\n  redis_url: {redis_server.url}\n")
    out = validate(good)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ok"] is True

    port = closed_port()
    bad = write(
        tmp_path, f"limits:\n  backend: redis\n  redis_url: redis://:pw9@127.0.0.1:{port}/0\n"
    )
    out = validate(bad)
    answer = json.loads(out.stdout)
    assert out.returncode != 0 and answer["ok"] is False
    assert answer["key"] == "limits.redis_url"
    assert f"redis://:***@127.0.0.1:{port}/0" in answer["error"]
    assert "pw9" not in out.stdout + out.stderr


def test_memory_backend_needs_no_redis(tmp_path: Path) -> None:
    out = validate(write(tmp_path, "limits:\n  redis_url: redis://127.0.0.1:1/0\n"))
    assert out.returncode == 0, out.stderr

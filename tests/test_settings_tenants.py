"""The ``tenants`` settings section (the default limits of a tenant created without a
profile) and ``gateway.api_key_header``: defaults, the three sources, and bad values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from studioctl.errors import ConfigError
from studioctl.settings import SECTIONS, TenantsSettings, load_settings, validate_settings_file


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if name.startswith("STUDIOCTL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("STUDIOCTL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_defaults() -> None:
    s = load_settings(env={})
    assert s.tenants == TenantsSettings(
        default_max_concurrent=4,
        default_rpm_limit=120,
        default_tpm_limit=120000,
        default_max_context_tokens=8192,
        default_max_output_tokens=512,
    )
    assert s.gateway.api_key_header == "X-API-Key"
    assert "tenants" in SECTIONS and s.to_dict()["tenants"]["default_rpm_limit"] == 120
    assert s.get("tenants.default_tpm_limit") == 120000


def test_file_env_and_flag(tmp_path: Path) -> None:
    f = tmp_path / "studioctl.yaml"
    f.write_text("tenants:\n  default_rpm_limit: 60\n  default_max_concurrent: 8\n")
    env = {"STUDIOCTL_CONFIG": str(f), "STUDIOCTL_TENANTS_DEFAULT_MAX_CONCURRENT": "16"}
    s = load_settings({"tenants.default_max_output_tokens": 256}, env=env)
    assert (s.tenants.default_rpm_limit, s.tenants.default_max_concurrent) == (60, 16)
    assert s.tenants.default_max_output_tokens == 256
    assert s.sources["tenants.default_rpm_limit"].startswith(f"file:{f}:2")
    assert s.sources["tenants.default_max_concurrent"] == (
        "env:STUDIOCTL_TENANTS_DEFAULT_MAX_CONCURRENT"
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("tenants:\n  default_rpm_limit: 0\n", ["tenants.default_rpm_limit", "at least 1"]),
        ("tenants:\n  default_tpm_limit: lots\n", ["must be an integer"]),
        ("tenants:\n  default_rpm: 5\n", ["unknown key", "default_rpm_limit"]),
        ("gateway:\n  api_key_header: Authorization\n", ["a header of its own"]),
        ("gateway:\n  api_key_header: x-admin-token\n", ["a header of its own"]),
        ("gateway:\n  api_key_header: 'X API Key'\n", ["HTTP header name"]),
        ("gateway:\n  api_key_header: 5\n", ["must be a string"]),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, words: list[str]) -> None:
    f = tmp_path / "studioctl.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        validate_settings_file(f)
    for word in words:
        assert word in err.value.message, err.value.message


def test_the_key_header_empty_in_the_file_turns_it_off(tmp_path: Path) -> None:
    f = tmp_path / "studioctl.yaml"
    f.write_text("gateway:\n  api_key_header: ''\n")
    assert validate_settings_file(f).gateway.api_key_header == ""
    env = {"STUDIOCTL_GATEWAY_API_KEY_HEADER": " X-Key "}
    assert load_settings(env=env).gateway.api_key_header == "X-Key"
    with pytest.raises(ConfigError, match="STUDIOCTL_TENANTS_DEFAULT_RPM_LIMIT"):
        load_settings(env={"STUDIOCTL_TENANTS_DEFAULT_RPM": "5"})

"""Shared fixtures. Every test gets its own STUDIOCTL_HOME (nothing touches the real dirs):
a fresh, existing directory, the ``studioctl_home`` fixture, with none of the developer's
``STUDIOCTL_*`` settings. Sub-directories' conftests do not set it again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Variables that would leak a developer's setup into tests.
_LEAKY = ("STUDIOCTL_CONFIG", "STUDIOCTL_ADMIN_TOKEN", "NOTIFY_SOCKET", "STUDIOCTL_DETACHED")


@pytest.fixture(autouse=True)
def studioctl_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("STUDIOCTL_HOME", str(home))
    for name in _LEAKY:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith(
            (
                "STUDIOCTL_GATEWAY_",
                "STUDIOCTL_DAEMON_",
                "STUDIOCTL_ENGINES_",
                "STUDIOCTL_RECIPES_",
                "STUDIOCTL_LOGS_",
                "STUDIOCTL_LIMITS_",
                "STUDIOCTL_STORE_",
            )
        ):
            monkeypatch.delenv(name, raising=False)
    yield home

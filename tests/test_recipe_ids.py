"""Recipe ids are bounded (1-64 characters): a longer one is a clear error naming the id and
the rule wherever an id comes in — never a traceback from the OS (ENAMETOOLONG)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from studioctl.errors import EXIT_NOT_FOUND, EXIT_USAGE, NotFoundError, RecipeError
from studioctl.recipes import (
    ID_MAX,
    find_recipe_file,
    get_recipe,
    id_problem,
    parse_recipe_text,
)

LONG = "a" * 300
RULE = "1-64 characters: lowercase letters, digits, '.', '_' and '-'"


def studioctl(*args: str) -> subprocess.CompletedProcess[str]:
    """The real entry point (main() maps errors to exit codes; a traceback would show)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDIOCTL_")}
    env["STUDIOCTL_HOME"] = os.environ["STUDIOCTL_HOME"]
    return subprocess.run(
        [sys.executable, "-m", "studioctl", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_the_bound() -> None:
    assert id_problem("a" * ID_MAX) is None
    problem = id_problem("a" * (ID_MAX + 1))
    assert problem is not None and RULE in problem and repr("a" * 65) in problem


def test_recipe_new_with_a_300_character_id_is_a_usage_error() -> None:
    r = studioctl("recipe", "new", LONG, "--backend", "vllm", "--model", "org/m")
    assert r.returncode == EXIT_USAGE, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: ID: invalid recipe id '{'a' * 39}")
    assert "(300 characters)" in r.stderr and RULE in r.stderr
    assert not (Path(os.environ["STUDIOCTL_HOME"]) / "config" / "recipes").exists()


@pytest.mark.parametrize("command", [["show"], ["edit"], ["rm", "--yes"], ["validate"]])
def test_commands_that_look_an_id_up_name_the_rule(command: list[str]) -> None:
    r = studioctl("recipe", *command, LONG)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode in (EXIT_NOT_FOUND, EXIT_USAGE, 1), r.stderr
    assert "invalid recipe id" in r.stdout + r.stderr


def test_lookups_never_ask_the_os_about_an_impossible_name(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as err:
        find_recipe_file(LONG, [tmp_path])
    assert RULE in err.value.message and "(300 characters)" in err.value.message
    with pytest.raises(NotFoundError, match="no recipe file"):
        get_recipe(str(tmp_path / (LONG + ".yaml")))


def test_a_file_with_a_long_id_is_refused_naming_the_rule() -> None:
    with pytest.raises(RecipeError) as err:
        parse_recipe_text(f"id: {'b' * 65}\nbackend: vllm\nmodel: org/m\n", path=None)
    assert RULE in err.value.message

"""The on-demand and placement fields of a recipe: validation, their place in the hash, the
group check against the settings, and what `recipe show` / `launch --dry-run` print."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from studioctl import paths
from studioctl.cli.app import app
from studioctl.errors import RecipeError
from studioctl.lifecycle.runtime import recipe_from_json
from studioctl.recipes import SERVING_FIELDS, Recipe, get_recipe, parse_recipe_text, scan_recipes
from studioctl.store import InstanceRepo, InstanceRow
from studioctl.store.migrations import migrate
from studioctl.store.sqlite import SqliteDatabase as Database

# Hashes the code gave before the serving fields existed (commit 27ffa02): stored with every
# instance launched then, and compared again after an upgrade.
GOLDEN = {
    "golden": (
        {
            "backend": "vllm",
            "model": "org/m",
            "gpus": [0],
            "max_model_len": 4096,
            "env": {"A": "1"},
        },
        "c4f9f86aa85a8206c116b48c3a67981576ddfdd70d3dd9c02589710b04b52c10",
    ),
    "golden2": (
        {"backend": "sglang", "model": "org/m"},
        "2393b2776ac41c209cecc1cbac537ea38bd837bee752b9390c30308eb7ee2e8d",
    ),
}


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("STUDIOCTL_RECIPES_DIRS", "STUDIOCTL_CONFIG", "STUDIOCTL_SCHEDULER_GROUPS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STUDIOCTL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def parse(text: str, tmp_path: Path) -> Recipe:
    return parse_recipe_text(text, path=tmp_path / "r.yaml", check_paths=False)


BASE = "backend: vllm\nmodel: org/m\n"


def test_fields_and_defaults(tmp_path: Path) -> None:
    r = parse(BASE, tmp_path)
    assert r.serving() == {
        "on_demand": None,
        "pinned": False,
        "vram_gb": None,
        "queue_depth": None,
        "queue_timeout_s": None,
        "group": None,
        "log_bodies": False,
    }
    text = BASE + (
        "on_demand: false\npinned: true\nvram_gb: 20\nqueue_depth: 0\n"
        "queue_timeout_s: 2.5\ngroup: big\nlog_bodies: true\n"
    )
    r = parse(text, tmp_path)
    assert r.serving() == {
        "on_demand": False,
        "pinned": True,
        "vram_gb": 20.0,
        "queue_depth": 0,
        "queue_timeout_s": 2.5,
        "group": "big",
        "log_bodies": True,
    }
    assert list(r.serving()) == list(SERVING_FIELDS)


@pytest.mark.parametrize(
    ("line", "key", "words"),
    [
        ("vram_gb: 0", "vram_gb", "greater than 0"),
        ("vram_gb: -3", "vram_gb", "greater than 0"),
        ("vram_gb: .nan", "vram_gb", "finite"),
        ("queue_depth: 10001", "queue_depth", "less than or equal to 10000"),
        ("queue_depth: -1", "queue_depth", "greater than or equal to 0"),
        ("queue_depth: 2.5", "queue_depth", "integer"),
        ("queue_timeout_s: 0", "queue_timeout_s", "greater than 0"),
        ("pinned: yes please", "pinned", "boolean"),
        ("on_demand: 1", "on_demand", "boolean"),
        ("group: ''", "group", "at least 1 character"),
        ("group: 'a b'", "group", "no spaces"),
        ("pined: true", "pined", "did you mean pinned?"),
        ("vram: 20", "vram", "did you mean vram_gb?"),
        ("queue_timeout: 5", "queue_timeout", "did you mean queue_timeout_s?"),
        ("ttl: 60", "ttl", "did you mean idle_unload_s?"),
        ("groups: big", "groups", "did you mean group?"),
    ],
)
def test_bad_values_name_line_and_key(line: str, key: str, words: str, tmp_path: Path) -> None:
    with pytest.raises(RecipeError) as err:
        parse(BASE + line + "\n", tmp_path)
    assert err.value.key == key
    assert err.value.line == 3
    assert words in str(err.value)


def test_typed_fields_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPTH", "7")
    r = parse(BASE + "queue_depth: ${DEPTH}\npinned: ${PIN:-true}\nvram_gb: ${V:-1.5}\n", tmp_path)
    assert (r.queue_depth, r.pinned, r.vram_gb) == (7, True, 1.5)


@pytest.mark.parametrize("rid", sorted(GOLDEN))
def test_hash_of_a_recipe_without_the_fields_is_unchanged(rid: str, tmp_path: Path) -> None:
    fields, old_hash = GOLDEN[rid]
    r = Recipe.model_validate({"id": rid, **fields})
    assert r.content_hash() == old_hash
    # Writing a field at its default is the same recipe; setting one is a new one.
    assert r.model_copy(update={"pinned": False}).content_hash() == old_hash
    for key, value in [("pinned", True), ("vram_gb", 8.0), ("group", "g"), ("on_demand", True)]:
        assert Recipe.model_validate({"id": rid, **fields, key: value}).content_hash() != old_hash


def test_an_instance_stored_before_the_upgrade_still_matches(tmp_path: Path) -> None:
    """The row an older studioctl wrote (recipe JSON without the new keys, and its hash), read
    back from SQLite as adoption does: the recipe it yields has the stored hash, and so has
    the recipe file loaded now."""
    fields, old_hash = GOLDEN["golden"]
    old = Recipe.model_validate({"id": "golden", **fields}).model_dump(mode="json")
    for key in SERVING_FIELDS:
        del old[key]  # what the JSON of the older version held
    with Database(tmp_path / "s.db") as db:
        migrate(db)
        repo = InstanceRepo(db)
        repo.insert(
            InstanceRow(
                id="golden-1",
                recipe_id="golden",
                backend="vllm",
                model="org/m",
                served_name="golden",
                host="127.0.0.1",
                port=18000,
                recipe_hash=old_hash,
                recipe_json=json.dumps(old),
            )
        )
        row = repo.get("golden-1")
    adopted = recipe_from_json(row.recipe_json)
    assert adopted.content_hash() == row.recipe_hash == old_hash
    text = "".join(f"{k}: {json.dumps(v)}\n" for k, v in fields.items())
    assert parse_recipe_text(text, path=tmp_path / "golden.yaml").content_hash() == old_hash


def settings_file(home: Path, text: str) -> None:
    path = paths.settings_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def recipe_file(name: str, text: str) -> Path:
    folder = paths.user_recipes_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


GROUPS = "scheduler:\n  groups:\n    big:\n      members: [a]\n    small:\n      members: []\n"


def test_the_group_must_exist_in_the_settings(home: Path) -> None:
    settings_file(home, GROUPS)
    recipe_file("a", BASE + "group: big\n")
    recipe_file("b", BASE + "group: smal\n")
    recipe_file("c", BASE + "group: small\n")
    assert get_recipe("a").group == "big"
    assert get_recipe("c").group == "small"
    with pytest.raises(RecipeError) as err:
        get_recipe("b")
    assert err.value.key == "group" and err.value.line == 3
    assert "unknown group 'smal'" in str(err.value) and "did you mean 'small'" in str(err.value)
    scan = scan_recipes()
    assert [r.id for r in scan.recipes] == ["a", "c"]
    assert [e.key for e in scan.errors] == ["group"]


def test_the_group_must_agree_with_the_members(home: Path) -> None:
    settings_file(home, GROUPS)
    path = recipe_file("a", BASE + "group: small\n")
    with pytest.raises(RecipeError, match=r"scheduler.groups.big.members lists this recipe"):
        get_recipe(str(path))
    # Explicit folders (the daemon's) and explicit groups: checked against those given.
    assert get_recipe("a", [path.parent]).group == "small"
    with pytest.raises(RecipeError, match=r"unknown group 'small'") as err:
        get_recipe("a", [path.parent], groups=())
    assert err.value.hint is not None and "(none is)" in err.value.hint


runner = CliRunner()


def test_show_and_dry_run_print_the_fields(home: Path) -> None:
    recipe_file("s", BASE + "pinned: true\nvram_gb: 12\nqueue_depth: 3\n")
    shown = runner.invoke(app, ["recipe", "show", "s", "--json"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert (data["pinned"], data["vram_gb"], data["queue_depth"]) == (True, 12.0, 3)
    assert data["on_demand"] is None and data["group"] is None
    dry = runner.invoke(app, ["launch", "s", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    serving = json.loads(dry.stdout)["serving"]
    assert serving["pinned"] is True and serving["vram_gb"] == 12.0
    valid = runner.invoke(app, ["recipe", "validate", "s"])
    assert valid.exit_code == 0, valid.output
    recipe_file("t", BASE + "queue_depth: 99999\n")
    bad = runner.invoke(app, ["recipe", "validate", "t"])
    assert bad.exit_code == 1
    assert "queue_depth" in bad.output

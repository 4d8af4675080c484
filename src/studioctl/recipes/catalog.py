"""The recipe catalog: the recipe folders, and finding recipes in them by id or file.

Recipe folders (``recipe_dirs()``), searched in order: ``<config dir>/recipes``, the
settings' ``recipes.dirs`` (``$STUDIOCTL_RECIPES_DIRS``, ``os.pathsep``-separated). A recipe's
id is its file name, so ids are unique across the folders: a second file with an id already
seen is an error naming both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from studioctl.errors import NotFoundError, RecipeError
from studioctl.recipes.load import load_recipe_file
from studioctl.recipes.schema import SUFFIXES, Recipe, file_stem, id_problem
from studioctl.suggest import closest

if TYPE_CHECKING:
    from collections.abc import Sequence

    from studioctl.settings import Group, Settings


def recipe_dirs(settings: Settings | None = None) -> list[Path]:
    """Recipe folders in search order, without duplicates (they need not exist).

    ``<config dir>/recipes``, then ``recipes.dirs`` of the settings (the file, or
    ``$STUDIOCTL_RECIPES_DIRS``; the effective settings are loaded when none are given).
    """
    if settings is None:
        from studioctl.settings import load_settings

        settings = load_settings()
    out: list[Path] = []
    for d in settings.recipes.search_path():
        d = d.expanduser().absolute()
        if d not in out:
            out.append(d)
    return out


def recipe_files(dirs: list[Path] | None = None) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` file in the folders, folder order, then by name."""
    out: list[Path] = []
    for d in recipe_dirs() if dirs is None else dirs:
        if not d.is_dir():
            continue
        out.extend(
            sorted(
                p
                for p in d.iterdir()
                if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file()
            )
        )
    return out


@dataclass
class Scan:
    """Every recipe in the folders, and the files that failed to load."""

    recipes: list[Recipe] = field(default_factory=list)
    errors: list[RecipeError] = field(default_factory=list)


def _with_settings(
    dirs: list[Path] | None, groups: Sequence[Group] | None
) -> tuple[list[Path], Sequence[Group] | None]:
    """The folders and groups to use: without folders, both from the effective settings
    (the recipe's ``group`` is then checked against ``scheduler.groups``)."""
    if dirs is not None:
        return dirs, groups
    from studioctl.settings import load_settings

    settings = load_settings()
    return recipe_dirs(settings), settings.scheduler.groups if groups is None else groups


def scan_recipes(
    dirs: list[Path] | None = None,
    *,
    check_paths: bool = False,
    groups: Sequence[Group] | None = None,
) -> Scan:
    """Load every recipe file; keep going past bad files (each becomes an error).

    A second file with an id already seen (in an earlier folder) is an error naming both.
    ``groups``: see ``load_recipe_file`` (default with no ``dirs``: the settings' groups).
    """
    scan = Scan()
    first: dict[str, Path] = {}
    dirs, groups = _with_settings(dirs, groups)
    for path in recipe_files(dirs):
        try:
            recipe = load_recipe_file(path, check_paths=check_paths, groups=groups)
        except RecipeError as exc:
            scan.errors.append(exc)
            continue
        if recipe.id in first:
            scan.errors.append(_duplicate(recipe.id, first[recipe.id], path))
            continue
        first[recipe.id] = path
        scan.recipes.append(recipe)
    return scan


def list_recipes(dirs: list[Path] | None = None, *, check_paths: bool = False) -> list[Recipe]:
    """Every recipe in the folders; the first bad file (or duplicate id) raises."""
    scan = scan_recipes(dirs, check_paths=check_paths)
    if scan.errors:
        err = scan.errors[0]
        if len(scan.errors) > 1:
            err.hint = (err.hint + "; " if err.hint else "") + (
                f"{len(scan.errors) - 1} more bad recipe file(s); "
                "run `studioctl recipe validate` for all"
            )
        raise err
    return scan.recipes


def _duplicate(recipe_id: str, first: Path, second: Path) -> RecipeError:
    line = None
    try:
        from studioctl.yamlfile import load_file

        line = load_file(second, error=RecipeError).line("id")
    except RecipeError:
        pass
    return RecipeError(
        f"duplicate recipe id {recipe_id!r}: also defined in {first}",
        file=str(second),
        line=line or 1,
        key="id",
        hint="recipe ids must be unique across all recipe folders; rename one of the files",
    )


def find_recipe_file(recipe_id: str, dirs: list[Path] | None = None) -> Path:
    """The file of recipe ``recipe_id`` (by file name: the id equals the file's stem)."""
    problem = id_problem(recipe_id)
    if problem:  # no such file can exist; and never ask the OS (ENAMETOOLONG, a NUL)
        raise NotFoundError(f"no recipe: {problem}", details={"param": "recipe"})
    dirs = recipe_dirs() if dirs is None else dirs
    found = [
        d / f"{recipe_id}{s}" for d in dirs for s in SUFFIXES if (d / f"{recipe_id}{s}").is_file()
    ]
    if len(found) > 1:
        raise _duplicate(recipe_id, found[0], found[1])
    if found:
        return found[0]
    known = sorted({file_stem(p) for p in recipe_files(dirs)})
    close = closest(recipe_id, known, n=3)
    raise NotFoundError(
        f"no recipe {recipe_id!r}"
        + (f" (known: {', '.join(known)})" if known else " (no recipes found)"),
        hint=(f"did you mean {' or '.join(close)}?" if close else None)
        or "recipe folders: " + ", ".join(str(d) for d in dirs),
    )


def is_path_like(id_or_path: str) -> bool:
    return os.sep in id_or_path or id_or_path.endswith((*SUFFIXES, ".json"))


def get_recipe(
    id_or_path: str,
    dirs: list[Path] | None = None,
    *,
    check_paths: bool = True,
    groups: Sequence[Group] | None = None,
) -> Recipe:
    """A recipe by id (searched in the folders) or by file path. ``groups``: see
    ``load_recipe_file`` (default with no ``dirs``: the settings' groups)."""
    dirs, groups = _with_settings(dirs, groups)
    if is_path_like(id_or_path):
        path = Path(id_or_path).expanduser()
        try:
            found = path.is_file()
        except OSError as exc:  # a name too long, a NUL
            raise NotFoundError(f"no recipe file {str(path)[:200]}: {exc.strerror}") from exc
        except ValueError as exc:
            raise NotFoundError(f"no recipe file {str(path)[:200]}: {exc}") from exc
        if not found:
            raise NotFoundError(f"no recipe file {path}")
        return load_recipe_file(path, check_paths=check_paths, groups=groups)
    path = find_recipe_file(id_or_path, dirs)
    return load_recipe_file(path, check_paths=check_paths, groups=groups)

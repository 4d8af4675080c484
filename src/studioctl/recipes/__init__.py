"""Recipes: one YAML file per engine launch configuration.

- ``schema``: the ``Recipe`` model and its rules (the engine's rules included);
- ``load``: a file or text → a validated ``Recipe``, errors naming file, line and key;
- ``catalog``: the recipe folders, and finding recipes by id or path;
- ``write``: atomic writes, YAML rendering, save, remove, the commented template;
- ``importers``: studioctl YAML or vLLM Studio's JSON recipe form → recipes to save.

The names below are the package's public interface.
"""

from __future__ import annotations

from studioctl.recipes.catalog import (
    Scan,
    find_recipe_file,
    get_recipe,
    is_path_like,
    list_recipes,
    recipe_dirs,
    recipe_files,
    scan_recipes,
)
from studioctl.recipes.importers import Imported, read_import
from studioctl.recipes.load import (
    check_group,
    kind_of,
    load_recipe_file,
    parse_recipe_text,
    recipe_from_doc,
)
from studioctl.recipes.schema import (
    FIELD_DOCS,
    ID_MAX,
    ID_RE,
    ID_RULE,
    QUEUE_DEPTH_MAX,
    SERVING_FIELDS,
    SUFFIXES,
    Recipe,
    file_stem,
    id_problem,
    looks_local,
)
from studioctl.recipes.write import (
    atomic_write,
    dump_recipe,
    remove_recipe,
    save_recipe,
    template_text,
)

__all__ = [
    "FIELD_DOCS",
    "ID_MAX",
    "ID_RE",
    "ID_RULE",
    "QUEUE_DEPTH_MAX",
    "SERVING_FIELDS",
    "SUFFIXES",
    "Imported",
    "Recipe",
    "Scan",
    "atomic_write",
    "check_group",
    "dump_recipe",
    "file_stem",
    "find_recipe_file",
    "get_recipe",
    "id_problem",
    "is_path_like",
    "kind_of",
    "list_recipes",
    "load_recipe_file",
    "looks_local",
    "parse_recipe_text",
    "read_import",
    "recipe_dirs",
    "recipe_files",
    "recipe_from_doc",
    "remove_recipe",
    "save_recipe",
    "scan_recipes",
    "template_text",
]

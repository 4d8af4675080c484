"""Writing recipes: atomic file writes, YAML rendering, save, remove, the commented template."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from studioctl import paths
from studioctl.errors import RecipeError
from studioctl.recipes.catalog import find_recipe_file
from studioctl.recipes.schema import FIELD_DOCS, Recipe, file_stem


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename (never half a file).
    Missing folders are made 0700 (the config dir holds recipes with paths and env)."""
    paths.ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dump_recipe(recipe: Recipe, *, header: str | None = None) -> str:
    """The recipe as YAML: the keys that differ from their defaults, in field order."""
    data = recipe.model_dump(mode="json", exclude_defaults=True)
    for key in ("backend", "model"):
        data.setdefault(key, getattr(recipe, key))
    ordered = {"id": recipe.id}
    ordered.update({k: data[k] for k in Recipe.model_fields if k in data and k != "id"})
    lines = [f"# {header}"] if header else []
    lines.append(_yaml(ordered))
    return "\n".join(lines)


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def list_rep(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
        flow = all(not isinstance(i, list | dict) for i in items)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)

    Dumper.add_representer(list, list_rep)
    return yaml.dump(
        data, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def save_recipe(recipe: Recipe, path: Path | None = None) -> Path:
    """Write the recipe as YAML (atomically). Default: ``<user recipes dir>/<id>.yaml``."""
    if path is None:
        path = paths.user_recipes_dir() / f"{recipe.id}.yaml"
    if file_stem(path) != recipe.id:
        raise RecipeError(
            f"a recipe file is named after its id: {recipe.id}.yaml, not {path.name}",
            file=str(path),
            key="id",
        )
    atomic_write(path, dump_recipe(recipe, header="studioctl recipe; keys: docs/recipes.md"))
    return path


def remove_recipe(id: str, dirs: list[Path] | None = None) -> Path:
    """Delete the recipe's file (even when it does not validate); returns its path."""
    path = find_recipe_file(id, dirs)
    path.unlink()
    return path


#: Example values for the commented template ``studioctl recipe new`` writes.
_EXAMPLES: dict[str, str] = {
    "name": "Llama 3.1 8B Instruct",
    "description": "what this recipe is for",
    "served_model_name": "llama-3.1-8b",
    "aliases": "[llama-8b]",
    "python": "~/venvs/vllm/bin/python",
    "gpus": "[0]",
    "port": "18000",
    "host": "127.0.0.1",
    "tensor_parallel_size": "1",
    "pipeline_parallel_size": "1",
    "data_parallel_size": "1",
    "max_model_len": "8192",
    "gpu_memory_utilization": "0.9",
    "dtype": "auto",
    "quantization": "awq",
    "kv_cache_dtype": "fp8",
    "max_num_seqs": "256",
    "trust_remote_code": "false",
    "enforce_eager": "false",
    "chat_template": "./template.jinja",
    "tool_call_parser": "hermes",
    "enable_auto_tool_choice": "true",
    "reasoning_parser": "deepseek_r1",
    "seed": "0",
    "engine_args": "{enable_prefix_caching: true}",
    "extra_args": '["--disable-log-requests"]',
    "env": "{HF_HUB_OFFLINE: '1'}",
    "readiness_timeout_s": "900",
    "restart": "on-failure",
    "idle_unload_s": "3600",
    "on_demand": "true",
    "pinned": "false",
    "vram_gb": "20",
    "queue_depth": "64",
    "queue_timeout_s": "300",
    "group": "big-models",
}


def template_text(recipe: Recipe) -> str:
    """A commented YAML for ``recipe``: the keys it sets, then every other key commented
    out with an example and what it means."""
    set_keys = recipe.model_dump(mode="json", exclude_defaults=True)
    for key in ("backend", "model"):
        set_keys.setdefault(key, getattr(recipe, key))
    out = [
        f"# studioctl recipe {recipe.id}: every key is documented in docs/recipes.md.",
        "# Values may use ${VAR} and ${VAR:-default}. Check it: studioctl recipe validate "
        f"{recipe.id}",
    ]
    for key in Recipe.model_fields:
        if key == "source":
            continue
        doc = FIELD_DOCS[key]
        if key == "id" or key in set_keys:
            value = recipe.id if key == "id" else set_keys[key]
            out.append(f"# {doc}")
            out.append(_yaml({key: value}).rstrip("\n"))
        else:
            out.append(f"# {key}: {_EXAMPLES.get(key, '')}".rstrip() + f"    # {doc}")
    return "\n".join(out) + "\n"

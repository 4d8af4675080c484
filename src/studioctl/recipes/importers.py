"""Importing recipes: studioctl YAML, or the JSON recipe form of vLLM Studio.

``read_import(path)`` returns each recipe validated, with the YAML text to save: vLLM
Studio's keys are mapped (``model_path`` → ``model``, ``tp`` → ``tensor_parallel_size``,
its ``extra_args`` dict → ``engine_args`` …), keys with no meaning here are dropped with a
note, and anything unknown is refused naming the key.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studioctl.errors import RecipeError
from studioctl.recipes.load import kind_of, recipe_from_doc
from studioctl.recipes.schema import ID_MAX, ID_RE, SUFFIXES, Recipe, file_stem
from studioctl.recipes.write import dump_recipe
from studioctl.suggest import closest

if TYPE_CHECKING:
    from studioctl.yamlfile import YamlDoc


#: vLLM Studio recipe keys → studioctl keys (its JSON form; see docs/recipes.md).
_STUDIO_KEYS: dict[str, str] = {
    "id": "id",
    "name": "name",
    "description": "description",
    "backend": "backend",
    "engine": "backend",
    "model_path": "model",
    "model": "model",
    "served_model_name": "served_model_name",
    "tp": "tensor_parallel_size",
    "tensor_parallel_size": "tensor_parallel_size",
    "pp": "pipeline_parallel_size",
    "pipeline_parallel_size": "pipeline_parallel_size",
    "dp": "data_parallel_size",
    "data_parallel_size": "data_parallel_size",
    "max_model_len": "max_model_len",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "kv_cache_dtype": "kv_cache_dtype",
    "max_num_seqs": "max_num_seqs",
    "trust_remote_code": "trust_remote_code",
    "enforce_eager": "enforce_eager",
    "tool_call_parser": "tool_call_parser",
    "reasoning_parser": "reasoning_parser",
    "enable_auto_tool_choice": "enable_auto_tool_choice",
    "quantization": "quantization",
    "dtype": "dtype",
    "chat_template": "chat_template",
    "seed": "seed",
    "python_path": "python",
    "env_vars": "env",
    "env-vars": "env",
    "envVars": "env",
    "aliases": "aliases",
}
#: vLLM Studio keys with no meaning here: dropped, with a note.
_STUDIO_DROPPED = {
    "host": "engines listen on the recipe's host (default 127.0.0.1)",
    "port": "engine ports come from studioctl's engine port range",
}
#: vLLM Studio keys kept inside its ``extra_args`` that are not engine flags.
_STUDIO_EXTRA_INTERNAL = {"venv_path", "env_vars", "cuda_visible_devices", "description"}
_STUDIO_EXTRA_DROPPED = {"tags", "status"}
_STUDIO_JSON_KEYS = {"speculative_config", "default_chat_template_kwargs"}


@dataclass
class Imported:
    """One recipe read by ``read_import``: the validated recipe, the YAML text to save
    and notes on what was mapped or dropped."""

    recipe: Recipe
    text: str
    notes: list[str] = field(default_factory=list)


def read_import(path: Path, *, check_paths: bool = True) -> list[Imported]:
    """Read a file to import: a studioctl recipe (YAML or JSON), or vLLM Studio's JSON
    recipe form (one recipe, a list of them, or ``{"recipes": [...]}``)."""
    from studioctl.yamlfile import YamlDoc, load_file

    try:
        doc = load_file(path, error=RecipeError)
    except RecipeError:
        if path.suffix != ".json":
            raise
        try:  # JSON that YAML cannot read (tabs, …): no line numbers then
            doc = YamlDoc(path=str(path), data=json.loads(path.read_text(encoding="utf-8")))
        except ValueError as exc:
            raise RecipeError(f"invalid JSON: {exc}", file=str(path)) from exc
    data = doc.data
    items: list[tuple[tuple[str | int, ...], Any]]
    if isinstance(data, dict) and isinstance(data.get("recipes"), list) and len(data) == 1:
        items = [(("recipes", i), item) for i, item in enumerate(data["recipes"])]
    elif isinstance(data, list):
        items = [((i,), item) for i, item in enumerate(data)]
    else:
        items = [((), data)]
    out: list[Imported] = []
    for prefix, item in items:
        if isinstance(item, dict) and ("model_path" in item or "model" not in item):
            out.append(_import_studio(item, doc, prefix, path, check_paths))
        elif prefix:
            raise RecipeError(
                "a list of recipes must be in vLLM Studio's form (model_path, backend, …)",
                file=doc.path,
                line=doc.line(*prefix),
            )
        else:
            recipe = recipe_from_doc(doc, path=path, check_paths=check_paths, check_stem=False)
            raw = data if isinstance(data, dict) else {}
            relative = any(
                isinstance(raw.get(k), str) and raw[k].startswith(("./", "../"))
                for k in ("model", "python")
            )
            if path.suffix in SUFFIXES and not relative:
                text = path.read_text(encoding="utf-8")
            else:
                text = dump_recipe(recipe, header=f"studioctl recipe, imported from {path.name}")
            out.append(Imported(recipe, text))
    ids = [i.recipe.id for i in out]
    dupes = sorted({x for x in ids if ids.count(x) > 1})
    if dupes:
        raise RecipeError(f"the file holds recipe id {dupes[0]!r} twice", file=str(path))
    return out


def _import_studio(
    item: Any, doc: YamlDoc, prefix: tuple[str | int, ...], path: Path, check_paths: bool
) -> Imported:
    from studioctl.yamlfile import YamlDoc, dotted

    def err(message: str, *kp: str | int, hint: str | None = None) -> RecipeError:
        return RecipeError(
            message,
            file=doc.path,
            line=doc.line(*prefix, *kp),
            key=dotted((*prefix, *kp)) or None,
            hint=hint,
        )

    if not isinstance(item, dict):
        raise err(f"a recipe is a mapping of keys, got {kind_of(item)}")
    notes: list[str] = []
    data: dict[str, Any] = {}
    lines: dict[tuple[str | int, ...], int] = {(): doc.line(*prefix) or 1}

    def put(key: str, value: Any, *kp: str | int) -> None:
        if key in data and data[key] != value:
            raise err(f"{key} is given twice (as {kp[-1]} and before) with different values", *kp)
        data[key] = value
        lines[(key,)] = doc.line(*prefix, *kp) or 1

    extra = item.get("extra_args")
    for key, value in item.items():
        if key == "extra_args" or value is None:
            continue
        if key in _STUDIO_DROPPED:
            notes.append(f"{key}: dropped ({_STUDIO_DROPPED[key]})")
            continue
        if key == "thinking_mode" and value in ("conservative", "auto"):
            continue
        if key in ("thinking_mode", "max_thinking_tokens"):
            raise err(
                "vLLM Studio's thinking settings have no studioctl equivalent",
                key,
                hint="set default_chat_template_kwargs under engine_args instead",
            )
        target = _STUDIO_KEYS.get(key)
        if target is None:
            close = closest(key, _STUDIO_KEYS)
            raise err(
                "unknown vLLM Studio recipe key"
                + (f" (did you mean {close[0]}?)" if close else ""),
                key,
                hint="known keys: " + ", ".join(sorted(_STUDIO_KEYS)),
            )
        if target == "backend" and value not in ("vllm", "sglang"):
            raise err(f"backend {value!r} is not supported here (vllm or sglang)", key)
        if target == "env" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
        put(target, value, key)
    data.setdefault("backend", "vllm")
    if extra is not None:
        if not isinstance(extra, dict):
            raise err(f"extra_args must be a mapping, got {kind_of(extra)}", "extra_args")
        _import_studio_extra(extra, data, lines, notes, doc, prefix, err)
    if "id" not in data:
        data["id"] = _slug(file_stem(path))
    elif isinstance(data["id"], str) and not ID_RE.fullmatch(data["id"]):
        new_id = _slug(data["id"])
        notes.append(f"id {data['id']!r} became {new_id!r} (ids are lowercase, no spaces)")
        data["id"] = new_id
    sub = YamlDoc(path=doc.path, data=data, lines=lines)
    recipe = recipe_from_doc(sub, path=path, check_paths=check_paths, check_stem=False)
    text = dump_recipe(recipe, header=f"studioctl recipe, imported from vLLM Studio {path.name}")
    return Imported(recipe, text, notes)


def _import_studio_extra(
    extra: dict[str, Any],
    data: dict[str, Any],
    lines: dict[tuple[str | int, ...], int],
    notes: list[str],
    doc: YamlDoc,
    prefix: tuple[str | int, ...],
    err: Callable[..., RecipeError],
) -> None:
    from studioctl.engines.sglang import ENGINE as SGLANG
    from studioctl.engines.vllm import ENGINE as VLLM

    table = SGLANG if data.get("backend") == "sglang" else VLLM
    engine_args: dict[str, Any] = {}
    for key, value in extra.items():
        kp = ("extra_args", key)
        norm = key.replace("-", "_").lower()
        if value is None:
            continue
        if norm in _STUDIO_EXTRA_DROPPED:
            notes.append(f"extra_args.{key}: dropped (vLLM Studio bookkeeping)")
            continue
        if norm in _STUDIO_EXTRA_INTERNAL:
            if norm == "venv_path":
                target, value = "python", value
            elif norm == "env_vars":
                target = "env"
                value = {**data.get("env", {}), **value} if isinstance(value, dict) else value
            elif norm == "cuda_visible_devices":
                target, value = "gpus", _gpu_list(value, err, kp)
            else:
                target = "description"
            data[target] = value
            lines[(target,)] = doc.line(*prefix, *kp) or 1
            continue
        recipe_key = table.reserved.get(norm)
        if recipe_key is not None:
            if recipe_key in data and data[recipe_key] != value:
                raise err(f"sets {recipe_key} again, to a different value", *kp)
            data[recipe_key] = value
            lines[(recipe_key,)] = doc.line(*prefix, *kp) or 1
            notes.append(f"extra_args.{key}: became the recipe key {recipe_key}")
            continue
        if isinstance(value, str) and norm in _STUDIO_JSON_KEYS and value.strip()[:1] in "{[":
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        if isinstance(value, list):
            value = json.dumps(value)  # vLLM Studio passes lists as one JSON argument
        engine_args[key] = value
        lines[("engine_args", key)] = doc.line(*prefix, *kp) or 1
    if engine_args:
        data["engine_args"] = engine_args
        lines[("engine_args",)] = doc.line(*prefix, "extra_args") or 1


def _gpu_list(value: Any, err: Callable[..., RecipeError], kp: tuple[str | int, ...]) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return list(value)
    if isinstance(value, str):
        try:
            return [int(p) for p in value.split(",") if p.strip()]
        except ValueError:
            pass
    raise err(f"cuda_visible_devices must be GPU indices like '0,1', got {value!r}", *kp)


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return slug[:ID_MAX].rstrip("-._") or "recipe"

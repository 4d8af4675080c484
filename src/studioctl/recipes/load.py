"""Loading recipe files: YAML → ``${VAR}`` interpolation → ``Recipe`` validation.

Loading is strict: unknown keys, wrong types, out-of-range values, a bad id, an id that
differs from the file name, a local model path that does not exist and an unset ``${VAR}``
are each a ``RecipeError`` naming the file, the line and the key. Nothing is folded into
``extra_args``. The engine's own rules are part of the schema's validation (``Recipe``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydantic

from studioctl.errors import RecipeError
from studioctl.recipes.schema import ID_RE, ID_RULE, Recipe, file_stem, looks_local
from studioctl.suggest import closest, did_you_mean

if TYPE_CHECKING:
    from studioctl.settings import Group
    from studioctl.yamlfile import YamlDoc

#: Number and boolean keys: written as ``${VAR:-512}`` their text is read as YAML would.
_TYPED_FIELDS = frozenset(
    {
        "port",
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "data_parallel_size",
        "max_model_len",
        "gpu_memory_utilization",
        "max_num_seqs",
        "trust_remote_code",
        "enforce_eager",
        "enable_auto_tool_choice",
        "seed",
        "readiness_timeout_s",
        "idle_unload_s",
        "on_demand",
        "pinned",
        "vram_gb",
        "queue_depth",
        "queue_timeout_s",
    }
)


def load_recipe_file(
    path: Path, *, check_paths: bool = True, groups: Sequence[Group] | None = None
) -> Recipe:
    """Load and validate one recipe file.

    ``check_paths``: a ``model`` or ``python`` that looks like a local path must exist.
    ``groups``: the ``scheduler.groups`` setting; when given, the recipe's ``group`` must be
    one of them and agree with the group that lists it.
    """
    from studioctl.yamlfile import load_file

    doc = load_file(path, error=RecipeError)
    recipe = recipe_from_doc(doc, path=path, check_paths=check_paths)
    if groups is not None:
        check_group(recipe, groups, doc)
    return recipe


def check_group(recipe: Recipe, groups: Sequence[Group], doc: YamlDoc | None = None) -> None:
    """RecipeError when ``group`` names no group of ``groups``, or a different group lists
    the recipe under ``members`` (a recipe is in at most one group)."""
    names = [g.name for g in groups]
    listed = next((g.name for g in groups if recipe.id in g.members), None)
    file = doc.path if doc else (str(recipe.source) if recipe.source else None)
    line = doc.line("group") if doc else None
    if recipe.group is not None and recipe.group not in names:
        raise RecipeError(
            f"unknown group {recipe.group!r}{did_you_mean(recipe.group, names)}",
            file=file,
            line=line,
            key="group",
            hint="groups are defined by the scheduler.groups setting"
            + (f": {', '.join(names)}" if names else " (none is)"),
        )
    if recipe.group is not None and listed is not None and listed != recipe.group:
        raise RecipeError(
            f"group {recipe.group!r}, but scheduler.groups.{listed}.members lists this recipe",
            file=file,
            line=line,
            key="group",
            hint="a recipe is in at most one group: remove one of the two",
        )


def parse_recipe_text(
    text: str, *, path: Path, check_paths: bool = True, label: str | None = None
) -> Recipe:
    """Validate recipe text as if it were the file ``path`` (its name gives the id,
    its folder anchors relative paths); errors name ``label`` (default: ``path``)."""
    from studioctl.yamlfile import load_text

    doc = load_text(text, label or str(path), error=RecipeError)
    return recipe_from_doc(doc, path=path, check_paths=check_paths)


def recipe_from_doc(
    doc: YamlDoc, *, path: Path | None, check_paths: bool = True, check_stem: bool = True
) -> Recipe:
    """Validate a parsed YAML document. ``path`` (if any) gives the default id and the
    folder relative model/python paths start from."""
    data = doc.data
    if data is None:
        raise RecipeError("empty recipe file", file=doc.path, line=1)
    if not isinstance(data, dict):
        raise RecipeError(
            f"a recipe is a mapping of keys, got {kind_of(data)}", file=doc.path, line=doc.line()
        )
    if "source" in data:  # a field of the model, but not a key of the file
        raise RecipeError("unknown key", file=doc.path, line=doc.line("source"), key="source")
    data = {k: _interpolate(v, doc, (k,)) for k, v in data.items()}
    for key, value in list(data.items()):
        raw = doc.data[key]
        if isinstance(raw, str) and "${" in raw and key in _TYPED_FIELDS:
            data[key] = _reparse(value)
    stem = file_stem(path) if path else None
    if "id" not in data:
        if stem is None:
            raise RecipeError("required key is missing", file=doc.path, line=doc.line(), key="id")
        data["id"] = stem
        if not ID_RE.fullmatch(stem):
            raise RecipeError(
                f"the file name {path.name if path else stem!r} is not a valid recipe id: "
                f"{ID_RULE} (or set id)",
                file=doc.path,
                line=doc.line(),
                key="id",
            )
    elif check_stem and stem is not None and data["id"] != stem:
        raise RecipeError(
            f"id {data['id']!r} does not match the file name {path.name if path else ''!r}",
            file=doc.path,
            line=doc.line("id"),
            key="id",
            hint=f"rename the file to {data['id']}.yaml, or remove the id key",
        )
    base = path.parent if path else Path.cwd()
    for key in ("model", "python"):
        if isinstance(data.get(key), str):
            data[key] = _expand_path(data[key], base)
    if isinstance(data.get("env"), dict):  # PYTHONPATH: ~/stub, as a shell would expand it
        data["env"] = {
            k: os.path.expanduser(v) if isinstance(v, str) and v.startswith("~/") else v
            for k, v in data["env"].items()
        }
    try:
        recipe = Recipe.model_validate(data)
    except pydantic.ValidationError as exc:
        raise _translate(exc, doc) from None
    if check_paths:
        _check_local_paths(recipe, doc)
    if path is not None:
        recipe = recipe.model_copy(update={"source": path.absolute()})
    return recipe


def _interpolate(value: Any, doc: YamlDoc, kp: tuple[str | int, ...]) -> Any:
    from studioctl.yamlfile import dotted, interpolate

    if isinstance(value, list):
        return [_interpolate(v, doc, (*kp, i)) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _interpolate(v, doc, (*kp, k)) for k, v in value.items()}
    return interpolate(
        value, where=dotted(kp), file=doc.path, line=doc.line(*kp), error=RecipeError
    )


def _reparse(value: Any) -> Any:
    """A number or boolean field written as ``${VAR:-512}``: read the text as YAML would."""
    import yaml

    if not isinstance(value, str):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, int | float | bool) else value


def _expand_path(value: str, base: Path) -> str:
    if value.startswith("~"):
        return os.path.expanduser(value)
    if value.startswith(("./", "../")) or value in (".", ".."):
        return os.path.normpath(os.path.join(base.absolute(), value))
    return value


def _check_local_paths(recipe: Recipe, doc: YamlDoc) -> None:
    if looks_local(recipe.model) and not os.path.exists(recipe.model):
        raise RecipeError(
            f"model path does not exist: {recipe.model}",
            file=doc.path,
            line=doc.line("model"),
            key="model",
            hint="a model that starts with /, ./, ../ or ~ is a local path; "
            "a Hugging Face id looks like org/name",
        )
    py = recipe.python
    if py is not None and "/" in py:
        exe = recipe.python_executable()
        if not os.path.exists(py):
            problem = f"python not found: {py}"
        elif not os.access(exe, os.X_OK):
            problem = f"not an executable python: {exe}"
        else:
            return
        raise RecipeError(
            problem,
            file=doc.path,
            line=doc.line("python"),
            key="python",
            hint="python is an interpreter (…/bin/python) or a virtualenv folder",
        )


def _translate(exc: pydantic.ValidationError, doc: YamlDoc) -> RecipeError:
    """The first pydantic error as a RecipeError naming file, line and key."""
    from studioctl.yamlfile import dotted

    errors = exc.errors(include_url=False)
    err = errors[0]
    loc: tuple[str | int, ...] = tuple(p for p in err["loc"] if p != "[key]")
    ctx = err.get("ctx") or {}
    if err["type"] == "recipe":
        loc = (*loc, *ctx.get("subpath", ()))
    kind = err["type"]
    hint = None
    if kind == "extra_forbidden":
        key = str(loc[0])
        known = [k for k in Recipe.model_fields if k != "source"]
        close = [_SPELLINGS[key]] if key in _SPELLINGS else closest(key, known, cutoff=0.75)
        message = f"unknown key (did you mean {close[0]}?)" if close else "unknown key"
        hint = "engine flags without a recipe key go under engine_args (docs/recipes.md)"
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "recipe":
        message = str(ctx.get("message", err["msg"]))
    else:
        text = err["msg"]
        if text.startswith("Input should be"):
            text = "must be" + text[len("Input should be") :]
        message = f"{text}, got {_shown(err.get('input'))}"
        if kind == "string_type":
            hint = "quote the value to make it a string"
    line = doc.line(*loc) if kind != "missing" else doc.line()
    if len(errors) > 1:
        more = ", ".join(dotted(tuple(e["loc"])) or "(recipe)" for e in errors[1:4])
        extra = f"{len(errors) - 1} more problem(s): {more}"
        hint = f"{hint}; {extra}" if hint else extra
    return RecipeError(message, file=doc.path, line=line, key=dotted(loc) or None, hint=hint)


#: Other tools' names for recipe keys, for "did you mean …?".
_SPELLINGS = {
    "tp": "tensor_parallel_size",
    "tp_size": "tensor_parallel_size",
    "pp": "pipeline_parallel_size",
    "pp_size": "pipeline_parallel_size",
    "dp": "data_parallel_size",
    "dp_size": "data_parallel_size",
    "context_length": "max_model_len",
    "mem_fraction_static": "gpu_memory_utilization",
    "max_running_requests": "max_num_seqs",
    "random_seed": "seed",
    "model_path": "model",
    "venv": "python",
    "venv_path": "python",
    "python_path": "python",
    "cuda_visible_devices": "gpus",
    "env_vars": "env",
    "disable_cuda_graph": "enforce_eager",
    "engine": "backend",
    # llama-swap's and Ollama's words for the serving keys.
    "ttl": "idle_unload_s",
    "keep_alive": "idle_unload_s",
    "pin": "pinned",
    "persistent": "pinned",
    "vram": "vram_gb",
    "memory_gb": "vram_gb",
    "max_queue": "queue_depth",
    "queue_size": "queue_depth",
    "queue_timeout": "queue_timeout_s",
    "load_on_demand": "on_demand",
    "groups": "group",
}


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__}"


def _shown(value: Any) -> str:
    if isinstance(value, dict | list):
        return kind_of(value)
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r}"

"""Recipes: one YAML file per engine launch configuration.

A recipe names an engine (``backend``), a model, the python that runs the engine, GPUs,
the common engine options (one meaning across engines; each engine maps them to its own
flags, see ``engines/``), further engine flags (``engine_args``), a raw argv tail
(``extra_args``) and environment variables. Every field is documented in docs/recipes.md.

Loading is strict: unknown keys, wrong types, out-of-range values, a bad id, an id that
differs from the file name, duplicate ids across recipe folders, a local model path that
does not exist and an unset ``${VAR}`` are each a ``RecipeError`` naming the file, the line
and the key. Nothing is folded into ``extra_args``.

Recipe folders (``recipe_dirs()``), searched in order: ``<config dir>/recipes``, the
settings' ``recipes.dirs`` (``$STUDIOCTL_RECIPES_DIRS``, ``os.pathsep``-separated).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from studioctl import paths
from studioctl.errors import NotFoundError, RecipeError

if TYPE_CHECKING:
    from studioctl.settings import Settings
    from studioctl.yamlfile import YamlDoc

ID_MAX = 64  # a recipe id names files (<id>.yaml, <id>-<n>.log): well under NAME_MAX
ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ID_RULE = (
    f"1-{ID_MAX} characters: lowercase letters, digits, '.', '_' and '-', "
    "starting with a letter or digit"
)
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ARG_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
SUFFIXES = (".yaml", ".yml")
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")

Scalar = str | int | float | bool

#: One line per field: what it means. The CLI's commented template and docs/recipes.md
#: follow this list (a test checks that the docs mention every field).
FIELD_DOCS: dict[str, str] = {
    "id": "recipe id; defaults to the file name without .yaml, and must equal it",
    "name": "display name",
    "description": "free text",
    "backend": "engine: vllm | sglang",
    "model": "Hugging Face id (org/name) or local path (/, ./, ../, ~)",
    "served_model_name": "the model name clients send (default: the id)",
    "aliases": "other model names the gateway routes to this recipe",
    "python": "interpreter or venv that runs the engine (default: studioctl's own python)",
    "gpus": "GPU indices -> CUDA_VISIBLE_DEVICES; empty lets the engine decide",
    "port": "fixed engine port (default: the next free one in the engine port range)",
    "host": "address the engine listens on",
    "tensor_parallel_size": "GPUs per model replica (tensor parallel)",
    "pipeline_parallel_size": "pipeline stages",
    "data_parallel_size": "data-parallel replicas",
    "max_model_len": "context length in tokens (prompt + output)",
    "gpu_memory_utilization": "fraction of GPU memory the engine may use, in (0, 1]",
    "dtype": "weights/activations dtype: " + " | ".join(DTYPES),
    "quantization": "quantization method (engine-specific names, e.g. awq, gptq, fp8)",
    "kv_cache_dtype": "KV cache dtype (e.g. auto, fp8, fp8_e5m2)",
    "max_num_seqs": "maximum concurrent sequences in a batch",
    "trust_remote_code": "allow the model repo's own Python code",
    "enforce_eager": "no CUDA graphs / torch.compile: faster start, slower decode",
    "chat_template": "path to (or inline) Jinja chat template",
    "tool_call_parser": "tool-call output parser (e.g. hermes, llama3_json)",
    "enable_auto_tool_choice": 'allow tool_choice "auto" (needs tool_call_parser)',
    "reasoning_parser": "reasoning output parser (e.g. deepseek_r1, qwen3)",
    "seed": "random seed",
    "engine_args": "further engine flags: {flag_name: value} -> --flag-name value",
    "extra_args": "raw argv tail, appended as written",
    "env": "environment variables for the engine process",
    "readiness_timeout_s": "seconds a launch may take to become ready",
    "restart": "on-failure | always | never",
    "idle_unload_s": "stop the engine after this many idle seconds (default: never)",
}

PositiveInt = Annotated[int, Field(ge=1)]

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
    }
)


def _fail(message: str, *subpath: str | int) -> NoReturn:
    """Raise a validation error whose key path continues below the validated field."""
    raise PydanticCustomError("recipe", "{message}", {"message": message, "subpath": subpath})


class Recipe(BaseModel):
    """A validated recipe. Frozen; ``source`` is the file it came from (not part of its hash)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    id: str
    name: str | None = None
    description: str | None = None
    backend: Literal["vllm", "sglang"]
    model: Annotated[str, Field(min_length=1)]
    served_model_name: Annotated[str, Field(min_length=1)] | None = None
    aliases: list[str] = Field(default_factory=list)
    python: Annotated[str, Field(min_length=1)] | None = None
    gpus: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    # Common engine options; None = the engine's default (no flag written).
    tensor_parallel_size: PositiveInt | None = None
    pipeline_parallel_size: PositiveInt | None = None
    data_parallel_size: PositiveInt | None = None
    max_model_len: PositiveInt | None = None
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] | None = None
    quantization: Annotated[str, Field(min_length=1)] | None = None
    kv_cache_dtype: Annotated[str, Field(min_length=1)] | None = None
    max_num_seqs: PositiveInt | None = None
    trust_remote_code: bool | None = None
    enforce_eager: bool | None = None
    chat_template: Annotated[str, Field(min_length=1)] | None = None
    tool_call_parser: Annotated[str, Field(min_length=1)] | None = None
    enable_auto_tool_choice: bool | None = None
    reasoning_parser: Annotated[str, Field(min_length=1)] | None = None
    seed: Annotated[int, Field(ge=0)] | None = None
    # Pass-through.
    engine_args: dict[str, Any] = Field(default_factory=dict)
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    # Lifecycle.
    readiness_timeout_s: Annotated[float, Field(gt=0)] = 900.0
    restart: Literal["on-failure", "always", "never"] = "on-failure"
    idle_unload_s: Annotated[float, Field(gt=0)] | None = None
    source: Path | None = Field(default=None, exclude=True)

    # -- field checks -----------------------------------------------------------------------

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        problem = id_problem(value)
        if problem:
            _fail(problem)
        return value

    @field_validator("aliases")
    @classmethod
    def _check_aliases(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for i, alias in enumerate(value):
            if not alias or alias != alias.strip() or any(c.isspace() for c in alias):
                _fail(f"invalid model name {alias!r}: no spaces, not empty", i)
            if alias in seen:
                _fail(f"duplicate alias {alias!r}", i)
            seen.add(alias)
        return value

    @field_validator("gpus")
    @classmethod
    def _check_gpus(cls, value: list[int]) -> list[int]:
        seen: set[int] = set()
        for i, gpu in enumerate(value):
            if gpu in seen:
                _fail(f"GPU {gpu} is listed twice", i)
            seen.add(gpu)
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _coerce_env(cls, value: Any) -> Any:
        # YAML reads `HF_HUB_OFFLINE: 1` as a number; the environment only holds strings.
        if not isinstance(value, dict):
            return value
        out: dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(k, str) and not ENV_NAME_RE.fullmatch(k):
                _fail(f"invalid environment variable name {k!r}", k)
            if isinstance(v, bool) or v is None or isinstance(v, list | dict):
                what = "null" if v is None else type(v).__name__
                _fail(f"must be a string (quote it), got {what} {v!r}", k)
            out[k] = str(v) if isinstance(v, int | float) else v
        return out

    @field_validator("engine_args")
    @classmethod
    def _check_engine_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        seen: dict[str, str] = {}
        for key, v in value.items():
            if key.startswith("-"):
                _fail(f"write engine_args keys without dashes: {key.lstrip('-')}", key)
            if not ARG_NAME_RE.fullmatch(key):
                _fail(f"invalid engine argument name {key!r}", key)
            norm = key.replace("-", "_")
            if norm in seen:
                _fail(f"{key!r} is the same flag as {seen[norm]!r}", key)
            seen[norm] = key
            _check_arg_value(v, key)
        return value

    @model_validator(mode="after")
    def _check_across(self) -> Recipe:
        from studioctl.engines import get_engine

        if self.enable_auto_tool_choice and not self.tool_call_parser:
            _fail("enable_auto_tool_choice needs tool_call_parser", "enable_auto_tool_choice")
        if self.gpus and "CUDA_VISIBLE_DEVICES" in self.env:
            _fail("set the GPUs with the gpus key, not CUDA_VISIBLE_DEVICES", "env")
        if self.served_name in self.aliases:
            _fail(
                f"alias {self.served_name!r} is already the served name",
                "aliases",
                self.aliases.index(self.served_name),
            )
        needed = (
            (self.tensor_parallel_size or 1)
            * (self.pipeline_parallel_size or 1)
            * (self.data_parallel_size or 1)
        )
        if self.gpus and needed > len(self.gpus):
            _fail(
                f"tensor x pipeline x data parallel size needs {needed} GPUs but gpus lists "
                f"{len(self.gpus)}",
                "gpus",
            )
        for keypath, message in get_engine(self.backend).problems(self):
            _fail(message, *keypath)
        return self

    # -- derived -----------------------------------------------------------------------------

    @property
    def served_name(self) -> str:
        """The model name clients use: ``served_model_name`` or the id."""
        return self.served_model_name or self.id

    @property
    def model_names(self) -> list[str]:
        """Every name the gateway routes to this recipe: the served name, then the aliases."""
        return [self.served_name, *self.aliases]

    def python_executable(self) -> str:
        """The interpreter that runs the engine: a venv folder means ``<dir>/bin/python``."""
        if self.python is None:
            return sys.executable
        p = os.path.expanduser(self.python)
        if os.path.isdir(p):
            return os.path.join(p, "bin", "python")
        return p

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of every field (``source`` excluded)."""
        data = self.model_dump(mode="json")
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, plus ``source`` (the file) and ``served_name``."""
        out = self.model_dump(mode="json")
        out["served_name"] = self.served_name
        out["source"] = str(self.source) if self.source else None
        return out


def _check_arg_value(value: Any, key: str) -> None:
    if value is None:
        _fail("null is not a value: give one, or remove the key", key)
    if isinstance(value, list):
        for i, item in enumerate(value):
            if item is None or isinstance(item, list | dict):
                _fail("list items must be strings or numbers", key, i)
        return
    if isinstance(value, dict):
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            _fail(f"cannot be written as JSON: {exc}", key)
        return
    if not isinstance(value, Scalar):
        _fail(f"unsupported value {value!r}", key)


# --- folders ------------------------------------------------------------------------------


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


# --- loading ------------------------------------------------------------------------------


def load_recipe_file(path: Path, *, check_paths: bool = True) -> Recipe:
    """Load and validate one recipe file.

    ``check_paths``: a ``model`` or ``python`` that looks like a local path must exist.
    """
    from studioctl.yamlfile import load_file

    doc = load_file(path, error=RecipeError)
    return recipe_from_doc(doc, path=path, check_paths=check_paths)


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


def looks_local(model: str) -> bool:
    """Does ``model`` name a local path (rather than a Hugging Face id)?"""
    return model.startswith(("/", "./", "../", "~")) or model in (".", "..")


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
        close = [_SPELLINGS[key]] if key in _SPELLINGS else []
        close = close or difflib.get_close_matches(key, known, n=1, cutoff=0.75)
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


def file_stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix in SUFFIXES else path.stem


# --- finding ------------------------------------------------------------------------------


@dataclass
class Scan:
    """Every recipe in the folders, and the files that failed to load."""

    recipes: list[Recipe] = field(default_factory=list)
    errors: list[RecipeError] = field(default_factory=list)


def scan_recipes(dirs: list[Path] | None = None, *, check_paths: bool = False) -> Scan:
    """Load every recipe file; keep going past bad files (each becomes an error).

    A second file with an id already seen (in an earlier folder) is an error naming both.
    """
    scan = Scan()
    first: dict[str, Path] = {}
    for path in recipe_files(dirs):
        try:
            recipe = load_recipe_file(path, check_paths=check_paths)
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


def id_problem(value: str) -> str | None:
    """Why ``value`` is not a valid recipe id (the id and the rule), or None."""
    if ID_RE.fullmatch(value):
        return None
    text = repr(value) if len(value) <= 70 else f"{value[:40]!r}… ({len(value)} characters)"
    return f"invalid recipe id {text}: {ID_RULE}"


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
    close = difflib.get_close_matches(recipe_id, known, n=3)
    raise NotFoundError(
        f"no recipe {recipe_id!r}"
        + (f" (known: {', '.join(known)})" if known else " (no recipes found)"),
        hint=(f"did you mean {' or '.join(close)}?" if close else None)
        or "recipe folders: " + ", ".join(str(d) for d in dirs),
    )


def is_path_like(id_or_path: str) -> bool:
    return os.sep in id_or_path or id_or_path.endswith((*SUFFIXES, ".json"))


def get_recipe(
    id_or_path: str, dirs: list[Path] | None = None, *, check_paths: bool = True
) -> Recipe:
    """A recipe by id (searched in the folders) or by file path."""
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
        return load_recipe_file(path, check_paths=check_paths)
    return load_recipe_file(find_recipe_file(id_or_path, dirs), check_paths=check_paths)


# --- writing ------------------------------------------------------------------------------


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

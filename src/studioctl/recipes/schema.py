"""The recipe schema: one YAML file per engine launch configuration, as a pydantic model.

A recipe names an engine (``backend``), a model, the python that runs the engine, GPUs,
the common engine options (one meaning across engines; each engine maps them to its own
flags, see ``engines/``), further engine flags (``engine_args``), a raw argv tail
(``extra_args``) and environment variables. Every field is documented in docs/recipes.md.

Validation is strict: unknown keys, wrong types, out-of-range values and a bad id are
pydantic errors that ``recipes.load`` turns into a ``RecipeError`` naming the file, the line
and the key. The engine's own rules (flags a recipe key already sets, the engine's API key)
are checked here too, by asking ``engines`` — recipes depend on engines, never the reverse:
engines read a recipe through their ``RecipeSpec`` protocol.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from studioctl.engines import get_engine

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
    "on_demand": "a request naming it loads it (default: the gateway.load_on_demand setting)",
    "pinned": "never evicted to make room for another model",
    "vram_gb": "GPU memory it needs in GiB, over all its GPUs (default: learned or estimated)",
    "queue_depth": "requests that may wait while it loads (default: gateway.queue_depth)",
    "queue_timeout_s": "seconds a request may wait for it (default: gateway.queue_timeout_s)",
    "group": "a group of the scheduler.groups setting (which models may run together)",
    "log_bodies": "store its requests' bodies and answers (debugging; see usage.body_max_bytes)",
}

#: Fields added after recipe hashes were first stored with instances: left out of
#: ``content_hash`` while at their default, so a recipe that does not set them keeps the hash
#: it had before (an instance adopted after an upgrade still matches its recipe).
SERVING_FIELDS = (
    "on_demand",
    "pinned",
    "vram_gb",
    "queue_depth",
    "queue_timeout_s",
    "group",
    "log_bodies",
)
QUEUE_DEPTH_MAX = 10000

PositiveInt = Annotated[int, Field(ge=1)]


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
    # Serving on demand and placement (docs/recipes.md, "On demand and placement").
    on_demand: bool | None = None
    pinned: bool = False
    vram_gb: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    queue_depth: Annotated[int, Field(ge=0, le=QUEUE_DEPTH_MAX)] | None = None
    queue_timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    group: Annotated[str, Field(min_length=1, max_length=ID_MAX)] | None = None
    # The gateway stores the bodies of its requests (the request log; debugging only).
    log_bodies: bool = False
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

    @field_validator("group")
    @classmethod
    def _check_group(cls, value: str | None) -> str | None:
        if value is not None and (value != value.strip() or any(c.isspace() for c in value)):
            _fail(f"invalid group name {value!r}: no spaces")
        return value

    @model_validator(mode="after")
    def _check_across(self) -> Recipe:
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

    def loads_on_demand(self, default: bool) -> bool:
        """Whether a request naming this recipe loads it: ``on_demand``, else ``default``
        (the ``gateway.load_on_demand`` setting). The one rule, for the orchestrator and
        the gateway's model list alike."""
        return default if self.on_demand is None else self.on_demand

    @property
    def model_is_local(self) -> bool:
        """Does ``model`` name a local path (rather than a Hugging Face id)?"""
        return looks_local(self.model)

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
        """sha256 of the canonical JSON of every field (``source`` excluded; the
        ``SERVING_FIELDS`` only when they differ from their default)."""
        data = self.model_dump(mode="json")
        for key in SERVING_FIELDS:
            if getattr(self, key) == type(self).model_fields[key].default:
                del data[key]
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def serving(self) -> dict[str, Any]:
        """The on-demand and placement fields, as set (None: the setting applies)."""
        return {key: getattr(self, key) for key in SERVING_FIELDS}

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


def id_problem(value: str) -> str | None:
    """Why ``value`` is not a valid recipe id (the id and the rule), or None."""
    if ID_RE.fullmatch(value):
        return None
    text = repr(value) if len(value) <= 70 else f"{value[:40]!r}… ({len(value)} characters)"
    return f"invalid recipe id {text}: {ID_RULE}"


def looks_local(model: str) -> bool:
    """Does ``model`` name a local path (rather than a Hugging Face id)?"""
    return model.startswith(("/", "./", "../", "~")) or model in (".", "..")


def file_stem(path: Path) -> str:
    """The recipe id a file name gives: the name without its .yaml/.yml suffix."""
    return path.name[: -len(path.suffix)] if path.suffix in SUFFIXES else path.stem

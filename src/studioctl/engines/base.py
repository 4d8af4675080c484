"""What every engine declares, and the argv builder they share.

An engine is a pure description (no I/O, no imports of the engine itself): a recipe and an
assigned port become the exact argv and environment of the server process; the engine also
names its readiness probe, the log lines of its launch stages, its Prometheus metrics, its
tokenize route and how to recognise its processes.

Each engine fills in one table (``TableEngine``): recipe key → the engine's real flag. The
shared builder turns a recipe into argv in a fixed order::

    PYTHON -m MODULE  <model flag> M  --served-model-name NAME  --host H  --port P
                      <common options, in recipe field order>
                      <engine_args, in file order>
                      <extra_args, verbatim>
                      [the engine's API key: an environment variable, or a 0600 file]

Every engine studioctl starts gets its own API key (``api_key``): vLLM reads it from
``VLLM_API_KEY`` (kept off the command line); SGLang has no such variable, so it gets
``--config FILE``, a mode-0600 YAML file holding ``api-key`` (its config-file option; the
key never appears in argv). ``EngineCommand.shell()`` and the ``shown_*`` views print the
key as ``***``.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from studioctl.engines.spec import RecipeSpec

#: What a secret is shown as (``ps``, ``--dry-run``, logs, events).
REDACTED = "***"

#: The recipe's common engine options, in the order their flags are emitted.
COMMON_OPTIONS: tuple[str, ...] = (
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "data_parallel_size",
    "max_model_len",
    "gpu_memory_utilization",
    "dtype",
    "quantization",
    "kv_cache_dtype",
    "max_num_seqs",
    "trust_remote_code",
    "enforce_eager",
    "chat_template",
    "tool_call_parser",
    "enable_auto_tool_choice",
    "reasoning_parser",
    "seed",
)


@dataclass(frozen=True)
class EngineCommand:
    """The exact process a launch starts.

    ``env`` holds only the variables studioctl sets; a launch merges them onto its own
    ``os.environ``. ``origins`` maps each flag studioctl wrote to the recipe key it came
    from (``"--max-model-len"`` → ``"max_model_len"``), so an engine's complaint about a
    flag can be pointed back at the recipe line.
    """

    argv: list[str]
    env: dict[str, str]
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: The engine's API key (wherever it went: env or a file); never shown.
    secret: str | None = field(default=None, compare=False, repr=False)
    #: Files the launch writes (mode 0600) before starting the engine: path → content.
    files: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __repr__(self) -> str:  # env holds the key: a traceback or a log line must not
        return f"EngineCommand(argv={self.shown_argv()!r}, env={self.shown_env()!r})"

    def redact(self, text: str) -> str:
        return redact(text, self.secret)

    def shown_env(self) -> dict[str, str]:
        """``env`` with the key as ``***``."""
        return {k: self.redact(v) for k, v in self.env.items()}

    def shown_argv(self) -> list[str]:
        """``argv`` with the key as ``***`` (it is not in argv; this is a guard)."""
        return [self.redact(a) for a in self.argv]

    def shell(self) -> str:
        """``VAR=val … argv`` shell-quoted, the key as ``***``: what a launch runs."""
        parts = [f"{k}={shlex.quote(v)}" for k, v in self.shown_env().items()]
        parts.append(shlex.join(self.shown_argv()))
        return " ".join(parts)


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced by ``***``."""
    return text.replace(secret, REDACTED) if secret else text


@dataclass(frozen=True)
class Stage:
    """A launch stage, reached when a log line matches ``pattern``."""

    name: str
    label: str
    pattern: re.Pattern[str]


#: How a metric's label sets (model name, engine index, DP rank…) are combined.
Agg = Literal["sum", "mean", "max"]


@dataclass(frozen=True)
class MetricSpec:
    """One studioctl metric and the engine names that carry it (an engine's ``metrics``).

    ``names`` are tried in order (newest engine versions first); the first present wins.
    ``kind`` is the Prometheus type; for a histogram the name has no ``_sum``/``_count``
    suffix. ``agg`` combines label sets. ``note`` says which engine versions use which name.
    ``field`` is the studioctl name (a field of ``engines.metrics.EngineMetricSnapshot``).
    """

    field: str
    kind: Literal["gauge", "counter", "histogram"]
    names: tuple[str, ...]
    agg: Agg = "sum"
    note: str = ""


@runtime_checkable
class Engine(Protocol):
    name: str
    health_path: str
    ready_paths: tuple[str, ...]
    stages: tuple[Stage, ...]
    metrics: tuple[MetricSpec, ...]
    metric_names: dict[str, str]
    tokenize_path: str | None
    process_markers: tuple[str, ...]

    def command(
        self,
        recipe: RecipeSpec,
        *,
        port: int,
        gpus: list[int] | None = None,
        api_key: str | None = None,
        key_file: str | None = None,
    ) -> EngineCommand: ...

    def problems(self, recipe: RecipeSpec) -> list[tuple[tuple[str | int, ...], str]]:
        """Engine-specific recipe problems: ``[(key path, message), …]``; empty when fine."""
        ...


@dataclass(frozen=True)
class BoolFlag:
    """How a common boolean option is spelled: argv for true, argv for false.

    ``false_args=None`` means the engine has no way to say false: a recipe that sets the
    option to false is refused (nothing is silently dropped).
    """

    true_args: tuple[str, ...]
    false_args: tuple[str, ...] | None
    note: str = ""


def flag_name(key: str) -> str:
    """``"max_num_batched_tokens"`` → ``"--max-num-batched-tokens"``."""
    return "--" + key.replace("_", "-")


def norm_key(name: str) -> str:
    """A flag or key in one spelling: ``"--Max-Model-Len=4"`` → ``"max_model_len"``."""
    return name.lstrip("-").split("=", 1)[0].replace("-", "_").lower()


def render_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class TableEngine:
    """An engine described by tables (see vllm.py and sglang.py for the two instances)."""

    def __init__(
        self,
        *,
        name: str,
        module: str,
        model_flag: str,
        stages: tuple[Stage, ...],
        metrics: tuple[MetricSpec, ...],
        process_markers: tuple[str, ...],
        value_flags: Mapping[str, str],
        bool_flags: Mapping[str, BoolFlag],
        reserved: Mapping[str, str],
        health_path: str = "/health",
        ready_paths: tuple[str, ...] = (),
        tokenize_path: str | None = None,
        negatable: frozenset[str] = frozenset(),
        store_true: frozenset[str] = frozenset(),
        negate_by_default: bool = False,
        api_key_env: str | None = None,
        api_key_config_flag: str | None = None,
    ) -> None:
        self.name = name
        #: The module the engine's python runs (``PYTHON -m MODULE``).
        self.module = module
        #: The flag that names the model (vLLM ``--model``, SGLang ``--model-path``).
        self.model_flag = model_flag
        self.health_path = health_path
        self.ready_paths = ready_paths
        self.stages = stages
        #: What the engine serves on GET /metrics, in studioctl's names (engines/metrics.py
        #: reads it; telemetry and the supervisor's drain go through that).
        self.metrics = metrics
        #: studioctl's name → the engine's current name (the first of each spec's names).
        self.metric_names = {spec.field: spec.names[0] for spec in metrics}
        self.tokenize_path = tokenize_path
        self.process_markers = process_markers
        #: recipe key → the engine's flag that takes a value.
        self.value_flags = dict(value_flags)
        #: recipe key → how the engine spells true / false.
        self.bool_flags = dict(bool_flags)
        #: Engine argument names (normalised) that mean the same as a recipe key, aliases
        #: included: written in ``engine_args``/``extra_args`` they are refused, naming the key.
        self.reserved = dict(reserved)
        #: Boolean flags with a ``--no-`` form: ``false`` in engine_args → ``--no-flag``.
        self.negatable = negatable
        #: Boolean flags without one: ``false`` → the flag is left out (the engine default).
        self.store_true = store_true
        #: For booleans in neither set: ``True`` → ``--no-flag``, ``False`` → left out.
        self.negate_by_default = negate_by_default
        #: How the engine takes its API key: an environment variable, or (when it has none)
        #: a YAML config file named by this flag, holding ``api-key``.
        self.api_key_env = api_key_env
        self.api_key_config_flag = api_key_config_flag
        missing = [k for k in COMMON_OPTIONS if k not in self.value_flags and k not in bool_flags]
        if missing:  # a programming error: every common option needs a spelling
            raise ValueError(f"{name}: no flag for {missing}")

    def __repr__(self) -> str:
        return f"<engine {self.name}>"

    # -- argv ------------------------------------------------------------------------------

    def command(
        self,
        recipe: RecipeSpec,
        *,
        port: int,
        gpus: list[int] | None = None,
        api_key: str | None = None,
        key_file: str | None = None,
    ) -> EngineCommand:
        """The engine's argv and env. ``api_key``: the key the engine requires on its API
        (``key_file``: where an engine without a key variable reads it from)."""
        argv: list[str] = [recipe.python_executable(), "-m", self.module]
        origins: dict[str, str] = {}

        def add(key: str, *args: str) -> None:
            for a in args:
                if a.startswith("--"):
                    origins.setdefault(a, key)
            argv.extend(args)

        add("model", self.model_flag, recipe.model)
        add("served_model_name", "--served-model-name", recipe.served_name)
        add("host", "--host", recipe.host)
        add("port", "--port", str(port))
        for key, args in self.common_args(recipe):
            add(key, *args)
        for key, value in recipe.engine_args.items():
            add(f"engine_args.{key}", *self.engine_arg(key, value))
        argv.extend(recipe.extra_args)

        env = dict(recipe.env)
        chosen = recipe.gpus if gpus is None else gpus
        if chosen:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in chosen)
        files: dict[str, str] = {}
        if api_key is not None:
            if self.api_key_env:
                env[self.api_key_env] = api_key
            elif self.api_key_config_flag:
                if key_file is None:
                    raise ValueError(f"{self.name} reads its API key from a file: key_file needed")
                argv.extend([self.api_key_config_flag, key_file])
                # JSON is YAML: no quoting rules to get wrong for any key.
                files[key_file] = json.dumps({"api-key": api_key}) + "\n"
            else:  # a programming error: every engine must take a key somehow
                raise ValueError(f"{self.name}: no way to pass an API key")
        return EngineCommand(argv=argv, env=env, origins=origins, secret=api_key, files=files)

    def common_args(self, recipe: RecipeSpec) -> list[tuple[str, list[str]]]:
        """``[(recipe key, argv fragment), …]`` for the common options that are set."""
        out: list[tuple[str, list[str]]] = []
        for key in COMMON_OPTIONS:
            value = getattr(recipe, key)
            if value is None:
                continue
            if key in self.bool_flags:
                spec = self.bool_flags[key]
                args = spec.true_args if value else spec.false_args
                if args is None:  # refused at validation; never reached for a valid recipe
                    raise ValueError(f"{self.name} cannot express {key}: {value}")
                if args:
                    out.append((key, list(args)))
            else:
                out.append((key, [self.value_flags[key], render_scalar(value)]))
        return out

    def engine_arg(self, key: str, value: Any) -> list[str]:
        """One ``engine_args`` entry → argv. See docs/recipes.md for the rules."""
        flag = flag_name(key)
        if isinstance(value, bool):
            if value:
                return [flag]
            if self.has_no_form(key):
                return ["--no-" + flag[2:]]
            return []
        if isinstance(value, list):
            return [flag, *(render_scalar(v) for v in value)] if value else []
        if isinstance(value, dict):
            return [flag, json.dumps(value, separators=(",", ":"), sort_keys=False)]
        return [flag, render_scalar(value)]

    def has_no_form(self, key: str) -> bool:
        k = norm_key(key)
        if k in self.negatable:
            return True
        if k in self.store_true:
            return False
        return self.negate_by_default

    # -- validation help (recipes ask) ------------------------------------------------------

    def emitted_flags(self, recipe: RecipeSpec) -> dict[str, str]:
        """Normalised flag name → recipe key, for every flag the recipe's own keys produce."""
        out: dict[str, str] = {norm_key(self.model_flag): "model"}
        out.update({"served_model_name": "served_model_name", "host": "host", "port": "port"})
        for key, args in self.common_args(recipe):
            for a in args:
                if a.startswith("--"):
                    out[norm_key(a)] = key
        return out

    def conflicts(self, name: str, recipe: RecipeSpec) -> str | None:
        """The recipe key an engine argument ``name`` would clash with, if any."""
        k = norm_key(name)
        if k.startswith("no_") and k[3:] in self.reserved:
            k = k[3:]
        return self.reserved.get(k) or self.emitted_flags(recipe).get(k)

    def problems(self, recipe: RecipeSpec) -> list[tuple[tuple[str | int, ...], str]]:
        out: list[tuple[tuple[str | int, ...], str]] = [
            ((key,), reason) for key, reason in self.unsupported(recipe)
        ]
        for key in recipe.engine_args:
            clash = self.conflicts(key, recipe)
            if clash:
                out.append((("engine_args", key), _clash_message(flag_name(key), clash)))
        for i, item in enumerate(recipe.extra_args):
            if item.startswith("-") and not _NUMBER.match(item):
                clash = self.conflicts(item, recipe)
                if clash:
                    flag = item.split("=", 1)[0]
                    out.append((("extra_args", i), _clash_message(flag, clash)))
        out.extend(self.key_problems(recipe))
        return out

    def key_problems(self, recipe: RecipeSpec) -> list[tuple[tuple[str | int, ...], str]]:
        """The engine's API key is studioctl's: a recipe that sets it (or the config file
        it travels in) would lock the gateway, probes and scrapes out."""
        owned = {"api_key"}
        if self.api_key_config_flag:
            owned.add(norm_key(self.api_key_config_flag))
        why = "studioctl starts every engine with its own generated API key"
        out: list[tuple[tuple[str | int, ...], str]] = []
        for key in recipe.engine_args:
            if norm_key(key) in owned:
                out.append((("engine_args", key), f"{flag_name(key)} is not allowed: {why}"))
        for i, item in enumerate(recipe.extra_args):
            if item.startswith("--") and norm_key(item) in owned:
                out.append((("extra_args", i), f"{item.split('=', 1)[0]} is not allowed: {why}"))
        if self.api_key_env and self.api_key_env in recipe.env:
            out.append((("env", self.api_key_env), f"{self.api_key_env} is not allowed: {why}"))
        return out

    def unsupported(self, recipe: RecipeSpec) -> list[tuple[str, str]]:
        """``[(recipe key, reason), …]`` for options this engine cannot express."""
        out: list[tuple[str, str]] = []
        for key, spec in self.bool_flags.items():
            value = getattr(recipe, key)
            if value is False and spec.false_args is None:
                out.append((key, f"{self.name} has no way to turn this off{spec.note}"))
        return out


_NUMBER = re.compile(r"-[0-9.]")


def _clash_message(flag: str, key: str) -> str:
    return f"{flag} is what the recipe key {key} sets: use {key} instead"

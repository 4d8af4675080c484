"""Check a recipe's flags with the engine's own argument parser, in a subprocess.

The recipe's python runs a small script (``_SCRIPT``) that imports the engine, builds its
real parser, parses exactly the argv a launch would use and reports back one JSON line.
With ``deep``, it goes on to the engine's own configuration checks (vLLM:
``create_engine_config()``, which reads the model's config.json and rejects values out of
range such as a max_model_len beyond the model's; SGLang: ``resolve_once()``). The deep
check needs the model on local disk; for a hub id that is not there it is skipped with a
note. ``HF_HUB_OFFLINE=1`` is set so a check never downloads anything.

Nothing here imports an engine into studioctl's own process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from studioctl.errors import OperationTimeout, RecipeError

if TYPE_CHECKING:
    from studioctl.engines.base import Engine, EngineCommand
    from studioctl.engines.spec import RecipeSpec

MARK = "@@studioctl-flag-check@@"

# Runs under the recipe's python. Reads {"backend", "argv", "deep"} on stdin, prints one
# MARK-prefixed JSON line: {"status": ok|invalid|missing|broken, "error", "version", "notes"}.
_SCRIPT = r"""
import json, re, sys
MARK = "@@studioctl-flag-check@@"
def report(**kw):
    sys.stdout.write("\n" + MARK + json.dumps(kw) + "\n")
    sys.stdout.flush()
    sys.exit(0)
def clean(exc):
    # pydantic's framing around the engine's own words: keep the words.
    lines = [l.strip() for l in str(exc).splitlines()]
    lines = [l for l in lines if l and not l.startswith("For further")
             and not re.match(r"\d+ validation errors? for ", l)]
    text = " ".join(lines)
    text = re.sub(r"^Value error, ", "", text)
    text = re.sub(r" \[type=[a-z_]+, input_value=.*?, input_type=\w+\]", "", text)
    return text or type(exc).__name__
class ParseError(Exception):
    pass
def raiser(message):
    raise ParseError(message)
payload = json.loads(sys.stdin.read())
backend, argv, deep = payload["backend"], payload["argv"], payload["deep"]
notes = []
try:
    if backend == "vllm":
        import vllm
        version = getattr(vllm, "__version__", None)
        try:
            from vllm.utils.argparse_utils import FlexibleArgumentParser
        except ImportError:
            from vllm.utils import FlexibleArgumentParser
        try:
            from vllm.entrypoints.launchers import cli_args
        except ImportError:
            from vllm.entrypoints.openai import cli_args
        make_arg_parser = cli_args.make_arg_parser
        validate_parsed_serve_args = cli_args.validate_parsed_serve_args
    else:
        import argparse
        import sglang
        version = getattr(sglang, "__version__", None)
        from sglang.srt.server_args import ServerArgs
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] == backend:
        report(status="missing", error=clean(exc))
    report(status="broken", error=f"importing {backend} failed: {type(exc).__name__}: {clean(exc)}")
except Exception as exc:
    report(status="broken", error=f"importing {backend} failed: {type(exc).__name__}: {clean(exc)}")
try:
    if backend == "vllm":
        parser = make_arg_parser(FlexibleArgumentParser(prog="vllm.entrypoints.openai.api_server"))
        parser.error = raiser
        ns = parser.parse_args(argv)  # as the api_server module does: --model, no model_tag
        validate_parsed_serve_args(ns)
        if deep:
            from vllm.engine.arg_utils import AsyncEngineArgs
            AsyncEngineArgs.from_cli_args(ns).create_engine_config()
    else:
        parser = argparse.ArgumentParser(prog="sglang.launch_server")
        ServerArgs.add_cli_args(parser)
        parser.error = raiser
        ns = parser.parse_args(argv)
        server_args = ServerArgs.from_cli_args(ns)
        if deep:
            server_args.resolve_once()
except ParseError as exc:
    report(status="invalid", error=str(exc), stage="parser", version=version)
except SystemExit as exc:
    report(status="invalid", error=f"parser exit {exc.code}", stage="parser", version=version)
except Exception as exc:
    report(status="invalid", error=clean(exc), stage="deep" if deep else "parser", version=version,
           kind=type(exc).__name__)
report(status="ok", version=version, notes=notes)
"""


@dataclass(frozen=True)
class FlagCheck:
    """What a successful check covered."""

    recipe_id: str
    backend: str
    python: str
    engine_version: str | None
    deep: bool  # the engine's configuration checks ran too (not only its parser)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe_id,
            "backend": self.backend,
            "python": self.python,
            "engine_version": self.engine_version,
            "deep": self.deep,
            "notes": list(self.notes),
        }


def check_flags(
    recipe: RecipeSpec, engine: Engine, *, deep: bool = True, timeout: float = 180
) -> FlagCheck:
    """Parse the recipe's launch argv with the engine's own parser, run by the recipe's python.

    Raises ``RecipeError`` with the engine's message (pointing at the recipe key the
    offending flag came from, when it can tell), or a clear error when the engine is not
    installed in ``recipe.python``; ``OperationTimeout`` when the check takes too long.
    """
    cmd = engine.command(recipe, port=recipe.port or 18000)
    python = cmd.argv[0]
    notes: list[str] = []
    run_deep = deep
    if deep and not (recipe.model_is_local and os.path.exists(recipe.model)):
        run_deep = False
        notes.append(
            f"deep check skipped: model {recipe.model!r} is not a local path, and the check "
            "never downloads"
        )
    env = dict(os.environ)
    env.update(cmd.env)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("PYTHONWARNINGS", "ignore")
    payload = json.dumps({"backend": recipe.backend, "argv": cmd.argv[3:], "deep": run_deep})
    out, err, code = _run([python, "-c", _SCRIPT], payload, env, timeout, recipe)
    result = _parse(out)
    if result is None:
        tail = "\n".join(err.strip().splitlines()[-5:])
        raise _error(
            recipe,
            f"the flag check with {python} failed (exit {code})" + (f": {tail}" if tail else ""),
            key="python",
        )
    status = result.get("status")
    version = result.get("version")
    if status == "missing":
        raise _error(
            recipe,
            f"{recipe.backend} is not installed in {python} ({result.get('error')})",
            key="python",
            hint=f"set python: to the interpreter or venv that has {recipe.backend} installed",
        )
    if status == "broken":
        raise _error(recipe, f"{recipe.backend} in {python}: {result.get('error')}", key="python")
    if status == "invalid":
        message = str(result.get("error") or "rejected")
        key = _key_for(message, cmd, recipe)
        where = "parser" if result.get("stage") == "parser" else "configuration check"
        raise _error(
            recipe,
            f"{recipe.backend} {version or ''} {where} rejected the recipe: {message}".replace(
                "  ", " "
            ),
            key=key,
            hint=f"checked with {python}: {_shell_tail(cmd)}",
        )
    notes.extend(str(n) for n in result.get("notes") or [])
    return FlagCheck(
        recipe_id=recipe.id,
        backend=recipe.backend,
        python=python,
        engine_version=version,
        deep=run_deep,
        notes=notes,
    )


def _run(
    argv: list[str], stdin: str, env: dict[str, str], timeout: float, recipe: RecipeSpec
) -> tuple[str, str, int]:
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
    except FileNotFoundError as exc:
        raise _error(recipe, f"python not found: {argv[0]}", key="python") from exc
    except PermissionError as exc:
        raise _error(recipe, f"python is not executable: {argv[0]}", key="python") from exc
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise OperationTimeout(
            f"the {recipe.backend} flag check of {recipe.id} took longer than {timeout:g} s"
        ) from exc
    return out, err, proc.returncode


def _parse(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARK):
            try:
                data = json.loads(line[len(MARK) :])
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


def _key_for(message: str, cmd: EngineCommand, recipe: RecipeSpec) -> str | None:
    """The recipe key the engine's complaint is about: the earliest flag (or its
    underscore name) the message mentions."""
    from studioctl.engines.base import norm_key

    origins = dict(cmd.origins)
    for i, item in enumerate(recipe.extra_args):
        if item.startswith("--"):
            origins.setdefault(item.split("=", 1)[0], f"extra_args[{i}]")
    best: tuple[int, str] | None = None
    for flag, key in origins.items():
        m = re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", message)
        if m is None and key not in ("model", "host", "port", "served_model_name"):
            m = re.search(rf"\b{re.escape(norm_key(flag))}\b", message)
        if m and (best is None or m.start() < best[0]):
            best = (m.start(), key)
    return best[1] if best else None


def _keypath(key: str) -> tuple[str | int, ...]:
    out: list[str | int] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return tuple(out)


def _error(
    recipe: RecipeSpec, message: str, *, key: str | None, hint: str | None = None
) -> RecipeError:
    line = None
    if recipe.source is not None and key:
        from studioctl.yamlfile import load_file

        try:
            line = load_file(recipe.source, error=RecipeError).line(*_keypath(key))
        except RecipeError:
            line = None
    return RecipeError(
        message,
        file=str(recipe.source) if recipe.source else None,
        line=line,
        key=key,
        hint=hint,
    )


def _shell_tail(cmd: EngineCommand) -> str:
    import shlex

    return shlex.join(cmd.argv[1:])
